"""The built-in backbones, as data: one `BackboneSpec` per keras.applications model.

`BUILTIN_SPECS` is read by `finetune.zoo.registry`, which registers them in this order. The
helpers below only spell out the block names each family's constructor gives its layers (read
from fresh builds), so every spec stays plain data; `tests/finetune/zoo/test_presets.py` checks
each one against the model Keras builds. Automatic names such as "conv2d_17" hold because
`finetune.zoo.build.resolve_constructor` builds with a fresh naming counter.
"""

from __future__ import annotations

import math

from finetune.zoo.spec import KERAS_DOWNLOAD, TORCHVISION_IMPORT, BackboneSpec

# -- Helpers that spell out block names; the specs below stay plain data. --------------------


def _blocks(template: str, indices) -> tuple[tuple[str, ...], ...]:
    """One group per block, top to bottom: `template.format(i)` for each i in `indices` reversed."""
    return tuple((template.format(index),) for index in reversed(list(indices)))


def _numbered(prefix: str, first: int, last: int) -> tuple[str, ...]:
    """Exact names of keras' counted layers: "conv2d", "conv2d_1", ... for first..last."""
    return tuple(f"{prefix}_{index}$" if index else f"{prefix}$" for index in range(first, last + 1))


def _efficientnet_block_ids(repeats) -> list[list[str]]:
    """Per stage, the block ids keras gives: [["1a"], ["2a", "2b"], ...]."""
    return [[f"{stage + 1}{chr(ord('a') + block)}" for block in range(count)] for stage, count in enumerate(repeats)]


def _efficientnet(name, constructor, image_size, depth_coefficient, base_repeats, description, *, v2=False, **kwargs):
    stages = _efficientnet_block_ids([math.ceil(depth_coefficient * count) for count in base_repeats])

    def stage_end(stage):  # a stage of one block has no residual add
        block_ids = stages[stage]
        if len(block_ids) > 1:
            return f"block{block_ids[-1]}_add"
        return f"block{block_ids[-1]}_project_activation" if v2 else f"block{block_ids[-1]}_project_bn"

    # Both versions stride in stages 2, 3, 4 and 6: stages 1, 2, 3 end at 1/2, 1/4, 1/8 and
    # stage 5 is the last at 1/16.
    endpoints = (stage_end(0), stage_end(1), stage_end(2), stage_end(4), "top_activation")
    blocks = tuple((f"block{block_id}_",) for stage in reversed(stages) for block_id in reversed(stage))
    return BackboneSpec(
        name=name,
        constructor=constructor,
        default_image_size=image_size,
        min_image_size=32,
        preprocessing="none",
        stage_endpoints=endpoints,
        freeze_groups=(("top_",),) + blocks + (("stem_", "normalization", "rescaling"),),
        constructor_kwargs=kwargs,
        description=description,
    )


def _mobilenet_v2(name, constructor, weights_sources, description):
    return BackboneSpec(
        name=name,
        constructor=constructor,
        default_image_size=224,
        min_image_size=32,
        preprocessing="tf",
        stage_endpoints=("expanded_conv_project_BN", "block_2_add", "block_5_add", "block_12_add", "out_relu"),
        freeze_groups=(("Conv_1", "out_relu"),)
        + _blocks("block_{}_", range(1, 17))
        + (("expanded_conv_",), ("Conv1", "bn_Conv1")),
        supports_alpha=True,
        default_alpha=1.0,
        weights_sources=weights_sources,
        description=description,
    )


def _mobilenet_v3(name, constructor, last_block, endpoints, description):
    # Block 0 is "expanded_conv_<part>", block k is "expanded_conv_<k>_<part>".
    return BackboneSpec(
        name=name,
        constructor=constructor,
        default_image_size=224,
        min_image_size=32,
        preprocessing="none",
        stage_endpoints=endpoints,
        freeze_groups=(("conv_1",),)
        + _blocks("expanded_conv_{}_", range(1, last_block + 1))
        + (("expanded_conv_(depthwise|squeeze_excite|project|add)",), ("conv$", "conv_bn$", "rescaling")),
        supports_alpha=True,
        default_alpha=1.0,
        constructor_kwargs={"minimalistic": False, "include_preprocessing": True},
        description=description,
    )


def _resnet_blocks(repeats) -> tuple[tuple[str, ...], ...]:
    """ResNet/DenseNet blocks "conv{stage}_block{k}_", top to bottom, stages 2..5."""
    groups = []
    for stage, count in reversed(list(enumerate(repeats, start=2))):
        groups.extend(_blocks(f"conv{stage}_block{{}}_", range(1, count + 1)))
    return tuple(groups)


