"""Building backbones from their specs, and resolving a spec's endpoints and groups in a model.

Nothing here downloads anything: `build_backbone` hands weight resolution to
`finetune.zoo.weights`, passing it the spec and the constructor.

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
naming counter, which makes every name in the presets the same in every build and process.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import json
import os
import re

from finetune.config import finetune_home
from finetune.errors import FinetuneError
from finetune.zoo import weights as weights_module
from finetune.zoo.registry import get_spec, list_specs
from finetune.zoo.spec import BackboneSpec
from finetune.zoo.weights import is_random_initialisation

# Parameter counts by spec, remembered for the life of the process (see `count_parameters`).
_PARAMETER_COUNTS: dict[BackboneSpec, int] = {}


@contextlib.contextmanager
def _fresh_layer_names():
    """Builds inside start keras' automatic layer names from zero ("conv2d", "conv2d_1", ...).

    Afterwards the counters continue past every name used, so layers made later never collide.

    Keras 3 has no public API for this: `keras.backend.get_uid` can only count up, and
    `keras.backend.clear_session` resets the counters together with the rest of Keras' global
    state (the dtype policy, the TensorFlow graph) and without continuing past the names
    already taken. So this one function reads Keras' internal counter table, and falls back to
    Keras' own names when a Keras version lacks it.
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


def _checked_alpha(spec: BackboneSpec, alpha):
    """`alpha`, or the spec's default for a MobileNet; an alpha for any other backbone raises."""
    if spec.supports_alpha:
        return spec.default_alpha if alpha is None else alpha
    if alpha is not None:
        raise FinetuneError(
            f"Only the MobileNets take a width multiplier; backbone {spec.name!r} does not. "
            f"Leave `alpha` unset. Received: alpha={alpha!r}"
        )
    return None


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
    alpha = _checked_alpha(spec, alpha)
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
    return weights_module.load_backbone_weights(
        spec, constructor, image_size, weights=weights, alpha=alpha, include_top=False, **spec.constructor_kwargs
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


# -- Sizes for `finetune zoo`. -----------------------------------------------------------------


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
    if spec in _PARAMETER_COUNTS:  # by spec, not name: a spec registered over another recounts
        return _PARAMETER_COUNTS[spec]
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
    _PARAMETER_COUNTS[spec] = saved[key]
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
