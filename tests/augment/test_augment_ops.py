"""The augmentation layers of `augment.layers`: geometry of crops and flips, colour, erasing."""

import numpy as np
import pytest
import tensorflow as tf

from augment.layers import ColorJitter, Cutout, RandomView
from augment.seeding import StatelessSeeds


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