def _densenet_groups(repeats) -> tuple[tuple[str, ...], ...]:
    groups = list(_resnet_blocks(repeats))
    groups[0] = groups[0] + ("bn$", "relu$")  # the final normalization joins the top block
    # A transition "pool{s}_" joins the first block of the stage it feeds.
    position = 0
    for stage, count in reversed(list(enumerate(repeats, start=2))):
        position += count
        if stage > 2:
            groups[position - 1] = groups[position - 1] + (f"pool{stage - 1}_",)
    return tuple(groups) + (("conv1_", "pool1$", "zero_padding2d"),)


def _xception_groups() -> tuple[tuple[str, ...], ...]:
    # Entry and exit blocks have an auto-named 1x1 shortcut convolution ("conv2d_k") with its
    # batch normalization; they belong to the block they bypass.
    shortcuts = {2: 0, 3: 1, 4: 2, 13: 3}
    groups = []
    for block in range(14, 1, -1):
        patterns = (f"block{block}_",)
        if block in shortcuts:
            patterns += _numbered("conv2d", shortcuts[block], shortcuts[block])
            patterns += _numbered("batch_normalization", shortcuts[block], shortcuts[block])
        groups.append(patterns)
    return tuple(groups) + (("block1_",),)


def _inception_v3_groups() -> tuple[tuple[str, ...], ...]:
    # Every convolution is auto-named; these are the conv2d_k indices of each "mixed" block
    # (read from a fresh build), the stem being convolutions 0..4.
    last_conv = {0: 11, 1: 18, 2: 25, 3: 29, 4: 39, 5: 49, 6: 59, 7: 69, 8: 75, 9: 84, 10: 93}
    groups = []
    for block in range(10, -1, -1):
        first = last_conv[block - 1] + 1 if block else 5
        groups.append(
            _numbered("conv2d", first, last_conv[block]) + _numbered("batch_normalization", first, last_conv[block])
        )
    return tuple(groups) + (_numbered("conv2d", 0, 4) + _numbered("batch_normalization", 0, 4),)


def _convnext_groups(prefix, depths) -> tuple[tuple[str, ...], ...]:
    groups = []
    for stage in range(len(depths) - 1, -1, -1):
        for block in range(depths[stage] - 1, -1, -1):
            patterns = (f"{prefix}_stage_{stage}_block_{block}_",)
            if block == 0 and stage > 0:  # the downsampling layer joins the block it feeds
                patterns += (f"{prefix}_downsampling_block_{stage - 1}",)
            groups.append(patterns)
    groups[0] += ("layer_normalization$",)  # the final normalization joins the top block
    return tuple(groups) + ((f"{prefix}_stem", f"{prefix}_prestem"),)


