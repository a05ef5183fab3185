"""Test-time augmentation: a fixed set of views of each image, one batched forward pass, averaged.

The modes, their source sizes and view counts are in `augment.tta_modes` (no Keras import),
and every name there is also here: `augment.tta.MODES`, `augment.tta.source_size`, ...

What the inference path feeds: each image decoded and resized whole (aspect not kept) to the
source size with `finetune.data.resize_image`, the same PIL resize training uses, so that the
`none` view is exactly the training view and a crop of a 256/224 source is the training view
zoomed by 256/224. `TTACrops` cuts the views with slicing and `tf.image.resize` (bilinear;
large downscales go through a 2x2 average pool), all TFLite builtins: no `crop_and_resize`.

Crops that training never saw can cost accuracy (a linear head trained on whole images lost
1.7 points with ten crops and 44 with 384-px crops in a Fashion-MNIST trial), so the mode is
measured, not assumed: `choose_tta` picks the best on validation data.

    tta_model = build_tta_model(model, "ten_crop")          # saves, loads with safe_mode=True
    mode, accuracies = choose_tta(model, images_at, val_labels)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from augment.errors import AugmentError, check_choice
from augment.tta_modes import (
    AUTO_MODES,
    COMBINES,
    CROP_SOURCE,
    MODES,
    MULTISCALE,
    REFERENCE_SIZE,
    resolve_mode,
    scaled,
    source_size,
    sources_per_pass,
    view_count,
)

# The names of `augment.tta_modes` are part of this module's interface too.
__all__ = [
    "AUTO_MODES", "COMBINES", "CROP_SOURCE", "MODES", "MULTISCALE", "REFERENCE_SIZE", "TTAAverage", "TTACrops",
    "build_tta_model", "choose_tta", "resolve_mode", "scaled", "source_size", "sources_per_pass", "view_count",
    "view_probabilities",
]


def _mirror(images):
    return ops.flip(images, axis=2)


def _five_crops(images, size: int, height: int, width: int) -> list:
    """Top left, top right, bottom left, bottom right, centre (torchvision's FiveCrop order)."""
    top, left = (height - size) // 2, (width - size) // 2
    return [
        images[:, :size, :size, :],
        images[:, :size, width - size :, :],
        images[:, height - size :, :size, :],
        images[:, height - size :, width - size :, :],
        images[:, top : top + size, left : left + size, :],
    ]


def _ten_crops(images, size: int, height: int, width: int) -> list:
    five = _five_crops(images, size, height, width)
    return five + [_mirror(crop) for crop in five]


def _downscale(images, size: int, height: int):
    """Bilinear resize to `size`; by more than 2x, to 2 * size first and then a 2x2 average (less aliasing)."""
    if size == height:
        return images
    if height >= 2 * size:
        images = ops.image.resize(images, (2 * size, 2 * size), interpolation="bilinear", antialias=False)
        return ops.average_pool(images, pool_size=2, strides=2, padding="valid")
    return ops.image.resize(images, (size, size), interpolation="bilinear", antialias=False)


@keras.saving.register_keras_serializable(package="augment")
class TTACrops(keras.layers.Layer):
    """Cuts the views of a TTA mode: [B, source, source, C] -> [B * views, S, S, C], image-major.

    Rows b * views ... (b + 1) * views - 1 of the output are the views of image b, in the order
    of the table in `augment.tta_modes` (corners: top left, top right, bottom left, bottom
    right, then centre; mirror images after).

    Args:
        mode: one of `MODES`.
        image_size: S, the size the model takes.
        scales: the multiscale sizes for a 224-px model. Defaults to (224, 256, 384, 480, 640).

    Example:

    ```python
    crops = TTACrops("ten_crop", 224)(images)  # images [B, 256, 256, 3] -> [B * 10, 224, 224, 3]
    ```
    """

    def __init__(self, mode: str, image_size: int, scales=MULTISCALE, **kwargs):
        super().__init__(**kwargs)
        check_choice("tta", mode, MODES)
        self.mode = mode
        self.image_size = int(image_size)
        self.scales = tuple(int(scale) for scale in scales)
        self.source_size = source_size(mode, self.image_size, self.scales)
        self.views = view_count(mode, self.scales)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if (height, width) != (self.source_size, self.source_size):
            raise AugmentError(
                f"TTA mode {self.mode!r} for {self.image_size}-px models takes {self.source_size}x{self.source_size} "
                f"images (see augment.tta.source_size). Received: input shape {tuple(input_shape)}"
            )

    def call(self, images):
        size, source = self.image_size, self.source_size
        if self.mode == "none":
            return images
        if self.mode == "flip":
            views = [images, _mirror(images)]
        elif self.mode == "center":
            views = _five_crops(images, size, source, source)[4:]
        elif self.mode == "five_crop":
            views = _five_crops(images, size, source, source)
        elif self.mode == "ten_crop":
            views = _ten_crops(images, size, source, source)
        else:
            views = []
            for scale in self.scales:
                side = scaled(scale, size)
                views += _ten_crops(_downscale(images, side, source), size, side, side)
        stacked = ops.stack(views, axis=1)  # [B, views, S, S, C]
        return ops.reshape(stacked, (-1, size, size, ops.shape(images)[-1]))

    def compute_output_shape(self, input_shape):
        return (None, self.image_size, self.image_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "image_size": self.image_size, "scales": list(self.scales)}


@keras.saving.register_keras_serializable(package="augment")
class TTAAverage(keras.layers.Layer):
    """Averages the probabilities of each image's views: [B * views, C] -> [B, C].

    Args:
        views: views per image.
        combine: "mean" (of the probabilities) or "geometric" (their geometric mean, normalised
            to sum to one). Defaults to "mean".
    """

    def __init__(self, views: int, combine: str = "mean", **kwargs):
        super().__init__(**kwargs)
        check_choice("combine", combine, COMBINES)
        self.views = int(views)
        self.combine = combine

    def call(self, probabilities):
        grouped = ops.reshape(probabilities, (-1, self.views, ops.shape(probabilities)[-1]))
        return _combine(grouped, self.combine)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "views": self.views, "combine": self.combine}


