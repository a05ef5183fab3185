"""Mixup and CutMix: soft labels that sum to one and match what was mixed; the loss to train with."""

import numpy as np
import pytest
import tensorflow as tf

import augment
from augment.errors import AugmentError
from finetune.data import make_dataset


def constant_images(count: int, size: int = 16) -> np.ndarray:
    """Image i is filled with the value i, so a pixel says which image it came from."""
    return np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None, None], (count, size, size, 3)).copy()


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_labels_sum_to_one(mixup, cutmix):
    images, labels = constant_images(8), np.arange(8) % 4
    mixed, soft = augment.mix_batch(images, labels, num_classes=4, mixup=mixup, cutmix=cutmix, seed=0)
    assert mixed.shape == images.shape and soft.shape == (8, 4)
    assert mixed.dtype == tf.float32 and soft.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(soft).sum(axis=1), 1.0, atol=1e-5)


def test_mixup_labels_match_the_blend():
    images, labels = constant_images(8), np.arange(8)
    mixed, soft = augment.mix_batch(images, labels, num_classes=8, mixup=1.0, seed=3)
    soft = np.asarray(soft)
    # Each mixed image is w * i + (1 - w) * j; its soft label puts w on i and 1 - w on j.
    expected_values = soft @ np.arange(8, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(mixed)[:, 0, 0, 0], expected_values, atol=1e-4)


def test_cutmix_labels_are_the_pasted_share_of_the_area():
    images, labels = constant_images(8, size=32), np.arange(8)
    mixed, soft = augment.mix_batch(images, labels, num_classes=8, mixup=0.0, cutmix=1.0, seed=5)
    mixed, soft = np.asarray(mixed), np.asarray(soft)
    for image in range(8):
        shares = np.bincount(mixed[image, :, :, 0].astype(int).ravel(), minlength=8) / 32**2
        np.testing.assert_allclose(soft[image], shares, atol=1e-5)


def test_no_mixing_only_makes_labels_one_hot():
    images = constant_images(4)
    mixed, soft = augment.mix_batch(images, [0, 1, 2, 1], num_classes=3, mixup=0.0, cutmix=0.0)
    np.testing.assert_array_equal(np.asarray(mixed), images)
    np.testing.assert_array_equal(np.asarray(soft), np.eye(3)[[0, 1, 2, 1]])


def test_mix_dataset_is_deterministic_and_trains_with_its_loss():
    import keras

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (20, 8, 8, 3)).astype(np.uint8), rng.integers(0, 3, 20)

    def batches():
        dataset = augment.mix_dataset(make_dataset(images, labels, 5, True, 0), 3, mixup=0.2, cutmix=1.0, seed=1)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    for (x1, y1), (x2, y2) in zip(batches(), batches()):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    loss, metrics = augment.loss_and_metrics(soft_labels=True)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.compile("adam", loss=loss, metrics=metrics)
    train = augment.mix_dataset(make_dataset(images, labels, 5, True, 0), 3, mixup=0.2, seed=1)
    val = augment.one_hot_dataset(make_dataset(images, labels, 5, False, 0), 3)
    history = model.fit(train, validation_data=val, epochs=1, verbose=0)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)


@pytest.mark.parametrize("mixup, cutmix, received", [(-0.1, 0.0, "mixup=-0.1"), (float("nan"), 0.0, "mixup=nan"),
                                                     (0.0, 1.5, "cutmix=1.5")])
def test_mixer_and_resolve_reject_the_same_values_alike(mixup, cutmix, received):
    with pytest.raises(AugmentError, match=f"Received: {received}") as from_mixer:
        augment.Mixer(3, mixup, cutmix)
    with pytest.raises(AugmentError) as from_options:
        augment.resolve("none", mixup=mixup, cutmix=cutmix)
    assert str(from_mixer.value) == str(from_options.value)


def test_mixer_needs_two_classes():
    with pytest.raises(AugmentError, match="Received: num_classes=1"):
        augment.Mixer(1)
