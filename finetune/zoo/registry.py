"""The backbone registry: names to `BackboneSpec`s, the built-in ones registered on import.

Example:

```python
from finetune.zoo import BackboneSpec, get_spec, register

register(BackboneSpec(name="my_vgg", constructor="keras.applications:VGG16", default_image_size=64,
                      min_image_size=32, preprocessing="caffe",
                      stage_endpoints=get_spec("vgg16").stage_endpoints,
                      freeze_groups=get_spec("vgg16").freeze_groups))
```
"""

from __future__ import annotations

from finetune.errors import FinetuneError, check_choice
from finetune.zoo.presets import BUILTIN_SPECS
from finetune.zoo.spec import PREPROCESSING_MODES, WEIGHTS_SOURCES, BackboneSpec

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec, overwrite: bool = False) -> BackboneSpec:
    """Adds `spec` to the registry and returns it.

    Args:
        spec: the `BackboneSpec` to add under `spec.name`.
        overwrite: whether to replace a spec already registered under that name. Defaults to
            False: an existing name raises a `FinetuneError`.

    Returns:
        `spec`.
    """
    if spec.name in _REGISTRY and not overwrite:
        raise FinetuneError(
            f"A backbone named {spec.name!r} is already registered; pass overwrite=True to replace it. "
            f"Received: name={spec.name!r}"
        )
    check_choice("preprocessing", spec.preprocessing, PREPROCESSING_MODES)
    for source in spec.weights_sources:
        check_choice("weights_sources", source, WEIGHTS_SOURCES)
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
    return spec


for _spec in BUILTIN_SPECS:
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
