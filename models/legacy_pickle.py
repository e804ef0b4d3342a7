"""Tensors out of a pickled checkpoint that ``torch.load(weights_only=True)`` refuses, without running it.

MindEye2's training notebook saves ``lr_scheduler.state_dict()`` next to the weights. Before torch 2.4
that state held a bound method (``anneal_func``), which ``weights_only`` refuses ("Unsupported global:
builtins.getattr"). Lightning ``.ckpt`` files can hold callbacks, loops and hyper-parameter objects.
This reader opens torch's zip format with an unpickler that:
- resolves only an allow-list of globals (tensor rebuilders, ``OrderedDict``, storage types,
  ``torch.Size``); every other global becomes an inert placeholder class;
- never calls a stored callable or constructor: a placeholder "called" or "built" only records
  its name;
- memory-maps each tensor's storage from the file, as ``torch.load(mmap=True)`` does.

Only the wanted entries (``model_state_dict``, ``state_dict``) are returned, and they must hold
tensors only.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
WANTED = ("model_state_dict", "state_dict")


class Inert:
    """What any global outside the allow-list becomes: it takes arguments and state, and does nothing."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any):  # NEWOBJ calls cls.__new__(cls, *args)
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualname}>"


def _placeholder(module: str, name: str) -> type:
    return type(f"Inert_{name}", (Inert,), {"qualname": f"{module}.{name}"})


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_rest) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor without its storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: torch.Tensor, *_rest) -> torch.Tensor:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, prefix: str, path: Path) -> None:
        super().__init__(fh)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.skipped: set[str] = set()

    def find_class(self, module: str, name: str):
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol 2 writes __builtin__ for builtins
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name == "Size":
            return torch.Size
        self.skipped.add(f"{module}.{name}")
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"{self.path}: storage of unknown type {kind!r}")
        return _mapped(self.path, self.archive, f"{self.prefix}/data/{key}", kind.dtype, int(numel))


def _mapped(path: Path, archive: zipfile.ZipFile, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    """The entry's bytes as a 1-D tensor, memory-mapped copy-on-write (the file is never written)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {name} is compressed; torch writes storages uncompressed")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    if header[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: {name}: not a zip local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    itemsize = torch.empty((), dtype=dtype).element_size()
    if info.file_size < numel * itemsize:
        raise ValueError(f"{path}: {name} holds {info.file_size} bytes, {numel * itemsize} expected")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    raw = np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=(numel * itemsize,))
    return torch.frombuffer(raw, dtype=dtype)


def read_tensors(path: str | Path, wanted: tuple[str, ...] = WANTED) -> tuple[dict[str, dict[str, torch.Tensor]], set[str]]:
    """``{entry: state dict}`` for each wanted top-level entry, and the globals left unloaded."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not torch's zip format (written by torch >= 1.6); cannot read it safely") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one */data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0].split("/")[0]
        with archive.open(pickles[0]) as fh:
            unpickler = _Unpickler(fh, archive, prefix, path)
            top = unpickler.load()
    if not isinstance(top, dict):
        raise ValueError(f"{path}: expected a dict at the top, found {type(top).__name__}")
    out = {}
    for entry in wanted:
        if entry not in top:
            continue
        state = top[entry]
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else ["?"]
        if bad:
            raise ValueError(f"{path}: {entry} holds something other than tensors (e.g. {bad[:3]})")
        out[entry] = dict(state)
    if not out:
        raise ValueError(f"{path}: none of {list(wanted)} at the top (found {sorted(map(str, top))[:8]})")
    return out, unpickler.skipped


def load_checkpoint(path: str | Path, wanted: tuple[str, ...] = WANTED) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; a file it refuses for a stored object is read with
    :func:`read_tensors` instead (the wanted entries only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise
    tensors, _skipped = read_tensors(path, wanted)
    return tensors
