"""`Augmenter`: the per-image training augmentation of a set of options, as one Keras layer.

The same layer runs in the tf.data pipeline (placement "dataset": in parallel on the CPU,
seeded from each batch's pixels so the result does not depend on thread timing) or in front
of the model (placement "model": on the accelerator, seeded from a generator that advances
once per training step, so the result depends on the seed and the step alone).

    augmenter = build_augmenter("standard", seed=0)
    dataset = make_dataset(images, labels, 32, shuffle=True, seed=0, augment=augmenter)

The operations, in order: crop, flips, rotation and translation in one resampling
(`RandomView`), colour (`ColorJitter`), noise (`RandomGaussianNoise`), random erasing
(`Cutout`). Every draw is per image. See `augment.layers` for why these are not Keras' layers.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from augment.layers import ColorJitter, Cutout, RandomGaussianNoise, RandomView
from augment.options import AugmentOptions, resolve
from augment.seeding import IMAGE_SALT, StatelessSeeds, batch_seed, derive

@keras.saving.register_keras_serializable(package="augment")
class Augmenter(keras.layers.Layer):
    """Random training augmentation of float images in 0..255 [B, H, W, 3]; the output has the same shape.

    Args:
        options: an `AugmentOptions` or its dict (`AugmentOptions.to_dict()`); None: no
            operation. Defaults to None.
        seed: every random draw derives from it. Defaults to 0.

    Placement "dataset" augments unless called with `training=False`; placement "model"
    augments only with `training=True` (as in `fit`), so a model holding it predicts on the
    images it is given.

    Example:

    ```python
    augmenter = Augmenter(resolve("light"), seed=0)
    augmented = augmenter(images)  # the same images and seed give the same result
    ```
    """

    def __init__(self, options=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        if options is None:
            options = resolve("none")
        elif not isinstance(options, AugmentOptions):
            options = resolve("none", **dict(options))
        self.options = options
        self.seed = int(seed)
        self.generator = keras.random.SeedGenerator(self.seed)
        self.operations = _operations(options, self.seed)
        self.supports_jit = False  # CropAndResize, ImageProjectiveTransformV3 and Fingerprint have no XLA kernels

    def build(self, input_shape):
        for operation in self.operations:
            operation.build(input_shape)

    def call(self, images, training=None):
        if training is False or (self.options.placement == "model" and not training):
            return images
        images = tf.cast(images, tf.float32)
        if self.options.placement == "dataset":
            seed = batch_seed(images, self.seed, IMAGE_SALT)
        else:
            seed = self.generator.next()
        for index, operation in enumerate(self.operations):
            transformation = operation.get_random_transformation(
                images, training=True, seed=StatelessSeeds(derive(seed, index))
            )
            images = operation.transform_images(images, transformation, training=True)
        return tf.clip_by_value(images, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "options": self.options.to_dict(), "seed": self.seed}


def _operations(options: AugmentOptions, seed: int) -> list:
    operations = []
    if (options.crop_area or options.scale_jitter or options.horizontal_flip or options.vertical_flip
            or options.rotation or options.translation):
        operations.append(RandomView(options.crop_area, options.crop_aspect, options.scale_jitter,
                                     options.horizontal_flip, options.vertical_flip, options.rotation,
                                     options.translation, seed=seed, name="view"))
    if options.brightness or options.contrast or options.saturation or options.hue:
        operations.append(ColorJitter(options.brightness, options.contrast, options.saturation, options.hue,
                                      seed=seed, name="color"))
    if options.noise:
        operations.append(RandomGaussianNoise(options.noise, seed=seed, name="noise"))
    if options.erasing:
        operations.append(Cutout(options.erasing, options.erasing_area, seed=seed, name="erasing"))
    return operations


def build_augmenter(preset="standard", seed: int = 0, **overrides) -> Augmenter | None:
    """The per-image augmentation of a preset with overrides, or None when it has no image operation.

    Args:
        preset: a preset name (`none`, `light`, `standard`, `strong`) or an `AugmentOptions`.
            Defaults to "standard".
        seed: Defaults to 0.
        **overrides: fields of `AugmentOptions`.

    Returns:
        An `Augmenter` (callable on a float32 batch [B, S, S, 3] in 0..255, e.g. as
        `finetune.data.make_dataset(augment=...)`), or None. Mixup and cutmix are not in it:
        they need the labels; see `augment.mix_dataset`.
    """
    options = resolve(preset, **overrides)
    if not options.image_operations():
        return None
    return Augmenter(options, seed=seed, name="augmenter")


def with_augmentation(model, augmenter: Augmenter):
    """A model for `fit` that augments its input on the accelerator, sharing `model`'s weights.

    Train the returned model; save and export `model` itself, which has no augmentation in it.
    """
    inputs = keras.Input(model.input_shape[1:], name="image")
    return keras.Model(inputs, model(augmenter(inputs)), name=f"{model.name}_augmented")
