"""Registering, finding and listing backbone specs."""

import dataclasses

import pytest

from finetune.errors import FinetuneError
from finetune.zoo import BackboneSpec, build_backbone, get_spec, list_specs, register, resolve_constructor
from finetune.zoo import registry


@pytest.fixture
def custom(monkeypatch):
    """A VGG-16 spec under another name, in a registry copy that the test may change."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return BackboneSpec(
        name="my_vgg",
        constructor="keras.applications:VGG16",
        default_image_size=64,
        min_image_size=32,
        preprocessing="caffe",
        stage_endpoints=get_spec("vgg16").stage_endpoints,
        freeze_groups=get_spec("vgg16").freeze_groups,
    )


def test_register_a_custom_backbone(custom):
    register(custom)
    assert get_spec("my_vgg") is custom and list_specs()[-1] is custom
    assert custom.weights_sources == ("keras",)  # a new spec downloads from keras.applications
    with pytest.raises(FinetuneError, match="already registered"):
        register(custom)
    replacement = dataclasses.replace(custom, default_image_size=96)
    assert register(replacement, overwrite=True) is replacement and get_spec("my_vgg") is replacement


def test_register_refuses_malformed_specs(custom):
    with pytest.raises(FinetuneError, match=r"Received: preprocessing='bgr'"):
        register(dataclasses.replace(custom, preprocessing="bgr"))
    with pytest.raises(FinetuneError, match=r"keras, torchvision\. Received: weights_sources='timm'"):
        register(dataclasses.replace(custom, weights_sources=("keras", "timm")))
    with pytest.raises(FinetuneError, match=r"'module:attribute'. Received: constructor='VGG16'"):
        register(dataclasses.replace(custom, constructor="VGG16"))
    with pytest.raises(FinetuneError, match=r"not exceed `default_image_size` \(64\). Received: min_image_size=65"):
        register(dataclasses.replace(custom, min_image_size=65))
    assert "my_vgg" not in [spec.name for spec in list_specs()]


def test_a_constructor_that_cannot_be_imported_is_named(custom):
    broken = register(dataclasses.replace(custom, constructor="no_such_module:Model"))
    with pytest.raises(FinetuneError, match="Cannot import the constructor of backbone 'my_vgg'"):
        resolve_constructor(broken)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(FinetuneError, match=r"mobilenet_v2, .*vgg16.*Received: backbone='resnet5000'"):
        get_spec("resnet5000")
    with pytest.raises(FinetuneError, match="Received: backbone='resnet5000'"):
        build_backbone("resnet5000", weights="none")


def test_a_spec_is_its_own_lookup():
    spec = get_spec("vgg16")
    assert get_spec(spec) is spec
