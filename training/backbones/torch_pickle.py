"""Read legacy (pre-1.6, non-zip) PyTorch ``state_dict`` files into numpy arrays without importing torch.

The legacy format written by ``torch.save(..., _use_new_zipfile_serialization=False)`` is a sequence of
pickles followed by raw storage bytes:

1. magic number (int), 2. protocol version (int, 1001), 3. system info (dict: endianness, type sizes),
4. the main pickle (the object; storages appear as persistent ids), 5. the list of storage keys,
6. for each key, an int64 element count followed by the raw little-endian storage data.

Only a handful of globals are allow-listed (``collections.OrderedDict``, the tensor rebuild helpers and the
``torch.*Storage`` type names); they are mapped to tiny stand-ins defined here. Anything else raises
:class:`pickle.UnpicklingError`, so loading a file never executes arbitrary code.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["MAGIC_NUMBER", "PROTOCOL_VERSION", "load_legacy_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<Type>Storage`` class: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    """A storage (or a view into a root storage) whose bytes are filled in after the main pickle."""

    root_key: str
    dtype: np.dtype
    numel: int
    offset: int = 0  # element offset into the root storage (views only)


@dataclass
class _LazyTensor:
    """Tensor metadata recorded by ``_rebuild_tensor(_v2)``; materialised once the storages are read."""

    storage: _Storage
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    size_t = tuple(int(s) for s in size)
    stride_t = tuple(int(s) for s in stride)
    if len(size_t) != len(stride_t) or any(s < 0 for s in size_t) or any(s < 0 for s in stride_t):
        raise pickle.UnpicklingError(f"invalid tensor geometry size={size_t} stride={stride_t}")
    return _LazyTensor(storage, int(storage_offset), size_t, stride_t)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _LazyTensor, requires_grad: bool = False, backward_hooks: Any = None) -> _LazyTensor:
    if not isinstance(data, _LazyTensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and storage persistent ids."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage] | None = None) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a state_dict file") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected persistent id outside the main pickle")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, root_key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("persistent id does not name an allowed storage type")
        root_key = str(root_key)
        root = self._storages.setdefault(root_key, _Storage(root_key, storage_type.dtype, int(numel)))
        if root.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {root_key} used with two dtypes")
        if view_metadata is None:
            return root
        _view_key, offset, view_size = view_metadata
        return _Storage(root_key, root.dtype, int(view_size), offset=int(offset))


def _read_storage(f: BinaryIO, storage: _Storage, little_endian: bool) -> np.ndarray:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError(f"truncated file: no size header for storage {storage.root_key}")
    numel = int(np.frombuffer(header, dtype="<i8" if little_endian else ">i8")[0])
    if numel != storage.numel:
        raise ValueError(f"storage {storage.root_key}: header says {numel} elements, pickle says {storage.numel}")
    dtype = storage.dtype if little_endian else storage.dtype.newbyteorder(">")
    nbytes = numel * dtype.itemsize
    if numel < 0 or nbytes > os.fstat(f.fileno()).st_size - f.tell():
        raise ValueError(f"truncated file: storage {storage.root_key} needs {nbytes} bytes")
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise ValueError(f"truncated file: storage {storage.root_key} needs {nbytes} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).astype(storage.dtype, copy=False)


def _materialise(t: _LazyTensor, buffers: dict[str, np.ndarray]) -> np.ndarray:
    flat = buffers[t.storage.root_key]
    start = t.storage.offset + t.storage_offset
    view_end = t.storage.offset + t.storage.numel
    if any(s == 0 for s in t.size):
        return np.zeros(t.size, dtype=flat.dtype)
    last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if start < 0 or last >= view_end or view_end > flat.size:
        raise ValueError(f"tensor of size {t.size} / stride {t.stride} runs past its storage ({t.storage.root_key})")
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=t.size, strides=tuple(s * itemsize for s in t.stride), writeable=False
    )
    return np.array(view, copy=True)


def _resolve(obj: Any, buffers: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _LazyTensor):
        return _materialise(obj, buffers)
    if isinstance(obj, dict):
        return {k: _resolve(v, buffers) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, buffers) for v in obj)
    return obj


def _load(f: BinaryIO) -> Any:
    if _RestrictedUnpickler(f).load() != MAGIC_NUMBER:
        raise ValueError("not a legacy torch serialization file (bad magic number)")
    protocol = _RestrictedUnpickler(f).load()
    if protocol != PROTOCOL_VERSION:
        raise ValueError(f"unsupported legacy torch protocol version {protocol!r}")
    sys_info = _RestrictedUnpickler(f).load()
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, storages).load()
    keys = _RestrictedUnpickler(f).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise ValueError("storage key list does not match the storages referenced by the main pickle")
    buffers = {str(k): _read_storage(f, storages[str(k)], little_endian) for k in keys}
    return _resolve(obj, buffers)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy-format torch ``state_dict`` file as ``{name: numpy array}`` (no torch needed).

    Non-tensor entries are dropped. Raises ``pickle.UnpicklingError`` when the file references a global that is
    not allow-listed, and ``ValueError`` for zip-format (torch >= 1.6) or malformed files.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise ValueError(f"{path} uses the zip-based torch format (>= 1.6); only the legacy format is supported")
    with path.open("rb") as fh:
        obj = _load(fh)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