def _combine(grouped, combine: str):
    """[B, views, C] probabilities -> [B, C] (works on tensors and NumPy arrays alike)."""
    if combine == "mean":
        return ops.mean(grouped, axis=1)
    log_mean = ops.mean(ops.log(ops.clip(grouped, 1e-7, 1.0)), axis=1)
    log_mean = log_mean - ops.max(log_mean, axis=-1, keepdims=True)
    exponentials = ops.exp(log_mean)
    return exponentials / ops.sum(exponentials, axis=-1, keepdims=True)


def build_tta_model(model, mode: str = "ten_crop", image_size: int | None = None, combine: str = "mean",
                    scales=MULTISCALE):
    """`model` wrapped to take source-size images and return the TTA-averaged probabilities.

    Args:
        model: a Keras model from images [B, S, S, 3] (0..255) to probabilities [B, C].
        mode: one of `MODES`; "none" returns `model` itself. Defaults to "ten_crop".
        image_size: S. Defaults to the model's input size.
        combine: "mean" or "geometric". Defaults to "mean".
        scales: the multiscale sizes for a 224-px model. Defaults to (224, 256, 384, 480, 640).

    Returns:
        A functional Keras model from [B, source, source, 3] to [B, C] (all views of a batch in
        one forward pass of `model`). It saves as `.keras` and loads with `safe_mode=True`
        once `augment` (and the model's own layers, e.g. `finetune.zoo`) are imported.
    """
    check_choice("tta", mode, MODES)
    check_choice("combine", combine, COMBINES)
    if mode == "none":
        return model
    image_size = int(image_size or model.input_shape[1])
    crops = TTACrops(mode, image_size, scales, name="tta_crops")
    inputs = keras.Input((crops.source_size, crops.source_size, model.input_shape[-1]), name="image")
    probabilities = _single_output(model(crops(inputs)))
    outputs = TTAAverage(crops.views, combine, name="tta_average")(probabilities)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta_{mode}")


def _single_output(outputs):
    """A model saved with its outputs as a one-element list gives a list when called: take the tensor."""
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise AugmentError(f"TTA needs a model with one output (probabilities); this one has {len(outputs)}.")
        return outputs[0]
    return outputs


def view_probabilities(model, images, mode: str, image_size: int | None = None, batch_size: int = 32,
                       scales=MULTISCALE, verbose: int = 0) -> np.ndarray:
    """The model's probabilities for every view: source-size images [N, ...] -> [N, views, C].

    `batch_size` counts views, the size of a forward pass: a pass takes batch_size // views images.
    """
    image_size = int(image_size or model.input_shape[1])
    crops = TTACrops(mode, image_size, scales, name="tta_crops")
    inputs = keras.Input((crops.source_size, crops.source_size, model.input_shape[-1]), name="image")
    per_view = keras.Model(inputs, _single_output(model(crops(inputs))))
    images = np.asarray(images, dtype=np.float32)
    probabilities = per_view.predict(images, batch_size=sources_per_pass(batch_size, mode, scales), verbose=verbose)
    return probabilities.reshape(len(images), crops.views, -1)


