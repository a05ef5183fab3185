"""The backbone registry: what each ImageNet backbone is, as data, and how to build it.

A `BackboneSpec` says how to construct a backbone, the image sizes it takes, the preprocessing
its weights expect, where its stages end and which layers make up each block (for freezing
and unfreezing top to bottom). Nothing here downloads anything; `build_backbone` hands weight
resolution to `finetune.zoo.weights`.

Example:

```python
from finetune.zoo import build_backbone, get_spec, layers_of_group

spec = get_spec("mobilenet_v2")
backbone = build_backbone(spec, image_size=96, weights="none", alpha=0.35)
for layer in layers_of_group(backbone, spec, 0):  # the top block
    layer.trainable = True
```

Layer names. Keras names some layers with a process-wide counter ("conv2d_17", and for
EfficientNetV2 and ConvNeXt whole blocks), so the same backbone built twice in one process
gets different names. Constructors from `resolve_constructor` therefore build with a fresh
naming counter, which makes every name below the same in every build and every process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
import re

from finetune.config import finetune_home
from finetune.errors import FinetuneError, check_choice

PREPROCESSING_MODES = ("tf", "torch", "caffe", "none")


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
        default_alpha: the width multiplier used when none is given.
        constructor_kwargs: extra keyword arguments for the constructor.
        keras_weights: whether keras.applications can download ImageNet weights for it.
        description: one line for `finetune zoo`.
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
    keras_weights: bool = True
    description: str = ""


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


def _efficientnet(name, constructor, image_size, depth_coefficient, base_repeats, description, v2=False, **kwargs):
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


def _mobilenet_v2(name, constructor, keras_weights, description):
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
        keras_weights=keras_weights,
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


_BUILTIN_SPECS = (
    _mobilenet_v2(
        "mobilenet_v2",
        "keras.applications:MobileNetV2",
        True,
        "MobileNetV2 (2018): small and fast; the default.",
    ),
    _mobilenet_v2(
        "mobilenet_v2_torchvision",
        "finetune.zoo.mobilenet_v2_torchvision:MobileNetV2Torchvision",
        False,
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

_REGISTRY: dict[str, BackboneSpec] = {}
_PARAMETER_COUNTS: dict[str, int] = {}


def register(spec: BackboneSpec, overwrite: bool = False) -> BackboneSpec:
    """Adds `spec` to the registry and returns it; an existing name needs `overwrite=True`."""
    if spec.name in _REGISTRY and not overwrite:
        raise FinetuneError(
            f"A backbone named {spec.name!r} is already registered; pass overwrite=True to replace it. "
            f"Received: name={spec.name!r}"
        )
    check_choice("preprocessing", spec.preprocessing, PREPROCESSING_MODES)
    if ":" not in spec.constructor:
        raise FinetuneError(
            f"`constructor` must look like 'module:attribute'. Received: constructor={spec.constructor!r}"
        )
    if spec.min_image_size > spec.default_image_size:
        raise FinetuneError(
            f"`min_image_size` must not exceed `default_image_size` ({spec.default_image_size}). "
            f"Received: min_image_size={spec.min_image_size}"
        )
    _REGISTRY[spec.name] = spec
    _PARAMETER_COUNTS.pop(spec.name, None)
    return spec


for _spec in _BUILTIN_SPECS:
    register(_spec)


def list_specs() -> list[BackboneSpec]:
    """Every registered spec, in registration order."""
    return list(_REGISTRY.values())


def get_spec(name: str | BackboneSpec) -> BackboneSpec:
    """The spec called `name` (a spec is returned as is); an unknown name raises `FinetuneError`."""
    if isinstance(name, BackboneSpec):
        return name
    if name not in _REGISTRY:
        raise FinetuneError(
            f"Unknown backbone. Choose one of: {', '.join(_REGISTRY)} (see `finetune zoo`). Received: backbone={name!r}"
        )
    return _REGISTRY[name]


@contextlib.contextmanager
def _fresh_layer_names():
    """Builds inside start keras' automatic layer names from zero ("conv2d", "conv2d_1", ...).

    Afterwards the counters continue past every name used, so layers made later never collide.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # a keras without this internal: names stay as keras makes them
        yield
        return
    previous = global_state.get_global_attribute("object_name_uids") or {}
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        built = global_state.get_global_attribute("object_name_uids") or {}
        merged = collections.defaultdict(int, previous)
        for prefix, count in built.items():
            merged[prefix] = max(merged[prefix], count)
        global_state.set_global_attribute("object_name_uids", merged)


