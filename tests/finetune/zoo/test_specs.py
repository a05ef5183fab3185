"""The registry's data must agree with the models keras builds: endpoints, groups, sizes, errors."""

import importlib.util
import re
import sys
import types

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo import (
    BackboneSpec,
    Preprocess,
    build_backbone,
    build_backbone_with_source,
    get_spec,
    layers_of_group,
    list_specs,
    stage_outputs,
    zoo_table,
)
from finetune.zoo import specs as specs_module
from finetune.zoo.preprocessing import MODES
from finetune.zoo.specs import group_of_layer, register, resolve_constructor

REQUIRED_NAMES = (
    "mobilenet_v2", "mobilenet_v2_torchvision", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnetv2_b0",
    "resnet50", "resnet50_v2", "densenet121", "xception", "inception_v3", "convnext_tiny", "vgg16",
)
ALL_NAMES = [spec.name for spec in list_specs()]
_BUILT = {}


def small_backbone(name, alpha=0.35):
    """The backbone at its smallest accepted size, without weights; built once per test session."""
    spec = get_spec(name)
    alpha = alpha if spec.supports_alpha else None
    if (name, alpha) not in _BUILT:
        module_name = spec.constructor.partition(":")[0]
        if importlib.util.find_spec(module_name) is None:
            pytest.skip(f"{module_name} is not written yet")
        _BUILT[(name, alpha)] = build_backbone(spec, image_size=spec.min_image_size, weights="none", alpha=alpha)
    return _BUILT[(name, alpha)]


def test_registry_holds_every_required_backbone_as_hashable_data():
    assert set(REQUIRED_NAMES) <= set(ALL_NAMES)
    for spec in list_specs():
        hash(spec)
        assert spec.preprocessing in MODES
        assert spec.min_image_size <= spec.default_image_size
        assert len(spec.stage_endpoints) >= 4
        assert spec.supports_alpha == (spec.default_alpha is not None)
    assert get_spec("mobilenet_v2_torchvision").keras_weights is False


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


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in build_backbone("xception", image_size=71, weights="none").layers]
    keras.layers.Conv2D(1, 1)  # takes an automatic name, as a user's own layers would
    second = [layer.name for layer in build_backbone("xception", image_size=71, weights="none").layers]
    assert first == second
    assert "conv2d" in first
    assert keras.layers.Conv2D(1, 1).name not in first  # later layers never collide with a backbone's


def test_freezing_all_but_the_top_group_inside_a_classifier():
    spec = get_spec("mobilenet_v2")
    backbone = small_backbone("mobilenet_v2")
    inputs = keras.Input((32, 32, 3))
    features = backbone(Preprocess(spec.preprocessing)(inputs))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(features))
    classifier = keras.Model(inputs, outputs)

    top_layers = layers_of_group(classifier, spec, 0)  # finds the nested backbone
    assert [layer.name for layer in top_layers] == ["Conv_1", "Conv_1_bn", "out_relu"]
    try:
        for layer in backbone.layers:
            layer.trainable = False
        for layer in top_layers:
            layer.trainable = True
        trainable = {weight.path.split("/")[0] for weight in backbone.trainable_weights}
        assert trainable == {"Conv_1", "Conv_1_bn"}
    finally:
        for layer in backbone.layers:
            layer.trainable = True
    assert len(stage_outputs(classifier, spec)) == 5


def test_a_model_of_another_backbone_is_rejected():
    with pytest.raises(FinetuneError, match="not a 'resnet50' backbone"):
        layers_of_group(small_backbone("vgg16"), "resnet50", 0)


def test_group_index_out_of_range():
    with pytest.raises(FinetuneError, match=r"between 0 and 4 .*Received: group_index=5"):
        layers_of_group(small_backbone("vgg16"), "vgg16", 5)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(FinetuneError, match=r"mobilenet_v2, .*vgg16.*Received: backbone='resnet5000'"):
        get_spec("resnet5000")
    with pytest.raises(FinetuneError, match="Received: backbone='resnet5000'"):
        build_backbone("resnet5000", weights="none")


