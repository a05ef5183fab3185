"""From decoded arrays to training: balanced class weights, and the tf.data pipeline of batches.

Example:
>>> dataset = make_dataset(train.images, train.labels, batch_size=32, shuffle=True, seed=0)
>>> model.fit(dataset, class_weight=class_weights(train.labels, num_classes=5))
"""

from __future__ import annotations

import math

import numpy as np

from finetune.errors import FinetuneError

# Class weights are used only when the largest class has more than this many times the images
# of the smallest; the health report says whether they apply with the same threshold.
CLASS_WEIGHT_THRESHOLD = 1.5


def class_weights(labels, num_classes: int, threshold: float = CLASS_WEIGHT_THRESHOLD) -> dict[int, float] | None:
    """Balanced class weights, n / (num_classes * count), when the classes are imbalanced.

    Args:
        labels: int class indices of the training images.
        num_classes: how many classes there are (some may have no images).
        threshold: weights are returned only when largest / smallest class count is above it.
            Defaults to `CLASS_WEIGHT_THRESHOLD` (1.5).

    Returns:
        {class index: weight} for every class (1.0 for a class without images), or None when the
        classes are balanced enough to train without weights.

    Example:
    >>> class_weights([0, 0, 0, 0, 1], num_classes=2)
    {0: 0.625, 1: 2.5}
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts[counts > 0]
    if len(present) == 0 or present.max() / present.min() <= threshold:
        return None
    total = counts.sum()
    return {
        label: float(total / (num_classes * count)) if count else 1.0 for label, count in enumerate(counts.tolist())
    }


def make_dataset(images, labels, batch_size: int, shuffle: bool, seed: int, augment=None, repeat: bool = False,
                 start_epoch: int | None = None):
    """A `tf.data.Dataset` of (float32 images in 0..255 [B, S, S, 3], int64 labels [B]) batches.

    Images are gathered from `images` batch by batch (a memory map works: nothing is copied up
    front), so the data set costs no more memory than a few batches.

    Args:
        images: uint8 [N, S, S, 3], e.g. `LoadedSplit.images`.
        labels: int [N].
        batch_size: images per batch; the last batch may be smaller.
        shuffle: reshuffle every epoch; the order depends on `seed` alone.
        seed: seed of the shuffle.
        augment: None, or a callable from a float32 batch of images to a batch of the same shape,
            run with `num_parallel_calls=AUTOTUNE` and a deterministic order. Defaults to None.
        repeat: repeat forever (then pass `steps_per_epoch` to fit). Defaults to False.
        start_epoch: when given, the data set is epochs `start_epoch`, `start_epoch + 1`, ... one
            after another, forever (pass `steps_per_epoch=ceil(N / batch_size)` to fit); epoch e's
            order is a function of `seed` and e alone, and no batch spans two epochs, so that a
            run resumed at epoch e sees what an uninterrupted one saw. Defaults to None (`shuffle`
            and `repeat` as above: the order depends on how often the data set was iterated).
    """
    import tensorflow as tf

    labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if len(images) != len(labels):
        raise FinetuneError(
            f"`images` and `labels` must have the same length. Received: {len(images)} images, {len(labels)} labels"
        )
    if int(batch_size) < 1:
        raise FinetuneError(f"`batch_size` must be at least 1. Received: batch_size={batch_size!r}")
    image_shape = tuple(images.shape[1:])
    image_dtype = tf.as_dtype(images.dtype)

    def gather(indices):
        return np.asarray(images[indices]), labels[indices]

    def load(indices):
        batch_images, batch_labels = tf.numpy_function(gather, [indices], (image_dtype, tf.int64), stateful=False)
        batch_images.set_shape((None, *image_shape))
        batch_labels.set_shape((None,))
        return tf.cast(batch_images, tf.float32), batch_labels

    if start_epoch is not None:
        dataset = _epochs(len(labels), int(batch_size), shuffle, seed, int(start_epoch))
    else:
        dataset = tf.data.Dataset.range(len(labels))
        if shuffle:
            dataset = dataset.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
        dataset = dataset.batch(int(batch_size))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _epochs(count: int, batch_size: int, shuffle: bool, seed: int, start_epoch: int):
    """Batches of indices, epoch after epoch, from `start_epoch`: the seeded reshuffles of an uninterrupted run.

    One iterator runs through the epochs (Keras keeps it when given `steps_per_epoch`), each a new
    shuffle of the same seeded sequence; a resumed run skips the index batches of the epochs done,
    which costs no image loading.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.range(count)
    if shuffle:
        dataset = dataset.shuffle(max(1, count), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).repeat()
    return dataset.skip(start_epoch * math.ceil(count / batch_size))