def resolve_constructor(spec: BackboneSpec | str):
    """The spec's constructor, wrapped so that every build gets the same layer names."""
    spec = get_spec(spec)
    module_name, _, attribute = spec.constructor.partition(":")
    try:
        constructor = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise FinetuneError(
            f"Cannot import the constructor of backbone {spec.name!r} ({error}). "
            f"Received: constructor={spec.constructor!r}"
        ) from error

    @functools.wraps(constructor)
    def build_with_stable_names(*args, **kwargs):
        with _fresh_layer_names():
            return constructor(*args, **kwargs)

    return build_with_stable_names


def is_random_initialisation(weights) -> bool:
    """Whether `weights` asks for no pretrained weights: None or "none" (any case)."""
    return weights is None or str(weights).lower() == "none"


def build_backbone_with_source(name_or_spec, image_size: int | None = None, weights: str | None = "imagenet",
                               alpha: float | None = None):
    """Builds a headless backbone and says where its weights came from.

    Args:
        name_or_spec: a registry name or a `BackboneSpec`.
        image_size: side of the square RGB input. Defaults to the spec's `default_image_size`.
        weights: "imagenet", "none" (random initialisation) or a path to a weights file.
            Defaults to "imagenet".
        alpha: width multiplier, MobileNets only. Defaults to the spec's `default_alpha`.

    Returns:
        `(model, source)`: a `keras.Model` with `include_top=False, pooling=None` and a line that
        describes the weights.
    """
    spec = get_spec(name_or_spec)
    image_size = spec.default_image_size if image_size is None else image_size
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < spec.min_image_size:
        raise FinetuneError(
            f"`image_size` must be an integer of at least {spec.min_image_size} for backbone {spec.name!r} "
            f"(its default is {spec.default_image_size}). Received: image_size={image_size!r}"
        )
    if spec.supports_alpha:
        alpha = spec.default_alpha if alpha is None else alpha
    elif alpha is not None:
        raise FinetuneError(
            f"Only the MobileNets take a width multiplier; backbone {spec.name!r} does not. "
            f"Leave `alpha` unset. Received: alpha={alpha!r}"
        )
    constructor = resolve_constructor(spec)
    if is_random_initialisation(weights):
        alpha_kwargs = {"alpha": alpha} if spec.supports_alpha else {}
        model = constructor(
            weights=None,
            include_top=False,
            input_shape=(image_size, image_size, 3),
            pooling=None,
            **alpha_kwargs,
            **spec.constructor_kwargs,
        )
        return model, "random initialisation (weights='none')"
    weights_module = importlib.import_module("finetune.zoo.weights")  # lazily: it may download
    return weights_module.load_backbone_weights(
        spec.name, constructor, image_size, weights, alpha, include_top=False, **spec.constructor_kwargs
    )


def build_backbone(name_or_spec, image_size: int | None = None, weights: str | None = "imagenet",
                   alpha: float | None = None):
    """Builds a headless backbone; see `build_backbone_with_source` for the arguments."""
    return build_backbone_with_source(name_or_spec, image_size=image_size, weights=weights, alpha=alpha)[0]


# -- Resolving endpoints and groups against a built model. ------------------------------------