def test_image_size_below_the_minimum_names_the_minimum():
    with pytest.raises(FinetuneError, match=r"at least 75 for backbone 'inception_v3'.*Received: image_size=64"):
        build_backbone("inception_v3", image_size=64, weights="none")
    with pytest.raises(FinetuneError, match="at least 32"):
        build_backbone("mobilenet_v2", image_size=31, weights="none")


def test_alpha_is_only_for_mobilenets():
    with pytest.raises(FinetuneError, match=r"does not.*Received: alpha=0.5"):
        build_backbone("resnet50", weights="none", alpha=0.5)


def test_weights_are_resolved_by_the_weights_module(monkeypatch):
    calls = []
    tiny = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(1, 1)])

    def load_backbone_weights(name, constructor, image_size, weights, alpha, **kwargs):
        calls.append((name, image_size, weights, alpha, kwargs))
        assert callable(constructor)
        return tiny, "ImageNet weights from a test double"

    fake = types.ModuleType("finetune.zoo.weights")
    fake.load_backbone_weights = load_backbone_weights
    monkeypatch.setitem(sys.modules, "finetune.zoo.weights", fake)

    assert build_backbone("mobilenet_v2") is tiny
    assert build_backbone_with_source("convnext_tiny", image_size=64, weights="/tmp/w.keras") == (
        tiny, "ImageNet weights from a test double"
    )
    assert calls == [
        ("mobilenet_v2", 224, "imagenet", 1.0, {"include_top": False}),
        ("convnext_tiny", 64, "/tmp/w.keras", None, {"include_top": False, "include_preprocessing": True}),
    ]


def test_no_weights_says_so():
    model, source = build_backbone_with_source("vgg16", image_size=32, weights="none")
    assert "random" in source and model.output_shape == (None, 1, 1, 512)


def test_zoo_table_rows():
    rows = zoo_table(["vgg16", "mobilenet_v3_small"])
    assert [row["name"] for row in rows] == ["vgg16", "mobilenet_v3_small"]
    assert set(rows[0]) == {"name", "image_size", "parameters", "stages", "preprocessing", "description"}
    # The counts keras reports for the headless models at width 1.
    assert [row["parameters"] for row in rows] == [14_714_688, 939_120]
    assert rows[0]["stages"] == 5 and rows[0]["preprocessing"] == "caffe" and rows[0]["image_size"] == 224


def test_register_a_custom_backbone(monkeypatch):
    monkeypatch.setattr(specs_module, "_REGISTRY", dict(specs_module._REGISTRY))
    custom = BackboneSpec(
        name="my_vgg",
        constructor="keras.applications:VGG16",
        default_image_size=64,
        min_image_size=32,
        preprocessing="caffe",
        stage_endpoints=get_spec("vgg16").stage_endpoints,
        freeze_groups=get_spec("vgg16").freeze_groups,
    )
    register(custom)
    assert get_spec("my_vgg") is custom and custom in list_specs()
    with pytest.raises(FinetuneError, match="already registered"):
        register(custom)
    with pytest.raises(FinetuneError, match=r"Received: preprocessing='bgr'"):
        register(BackboneSpec(**{**custom.__dict__, "name": "other", "preprocessing": "bgr"}))
    broken = register(BackboneSpec(**{**custom.__dict__, "constructor": "no_such_module:Model"}), overwrite=True)
    with pytest.raises(FinetuneError, match="Cannot import the constructor of backbone 'my_vgg'"):
        resolve_constructor(broken)


def test_small_backbone_runs_on_an_image():
    model = small_backbone("mobilenet_v3_small")
    features = model.predict(np.full((1, 32, 32, 3), 128.0, "float32"), verbose=0)
    assert features.shape == (1, 1, 1, 192)  # 576 channels at alpha 1
    assert np.isfinite(features).all()


def test_parameter_counts_are_remembered_on_disk(monkeypatch):
    zoo_table(["vgg16"])  # counted once (here or in an earlier test) and written to FINETUNE_HOME
    monkeypatch.setattr(specs_module, "_PARAMETER_COUNTS", {})

    def no_build(*args, **kwargs):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(specs_module, "build_backbone", no_build)
    assert zoo_table(["vgg16"])[0]["parameters"] == 14_714_688