# Which views of which pass each mode averages: (pass, view indices).
_FROM_PASS = {
    "none": ("flip", [0]),
    "flip": ("flip", [0, 1]),
    "center": ("ten_crop", [4]),
    "five_crop": ("ten_crop", [0, 1, 2, 3, 4]),
    "ten_crop": ("ten_crop", list(range(10))),
    "multiscale": ("multiscale", None),
}


def choose_tta(model, val_images, val_labels, modes=AUTO_MODES, image_size: int | None = None,
               batch_size: int = 32, combine: str = "mean", scales=MULTISCALE, return_probabilities: bool = False):
    """The TTA mode with the best validation accuracy; ties go to the cheaper mode (earlier in `MODES`).

    Views shared between modes are computed once: `none` and `flip` come from one pass over the
    whole images and their mirror images, `center`, `five_crop` and `ten_crop` from one ten-crop pass.

    Args:
        model: the classifier, images [B, S, S, 3] (0..255) -> probabilities.
        val_images: a callable `size -> uint8 images [N, size, size, 3]` giving the validation
            images resized whole to `size` (e.g. `lambda size: load_split(data, "val", size).images`),
            or an array of the images at the model's size; an array is resized with
            `tf.image.resize` (antialiased) to the larger sources, which only approximates
            the inference path's resize from the original files.
        val_labels: int labels [N].
        modes: the candidates. Defaults to `AUTO_MODES` (all but multiscale).
        image_size: S. Defaults to the model's input size.
        batch_size: views per forward pass (batch_size // views images). Defaults to 32.
        combine: "mean" or "geometric". Defaults to "mean".
        scales: the multiscale sizes for a 224-px model.
        return_probabilities: also return each mode's combined probabilities (to calibrate the
            chosen one without another pass). Defaults to False.

    Returns:
        (the chosen mode, {mode: validation accuracy}), and {mode: probabilities [N, C]} after
        them when `return_probabilities`.
    """
    modes = list(modes)
    if not modes:
        raise AugmentError("`modes` must name at least one TTA mode. Received: modes=[]")
    for mode in modes:
        check_choice("tta", mode, MODES)
    check_choice("combine", combine, COMBINES)
    image_size = int(image_size or model.input_shape[1])
    labels = np.asarray(val_labels, dtype=np.int64)
    if len(labels) == 0:
        raise AugmentError("`val_labels` is empty: choosing a TTA mode needs validation images.")
    images_at = _images_at(val_images, image_size)
    passes, accuracies, combined = {}, {}, {}
    for mode in sorted(modes, key=MODES.index):
        pass_mode, indices = _FROM_PASS[mode]
        if pass_mode not in passes:
            images = images_at(source_size(pass_mode, image_size, scales))
            if len(images) != len(labels):
                raise AugmentError(
                    f"`val_images` gave {len(images)} images at size {source_size(pass_mode, image_size, scales)} "
                    f"for {len(labels)} labels; every size must give the same images in the same order."
                )
            passes[pass_mode] = view_probabilities(model, images, pass_mode, image_size, batch_size, scales)
        views = passes[pass_mode] if indices is None else passes[pass_mode][:, indices]
        combined[mode] = np.asarray(_combine(views, combine))
        accuracies[mode] = float(np.mean(np.argmax(combined[mode], axis=-1) == labels))
    best = max(accuracies.values())
    chosen = next(mode for mode in MODES if mode in accuracies and accuracies[mode] == best)
    return (chosen, accuracies, combined) if return_probabilities else (chosen, accuracies)


def _images_at(val_images, image_size: int):
    if callable(val_images):
        return val_images
    array = np.asarray(val_images)
    if array.ndim != 4 or array.shape[1:3] != (image_size, image_size):
        raise AugmentError(
            f"`val_images` must be images [N, {image_size}, {image_size}, 3] or a callable size -> images. "
            f"Received: an array of shape {array.shape}"
        )

    def resized(size):
        if size == image_size:
            return array
        import tensorflow as tf

        return tf.image.resize(array.astype(np.float32), (size, size), antialias=True).numpy()

    return resized