def _find_backbone(model, spec: BackboneSpec):
    """`model` itself when it is the backbone, else the backbone nested in it (depth first)."""
    top_layer = spec.stage_endpoints[-1].partition(":")[0]
    names = {layer.name for layer in model.layers}
    if top_layer in names:
        return model
    for layer in model.layers:
        if hasattr(layer, "layers"):
            try:
                return _find_backbone(layer, spec)
            except FinetuneError:
                continue
    raise FinetuneError(
        f"The model {model.name!r} has no layer {top_layer!r}, so it is not a {spec.name!r} backbone built by "
        f"`finetune.zoo.build_backbone` (nor holds one). Received: backbone={spec.name!r}"
    )


def group_of_layer(spec: BackboneSpec | str, layer_name: str) -> int | None:
    """Index (0 = top) of the freeze group that holds `layer_name`, or None for none."""
    spec = get_spec(spec)
    for index, patterns in enumerate(spec.freeze_groups):
        if any(re.match(pattern, layer_name) for pattern in patterns):
            return index
    return None


def layers_of_group(model, spec: BackboneSpec | str, group_index: int) -> list:
    """The layers of freeze group `group_index` (0 = top block) in `model`, in model order.

    `model` is a backbone from `build_backbone` or a model that holds one as a layer.
    """
    spec = get_spec(spec)
    if not 0 <= group_index < len(spec.freeze_groups):
        raise FinetuneError(
            f"`group_index` must be between 0 and {len(spec.freeze_groups) - 1} for backbone {spec.name!r}. "
            f"Received: group_index={group_index}"
        )
    backbone = _find_backbone(model, spec)
    patterns = spec.freeze_groups[group_index]
    return [layer for layer in backbone.layers if any(re.match(pattern, layer.name) for pattern in patterns)]


def stage_outputs(model, spec: BackboneSpec | str) -> list:
    """Symbolic outputs of the stage endpoints, bottom to top, in the backbone's own graph.

    A feature pyramid: `keras.Model(backbone.inputs, stage_outputs(backbone, spec))`.
    """
    spec = get_spec(spec)
    backbone = _find_backbone(model, spec)
    outputs = []
    for endpoint in spec.stage_endpoints:
        layer_name, _, which = endpoint.partition(":")
        layer = backbone.get_layer(layer_name)
        outputs.append(layer.input if which == "input" else layer.output)
    return outputs


def _parameter_cache_key(spec: BackboneSpec) -> str:
    import keras

    kwargs = ",".join(f"{key}={value!r}" for key, value in sorted(spec.constructor_kwargs.items()))
    parts = (spec.name, spec.constructor, spec.default_image_size, spec.default_alpha, kwargs, f"keras {keras.__version__}")
    return "|".join(map(str, parts))


def count_parameters(spec: BackboneSpec | str) -> int:
    """Parameters of the headless backbone at its default size and width.

    Counted on a build without weights (a second or two), then remembered in memory and in
    `$FINETUNE_HOME/zoo_parameters.json`, so `finetune zoo` is slow only the first time.
    """
    spec = get_spec(spec)
    if spec.name in _PARAMETER_COUNTS:
        return _PARAMETER_COUNTS[spec.name]
    path = finetune_home() / "zoo_parameters.json"
    key = _parameter_cache_key(spec)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if not isinstance(saved, dict) or not isinstance(saved.get(key), int):
        saved = saved if isinstance(saved, dict) else {}
        saved[key] = int(build_backbone(spec, weights="none").count_params())
        try:  # a cache only: a read-only home costs time, not correctness
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(saved, indent=1, sort_keys=True))
            os.replace(temporary, path)
        except OSError:
            pass
    _PARAMETER_COUNTS[spec.name] = saved[key]
    return saved[key]


def zoo_table(names=None) -> list[dict]:
    """One row per backbone (all, or those in `names`) for `finetune zoo`.

    Keys: name, image_size, parameters, stages, preprocessing, description. Computing
    `parameters` builds each backbone once without weights (a second or two each).
    """
    specs = list_specs() if names is None else [get_spec(name) for name in names]
    return [
        {
            "name": spec.name,
            "image_size": spec.default_image_size,
            "parameters": count_parameters(spec),
            "stages": len(spec.stage_endpoints),
            "preprocessing": spec.preprocessing,
            "description": spec.description,
        }
        for spec in specs
    ]
