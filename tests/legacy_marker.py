"""Proofs for the legacy checkpoint reader: objects that do something when unpickled, and hostile files
written opcode by opcode in torch's zip layout."""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path


def touch(path: str) -> str:
    Path(path).write_text("a stored object's code ran")
    return path


class Tripwire:
    """Pickles as ``touch(path)``: whoever unpickles it normally writes the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return touch, (self.path,)


# Pickle opcodes by hand (protocol 2, as torch.save writes).
def text(value: str) -> bytes:
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def tup(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + pickle.REDUCE


def dictionary(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(k + v for k, v in pairs) + pickle.SETITEMS


def storage(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """A persistent id as torch writes it: ('storage', torch.<kind>, key, 'cpu', numel)."""
    return tup(text("storage"), glob("torch", kind), text(key), text("cpu"), integer(numel)) + pickle.BINPERSID


def tensor(stored: bytes, size: tuple[int, ...], offset: int = 0) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``, contiguous."""
    stride = [1] * len(size)
    for i in range(len(size) - 2, -1, -1):
        stride[i] = stride[i + 1] * size[i + 1]
    return call(glob("torch._utils", "_rebuild_tensor_v2"), stored, integer(offset), tup(*map(integer, size)),
                tup(*map(integer, stride)), pickle.NEWFALSE, call(glob("collections", "OrderedDict")))


def pickled(*body: bytes) -> bytes:
    return pickle.PROTO + b"\x02" + b"".join(body) + pickle.STOP


# What a torch 2.1 OneCycleLR state holds: weights_only refuses it, so load_checkpoint falls back.
ANNEAL_FUNC = call(glob("__builtin__", "getattr"), glob("torch.optim.lr_scheduler", "OneCycleLR"),
                   text("_annealing_cos"))


def checkpoint(*state: tuple[bytes, bytes], before: bytes = b"") -> bytes:
    """``{'lr_scheduler': {'anneal_func': ...}, 'model_state_dict': {state}}``; ``before`` runs first."""
    return pickled(before + dictionary((text("lr_scheduler"), dictionary((text("anneal_func"), ANNEAL_FUNC))),
                                       (text("model_state_dict"), dictionary(*state))))


def write_zip(path: Path, records: dict[str, bytes], *, deflate: tuple[str, ...] = (),
              claims: dict[str, int] | None = None, aliases: dict[str, str] | None = None) -> Path:
    """A zip in torch's layout: records stored, each one's bytes starting on a 64-byte boundary (an 'FB'
    extra field pads, as torch's writer does). Hostile options: ``deflate`` compresses those records,
    ``claims`` gives a record another size (both sizes) in the central directory, ``aliases`` adds central-directory
    names for an existing record (``{alias: name}``), so two names share one set of bytes."""
    out, central, offsets = bytearray(), bytearray(), {}
    claims, aliases = claims or {}, aliases or {}

    def entry(name: str, method: int, crc: int, csize: int, usize: int, extra: bytes, offset: int) -> None:
        raw = name.encode()
        csize, usize = (claims[name], claims[name]) if name in claims else (csize, usize)
        central.extend(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, csize, usize,
                                   len(raw), len(extra), 0, 0, 0, 0, offset) + raw + extra)

    for name, data in records.items():
        raw, method = name.encode(), 8 if name in deflate else 0
        body = data
        if method:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            body = packer.compress(data) + packer.flush()
        offset, crc = len(out), zlib.crc32(data)
        pad = -(offset + 30 + len(raw) + 4) % 64
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        offsets[name] = (offset, method, crc, len(body), len(data), extra)
        out.extend(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(body), len(data),
                               len(raw), len(extra)) + raw + extra + body)
        entry(name, *offsets[name][1:], offset)
    for alias, name in aliases.items():
        entry(alias, *offsets[name][1:], offsets[name][0])
    count = len(records) + len(aliases)
    out.extend(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(out), 0))
    path.write_bytes(bytes(out))
    return path


def torch_file(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, **hostile) -> Path:
    """``archive/data.pkl``, ``archive/data/<key>``, ``archive/version`` and ``archive/byteorder``."""
    records = {"archive/data.pkl": pkl, **{f"archive/data/{k}": v for k, v in (storages or {}).items()},
               "archive/version": b"3\n", "archive/byteorder": b"little"}
    return write_zip(path, records, **hostile)
