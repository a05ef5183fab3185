"""The training augmentation: geometry of crops and flips, colour, erasing, shapes, seeded determinism."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import augment
from augment.layers import ColorJitter, Cutout, RandomView
from augment.seeding import StatelessSeeds
from finetune.data import make_dataset
from finetune.errors import FinetuneError


def coordinate_images(count: int, size: int) -> np.ndarray:
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([np.stack([rows, columns, np.full_like(rows, i)], -1) for i in range(count)]).astype(np.float32)


def apply(layer, images, seed=(1, 2)):
    seeds = StatelessSeeds(tf.constant(seed, tf.int32))
    transformation = layer.get_random_transformation(tf.constant(images), training=True, seed=seeds)
    return np.asarray(layer.transform_images(tf.constant(images), transformation, training=True)), transformation


def test_a_full_view_without_flips_is_exact():
    images = coordinate_images(4, 16)
    output, _ = apply(RandomView(), images)
    np.testing.assert_array_equal(output, images)


def test_flips_mirror_exactly_and_per_image():
    images = coordinate_images(32, 12)
    output, transformation = apply(RandomView(horizontal_flip=True), images)
    flipped = np.asarray(transformation["flip_horizontal"])
    assert 0 < flipped.sum() < 32  # each image draws its own coin
    for image, flip in enumerate(flipped):
        np.testing.assert_array_equal(output[image], images[image][:, ::-1] if flip else images[image])
    output, transformation = apply(RandomView(vertical_flip=True), images)
    for image, flip in enumerate(np.asarray(transformation["flip_vertical"])):
        np.testing.assert_array_equal(output[image], images[image][::-1] if flip else images[image])


def test_random_resized_crop_stays_in_its_window():
    size = 40
    images = coordinate_images(16, size)
    output, transformation = apply(RandomView(crop_area=(0.25, 0.25), crop_aspect=(1.0, 1.0)), images)
    np.testing.assert_allclose(np.asarray(transformation["height"]), 0.5, atol=1e-6)
    for image in range(16):
        top = float(transformation["top"][image]) * size
        rows = output[image, :, 0, 0]
        # The first and last samples sit half an output pixel (a quarter input pixel) inside the
        # window, pixel centres at i + 0.5, but never outside the image's outermost pixel centres.
        assert rows[0] == pytest.approx(max(top + 0.25 - 0.5, 0.0), abs=1e-3)
        assert rows[-1] == pytest.approx(min(top + size / 2 - 0.25 - 0.5, size - 1.0), abs=1e-3)
        assert np.all(np.diff(rows) > 0)
    assert output.min() >= 0 and (output[..., 0] > 0).mean() > 0.9  # no black border


def test_scale_jitter_crops_the_resnet_share():
    images = coordinate_images(8, 224)
    _, transformation = apply(RandomView(scale_jitter=(256, 480)), images)
    heights = np.asarray(transformation["height"])
    assert np.all(heights >= 224 / 480 - 1e-6) and np.all(heights <= 224 / 256 + 1e-6)


def test_rotation_keeps_the_centre_and_the_shape():
    images = coordinate_images(4, 33)
    output, _ = apply(RandomView(rotation=30.0), images)
    assert output.shape == images.shape
    np.testing.assert_allclose(output[:, 16, 16, :2], 16.0, atol=1e-3)  # rotation about the centre


def test_color_jitter_off_is_identity_and_grey_stays_grey():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    output, _ = apply(ColorJitter(), images)
    np.testing.assert_allclose(output, images, atol=1e-3)
    grey = np.repeat(rng.uniform(0, 255, (4, 8, 8, 1)), 3, axis=-1).astype(np.float32)
    output, _ = apply(ColorJitter(saturation=0.5, hue=0.3), grey)
    np.testing.assert_allclose(output, grey, atol=1e-2)
    output, transformation = apply(ColorJitter(brightness=0.5), images / 2)
    expected = np.clip(images / 2 * np.asarray(transformation["brightness"])[:, None, None, None], 0, 255)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-3)


def test_cutout_fills_a_rectangle_of_the_drawn_size():
    images = np.full((16, 32, 32, 3), 255.0, np.float32)
    output, transformation = apply(Cutout(probability=1.0, area=(0.1, 0.1), aspect=(1.0, 1.0), fill=(0, 0, 0)), images)
    erased = (output[..., 0] == 0).mean(axis=(1, 2))
    inside = (np.asarray(transformation["top"]) >= 0) & (np.asarray(transformation["bottom"]) <= 1)
    inside &= (np.asarray(transformation["left"]) >= 0) & (np.asarray(transformation["right"]) <= 1)
    np.testing.assert_allclose(erased[inside], 0.1, atol=0.03)
    assert np.all(erased > 0)
    output, _ = apply(Cutout(probability=0.0), images)
    np.testing.assert_array_equal(output, images)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_presets_build_and_keep_shape_dtype_and_range(preset):
    augmenter = augment.build_augmenter(preset, seed=0)
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    output = np.asarray(augmenter(images))
    assert output.shape == images.shape and output.dtype == np.float32
    assert output.min() >= 0 and output.max() <= 255
    assert not np.array_equal(output, images)


def test_none_preset_has_no_augmenter_and_describe_is_json():
    assert augment.build_augmenter("none") is None
    assert augment.build_augmenter("none", mixup=0.2) is None  # mixing is not a per-image operation
    for preset in augment.PRESETS:
        description = augment.describe(preset)
        json.dumps(description)
        assert description["preset"] == preset
    assert augment.describe("light")["views"]["area"] == [0.64, 1.0]
    assert augment.describe("none", scale_jitter=(256, 480))["views"]["area"] == pytest.approx([0.2178, 0.7656], abs=1e-4)


def test_unknown_preset_and_option_are_clear_errors():
    with pytest.raises(FinetuneError, match="Allowed: none, light, standard, strong"):
        augment.resolve("medium")
    with pytest.raises(FinetuneError, match="Unknown augmentation option `mixpu`"):
        augment.resolve("standard", mixpu=0.2)
    with pytest.raises(FinetuneError, match="Received: crop_area="):
        augment.resolve("standard", crop_area=(0.9, 0.2))
    with pytest.raises(FinetuneError, match="Received: cutmix=2.0"):
        augment.resolve("standard", cutmix=2.0)


def dataset_batches(seed, images, labels):
    augmenter = augment.build_augmenter("strong", seed=seed)
    dataset = make_dataset(images, labels, batch_size=8, shuffle=True, seed=0, augment=augmenter, repeat=True)
    return [batch.numpy() for batch, _ in dataset.take(8)]


def test_the_parallel_pipeline_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 24, 24, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 24)
    first, second = dataset_batches(1, images, labels), dataset_batches(1, images, labels)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    other = dataset_batches(2, images, labels)
    assert not np.array_equal(first[0], other[0])
    # Epochs differ: batches 0-2 and 3-5 hold the same images, shuffled and augmented anew.
    assert not np.array_equal(np.sort(first[0].ravel()), np.sort(first[3].ravel()))


def test_in_model_placement_augments_only_while_training(tmp_path):
    augmenter = augment.build_augmenter("standard", seed=0, placement="model")
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    training_model = augment.with_augmentation(model, augmenter)
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(training_model.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-4)
    np.testing.assert_allclose(np.asarray(training_model(images)), np.asarray(model(images)), atol=1e-4)
    assert not np.allclose(np.asarray(training_model(images, training=True)), np.asarray(model(images)), atol=1e-2)
    path = tmp_path / "augmented.keras"
    training_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("augmenter").options == augmenter.options


def test_cli_flags_become_overrides():
    import argparse

    from augment.options import add_arguments, overrides_from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    arguments = parser.parse_args(["--augment", "standard", "--mixup", "0.2", "--no-horizontal-flip",
                                   "--crop-area", "0.5", "1", "--augment-placement", "model"])
    overrides = overrides_from_arguments(arguments)
    assert overrides == {"mixup": 0.2, "horizontal_flip": False, "crop_area": [0.5, 1.0], "placement": "model"}
    options = augment.resolve(arguments.augment, **overrides)
    assert options.mixup == 0.2 and not options.horizontal_flip and options.crop_area == (0.5, 1.0)
