"""`augment.options`: presets with overrides, their checks and their description for config.json."""

import json

import pytest

import augment
from augment.errors import AugmentError, check_choice


def test_describe_is_json_with_the_view_distribution():
    for preset in augment.PRESETS:
        description = augment.describe(preset)
        json.dumps(description)
        assert description["preset"] == preset
    assert augment.describe("light")["views"]["area"] == [0.64, 1.0]
    assert augment.describe("none", scale_jitter=(256, 480))["views"]["area"] == pytest.approx([0.2178, 0.7656], abs=1e-4)


def test_overrides_apply_on_top_of_the_preset():
    options = augment.resolve("light", vertical_flip=True, crop_area=[0.5, 1], mixup=None)
    assert options.vertical_flip and options.horizontal_flip  # the preset's flip is kept
    assert options.crop_area == (0.5, 1.0) and options.mixup == 0.0
    assert augment.resolve(None) == augment.resolve("none")


def test_unknown_preset_and_option_are_clear_errors():
    with pytest.raises(AugmentError, match="Allowed: none, light, standard, strong"):
        augment.resolve("medium")
    with pytest.raises(AugmentError, match="Unknown augmentation option `mixpu`"):
        augment.resolve("standard", mixpu=0.2)
    with pytest.raises(AugmentError, match="Received: crop_area="):
        augment.resolve("standard", crop_area=(0.9, 0.2))
    with pytest.raises(AugmentError, match="Received: cutmix=2.0"):
        augment.resolve("standard", cutmix=2.0)
    with pytest.raises(AugmentError, match=r"`placement` must be one of dataset, model\. Received: placement='gpu'"):
        augment.resolve("standard", placement="gpu")


def test_augment_error_is_a_value_error_with_the_usual_message():
    with pytest.raises(ValueError, match=r"^`combine` must be one of mean, geometric\. Received: combine='median'$"):
        check_choice("combine", "median", ("mean", "geometric"))
    check_choice("combine", "mean", ("mean", "geometric"))
