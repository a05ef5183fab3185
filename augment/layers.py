"""The augmentation operations Keras lacks, or has in a form too slow for a CPU input pipeline.

Each layer follows the protocol of Keras' image preprocessing layers, so `Augmenter` drives
them and Keras' own layers alike: `get_random_transformation(images, training, seed)` draws
the random parameters of a batch (one set per image) and `transform_images(images,
transformation, training)` applies them; called as a layer, one does the other.

Why not Keras' layers for these (timings: a batch of 32 at 224 px on this 2-core machine):
- crops: Keras has no random resized crop (RandomZoom draws height and width zoom
  independently, not an area and an aspect ratio) and no ResNet scale jitter.
- flips, rotation, translation: `RandomView` folds them into the crop, so the whole geometric
  part is one resampling (RandomFlip alone took 74 ms, RandomRotation 119 ms, RandomTranslation
  100 ms; a crop with flips 26 ms). It uses the op under RandomRotation,
  `keras.ops.image.affine_transform`, when it turns or shifts.
- colour: Keras' RandomBrightness/Contrast/Saturation/Hue took 14 + 50 + 119 + 135 ms (two
  RGB-HSV round trips), and RandomSaturation clips the HSV saturation to the pixel range
  (0..255) instead of 1, which turns saturated colours negative. `ColorJitter` composes all
  four into one 3x3 matrix and offset per image (hue turns about the grey axis in YIQ space,
  as NVIDIA DALI does), one pass over the pixels.
- erasing: Keras' RandomErasing took 85 ms in several full-size passes; `Cutout` is one.
- noise: `keras.layers.GaussianNoise` has one fixed deviation and no `seed=` per call.
Mixing reuses Keras' `MixUp` and `CutMix` (see `augment.mixing`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

# Luma weights (ITU-R BT.601), and RGB -> YIQ.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
# The ResNet papers' training size, to which scale-jitter ranges refer.
REFERENCE_SIZE = 224.0


class RandomImageLayer(keras.layers.Layer):
    """Base of the layers here: `call` draws from the layer's own seed generator."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        transformation = self.get_random_transformation(images, training=True, seed=self.generator)
        return self.transform_images(images, transformation, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def _uniform(batch, low, high, seed):
    return keras.random.uniform((batch,), minval=float(low), maxval=float(high), seed=seed)


@keras.saving.register_keras_serializable(package="augment")
class RandomView(RandomImageLayer):
    """The geometric part of augmentation in one resampling pass: crop, flips, rotation, translation.

    A random resized crop (or ResNet scale jitter) picks a window of the image; the window may
    be mirrored, turned and shifted; the output, of the input's size, samples the window at the
    centres of its pixels. Without rotation and translation this is one `crop_and_resize`;
    with them, one projective transform (`keras.ops.image.affine_transform`, reflected borders),
    instead of one resampling per operation as Keras' RandomRotation + RandomTranslation do.
    A full-image window without flips returns the input exactly.

    Args:
        crop_area: (low, high) share of the area a crop keeps, or None. Defaults to None.
        crop_aspect: (low, high) aspect ratio (width / height) of the crop, drawn log-uniformly.
            Defaults to (3/4, 4/3).
        scale_jitter: (low, high) shorter side for a 224-px image, or None; replaces `crop_area`.
            Defaults to None.
        horizontal_flip: mirror left-right with probability 0.5. Defaults to False.
        vertical_flip: mirror top-bottom with probability 0.5. Defaults to False.
        rotation: largest rotation in degrees, either way. Defaults to 0.0.
        translation: largest shift as a share of the size, either way. Defaults to 0.0.
        seed: seed of the layer's own generator (used when called as a layer). Defaults to None.

    Example:

    ```python
    view = RandomView(crop_area=(0.25, 1.0), horizontal_flip=True, seed=0)
    augmented = view(images)  # float images [B, H, W, 3]
    ```
    """

    def __init__(self, crop_area=None, crop_aspect=(3 / 4, 4 / 3), scale_jitter=None, horizontal_flip=False,
                 vertical_flip=False, rotation=0.0, translation=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.crop_area = tuple(crop_area) if crop_area is not None else None
        self.crop_aspect = tuple(crop_aspect)
        self.scale_jitter = tuple(scale_jitter) if scale_jitter is not None else None
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.rotation = float(rotation)
        self.translation = float(translation)
        self.supports_jit = False  # CropAndResize and ImageProjectiveTransformV3 have no XLA kernels

    def get_random_transformation(self, images, training=True, seed=None):
        seed = seed if seed is not None else self.generator
        batch = tf.shape(images)[0]
        ones, zeros = tf.ones((batch,), tf.float32), tf.zeros((batch,), tf.float32)
        if self.scale_jitter is not None:
            side = _uniform(batch, self.scale_jitter[0], self.scale_jitter[1], seed)
            height = width = tf.minimum(REFERENCE_SIZE / side, 1.0)
        elif self.crop_area is not None:
            area = _uniform(batch, self.crop_area[0], self.crop_area[1], seed)
            log_aspect = _uniform(batch, math.log(self.crop_aspect[0]), math.log(self.crop_aspect[1]), seed)
            aspect = tf.exp(log_aspect)
            width = tf.minimum(tf.sqrt(area * aspect), 1.0)
            height = tf.minimum(tf.sqrt(area / aspect), 1.0)
        else:
            height = width = ones
        top = _uniform(batch, 0.0, 1.0, seed) * (1.0 - height)
        left = _uniform(batch, 0.0, 1.0, seed) * (1.0 - width)

        def coin(on):
            return _uniform(batch, 0.0, 1.0, seed) < 0.5 if on else tf.zeros((batch,), tf.bool)

        angle = _uniform(batch, -self.rotation, self.rotation, seed) * (math.pi / 180.0) if self.rotation else zeros
        shift_y = _uniform(batch, -self.translation, self.translation, seed) if self.translation else zeros
        shift_x = _uniform(batch, -self.translation, self.translation, seed) if self.translation else zeros
        return {"top": top, "left": left, "height": height, "width": width,
                "flip_horizontal": coin(self.horizontal_flip), "flip_vertical": coin(self.vertical_flip),
                "angle": angle, "shift_y": shift_y, "shift_x": shift_x}

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        images = tf.cast(images, tf.float32)
        if self.rotation or self.translation:
            output = keras.ops.image.affine_transform(
                images, _view_matrix(transformation, tf.shape(images)), interpolation="bilinear", fill_mode="reflect"
            )
        else:
            output = _crop_and_resize(images, transformation)
        return tf.ensure_shape(output, images.shape)

    def get_config(self):
        return {**super().get_config(), "crop_area": self.crop_area, "crop_aspect": self.crop_aspect,
                "scale_jitter": self.scale_jitter, "horizontal_flip": self.horizontal_flip,
                "vertical_flip": self.vertical_flip, "rotation": self.rotation, "translation": self.translation}


def _crop_and_resize(images, transformation):
    shape = tf.shape(images)
    rows, columns = shape[1], shape[2]
    y1, y2 = _box_edges(transformation["top"], transformation["height"], rows)
    x1, x2 = _box_edges(transformation["left"], transformation["width"], columns)
    # A box with its edges swapped comes out mirrored.
    flip_vertical, flip_horizontal = transformation["flip_vertical"], transformation["flip_horizontal"]
    y1, y2 = tf.where(flip_vertical, y2, y1), tf.where(flip_vertical, y1, y2)
    x1, x2 = tf.where(flip_horizontal, x2, x1), tf.where(flip_horizontal, x1, x2)
    boxes = tf.stack([y1, x1, y2, x2], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), tf.stack([rows, columns]))


def _box_edges(start, extent, size):
    """`crop_and_resize` box edges (normalised by size - 1) that sample a crop at output pixel centres.

    The crop spans [start, start + extent] of the image (0..1); an output of `size` pixels has
    its first centre at start + extent / (2 size) and its last at start + extent (size - 0.5) / size.
    A crop at the image's edge would sample up to a quarter pixel outside it, where
    `crop_and_resize` returns black: the edges are clamped to the outermost pixel centres.
    """
    size = tf.cast(size, tf.float32)
    denominator = tf.maximum(size - 1.0, 1.0)
    first = (start + extent * 0.5 / size) * size - 0.5
    last = (start + extent * (size - 0.5) / size) * size - 0.5
    return tf.clip_by_value(first / denominator, 0.0, 1.0), tf.clip_by_value(last / denominator, 0.0, 1.0)


def _view_matrix(transformation, shape):
    """Projective transforms [B, 8] from output pixel (x, y) to input pixel, pixel centres at integers.

    The output pixel's offset from the centre, scaled to the window and mirrored when flipped,
    is turned by the angle and placed at the window's centre, shifted by the translation.
    """
    rows, columns = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    sign_x = tf.where(transformation["flip_horizontal"], -1.0, 1.0)
    sign_y = tf.where(transformation["flip_vertical"], -1.0, 1.0)
    scale_x = sign_x * transformation["width"]  # input pixels per output pixel, signed
    scale_y = sign_y * transformation["height"]
    cos, sin = tf.cos(transformation["angle"]), tf.sin(transformation["angle"])
    centre_x = (transformation["left"] + transformation["width"] / 2.0 + transformation["shift_x"]) * columns - 0.5
    centre_y = (transformation["top"] + transformation["height"] / 2.0 + transformation["shift_y"]) * rows - 0.5
    offset_x, offset_y = 0.5 - columns / 2.0, 0.5 - rows / 2.0  # of output pixel 0 from the centre
    a0, a1 = cos * scale_x, -sin * scale_y
    b0, b1 = sin * scale_x, cos * scale_y
    a2 = a0 * offset_x + a1 * offset_y + centre_x
    b2 = b0 * offset_x + b1 * offset_y + centre_y
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


@keras.saving.register_keras_serializable(package="augment")
class ColorJitter(RandomImageLayer):
    """Random brightness, contrast, saturation and hue (torchvision's semantics), in one pass.

    Brightness, contrast and saturation multiply by a factor drawn from [1 - x, 1 + x] per image;
    hue turns by up to `hue` of the colour circle either way. Values stay in 0..255.

    Args:
        brightness: Defaults to 0.0 (off).
        contrast: blend with the image's mean grey. Defaults to 0.0.
        saturation: blend with the pixel's grey. Defaults to 0.0.
        hue: at most 0.5. Defaults to 0.0.
        seed: Defaults to None.

    Example:

    ```python
    jitter = ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, seed=0)
    augmented = jitter(images)  # float images in 0..255 [B, H, W, 3]
    ```
    """

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)

    def get_random_transformation(self, images, training=True, seed=None):
        seed = seed if seed is not None else self.generator
        batch = tf.shape(images)[0]

        def factor(amount):
            return _uniform(batch, 1.0 - amount, 1.0 + amount, seed) if amount else tf.ones((batch,), tf.float32)

        hue = _uniform(batch, -self.hue, self.hue, seed) if self.hue else tf.zeros((batch,), tf.float32)
        return {"brightness": factor(self.brightness), "contrast": factor(self.contrast),
                "saturation": factor(self.saturation), "hue": hue}

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        pixels = tf.reshape(images, [shape[0], -1, 3])
        brightness, contrast = transformation["brightness"], transformation["contrast"]
        saturation, hue = transformation["saturation"], transformation["hue"]
        gray = tf.constant(GRAY_WEIGHTS)
        mean_gray = tf.reduce_mean(tf.linalg.matvec(pixels, gray), axis=1)  # [B]
        eye = tf.eye(3, batch_shape=[shape[0]])
        to_gray = tf.ones((3, 1)) * gray[None, :]  # every output channel = the pixel's grey
        saturate = saturation[:, None, None] * eye + (1.0 - saturation)[:, None, None] * to_gray
        angle = 2.0 * math.pi * hue
        cos, sin, zero, one = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle), tf.ones_like(angle)
        rotation = tf.stack([tf.stack([one, zero, zero], -1), tf.stack([zero, cos, -sin], -1),
                             tf.stack([zero, sin, cos], -1)], axis=1)
        turn_hue = tf.constant(YIQ_TO_RGB, tf.float32) @ rotation @ tf.constant(RGB_TO_YIQ, tf.float32)
        matrix = turn_hue @ saturate * (brightness * contrast)[:, None, None]
        # Grey is a fixed point of saturation and hue: the contrast offset passes through unchanged.
        offset = (1.0 - contrast) * brightness * mean_gray
        output = tf.linalg.matmul(pixels, matrix, transpose_b=True) + offset[:, None, None]
        return tf.reshape(tf.clip_by_value(output, 0.0, 255.0), shape)

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness, "contrast": self.contrast,
                "saturation": self.saturation, "hue": self.hue}


