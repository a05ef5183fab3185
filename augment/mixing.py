"""Mixup and CutMix: mixed images with mixed (soft) labels, and the loss that goes with them.

Mixup blends two images, x = w a + (1 - w) b, and their one-hot labels the same way; CutMix
pastes a box of b into a and mixes the labels by the box's share of the area. The loss is the
ordinary categorical cross-entropy on the soft labels, which equals w CE(a) + (1 - w) CE(b).
The mixing itself is Keras' `MixUp` and `CutMix` layers, seeded per batch (see `augment.seeding`).

    train = mix_dataset(make_dataset(...), num_classes, mixup=0.2, cutmix=1.0, seed=0)
    val = one_hot_dataset(make_dataset(...), num_classes)
    loss, metrics = loss_and_metrics(soft_labels=True)
    model.compile(optimizer, loss=loss, metrics=metrics)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from augment.errors import AugmentError
from augment.options import check_mixing
from augment.seeding import MIXING_SALT, StatelessSeeds, batch_seed, derive


class Mixer:
    """Mixes a batch: (float images [B, H, W, 3], int labels [B] or one-hot [B, C]) -> (images, soft labels [B, C]).

    With both mixup and cutmix on, each batch gets one of them with equal chance (timm's rule).

    Args:
        num_classes: the number of classes (the width of the soft labels).
        mixup: Beta parameter of mixup; 0 turns it off. Defaults to 0.2.
        cutmix: Beta parameter of cutmix, at most 1; 0 turns it off. Defaults to 0.0.
        seed: Defaults to 0.
    """

    def __init__(self, num_classes: int, mixup: float = 0.2, cutmix: float = 0.0, seed: int = 0):
        if int(num_classes) < 2:
            raise AugmentError(f"`num_classes` must be at least 2. Received: num_classes={num_classes!r}")
        check_mixing(mixup, cutmix)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        # Created once here: a tf.data map function must not create the layers' variables.
        self.mixup = keras.layers.MixUp(alpha=float(mixup)) if mixup else None
        self.cutmix = keras.layers.CutMix(factor=(float(cutmix), float(cutmix))) if cutmix else None

    def __call__(self, images, labels, seed=None):
        """`seed`: an int [2] tensor to use instead of the one derived from the batch's pixels."""
        images = tf.cast(images, tf.float32)
        labels = soft_labels(labels, self.num_classes)
        if self.mixup is None and self.cutmix is None:
            return images, labels
        if seed is None:
            seed = batch_seed(images, self.seed, MIXING_SALT)

        def apply(layer, index):
            transformation = layer.get_random_transformation(images, training=True, seed=StatelessSeeds(derive(seed, index)))
            mixed_images = layer.transform_images(images, transformation, training=True)
            if layer is self.cutmix:
                # Keras weighs the labels by the box's real-valued area; the pixels pasted differ
                # by up to a row and a column of them. Weigh by the pixels (timm's "correct_lam").
                pasted = tf.reduce_mean(tf.cast(transformation["batch_masks"][..., 0], tf.float32), axis=[1, 2])
                transformation = {**transformation, "mix_weight": 1.0 - pasted}
            mixed_labels = layer.transform_labels(labels, transformation, training=True)
            return tf.cast(mixed_images, tf.float32), tf.cast(mixed_labels, tf.float32)

        if self.mixup is not None and self.cutmix is not None:
            use_cutmix = tf.random.stateless_uniform((), seed=derive(seed, 0)) < 0.5
            return tf.cond(use_cutmix, lambda: apply(self.cutmix, 2), lambda: apply(self.mixup, 1))
        return apply(self.mixup or self.cutmix, 1)


def soft_labels(labels, num_classes: int):
    """int labels [B] (or [B, 1]) -> one-hot float32 [B, C]; float labels [B, C] are returned as float32."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_integer:
        return tf.one_hot(tf.reshape(labels, [-1]), num_classes, dtype=tf.float32)
    return tf.cast(labels, tf.float32)


def mix_batch(images, labels, num_classes: int, mixup: float = 0.2, cutmix: float = 0.0, seed: int = 0):
    """Mixes one batch eagerly; see `Mixer`. Returns (images, soft labels [B, num_classes])."""
    return Mixer(num_classes, mixup, cutmix, seed)(images, labels)


def mix_dataset(dataset, num_classes: int, mixup: float = 0.2, cutmix: float = 0.0, seed: int = 0):
    """Maps a dataset of (images, int labels) batches to (mixed images, soft labels), in parallel and deterministic.

    With mixup and cutmix both 0 the labels are only made one-hot, so that the same loss serves.
    """
    mixer = Mixer(num_classes, mixup, cutmix, seed)
    return dataset.map(lambda images, labels: mixer(images, labels), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)


def one_hot_dataset(dataset, num_classes: int):
    """(images, int labels) batches -> (images, one-hot labels): validation data for a model trained on soft labels."""
    return dataset.map(lambda images, labels: (images, soft_labels(labels, num_classes)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def loss_and_metrics(soft_labels: bool, label_smoothing: float = 0.0):
    """What to compile with: (loss, metrics) for soft (mixed, one-hot) labels or for int labels.

    The accuracy metric is named "accuracy" either way, so logs read `val_accuracy` in both cases.
    Label smoothing needs soft labels (Keras' sparse cross-entropy has none): with
    `label_smoothing` above 0, give one-hot labels (`one_hot_dataset`) and `soft_labels=True`.
    """
    if label_smoothing and not soft_labels:
        raise ValueError("`label_smoothing` needs one-hot labels: pass soft_labels=True and one_hot_dataset(...). "
                         f"Received: label_smoothing={label_smoothing}, soft_labels=False")
    if soft_labels:
        return (keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                [keras.metrics.CategoricalAccuracy(name="accuracy")])
    return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
