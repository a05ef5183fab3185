"""Reading a torch `.pth` state dict into numpy arrays, without torch and without running code.

A `.pth` file is a pickle, and unpickling can run arbitrary code, so `read_state_dict` reads it
with a restricted unpickler that builds only dictionaries and tensors (as numpy arrays) and
refuses every other global with an `UnsafeCheckpointError`. Both layouts torch writes are read:
the zip format of torch >= 1.6 and the legacy format (a sequence of pickles, then raw storages).

    arrays = read_state_dict("mobilenet_v2-b0353104.pth")   # {"features.0.0.weight": ndarray, ...}
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from finetune.errors import FinetuneError

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001


class UnsafeCheckpointError(FinetuneError):
    """A checkpoint's pickle asks for something other than tensors and dictionaries."""


class _StorageType:
    """Stands in for `torch.FloatStorage` and friends: only its name (the element type) matters."""

    def __init__(self, name: str):
        self.name = name


# bfloat16 has no numpy type: its raw 16 bits are widened to float32 when a tensor is built.
_BFLOAT16 = "bfloat16"

_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    # Untyped storages count bytes; the tensor's own storage type is then unknown, so bytes.
    "UntypedStorage": "uint8",
}
_DTYPE_NAMES = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": _BFLOAT16, "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool",
}


class _StorageReference:
    """A storage named in the pickle; its bytes arrive later (legacy) or from a zip member."""

    def __init__(self, key: str, dtype_name: str, element_offset: int = 0, num_elements: int | None = None):
        self.key = key
        self.dtype_name = dtype_name
        self.element_offset = element_offset
        self.num_elements = num_elements