@keras.saving.register_keras_serializable(package="augment")
class RandomGaussianNoise(RandomImageLayer):
    """Adds Gaussian noise whose standard deviation is drawn per image from [0, `stddev`] grey levels.

    Args:
        stddev: the largest standard deviation, in grey levels (0..255). Defaults to 8.0.
        seed: Defaults to None.
    """

    def __init__(self, stddev=8.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.stddev = float(stddev)

    def get_random_transformation(self, images, training=True, seed=None):
        seed = seed if seed is not None else self.generator
        batch = tf.shape(images)[0]
        deviation = _uniform(batch, 0.0, self.stddev, seed)
        noise = keras.random.normal(tf.shape(images), seed=seed)
        return {"noise": noise * deviation[:, None, None, None]}

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        return tf.clip_by_value(tf.cast(images, tf.float32) + transformation["noise"], 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


@keras.saving.register_keras_serializable(package="augment")
class Cutout(RandomImageLayer):
    """Random erasing: with probability `probability`, a rectangle of an image is filled with one colour.

    The rectangle's share of the area is drawn from `area`, its aspect ratio log-uniformly from
    `aspect` (timm's and Zhong et al.'s defaults), and it may reach past the image's edge. Keras'
    RandomErasing does the same job in several full-size passes (85 ms vs ~30 ms per batch of
    32 at 224 px here); this one builds the mask from a row and a column mask, in one pass.

    Args:
        probability: Defaults to 0.25.
        area: (low, high) share of the image's area. Defaults to (0.02, 0.25).
        aspect: (low, high) height / width of the rectangle. Defaults to (0.3, 3.3).
        fill: RGB colour. Defaults to the ImageNet mean (124, 116, 104).
        seed: Defaults to None.
    """

    def __init__(self, probability=0.25, area=(0.02, 0.25), aspect=(0.3, 3.3), fill=(124.0, 116.0, 104.0),
                 seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = float(probability)
        self.area = tuple(float(value) for value in area)
        self.aspect = tuple(float(value) for value in aspect)
        self.fill = tuple(float(value) for value in fill)

    def get_random_transformation(self, images, training=True, seed=None):
        seed = seed if seed is not None else self.generator
        batch = tf.shape(images)[0]
        apply = _uniform(batch, 0.0, 1.0, seed) < self.probability
        area = _uniform(batch, self.area[0], self.area[1], seed)
        aspect = tf.exp(_uniform(batch, math.log(self.aspect[0]), math.log(self.aspect[1]), seed))
        height, width = tf.sqrt(area * aspect), tf.sqrt(area / aspect)
        centre_y, centre_x = _uniform(batch, 0.0, 1.0, seed), _uniform(batch, 0.0, 1.0, seed)
        return {"apply": apply, "top": centre_y - height / 2, "bottom": centre_y + height / 2,
                "left": centre_x - width / 2, "right": centre_x + width / 2}

    def transform_images(self, images, transformation, training=True):
        if not training:
            return images
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)

        def inside(low, high, size):  # [B, size]: pixel centres within [low, high) (shares of the size)
            centres = (tf.range(size, dtype=tf.float32) + 0.5) / tf.cast(size, tf.float32)
            return (centres[None, :] >= low[:, None]) & (centres[None, :] < high[:, None])

        rows = inside(transformation["top"], transformation["bottom"], shape[1])
        columns = inside(transformation["left"], transformation["right"], shape[2])
        mask = rows[:, :, None, None] & columns[:, None, :, None] & transformation["apply"][:, None, None, None]
        return tf.where(mask, tf.constant(self.fill, tf.float32), images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "area": self.area,
                "aspect": self.aspect, "fill": self.fill}
