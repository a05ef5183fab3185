"""Frozen-backbone features: one pooled array per stage endpoint, cached on disk by pixels, backbone identity and weights."""

import keras
import numpy as np
import pytest

from finetune.features import stage_features
from finetune.zoo import BackboneSpec

# A two-stage backbone small enough that a forward pass costs nothing; stage_features only needs
# the spec's stage endpoints and preprocessing.
SPEC = BackboneSpec(
    name="tiny",
    constructor="unused:unused",
    default_image_size=16,
    min_image_size=16,
    preprocessing="tf",
    stage_endpoints=("stage_1", "stage_2"),
    freeze_groups=(("stage_2",),),
)
IDENTITY = {"backbone": "tiny", "weights": "none", "alpha": None}


@pytest.fixture(scope="module")
def backbone():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    low = keras.layers.Conv2D(4, 3, activation="relu", name="stage_1")(inputs)
    high = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="stage_2")(low)
    return keras.Model(inputs, high, name="tiny")


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def predict_calls(monkeypatch, tmp_path):
    """Counts forward passes (calls of any Keras model's `predict`), with a private feature cache."""
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path))
    calls = []
    original = keras.Model.predict

    def counting_predict(model, *args, **kwargs):
        calls.append(model.name)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "predict", counting_predict)
    return calls


def test_one_pooled_array_per_stage_endpoint(backbone, images):
    features = stage_features(backbone, SPEC, images, IDENTITY, batch_size=4, cache=False)
    assert [array.shape for array in features] == [(5, 4), (5, 6)]
    assert all(array.dtype == np.float32 for array in features)
    # Each stage's map, on images preprocessed as the spec says ("tf": [-1, 1]), averaged over the image.
    stages = keras.Model(backbone.inputs, [backbone.get_layer(name).output for name in SPEC.stage_endpoints])
    maps = stages.predict(images.astype(np.float32) / 127.5 - 1.0, verbose=0)
    for array, stage_map in zip(features, maps):
        np.testing.assert_allclose(array, stage_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_the_cache_returns_the_same_arrays_without_a_second_forward_pass(backbone, images, predict_calls, tmp_path):
    first = stage_features(backbone, SPEC, images, IDENTITY, batch_size=4)
    assert len(predict_calls) == 1
    assert len(list((tmp_path / "features").glob("*.npz"))) == 1
    second = stage_features(backbone, SPEC, images, IDENTITY, batch_size=4)
    assert len(predict_calls) == 1
    assert len(second) == len(first) == 2
    for cached, computed in zip(second, first):
        np.testing.assert_array_equal(cached, computed)


def test_other_images_or_another_backbone_identity_miss_the_cache(backbone, images, predict_calls):
    stage_features(backbone, SPEC, images, IDENTITY, batch_size=4)
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    stage_features(backbone, SPEC, changed, IDENTITY, batch_size=4)
    assert len(predict_calls) == 2
    stage_features(backbone, SPEC, images[:4], IDENTITY, batch_size=4)
    assert len(predict_calls) == 3
    stage_features(backbone, SPEC, images, {**IDENTITY, "weights": "/elsewhere/weights.h5"}, batch_size=4)
    assert len(predict_calls) == 4
    stage_features(backbone, SPEC, images, {**IDENTITY, "backbone": "other"}, batch_size=4)
    assert len(predict_calls) == 5
    # The first set is still cached.
    stage_features(backbone, SPEC, images, IDENTITY, batch_size=4)
    assert len(predict_calls) == 5


def test_without_the_cache_every_call_computes(backbone, images, predict_calls, tmp_path):
    stage_features(backbone, SPEC, images, IDENTITY, batch_size=4, cache=False)
    stage_features(backbone, SPEC, images, IDENTITY, batch_size=4, cache=False)
    assert len(predict_calls) == 2
    assert not (tmp_path / "features").exists()


def test_two_networks_of_the_same_name_with_other_weights_do_not_share_features(backbone, images, predict_calls):
    # weights "none" with another seed, or a backbone a search finetuned: same identity, other weights.
    first = stage_features(backbone, SPEC, images, IDENTITY, batch_size=4)
    other = keras.models.clone_model(backbone)
    other.set_weights([weight * 0.5 for weight in backbone.get_weights()])
    second = stage_features(other, SPEC, images, IDENTITY, batch_size=4)
    assert len(predict_calls) == 2
    assert not np.allclose(first[1], second[1])
