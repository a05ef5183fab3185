"""Reading torch checkpoints without torch: hand-made files in the byte layouts torch writes."""

import collections
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from finetune.errors import FinetuneError
from finetune.zoo.torch_checkpoint import UnsafeCheckpointError, read_state_dict


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


@pytest.mark.parametrize("layout", ["legacy header", "legacy storage keys", "zip"])
def test_the_weights_import_refuses_a_checkpoint_that_would_run_a_command(tmp_path, layout):
    """Through the import `--weights imagenet` falls back to, with the command where each layout reads a pickle."""
    from finetune.zoo.torchvision_import import import_mobilenet_v2

    marker = tmp_path / "pwned"
    command = _RunsShellCommand(marker)
    storage = _Storage("0", "FloatStorage", np.zeros(4, dtype=np.float32))
    state = {"features.0.0.weight": _Tensor(storage, 0, (4,), (1,))}
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps({"features.0.0.bias": command}, protocol=2))
            archive.writestr("archive/data/0", storage.array.tobytes())
    else:
        with open(path, "wb") as file:
            pickle.dump(command if layout == "legacy header" else 0x1950A86A20F9469CFC6C, file, protocol=2)
            pickle.dump(1001, file, protocol=2)
            pickle.dump({"little_endian": True}, file, protocol=2)
            file.write(_pickled(state, legacy=True))
            pickle.dump(command, file, protocol=2)  # where the storage keys belong

    with pytest.raises(UnsafeCheckpointError, match=rf"Refusing to load `(posix|nt|os)\.system` from {path}"):
        import_mobilenet_v2(path)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_damaged_checkpoint_is_a_clear_error_not_a_traceback(tmp_path, layout):
    state, storages, _ = _state_and_expected()
    path = tmp_path / "cut.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", _pickled(state, legacy=False)[:-20])
    else:
        write_legacy_checkpoint(path, state, storages)
        content = path.read_bytes()
        header = len(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)) + len(pickle.dumps(1001, protocol=2))
        path.write_bytes(content[: header + 40])  # cut inside the system info

    with pytest.raises(FinetuneError, match=rf"{path} is a damaged or truncated checkpoint .*Download it again"):
        read_state_dict(path)
