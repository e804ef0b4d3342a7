"""Tensors out of a pickled checkpoint that ``torch.load(weights_only=True)`` refuses, without running it.

MindEye2's training notebook saves ``lr_scheduler.state_dict()`` next to the weights. Before torch 2.4,
OneCycleLR kept ``anneal_func = self._annealing_cos`` in that state: a staticmethod reached through the
instance, so a plain function, which pickle (protocol 2, torch.save's) stores as
``getattr(OneCycleLR, '_annealing_cos')``; ``weights_only`` refuses it ("Unsupported global:
builtins.getattr"). Lightning ``.ckpt`` files can hold callbacks, loops and hyper-parameter objects.
This reader opens torch's zip format with its own opcode loop (``models.legacy_unpickler``), no laxer
than ``weights_only``:
- only an allow-list of globals resolves; every other global is an inert placeholder, and calling or
  building one gives the placeholder back: nothing stored is ever run, and nothing in the reader is
  writable from a file;
- each storage is memory-mapped copy-on-write from the file once, however often it is referenced, and
  the bytes mapped never exceed the file's size (data.pkl and storages must be stored uncompressed, as
  torch writes them);
- every refusal is one ``ValueError`` line naming the file.

Only the wanted entries (``model_state_dict``, ``state_dict``) are returned, and they must hold
tensors only.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from models.legacy_unpickler import (
    STORAGE_DTYPES,
    Inert,
    Refused,
    Storage,
    StorageType,
    Unpickler,
    what,
)

__all__ = ["STORAGE_DTYPES", "WANTED", "Inert", "load_checkpoint", "read_tensors"]

WANTED = ("model_state_dict", "state_dict")
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
# What hostile bytes can raise from zipfile, struct, the opcode loop or torch's bounds checks.
_HOSTILE = (Refused, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, ArithmeticError, EOFError,
            LookupError, RuntimeError, TypeError, ValueError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _shown(key: Any) -> str:
    return repr(key[:60]) if isinstance(key, str) else f"<{type(key).__name__}>"


class _Storages:
    """The archive's storage records as views of one copy-on-write mapping of the file (the file is never
    written), one view per key however often it is referenced; together they claim no more than the file."""

    def __init__(self, fh: BinaryIO, archive: zipfile.ZipFile, prefix: str) -> None:
        self.fh, self.archive, self.prefix = fh, archive, prefix
        self.file_size = fh.seek(0, 2)
        self.mapped_bytes = 0
        self.by_key: dict[str, Storage] = {}
        self.whole: np.memmap | None = None  # one mapping, not one per storage: thousands of maps hit the OS's limit

    def load(self, pid: Any) -> Storage:
        """The storage a persistent id ``('storage', type, key, location, numel)`` names."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Refused(f"unexpected persistent id (a {type(pid).__name__}, not a storage's)")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, StorageType):
            raise Refused(f"storage of unknown type {what(kind)}")
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise Refused(f"storage key {_shown(key)} is not a short name of letters and digits")
        if not (type(numel) is int and numel >= 0):
            raise Refused(f"storage {key}: element count {numel!r} is not a count")
        known = self.by_key.get(key)
        if known is not None:
            if (known.dtype, known.numel) != (kind.dtype, numel):
                raise Refused(f"storage {key} is referenced as {known.numel} x {known.dtype} "
                              f"and as {numel} x {kind.dtype}")
            return known
        self.by_key[key] = Storage(kind.dtype, numel, self._map(key, kind.dtype, numel))
        return self.by_key[key]

    def _map(self, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        name = f"{self.prefix}/data/{key}"
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        start, size = _record(self.fh, self.archive, name, self.file_size)
        if size < nbytes:
            raise Refused(f"{name} holds {size} bytes, {nbytes} expected")
        self.mapped_bytes += nbytes
        if self.mapped_bytes > self.file_size:  # records that overlap, or one claimed twice
            raise Refused(f"its storages claim {self.mapped_bytes} bytes, more than the file's {self.file_size}")
        if numel == 0:  # not resizable, unlike torch.empty(0): nothing can grow it
            empty = torch.from_numpy(np.empty(0, dtype=np.uint8)).untyped_storage()
            return torch.empty(0, dtype=dtype).set_(empty, 0, (0,), (1,))
        if self.whole is None:
            self.whole = np.memmap(self.fh, dtype=np.uint8, mode="c")
        return torch.frombuffer(self.whole[start:start + nbytes], dtype=dtype, count=numel)


def _record(fh: BinaryIO, archive: zipfile.ZipFile, name: str, file_size: int) -> tuple[int, int]:
    """Where a stored (uncompressed) record's bytes start in the file, and how many there are."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise Refused(f"{name} is not in the archive") from None
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise Refused(f"{name} is compressed; torch writes its records uncompressed")
    fh.seek(info.header_offset)
    header = fh.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise Refused(f"{name}: not a zip local header at byte {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > file_size:
        raise Refused(f"{name} claims {info.file_size} bytes from byte {start}; the file has {file_size}")
    return start, info.file_size


def _read_top(fh: BinaryIO) -> tuple[Any, set[str]]:
    try:
        archive = zipfile.ZipFile(fh)
    except zipfile.BadZipFile:
        raise Refused("not torch's zip format (written by torch >= 1.6); cannot read it safely") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise Refused(f"expected one */data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0].split("/")[0]
        if f"{prefix}/byteorder" in archive.namelist() and _stored(fh, archive, f"{prefix}/byteorder") != b"little":
            raise Refused("its storages are not little-endian")
        unpickler = Unpickler(io.BytesIO(_stored(fh, archive, pickles[0])), _Storages(fh, archive, prefix).load)
        return unpickler.load(), unpickler.skipped


def _stored(fh: BinaryIO, archive: zipfile.ZipFile, name: str) -> bytes:
    """A record's bytes, once it is known to be stored uncompressed inside the file: no more than the file."""
    _record(fh, archive, name, fh.seek(0, 2))
    return archive.read(name)


def _wanted(top: Any, wanted: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    if not isinstance(top, dict):
        raise Refused(f"expected a dict at the top, found {type(top).__name__}")
    out = {}
    for entry in wanted:
        if entry not in top:
            continue
        state = top[entry]
        if not isinstance(state, dict):
            raise Refused(f"{entry} is {what(state)}, not a state dict")
        bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if bad:
            raise Refused(f"{entry} holds something other than tensors under text keys "
                          f"(e.g. {[_shown(k) for k in bad[:3]]})")
        out[entry] = dict(state)
    if not out:
        found = sorted(_shown(k) for k in list(top)[:8])
        raise Refused(f"none of {list(wanted)} at the top (found {found})")
    return out


def read_tensors(path: str | Path, wanted: tuple[str, ...] = WANTED) -> tuple[dict[str, dict[str, torch.Tensor]], set[str]]:
    """``{entry: state dict}`` for each wanted top-level entry, and the globals left unloaded.

    Raises one ``ValueError`` line naming the file for anything it will not read."""
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            top, skipped = _read_top(fh)
            return _wanted(top, wanted), skipped
        except Refused as exc:
            raise ValueError(f"{path}: {_one_line(exc)}") from None
        except _HOSTILE as exc:
            raise ValueError(f"{path}: cannot read it safely ({type(exc).__name__}: {_one_line(exc)})") from exc


def load_checkpoint(path: str | Path, wanted: tuple[str, ...] = WANTED) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; a file it refuses (a stored object) or cannot read is read with
    :func:`read_tensors` instead (the wanted entries only), which reads it or refuses it in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _HOSTILE:
        pass
    tensors, _skipped = read_tensors(path, wanted)
    return tensors
