"""Building backbones from specs, and resolving stages and freeze groups in built models."""

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo import (
    Preprocess,
    build_backbone,
    build_backbone_with_source,
    get_spec,
    layers_of_group,
    stage_outputs,
    zoo_table,
)
from finetune.zoo import build, weights
from tests.finetune.zoo.conftest import small_backbone


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

    def load_backbone_weights(spec, constructor, image_size, **kwargs):
        calls.append((spec.name, image_size, kwargs))
        assert callable(constructor)
        return tiny, "ImageNet weights from a test double"

    monkeypatch.setattr(weights, "load_backbone_weights", load_backbone_weights)

    assert build_backbone("mobilenet_v2") is tiny
    assert build_backbone_with_source("convnext_tiny", image_size=64, weights="/tmp/w.keras") == (
        tiny, "ImageNet weights from a test double"
    )
    assert calls == [
        ("mobilenet_v2", 224, {"weights": "imagenet", "alpha": 1.0, "include_top": False}),
        ("convnext_tiny", 64, {"weights": "/tmp/w.keras", "alpha": None, "include_top": False,
                               "include_preprocessing": True}),
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


def test_small_backbone_runs_on_an_image():
    model = small_backbone("mobilenet_v3_small")
    features = model.predict(np.full((1, 32, 32, 3), 128.0, "float32"), verbose=0)
    assert features.shape == (1, 1, 1, 192)  # 576 channels at alpha 1
    assert np.isfinite(features).all()


def test_parameter_counts_are_remembered_on_disk(monkeypatch):
    zoo_table(["vgg16"])  # counted once (here or in an earlier test) and written to FINETUNE_HOME
    monkeypatch.setattr(build, "_PARAMETER_COUNTS", {})

    def no_build(*args, **kwargs):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(build, "build_backbone", no_build)
    assert zoo_table(["vgg16"])[0]["parameters"] == 14_714_688
