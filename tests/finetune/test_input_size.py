"""The input size chosen from the data (finetune.input_size), with tiny backbones and generated images."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import finetune
from finetune.config import DataConfig, TrainConfig
from finetune.data import discover
from finetune.input_size import candidate_sizes, choose_image_size, native_short_side, pick
from finetune.zoo import get_spec

TINY_MODEL = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, batch_size=8, verbose=0, tta="none")


def _stripes_or_flat(root: Path, size: int, per_class: int = 10, period: int = 8, seed: int = 0) -> Path:
    """Two classes that differ only in fine detail: vertical stripes of `period` px, or a flat grey of the same mean.

    Downscaled far enough, the stripes blur into the same grey: only a large input size tells them apart.
    """
    rng = np.random.default_rng(seed)
    stripes = np.where((np.arange(size) // (period // 2)) % 2 == 0, 60.0, 196.0)
    for class_name in ("stripes", "flat"):
        folder = root / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            if class_name == "stripes":
                image = np.tile(np.roll(stripes, int(rng.integers(period)))[None, :, None], (size, 1, 3))
            else:
                image = np.full((size, size, 3), 128.0)
            image = image + rng.normal(0, 6, image.shape) + rng.uniform(-20, 20)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


def test_candidates_follow_the_native_resolution_and_the_backbones_range():
    spec = get_spec("mobilenet_v2")  # sizes 32..224
    config = DataConfig()  # candidates 96..224, at most 4x upscaling (and the next candidate above)
    assert candidate_sizes(8, spec, config) == [96, 128]  # 32 px cap: the two smallest are always scored
    assert candidate_sizes(28, spec, config) == [96, 128]  # 112 px cap, and the next one above it
    assert candidate_sizes(40, spec, config) == [96, 128, 160, 192]
    assert candidate_sizes(500, spec, config) == [96, 128, 160, 192, 224]
    assert candidate_sizes(None, spec, config) == [96, 128, 160, 192, 224]
    small_backbone = dataclasses.replace(spec, default_image_size=160)
    assert candidate_sizes(500, small_backbone, config) == [96, 128, 160]


def test_the_smallest_size_within_the_margin_of_the_best_wins():
    rows = [{"size": 96, "cv_accuracy": 0.90}, {"size": 128, "cv_accuracy": 0.945}, {"size": 160, "cv_accuracy": 0.95}]
    chosen, reason = pick(rows, margin=0.01)
    assert chosen["size"] == 128 and "within 0.01 of the best (160 px)" in reason
    chosen, reason = pick(rows, margin=0.001)
    assert chosen["size"] == 160 and "best cross-validated accuracy" in reason
    chosen, _ = pick([{"size": 96, "cv_accuracy": None}, {"size": 128, "cv_accuracy": None}], margin=0.01)
    assert chosen["size"] == 128  # unscored (too few images): the larger one


def test_native_resolution_is_read_from_the_headers(tmp_path):
    for class_name, (width, height) in (("a", (30, 20)), ("b", (64, 40))):
        folder = tmp_path / class_name
        folder.mkdir()
        for index in range(3):
            Image.new("RGB", (width, height)).save(folder / f"{index}.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    source = discover(str(tmp_path), val_fraction=0.0)
    assert native_short_side(source) == pytest.approx(np.median([20] * 3 + [40] * 3))


@pytest.mark.slow
def test_fine_detail_in_large_images_picks_a_large_size_and_small_images_a_small_one(tmp_path):
    config = TrainConfig(**{key: value for key, value in TINY_MODEL.items() if key in ("batch_size", "verbose", "tta")})
    config.model.backbone, config.model.weights, config.model.alpha = "mobilenet_v2", "none", 0.35
    config.data.candidate_sizes = (32, 64, 128)
    spec = get_spec("mobilenet_v2")
    large = discover(str(_stripes_or_flat(tmp_path / "large", size=256)), val_fraction=0.2)
    choice = choose_image_size(large, spec, config)
    scores = {row["size"]: row["cv_accuracy"] for row in choice.candidates}
    assert sorted(scores) == [32, 64, 128] and choice.native_short_side == 256
    assert choice.size == 128, scores  # at 32 and 64 px the stripes are blurred away
    assert scores[128] > scores[32] + 0.2
    small = discover(str(_stripes_or_flat(tmp_path / "small", size=16)), val_fraction=0.2)
    choice = choose_image_size(small, spec, config)
    assert choice.size == 32, choice.candidates  # nothing to gain from upscaling 16-px images
    assert [row["size"] for row in choice.candidates] == [32, 64, 128]  # 64 px cap, and the next size above


@pytest.mark.slow
def test_train_records_the_size_choice_and_image_size_overrides_it(tmp_path, capsys):
    from finetune.cli import main

    data = _stripes_or_flat(tmp_path / "data", size=24, per_class=8)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--strategy", "linear", "--backbone", "mobilenet_v2",
                 "--weights", "none", "--alpha", "0.35", "--batch-size", "8", "--tta", "none"]) == 0
    # The default candidates: 24 px images allow 96 px (4x) and the next size, 128 px.
    policy = json.loads((out / "policy.json").read_text())
    record = policy["image_size"]
    assert record["chosen_by"] == "measured" and [row["size"] for row in record["candidates"]] == [96, 128]
    assert record["native_short_side"] == 24 and record["chosen"] in (96, 128)
    assert json.loads((out / "config.json").read_text())["image_size"] == record["chosen"]
    err = capsys.readouterr().err
    assert f"Image size: {record['chosen']} px" in err
    # 8 images per class: the size choice scored them all, and training reuses its stage search.
    assert "Stage search: reusing the one the size choice ran" in err
    run = finetune.train(data, out=str(tmp_path / "given"), strategy="linear", image_size=48, **TINY_MODEL)
    record = json.loads((run.directory / "policy.json").read_text())["image_size"]
    assert record == {"chosen": 48, "chosen_by": "requested", "reason": "48 px: requested (image_size)"}
    assert run.config["image_size"] == 48 and run.model.input_shape[1] == 48


def test_the_policy_command_measures_at_the_size_training_would_choose(tmp_path):
    from finetune.config import ModelConfig
    from finetune.policy import format_policy, measure

    data = _stripes_or_flat(tmp_path / "data", size=16, per_class=5)
    policy = measure(DataConfig(str(data), candidate_sizes=(32, 64)), ModelConfig("mobilenet_v2", weights="none", alpha=0.35),
                     batch_size=8)
    record = policy["image_size_choice"]
    assert record["chosen_by"] == "measured" and [row["size"] for row in record["candidates"]] == [32, 64]
    assert policy["image_size"] == record["chosen"] and f"Image size: {record['chosen']} px" in format_policy(policy)
