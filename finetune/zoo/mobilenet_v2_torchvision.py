"""MobileNetV2 with torchvision's padding, under the layer names of keras.applications.MobileNetV2.

Keras pads a stride-2 3x3 convolution of an even-sized input by one pixel at the bottom and
right only; torchvision pads one pixel on every side. The two grids differ by a pixel, so
torchvision's weights in Keras' network give slightly different outputs (on real photos the
top-1 changed for some images). This network pads like torchvision, so the weights from
`finetune.zoo.torchvision_import` reproduce torchvision's outputs, with Keras' preprocessing:

    model = MobileNetV2Torchvision(input_shape=(224, 224, 3))
    # then load weights by layer name (finetune.zoo.weights.load_backbone_weights does this)
    probabilities = model(keras.applications.mobilenet_v2.preprocess_input(images))
"""

from __future__ import annotations

import keras
from keras import layers

from finetune.errors import FinetuneError
from finetune.zoo.torchvision_import import input_padding_value


def _make_divisible(value: float, divisor: int = 8) -> int:
    # The same rounding as Keras and torchvision, so channel counts match for every alpha.
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _batch_norm(name: str) -> layers.BatchNormalization:
    # Keras' epsilon and momentum: the imported gammas are rescaled for epsilon 1e-3.
    return layers.BatchNormalization(axis=-1, epsilon=1e-3, momentum=0.999, name=name)


