"""finetune.data.pipeline: class weights and the tf.data pipeline."""

import numpy as np
import pytest

from finetune.data import class_weights, make_dataset
from finetune.errors import FinetuneError


def test_class_weights_only_when_imbalanced():
    assert class_weights([0, 0, 1, 1, 2, 2], 3) is None
    assert class_weights([0, 0, 0, 1, 1], 2) is None  # 1.5 is not above the threshold
    weights = class_weights([0] * 8 + [1] * 2, 2)
    assert weights == {0: 10 / (2 * 8), 1: 10 / (2 * 2)}
    assert class_weights([0] * 8 + [1] * 2, 2, threshold=5) is None
    assert class_weights([0, 0, 0, 1], 3) == {0: 4 / 9, 1: 4 / 3, 2: 1.0}


def labels_of(dataset):
    return np.concatenate([labels.numpy() for _, labels in dataset]).tolist()


def test_make_dataset_batches_float_images_and_int_labels():
    images = np.arange(10 * 4 * 4 * 3, dtype=np.int64).reshape(10, 4, 4, 3).astype(np.uint8)
    labels = np.arange(10)
    batches = list(make_dataset(images, labels, batch_size=4, shuffle=False, seed=0))
    assert [len(batch_labels) for _, batch_labels in batches] == [4, 4, 2]
    batch_images, batch_labels = batches[0]
    assert batch_images.dtype.name == "float32" and batch_labels.dtype.name == "int64"
    np.testing.assert_array_equal(batch_images.numpy(), images[:4].astype(np.float32))
    assert batch_labels.numpy().tolist() == [0, 1, 2, 3]


def test_make_dataset_shuffles_by_seed_each_epoch():
    images = np.zeros((32, 2, 2, 3), np.uint8)
    labels = np.arange(32)
    first = make_dataset(images, labels, 8, shuffle=True, seed=3)
    epochs = [labels_of(first), labels_of(first)]
    again = make_dataset(images, labels, 8, shuffle=True, seed=3)
    assert [labels_of(again), labels_of(again)] == epochs
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == list(range(32))
    assert labels_of(make_dataset(images, labels, 8, shuffle=True, seed=4)) != epochs[0]


def test_make_dataset_augments_and_repeats():
    images = np.full((5, 2, 2, 3), 7, np.uint8)
    dataset = make_dataset(
        images, np.zeros(5), 2, shuffle=False, seed=0, augment=lambda batch: batch + 1.0, repeat=True
    )
    batches = list(dataset.take(6))
    assert len(batches) == 6
    assert all(float(batch_images.numpy().max()) == 8.0 for batch_images, _ in batches)
    assert batches[0][0].shape == (2, 2, 2, 3)
    with pytest.raises(FinetuneError, match="same length"):
        make_dataset(images, np.zeros(4), 2, shuffle=False, seed=0)