BUILTIN_SPECS = (
    _mobilenet_v2(
        "mobilenet_v2",
        "keras.applications:MobileNetV2",
        # Keras' own ImageNet weights first; torchvision's, converted, when there is no network.
        (KERAS_DOWNLOAD, TORCHVISION_IMPORT),
        "MobileNetV2 (2018): small and fast; the default.",
    ),
    _mobilenet_v2(
        "mobilenet_v2_torchvision",
        "finetune.zoo.mobilenet_v2_torchvision:MobileNetV2Torchvision",
        (TORCHVISION_IMPORT,),  # built for torchvision's weights; Keras has none for it
        "MobileNetV2 with torchvision's ImageNet weights, imported into the keras layout.",
    ),
    _mobilenet_v3(
        "mobilenet_v3_small",
        "keras.applications:MobileNetV3Small",
        10,
        ("activation", "expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_7_add", "activation_17"),
        "MobileNetV3-Small (2019): the smallest; for phones and tiny data sets.",
    ),
    _mobilenet_v3(
        "mobilenet_v3_large",
        "keras.applications:MobileNetV3Large",
        14,
        # Block 0 adds its residual only at alpha 1, so its output is taken as the next block's input.
        (
            "expanded_conv_1_expand:input",
            "expanded_conv_2_add",
            "expanded_conv_5_add",
            "expanded_conv_11_add",
            "activation_19",
        ),
        "MobileNetV3-Large (2019): more accurate than MobileNetV2 at about the same cost.",
    ),
    _efficientnet("efficientnet_b0", "keras.applications:EfficientNetB0", 224, 1.0, (1, 2, 2, 3, 3, 4, 1),
                  "EfficientNet-B0 (2019): a strong accuracy/cost trade-off."),
    _efficientnet("efficientnet_b1", "keras.applications:EfficientNetB1", 240, 1.1, (1, 2, 2, 3, 3, 4, 1),
                  "EfficientNet-B1: B0 scaled to 240 px."),
    _efficientnet("efficientnet_b2", "keras.applications:EfficientNetB2", 260, 1.2, (1, 2, 2, 3, 3, 4, 1),
                  "EfficientNet-B2: B0 scaled to 260 px."),
    _efficientnet("efficientnet_b3", "keras.applications:EfficientNetB3", 300, 1.4, (1, 2, 2, 3, 3, 4, 1),
                  "EfficientNet-B3: B0 scaled to 300 px."),
    _efficientnet("efficientnetv2_b0", "keras.applications:EfficientNetV2B0", 224, 1.0, (1, 2, 2, 3, 5, 8),
                  "EfficientNetV2-B0 (2021): trains faster than EfficientNet.", v2=True, include_preprocessing=True),
    BackboneSpec(
        name="resnet50",
        constructor="keras.applications:ResNet50",
        default_image_size=224,
        min_image_size=32,
        preprocessing="caffe",
        stage_endpoints=("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        freeze_groups=_resnet_blocks((3, 4, 6, 3)) + (("conv1_", "pool1_"),),
        description="ResNet-50 (2015): the classic baseline.",
    ),
    BackboneSpec(
        name="resnet50_v2",
        constructor="keras.applications:ResNet50V2",
        default_image_size=224,
        min_image_size=32,
        preprocessing="tf",
        # ResNetV2 strides in the last block of a stage, so a stage ends one block early.
        stage_endpoints=("conv1_conv", "conv2_block2_out", "conv3_block3_out", "conv4_block5_out", "post_relu"),
        freeze_groups=((("conv5_block3_", "post_"),) + _resnet_blocks((3, 4, 6, 3))[1:] + (("conv1_", "pool1_"),)),
        description="ResNet-50 v2 (2016): pre-activation ResNet.",
    ),
    BackboneSpec(
        name="densenet121",
        constructor="keras.applications:DenseNet121",
        default_image_size=224,
        min_image_size=32,
        preprocessing="torch",
        stage_endpoints=("conv1_relu", "conv2_block6_concat", "conv3_block12_concat", "conv4_block24_concat", "relu"),
        freeze_groups=_densenet_groups((6, 12, 24, 16)),
        description="DenseNet-121 (2017): few parameters, many connections.",
    ),
    BackboneSpec(
        name="xception",
        constructor="keras.applications:Xception",
        default_image_size=299,
        min_image_size=71,
        preprocessing="tf",
        stage_endpoints=("block1_conv2_act", "add", "add_1", "add_10", "block14_sepconv2_act"),
        freeze_groups=_xception_groups(),
        description="Xception (2017): depthwise-separable Inception.",
    ),
    BackboneSpec(
        name="inception_v3",
        constructor="keras.applications:InceptionV3",
        default_image_size=299,
        min_image_size=75,
        preprocessing="tf",
        stage_endpoints=("activation_2", "activation_4", "mixed2", "mixed7", "mixed10"),
        freeze_groups=_inception_v3_groups(),
        description="Inception v3 (2015).",
    ),
    BackboneSpec(
        name="convnext_tiny",
        constructor="keras.applications:ConvNeXtTiny",
        default_image_size=224,
        min_image_size=32,
        preprocessing="none",
        stage_endpoints=(
            "convnext_tiny_downsampling_block_0:input",
            "convnext_tiny_downsampling_block_1:input",
            "convnext_tiny_downsampling_block_2:input",
            "layer_normalization",
        ),
        freeze_groups=_convnext_groups("convnext_tiny", (3, 3, 9, 3)),
        constructor_kwargs={"include_preprocessing": True},
        description="ConvNeXt-Tiny (2022): a ResNet modernised with large kernels and LayerNorm.",
    ),
    BackboneSpec(
        name="vgg16",
        constructor="keras.applications:VGG16",
        default_image_size=224,
        min_image_size=32,
        preprocessing="caffe",
        stage_endpoints=("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
        freeze_groups=_blocks("block{}_", range(1, 6)),
        description="VGG-16 (2014): large and slow; for comparison with the course.",
    ),
)