def _inverted_residual_block(inputs, expansion: int, stride: int, alpha: float, filters: int, block_id: int):
    in_channels = inputs.shape[-1]
    pointwise_filters = _make_divisible(int(filters * alpha), 8)
    x = inputs
    prefix = f"block_{block_id}_"
    if block_id:
        x = layers.Conv2D(
            expansion * in_channels, kernel_size=1, padding="same", use_bias=False, name=f"{prefix}expand"
        )(x)
        x = _batch_norm(f"{prefix}expand_BN")(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    if stride == 2:
        # torch: padding=1 on every side (Keras' correct_pad would pad ((0, 1), (0, 1))).
        x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{prefix}pad")(x)
    x = layers.DepthwiseConv2D(
        kernel_size=3,
        strides=stride,
        use_bias=False,
        padding="same" if stride == 1 else "valid",
        name=f"{prefix}depthwise",
    )(x)
    x = _batch_norm(f"{prefix}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(pointwise_filters, kernel_size=1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _batch_norm(f"{prefix}project_BN")(x)
    if in_channels == pointwise_filters and stride == 1:
        return layers.Add(name=f"{prefix}add")([inputs, x])
    return x


# (filters, stride, expansion) of blocks 0..16, as in the paper, Keras and torchvision.
_BLOCKS = (
    (16, 1, 1),
    (24, 2, 6), (24, 1, 6),
    (32, 2, 6), (32, 1, 6), (32, 1, 6),
    (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6),
    (96, 1, 6), (96, 1, 6), (96, 1, 6),
    (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
)  # fmt: skip


def MobileNetV2Torchvision(
    input_shape=None,
    alpha=1.0,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """Instantiates MobileNetV2 with torchvision's symmetric padding.

    The layers that hold weights have the names of `keras.applications.MobileNetV2`, so weights
    load by layer name from either. Inputs are preprocessed like Keras' MobileNetV2
    (`keras.applications.mobilenet_v2.preprocess_input`, pixels to [-1, 1]). Three layers
    without weights come first: "Conv1_pad_shift", "Conv1_pad" and "Conv1_pad_restore" pad the
    image with the value that torchvision's zero padding means in Keras' input range, which
    keeps the border of the first convolution exact for the imported weights.

    Args:
        input_shape: shape of one image, `(height, width, 3)`, at least 32 x 32. Defaults to
            `None`: `(224, 224, 3)`, or the shape of `input_tensor`.
        alpha: width multiplier. Defaults to `1.0` (the imported weights need 1.0).
        include_top: whether to end with global average pooling and the `classes`-way dense
            layer "predictions". Defaults to `True`.
        weights: only `None` (random initialisation); load weights with
            `finetune.zoo.weights.load_backbone_weights`. Defaults to `None`.
        input_tensor: optional Keras tensor to use as the image input. Defaults to `None`.
        pooling: `None`, `"avg"` or `"max"`: pooling of the last feature map when
            `include_top` is `False`. Defaults to `None`.
        classes: number of classes of the head. Defaults to `1000`.
        classifier_activation: activation of the head. Defaults to `"softmax"`.
        name: name of the model. Defaults to `None`: `mobilenetv2_torchvision_{alpha}_{rows}`.

    Returns:
        A `keras.Model`.

    Example:
    ```python
    model = MobileNetV2Torchvision(input_shape=(160, 160, 3), include_top=False, pooling="avg")
    features = model(keras.applications.mobilenet_v2.preprocess_input(images))
    ```
    """
    _check_arguments(weights, pooling)
    inputs, input_shape = _image_input(input_shape, input_tensor)
    x = _padded_stem(inputs, alpha)
    for block_id, (filters, stride, expansion) in enumerate(_BLOCKS):
        x = _inverted_residual_block(x, expansion, stride, alpha, filters, block_id)
    last_block_filters = _make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = layers.Conv2D(last_block_filters, kernel_size=1, use_bias=False, name="Conv_1")(x)
    x = _batch_norm("Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D()(x)
    if name is None:
        name = f"mobilenetv2_torchvision_{alpha:0.2f}_{input_shape[0]}"
    return keras.Model(inputs, x, name=name)


def _check_arguments(weights, pooling) -> None:
    if weights is not None:
        raise FinetuneError(
            "MobileNetV2Torchvision builds the network only: `weights` must be None; load ImageNet "
            "weights with finetune.zoo.weights.load_backbone_weights. "
            f"Received: weights={weights!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise FinetuneError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if keras.backend.image_data_format() != "channels_last":
        raise FinetuneError(
            "MobileNetV2Torchvision supports channels_last only. "
            f"Received: image_data_format={keras.backend.image_data_format()!r}"
        )


def _image_input(input_shape, input_tensor):
    """(the image input, its shape (height, width, 3)), checked."""
    if input_tensor is not None:
        inputs = input_tensor
        input_shape = tuple(input_tensor.shape[1:])
    else:
        input_shape = tuple(input_shape) if input_shape is not None else (224, 224, 3)
        inputs = layers.Input(shape=input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise FinetuneError(f"`input_shape` must be (height, width, 3). Received: input_shape={input_shape}")
    rows, cols = input_shape[0], input_shape[1]
    if (rows is not None and rows < 32) or (cols is not None and cols < 32):
        raise FinetuneError(f"`input_shape` must be at least 32 x 32. Received: input_shape={input_shape}")
    return inputs, input_shape


def _padded_stem(inputs, alpha: float):
    """The first convolution, on the image padded as torchvision pads it."""
    # torchvision pads its normalised input with 0, which is padding_value in Keras' [-1, 1]
    # input: shift, zero-pad, shift back gives exactly that padding with standard layers.
    padding_value = [float(value) for value in input_padding_value()]
    x = layers.Normalization(mean=padding_value, variance=[1.0, 1.0, 1.0], name="Conv1_pad_shift")(inputs)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="Conv1_pad")(x)
    x = layers.Normalization(
        mean=padding_value, variance=[1.0, 1.0, 1.0], invert=True, name="Conv1_pad_restore"
    )(x)
    x = layers.Conv2D(
        _make_divisible(32 * alpha, 8), kernel_size=3, strides=2, padding="valid", use_bias=False, name="Conv1"
    )(x)
    x = _batch_norm("bn_Conv1")(x)
    return layers.ReLU(6.0, name="Conv1_relu")(x)