class _LazyTensor:
    """What `_rebuild_tensor_v2` returns: a view description, materialised once bytes are read."""

    def __init__(self, storage: _StorageReference, storage_offset: int, size, stride):
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(dimension) for dimension in size)
        self.stride = tuple(int(step) for step in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageReference):
        raise FinetuneError(f"Malformed checkpoint: a tensor's storage is a {type(storage).__name__}.")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict and refuses every other global: a pickle can run any code."""

    _ALLOWED_FUNCTIONS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }

    def __init__(self, file, source: str):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.storages: dict[str, _StorageReference] = {}

    def find_class(self, module: str, name: str):
        allowed = self._ALLOWED_FUNCTIONS.get((module, name))
        if allowed is not None:
            return allowed
        if module in ("torch", "torch.storage", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _DTYPE_NAMES:
            return name
        raise UnsafeCheckpointError(
            f"Refusing to load `{module}.{name}` from {self.source}: only tensors and dictionaries "
            "are read from a checkpoint, because unpickling anything else can run arbitrary code. "
            "Use a plain state dict file (torch.save(model.state_dict(), path)) from a source you trust."
        )

    def persistent_load(self, persistent_id):
        if not (isinstance(persistent_id, tuple) and persistent_id and persistent_id[0] == "storage"):
            raise FinetuneError(f"Malformed checkpoint {self.source}: unknown persistent id {persistent_id!r}.")
        storage_type, key = persistent_id[1], str(persistent_id[2])
        if isinstance(storage_type, _StorageType):
            dtype_name = _STORAGE_DTYPES[storage_type.name]
        elif isinstance(storage_type, str):  # a dtype name (newer zips with typed storages)
            dtype_name = _DTYPE_NAMES[storage_type]
        else:
            raise FinetuneError(f"Malformed checkpoint {self.source}: storage type {storage_type!r}.")
        if key not in self.storages:
            self.storages[key] = _StorageReference(key, dtype_name)
        root = self.storages[key]
        # Legacy files may refer to a view of a storage: (view_key, element offset, view size).
        view_metadata = persistent_id[5] if len(persistent_id) > 5 else None
        if view_metadata is not None:
            view_key, offset, view_size = view_metadata
            view_key = str(view_key)
            if view_key not in self.storages:
                self.storages[view_key] = _StorageReference(key, dtype_name, int(offset), int(view_size))
            return self.storages[view_key]
        return root


def _storage_array(raw: bytes, dtype_name: str, little_endian: bool) -> np.ndarray:
    if dtype_name == _BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2").astype(np.uint32)
        return (bits << 16).view(np.float32)
    dtype = np.dtype(dtype_name).newbyteorder("<" if little_endian else ">")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _materialise(tensor: _LazyTensor, storages: dict[str, np.ndarray], source: str) -> np.ndarray:
    reference = tensor.storage
    flat = storages.get(reference.key)
    if flat is None:
        raise FinetuneError(f"Malformed checkpoint {source}: storage {reference.key!r} has no data.")
    if reference.num_elements is not None:  # a legacy storage view
        flat = flat[reference.element_offset : reference.element_offset + reference.num_elements]
    if len(tensor.size) != len(tensor.stride) or any(step < 0 for step in tensor.stride):
        raise FinetuneError(f"Malformed checkpoint {source}: size {tensor.size}, stride {tensor.stride}.")
    if 0 in tensor.size:
        return np.zeros(tensor.size, dtype=flat.dtype)
    # Bounds are checked here because as_strided would otherwise read outside the buffer.
    last = tensor.storage_offset + sum((size - 1) * step for size, step in zip(tensor.size, tensor.stride))
    if tensor.storage_offset < 0 or last >= flat.size:
        raise FinetuneError(
            f"Malformed checkpoint {source}: a tensor reaches element {last} of a storage of {flat.size}."
        )
    view = np.lib.stride_tricks.as_strided(
        flat[tensor.storage_offset :],
        shape=tensor.size,
        strides=tuple(step * flat.itemsize for step in tensor.stride),
        writeable=False,
    )
    return np.array(view)


def _to_arrays(state, storages: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise FinetuneError(f"{source} holds a {type(state).__name__}, not a state dict of tensors.")
    if "state_dict" in state and isinstance(state["state_dict"], dict):  # a training checkpoint
        state = state["state_dict"]
    arrays = {}
    for name, value in state.items():
        if isinstance(value, _LazyTensor):
            arrays[str(name)] = _materialise(value, storages, source)
    return arrays


# What a damaged pickle raises while being read; an `UnsafeCheckpointError` is raised as itself.
_DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError, struct.error)


def _load_state(unpickler: _RestrictedUnpickler, source: str):
    """The state pickle, or a `FinetuneError` naming the file: a damaged checkpoint, not a traceback."""
    try:
        return unpickler.load()
    except _DAMAGED as error:
        raise FinetuneError(
            f"{source} is a damaged or truncated checkpoint ({type(error).__name__}: {error}). "
            "Download it again, or save it again with torch.save(model.state_dict(), path)."
        ) from None


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    with open(path, "rb") as file:
        # Headers are plain ints and dicts: a fully restricted unpickler reads them too.
        header = _RestrictedUnpickler(file, source)
        try:
            magic_number = header.load()
        except _DAMAGED as error:
            raise FinetuneError(f"{source} is neither a zip nor a legacy torch checkpoint ({error}).") from None
        if magic_number != _LEGACY_MAGIC_NUMBER:
            raise FinetuneError(f"{source} is not a torch checkpoint (wrong magic number {magic_number!r}).")
        protocol_version = _load_state(_RestrictedUnpickler(file, source), source)
        if protocol_version != _LEGACY_PROTOCOL_VERSION:
            raise FinetuneError(f"{source}: unsupported legacy protocol version {protocol_version!r}.")
        system_info = _load_state(_RestrictedUnpickler(file, source), source)
        little_endian = bool(system_info.get("little_endian", True)) if isinstance(system_info, dict) else True
        unpickler = _RestrictedUnpickler(file, source)
        state = _load_state(unpickler, source)
        storage_keys = _load_state(_RestrictedUnpickler(file, source), source)
        storages = {}
        for key in storage_keys:
            key = str(key)
            reference = unpickler.storages.get(key)
            if reference is None:
                raise FinetuneError(f"Malformed checkpoint {source}: unknown storage {key!r}.")
            count_bytes = file.read(8)
            if len(count_bytes) != 8:
                raise FinetuneError(f"{source} is truncated (storage {key!r} is missing).")
            (num_elements,) = struct.unpack("<q" if little_endian else ">q", count_bytes)
            itemsize = 2 if reference.dtype_name == _BFLOAT16 else np.dtype(reference.dtype_name).itemsize
            raw = file.read(num_elements * itemsize)
            if len(raw) != num_elements * itemsize:
                raise FinetuneError(f"{source} is truncated (storage {key!r} is incomplete).")
            storages[key] = _storage_array(raw, reference.dtype_name, little_endian)
    return _to_arrays(state, storages, source)


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    source = str(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") == 1]
        if not pickles:
            raise FinetuneError(f"{source} is a zip file without <name>/data.pkl: not a torch checkpoint.")
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder").decode().strip() != "big"
        with archive.open(pickles[0]) as file:
            unpickler = _RestrictedUnpickler(file, source)
            state = _load_state(unpickler, source)
        storages = {}
        for key, reference in unpickler.storages.items():
            if reference.key != key:
                continue  # a view; its root is read under its own key
            member = f"{prefix}data/{key}"
            if member not in names:
                raise FinetuneError(f"Malformed checkpoint {source}: {member} is missing.")
            storages[key] = _storage_array(archive.read(member), reference.dtype_name, little_endian)
    return _to_arrays(state, storages, source)


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a torch `.pth` state dict into numpy arrays, without torch and without running code.

    Both formats are read: the zip format of torch >= 1.6 and the legacy format (a sequence of
    pickles followed by raw storages). Only dictionaries and tensors are unpickled; anything else
    raises an `UnsafeCheckpointError`.

    Args:
        path: the `.pth` file.

    Returns:
        A dict from parameter name to array, in the file's order; views (storage offset, size,
        stride) are copied out into contiguous arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"No checkpoint at {path}. Received: path={str(path)!r}")
    if zipfile.is_zipfile(path):
        try:
            return _read_zip(path)
        except (zipfile.BadZipFile, zlib.error) as error:
            raise FinetuneError(f"{path} is a damaged zip checkpoint ({error}). Download it again.") from None
    return _read_legacy(path)
