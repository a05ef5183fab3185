"""The built-in specs must agree with the models keras builds: endpoints, groups, sizes, sources."""

import re

import pytest

from finetune.zoo import build_backbone, get_spec, group_of_layer, layers_of_group, list_specs, stage_outputs
from finetune.zoo.preprocessing import MODES
from finetune.zoo.presets import BUILTIN_SPECS
from finetune.zoo.spec import KERAS_DOWNLOAD, TORCHVISION_IMPORT, WEIGHTS_SOURCES
from tests.finetune.zoo.conftest import small_backbone

REQUIRED_NAMES = (
    "mobilenet_v2", "mobilenet_v2_torchvision", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnetv2_b0",
    "resnet50", "resnet50_v2", "densenet121", "xception", "inception_v3", "convnext_tiny", "vgg16",
)
ALL_NAMES = [spec.name for spec in BUILTIN_SPECS]


def test_registry_holds_every_required_backbone_as_hashable_data():
    assert set(REQUIRED_NAMES) <= set(ALL_NAMES)
    assert [spec.name for spec in list_specs()][: len(ALL_NAMES)] == ALL_NAMES  # registered in table order
    for spec in BUILTIN_SPECS:
        hash(spec)
        assert spec.preprocessing in MODES
        assert spec.min_image_size <= spec.default_image_size
        assert len(spec.stage_endpoints) >= 4
        assert spec.supports_alpha == (spec.default_alpha is not None)
        assert spec.weights_sources and set(spec.weights_sources) <= set(WEIGHTS_SOURCES)


def test_weights_sources_say_where_imagenet_weights_can_come_from():
    # Keras has no weights for the torchvision layout; MobileNetV2 can fall back to the import.
    assert get_spec("mobilenet_v2_torchvision").weights_sources == (TORCHVISION_IMPORT,)
    assert get_spec("mobilenet_v2").weights_sources == (KERAS_DOWNLOAD, TORCHVISION_IMPORT)
    others = [spec for spec in BUILTIN_SPECS if not spec.name.startswith("mobilenet_v2")]
    assert all(spec.weights_sources == (KERAS_DOWNLOAD,) for spec in others)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_stage_endpoints_exist_and_shrink_to_the_top_feature_map(name):
    model = small_backbone(name)
    outputs = stage_outputs(model, name)
    sizes = [output.shape[1] for output in outputs]
    assert all(lower > higher for lower, higher in zip(sizes, sizes[1:])), sizes
    assert outputs[-1] is model.outputs[0]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_freeze_groups_partition_the_layers_with_weights(name):
    spec = get_spec(name)
    model = small_backbone(name)
    names = [layer.name for layer in model.layers]
    for patterns in spec.freeze_groups:
        for pattern in patterns:  # no pattern is dead, so none hides a typo
            assert any(re.match(pattern, layer_name) for layer_name in names), pattern
    groups_of = {}
    for index in range(len(spec.freeze_groups)):
        for layer in layers_of_group(model, spec, index):
            groups_of.setdefault(layer.name, []).append(index)
    for layer in model.layers:
        groups = groups_of.get(layer.name, [])
        assert len(groups) <= 1, (layer.name, groups)
        if layer.weights:
            assert len(groups) == 1, f"{layer.name} has weights but no group"
        assert group_of_layer(spec, layer.name) == (groups[0] if groups else None)
    # Top to bottom: the stem, the first layer with weights, is in the last group.
    first_with_weights = next(layer for layer in model.layers if layer.weights)
    assert groups_of[first_with_weights.name] == [len(spec.freeze_groups) - 1]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_endpoints_hold_at_full_width_too(name):
    model = small_backbone(name, alpha=1.0)
    sizes = [output.shape[1] for output in stage_outputs(model, name)]
    assert sizes == [16, 8, 4, 2, 1]


def test_mobilenet_v2_stages_at_the_default_size():
    model = build_backbone("mobilenet_v2", weights="none", alpha=0.35)
    assert model.input_shape == (None, 224, 224, 3)
    assert [output.shape[1:] for output in stage_outputs(model, "mobilenet_v2")] == [
        (112, 112, 8), (56, 56, 8), (28, 28, 16), (14, 14, 32), (7, 7, 1280)
    ]
