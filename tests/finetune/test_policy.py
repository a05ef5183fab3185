"""The transfer policy: the decision table, what each strategy freezes, the multi-stage path."""

import json
import math

import keras
import numpy as np
import pytest

import finetune
from finetune.cli import main
from finetune.config import DataConfig, ModelConfig, PolicyConfig
from finetune.errors import FinetuneError
from finetune.policy import decide, groups_to_unfreeze, measure, measure_similarity, measure_size
from finetune.freezing import unfreeze_top_groups
from finetune.zoo import build_backbone, get_spec, layers_of_group
from tests.conftest import write_image_folder

TINY = dict(backbone="mobilenet_v2", weights="none", alpha=0.35, image_size=48, batch_size=8, verbose=0, tta="none")


def _similarity(top, best_lower):
    return {"stage_accuracies": {"low": best_lower, "top": top}, "top_accuracy": top, "best_lower_accuracy": best_lower,
            "best_lower_stage": "low", "score": top - best_lower, "imagenet_confidence": None, "chance": 0.1}


@pytest.mark.parametrize(
    "min_per_class, top, lower, expected",
    [
        (30, 0.95, 0.80, "linear"),  # little + similar
        (30, 0.60, 0.85, "multistage_linear"),  # little + different
        (500, 0.95, 0.80, "finetune_top"),  # lots + similar
        (500, 0.60, 0.85, "finetune_most"),  # lots + different
        (500, 0.795, 0.80, "finetune_top"),  # on the size threshold (lots), within the margin
        (499, 0.785, 0.80, "multistage_linear"),  # just below both
    ],
)
def test_decision_table(min_per_class, top, lower, expected):
    size = {"num_classes": 10, "num_images": 10 * min_per_class, "min_per_class": min_per_class, "median_per_class": min_per_class}
    policy = decide(size, _similarity(top, lower))
    assert policy["strategy"] == expected
    assert set(policy) >= {"strategy", "size", "similarity", "thresholds", "reasons"}
    assert str(min_per_class) in policy["reasons"][0]


def test_thresholds_are_configurable():
    size = {"num_classes": 2, "num_images": 100, "min_per_class": 50, "median_per_class": 50}
    assert decide(size, _similarity(0.9, 0.9))["strategy"] == "linear"
    assert decide(size, _similarity(0.9, 0.9), PolicyConfig(lots_per_class=50))["strategy"] == "finetune_top"
    assert decide(size, _similarity(0.85, 0.9))["strategy"] == "multistage_linear"
    assert decide(size, _similarity(0.85, 0.9), PolicyConfig(similarity_margin=0.1))["strategy"] == "linear"


def test_similarity_prefers_the_stage_that_separates_the_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    informative = rng.normal(0, 1, (40, 4)) + labels[:, None] * 3.0
    noise = rng.normal(0, 1, (40, 4))
    different = measure_similarity([informative, noise], labels, ["mid", "top"])
    similar = measure_similarity([noise, informative], labels, ["mid", "top"])
    assert different["score"] < -0.3 < 0.3 < similar["score"]
    assert measure_size(labels, 3) == {"num_classes": 3, "num_images": 40, "min_per_class": 0, "median_per_class": 20.0}


@pytest.mark.parametrize("strategy", ["linear", "multistage_linear", "finetune_top", "finetune_most", "full"])
def test_each_strategy_trains_exactly_the_groups_it_claims(strategy):
    spec = get_spec("mobilenet_v2")
    backbone = build_backbone(spec, image_size=48, weights="none", alpha=0.35)
    count = groups_to_unfreeze(strategy, len(spec.freeze_groups))
    expected = {"linear": 0, "multistage_linear": 0, "finetune_top": 3, "finetune_most": 14, "full": 19}[strategy]
    assert count == expected
    unfreeze_top_groups(backbone, spec, count)
    for group_index in range(len(spec.freeze_groups)):
        layers = layers_of_group(backbone, spec, group_index)
        trainable = sum(len(layer.trainable_weights) for layer in layers)
        batch_norm_trainable = sum(len(layer.trainable_weights) for layer in layers
                                   if isinstance(layer, keras.layers.BatchNormalization))
        assert batch_norm_trainable == 0
        if group_index < count:
            assert trainable > 0, f"group {group_index} should train"
        else:
            assert trainable == 0, f"group {group_index} should be frozen"


