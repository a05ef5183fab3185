"""Backbones at their smallest accepted size, built once per test session."""

from finetune.zoo import build_backbone, get_spec

_BUILT = {}


def small_backbone(name, alpha=0.35):
    """The backbone at its smallest accepted size, without weights (alpha for MobileNets only)."""
    spec = get_spec(name)
    alpha = alpha if spec.supports_alpha else None
    if (name, alpha) not in _BUILT:
        _BUILT[(name, alpha)] = build_backbone(spec, image_size=spec.min_image_size, weights="none", alpha=alpha)
    return _BUILT[(name, alpha)]
