"""`finetune augment-preview`, the `--augment` flags, and the `--tta` options of `finetune evaluate` and `finetune predict`."""

import argparse
import json

import pytest
from PIL import Image

import augment
import finetune
from finetune.cli import main
from finetune.cli_augment import add_augment_arguments, augment_overrides
from finetune.run import CONFIG_FILE
from tests.conftest import write_image_folder


def test_augment_preview_writes_a_png_grid(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=3, size=40)
    out = tmp_path / "grid.png"
    arguments = ["augment-preview", str(data), "--augment", "strong", "--out", str(out), "--images", "3",
                 "--samples", "2", "--image-size", "32"]
    assert main(arguments) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as grid:
        assert grid.format == "PNG"
        # Columns: original, 2 augmented, 2 mixed (strong mixes); rows: 3 images.
        assert grid.width > 5 * 32 and grid.height > 3 * 32


def test_augment_preview_rejects_an_unknown_preset(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=2)
    with pytest.raises(SystemExit):
        main(["augment-preview", str(data), "--augment", "medium"])
    assert "invalid choice" in capsys.readouterr().err


def test_augment_preview_rejects_bad_counts_before_reading_the_folder(tmp_path, capsys):
    assert main(["augment-preview", str(tmp_path / "missing"), "--images", "0"]) == 2
    assert "`images` and `samples` must be at least 1. Received: images=0, samples=5" in capsys.readouterr().err


def test_an_augment_error_is_a_user_error_for_the_cli(tmp_path, capsys):
    # An option out of range: `augment` raises AugmentError, which the CLI reports like its own errors.
    data = write_image_folder(tmp_path / "data", per_class=2)
    assert main(["augment-preview", str(data), "--crop-area", "0.9", "0.2", "--out", str(tmp_path / "grid.png")]) == 2
    assert "Received: crop_area=(0.9, 0.2)" in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


def test_cli_flags_become_overrides():
    parser = argparse.ArgumentParser()
    add_augment_arguments(parser)
    assert parser.parse_args([]).augment == "none"
    arguments = parser.parse_args(["--augment", "standard", "--mixup", "0.2", "--no-horizontal-flip",
                                   "--crop-area", "0.5", "1", "--augment-placement", "model"])
    overrides = augment_overrides(arguments)
    assert overrides == {"mixup": 0.2, "horizontal_flip": False, "crop_area": [0.5, 1.0], "placement": "model"}
    options = augment.resolve(arguments.augment, **overrides)
    assert options.mixup == 0.2 and not options.horizontal_flip and options.crop_area == (0.5, 1.0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta_cli")
    write_image_folder(root / "data" / "train", classes=("cat", "dog"), per_class=6, size=56)
    write_image_folder(root / "data" / "test", classes=("cat", "dog"), per_class=3, size=56, seed=5)
    run = finetune.train(str(root / "data"), backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=48,
                         epochs=0, strategy="linear", verbose=0, out=str(root / "run"))
    return root, run.directory


@pytest.mark.parametrize("mode", ["none", "center", "flip", "ten_crop"])
def test_evaluate_with_tta(tiny_run, mode, capsys):
    root, run_dir = tiny_run
    assert main(["evaluate", str(run_dir), str(root / "data"), "--tta", mode, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] == mode and result["num_images"] == 6


def test_predict_with_tta_gives_probabilities(tiny_run, capsys):
    root, run_dir = tiny_run
    arguments = ["predict", str(run_dir), str(root / "data" / "test" / "cat"), "--tta", "five_crop",
                 "--tta-combine", "geometric", "--json"]
    assert main(arguments) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3
    for item in results:
        assert sum(p["probability"] for p in item["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_auto_uses_the_mode_training_recorded(tiny_run, capsys):
    root, run_dir = tiny_run
    config_path = run_dir / CONFIG_FILE
    original = config_path.read_text()
    try:
        assert main(["evaluate", str(run_dir), str(root / "data"), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["tta"] == "none"  # nothing recorded: as trained
        config = json.loads(original)
        config["tta"] = "flip"
        config_path.write_text(json.dumps(config))
        assert main(["evaluate", str(run_dir), str(root / "data")]) == 0
        assert "TTA flip" in capsys.readouterr().out
    finally:
        config_path.write_text(original)
