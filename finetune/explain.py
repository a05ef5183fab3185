"""Why this label: Grad-CAM heat maps on the last convolutional stage (or the stages a head uses).

Grad-CAM (Selvaraju et al., 2017) weighs each channel k of a stage's feature map A by the mean
gradient of the class score over the map, sums, and keeps the positive part. Every model
`finetune` builds ends in global average pooling and one Dense layer (`finetune.model`), so
that gradient is known in closed form: d score / d A[i, j, k] = W[k, c] / (H * W). The map is
therefore sum_k W[k, c] A[i, j, k] (CAM, Zhou et al., 2016, of which Grad-CAM is the
generalisation), computed exactly, with no gradient tape and the same on every Keras backend.

Two choices of ours:
    - The class score is the logit minus the mean logit of all classes: a softmax ignores a shift
      of all logits, so only this difference means anything (a binary head from scikit-learn has
      an all-zero kernel for class 0, whose map would otherwise be blank).
    - A head on several stages (multistage_linear) sums each stage's map, upsampled to the image:
      the mean of the sum over the image is then that class's score, each stage counting by what
      it adds to it. An ensemble averages its members' maps.

    maps = heat_maps(run.model, images_at_model_size, class_indices)   # [N, H, W] in 0..1
    picture = overlay(image, maps[0])                                  # laid over the image

`finetune.explain_files.explain` writes the pictures of `finetune explain`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError

_MAP_MODELS: dict[int, object] = {}


def _classifiers(model) -> list:
    """The models holding a "classifier" Dense layer: the model itself, or each member of an ensemble."""
    names = {layer.name for layer in model.layers}
    if "classifier" in names:
        return [model]
    members = [layer for layer in model.layers if layer.name.startswith("member_") and hasattr(layer, "layers")]
    found = [item for member in members for item in _classifiers(member)]
    if not found:
        raise FinetuneError(
            f"The model {model.name!r} has no 'classifier' layer after global average pooling, so it was not built by "
            "`finetune train`: heat maps need one. Explain a training run (or an ensemble of them exported as .keras)."
        )
    return found


def _stage_maps_model(classifier):
    """classifier input -> the feature map(s) its pooling averages (one per stage the head uses)."""
    import keras

    key = id(classifier)
    if key not in _MAP_MODELS:
        names = {layer.name for layer in classifier.layers}
        pools = sorted((name for name in names if name.startswith("pool_")), key=lambda name: int(name.split("_")[1]))
        tensors = [classifier.get_layer(name).input for name in pools] or [classifier.get_layer("pool").input]
        _MAP_MODELS[key] = keras.Model(classifier.inputs, tensors, name=f"{classifier.name}_stage_maps")
    return _MAP_MODELS[key]


def _class_score_weights(classifier, class_indices) -> np.ndarray:
    """[N, channels]: the Dense kernel's column of each image's class, minus the mean column (see the docstring)."""
    kernel = np.asarray(classifier.get_layer("classifier").get_weights()[0], dtype=np.float64)
    contrast = kernel - kernel.mean(axis=1, keepdims=True)
    return contrast[:, np.asarray(class_indices, dtype=np.int64)].T


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(item.astype(np.float32), mode="F").resize(size[::-1], Image.BILINEAR))
                     for item in maps])


def heat_maps(model, images, class_indices, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM of each image for its class, at the images' size, scaled to 0..1 per image (all zero: no evidence).

    Args:
        model: a Keras classifier built by `finetune` (a run's model.keras, or an ensemble of them).
        images: uint8 or float images [N, S, S, 3] at the model's input size (0..255).
        class_indices: the class to explain for each image (e.g. its top label).
        batch_size: images per forward pass. Defaults to 32.
    """
    images = np.asarray(images, dtype=np.float32)
    size = images.shape[1:3]
    total = np.zeros((len(images), *size))
    classifiers = _classifiers(model)
    for classifier in classifiers:
        weights = _class_score_weights(classifier, class_indices)
        stage_maps = _stage_maps_model(classifier).predict(images, batch_size=batch_size, verbose=0)
        stage_maps = list(stage_maps) if isinstance(stage_maps, (list, tuple)) else [stage_maps]
        offset = 0
        for maps in stage_maps:
            channels = maps.shape[-1]
            density = np.einsum("nhwk,nk->nhw", maps.astype(np.float64), weights[:, offset : offset + channels])
            total += _upsample(density, size)
            offset += channels
    total = np.maximum(total / len(classifiers), 0.0)
    peaks = total.reshape(len(total), -1).max(axis=1)
    return total / np.where(peaks > 0, peaks, 1.0)[:, None, None]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map (0..1, any size) coloured and laid over `image` (uint8 RGB), at the image's size."""
    import matplotlib

    from PIL import Image

    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
    colours = matplotlib.colormaps["jet"](np.clip(resized, 0, 1))[..., :3] * 255.0
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