def test_multistage_linear_saves_a_truncated_backbone(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), strategy="multistage_linear", **TINY)
    chosen = run.metrics["stages"]["multistage"]
    stages = len(get_spec("mobilenet_v2").stage_endpoints)
    # Every stage alone, every mean of 2 or 3 of them, and the concatenation.
    assert len(chosen["candidates"]) == stages + math.comb(stages, 2) + math.comb(stages, 3) + 1
    assert chosen["chosen"] == chosen["candidates"][0]["name"]
    # The chosen head was refit on training + validation images: the validation split is not held out.
    assert run.metrics["stages"]["head"]["fit_on"] == "train+val" and run.metrics["val"]["held_out"] is False
    assert run.metrics["cv_accuracy"] == chosen["candidates"][0]["cv_accuracy"]
    assert [item["cv_loss"] for item in chosen["candidates"]] == sorted(item["cv_loss"] for item in chosen["candidates"])
    assert run.config["strategy"] == "multistage_linear"
    model = keras.saving.load_model(run.directory / "model.keras", safe_mode=True)
    expected_width = sum(
        build_backbone("mobilenet_v2", image_size=48, weights="none", alpha=0.35).get_layer(name.split(":")[0]).output.shape[-1]
        for name in chosen["chosen_stages"]
    )
    assert model.get_layer("classifier").kernel.shape == (expected_width, 3)
    policy = json.loads((run.directory / "policy.json").read_text())
    assert policy["requested"] == "multistage_linear" and policy["strategy"] in ("linear", "multistage_linear")


def test_policy_command_json(tmp_path, capsys):
    data = write_image_folder(tmp_path / "data", per_class=6)
    assert main(["policy", str(data), "--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35",
                 "--image-size", "48", "--json"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert policy["strategy"] in ("linear", "multistage_linear")
    assert set(policy) >= {"strategy", "size", "similarity", "thresholds", "reasons"}
    assert policy["size"]["num_classes"] == 2 and len(policy["similarity"]["stage_accuracies"]) == 5


def test_measure_takes_the_data_model_and_policy_configs(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=5)
    policy = measure(DataConfig(str(data), val_fraction=0.2, image_size=48), ModelConfig("mobilenet_v2", weights="none", alpha=0.35),
                     PolicyConfig(lots_per_class=4), batch_size=8)
    # 4 of each class's 5 images train: "quite a lot" at lots_per_class=4, the finetuning row of the table.
    assert policy["size"] == {"num_classes": 3, "num_images": 12, "min_per_class": 4, "median_per_class": 4.0}
    assert policy["strategy"] in ("finetune_top", "finetune_most") and policy["thresholds"]["lots_per_class"] == 4
    assert (policy["backbone"], policy["image_size"], policy["data"]) == ("mobilenet_v2", 48, str(data))


def test_measure_without_data_is_a_clear_error():
    with pytest.raises(FinetuneError, match="Received: data.source=''"):
        measure(DataConfig(), ModelConfig("mobilenet_v2", weights="none", alpha=0.35))


def test_unknown_strategy_is_a_clear_error(image_folder):
    with pytest.raises(FinetuneError, match="strategy"):
        finetune.train(image_folder, strategy="finetune_everything", **TINY)


def test_linear_head_can_keep_the_validation_split_held_out(tmp_path):
    data = write_image_folder(tmp_path / "data", classes=("a", "b"), per_class=8)
    run = finetune.train(data, out=str(tmp_path / "run"), strategy="linear", linear_fit_on_val=False, **TINY)
    assert run.metrics["stages"]["head"]["fit_on"] == "train" and run.metrics["val"]["held_out"] is True
    assert run.metrics["stages"]["head"]["stages"] == [get_spec("mobilenet_v2").stage_endpoints[-1]]


def test_from_scratch_batch_norm_trains_and_tracks_its_statistics():
    spec = get_spec("mobilenet_v2")
    backbone = build_backbone(spec, image_size=48, weights="none", alpha=0.35)
    unfreeze_top_groups(backbone, spec, len(spec.freeze_groups), pretrained=False)
    batch_norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and all(layer.trainable_weights for layer in batch_norms)
    # keras.applications' 0.999 would leave the moving statistics at their initial values for
    # thousands of steps: chance accuracy in inference mode after a short training.
    assert all(layer.momentum <= 0.9 for layer in batch_norms)
