"""The opcode loop behind ``models.legacy_pickle``: pickle's data opcodes, and nothing that runs code.

Like torch's ``weights_only`` unpickler it interprets each opcode itself rather than trusting
``pickle.Unpickler``'s:
- GLOBAL resolves the tensor rebuilders, ``OrderedDict``, the storage types and ``torch.Size``;
  anything else becomes an :class:`Inert` placeholder (one per name), and calling or building a
  placeholder gives the placeholder back, so nothing stored is run and nothing new is made;
- BUILD only on placeholders and on state dicts (``OrderedDict``), and its state is dropped: no
  attribute is ever set, on an allowed global or anywhere else;
- SETITEM(S) only on dicts, APPEND(S) only on lists (into a placeholder they are dropped);
- a storage comes from the caller's ``load_storage``, and only a tensor rebuilder takes one.
Refusals raise :class:`Refused` with one line saying what; the caller names the file.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import pickletools
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_MAX_DIMS = 64


class Refused(Exception):
    """A file the reader will not read, and why (one line, without the file's name)."""


class Inert:
    """What any global outside the allow-list becomes: it holds the name it stands for, and nothing a
    file says is ever set on it."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str = "?") -> None:
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualname}>"


@dataclass(frozen=True)
class StorageType:
    """A storage class named in a persistent id (``torch.FloatStorage`` ...): its dtype only."""

    dtype: torch.dtype


@dataclass(frozen=True)
class Storage:
    """One storage record of the archive, as a flat tensor; only a tensor rebuilder takes it."""

    dtype: torch.dtype
    numel: int
    flat: torch.Tensor


def _ints(value: Any, field: str) -> tuple[int, ...]:
    if not (isinstance(value, tuple) and len(value) <= _MAX_DIMS
            and all(type(v) is int and v >= 0 for v in value)):
        raise Refused(f"a tensor's {field} is not a tuple of at most {_MAX_DIMS} counts")
    return value


def _rebuild_tensor(storage: Any = None, offset: Any = None, size: Any = None, stride: Any = None,
                    *_rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``: a view of a mapped storage; torch checks it lies inside."""
    if not isinstance(storage, Storage):
        raise Refused("a tensor without its storage")
    if not (type(offset) is int and offset >= 0):
        raise Refused("a tensor's storage offset is not a count")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise Refused(f"a tensor of {len(size)} dimensions with {len(stride)} strides")
    return torch.as_strided(storage.flat, size, stride, offset)


def _rebuild_parameter(data: Any = None, *_rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter(_with_state)``: the tensor alone."""
    if not isinstance(data, torch.Tensor):
        raise Refused("a parameter without a tensor")
    return data


def _ordered_dict(*args: Any) -> OrderedDict:
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
        raise Refused("OrderedDict called with something other than items")
    return OrderedDict(*args)


def _size(*args: Any) -> torch.Size:
    if len(args) != 1:
        raise Refused("torch.Size called without one tuple")
    return torch.Size(_ints(args[0], "size"))


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _size,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}
_CALLABLE = (_rebuild_tensor, _rebuild_parameter, _ordered_dict, _size)


def what(value: Any) -> str:
    """How a refusal names a value: a placeholder by the name it stands for, anything else by its type."""
    return repr(value) if isinstance(value, Inert) else type(value).__name__


class Unpickler:
    """``Unpickler(fh, load_storage).load()``; ``skipped`` then names the globals left as placeholders."""

    def __init__(self, fh: BinaryIO, load_storage: Callable[[Any], Storage]) -> None:
        self.fh, self.load_storage = fh, load_storage
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.placeholders: dict[str, Inert] = {}
        self.skipped: set[str] = set()

    def load(self) -> Any:
        """The pickle's value."""
        while True:
            code = self._read(1)[0]
            handler = _HANDLERS.get(code)
            if handler is None:
                raise Refused(f"pickle opcode {_OPNAMES.get(code, hex(code))} is not allowed")
            if handler(self) is _STOP:
                return self._pop()

    # reading
    def _read(self, n: int) -> bytes:
        if n < 0:
            raise Refused("a negative length in the pickle")
        data = self.fh.read(n)  # the pickle is in memory, read from a stored record: n is bounded by the file
        if len(data) != n:
            raise Refused("the pickle ends early")
        return data

    def _line(self) -> str:
        line = self.fh.readline(512)
        if not line.endswith(b"\n"):
            raise Refused("a GLOBAL name longer than 511 bytes or cut off")
        return line[:-1].decode("utf-8")

    # stack
    def _pop(self) -> Any:
        if not self.stack:
            raise Refused("the pickle pops an empty stack")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise Refused("the pickle reads an empty stack")
        return self.stack[-1]

    def _mark(self) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise Refused("the pickle closes a mark it never opened")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    # globals and calls
    def _find(self, module: str, name: str) -> Any:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol 2 writes __builtin__ for builtins
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        qualname = f"{module}.{name}"
        self.skipped.add(qualname)
        return self.placeholders.setdefault(qualname, Inert(qualname))

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise Refused(f"a call with {type(args).__name__} for arguments")
        if isinstance(func, Inert):
            return func  # a placeholder "called" stays the placeholder
        if any(func is allowed for allowed in _CALLABLE):
            return func(*args)
        raise Refused(f"calling {what(func)} is not allowed")

    # opcodes with effects
    def _global(self) -> None:
        module = self._line()
        self.stack.append(self._find(module, self._line()))

    def _stack_global(self) -> None:
        name, module = self._pop(), self._pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise Refused("STACK_GLOBAL without two names")
        self.stack.append(self._find(module, name))

    def _reduce(self) -> None:
        args = self._pop()
        self.stack[-1] = self._call(self._top(), args)

    def _newobj(self) -> None:
        self._pop()  # the arguments
        if not isinstance(self._top(), Inert):
            raise Refused(f"NEWOBJ on {what(self._top())} (only on placeholders)")

    def _newobj_ex(self) -> None:
        self._pop()
        self._newobj()

    def _build(self) -> None:
        self._pop()  # the state is dropped: nothing is set on anything
        target = self._top()
        if not (isinstance(target, Inert) or type(target) is OrderedDict):
            raise Refused(f"BUILD on {what(target)} (only on placeholders and state dicts)")

    def _setitems(self, items: list[Any]) -> None:
        target = self._top()
        if isinstance(target, Inert):
            return
        if type(target) not in (dict, OrderedDict):
            raise Refused(f"SETITEM on {what(target)} (only on dicts)")
        if len(items) % 2:
            raise Refused("SETITEMS with a key and no value")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _appends(self, items: list[Any]) -> None:
        target = self._top()
        if isinstance(target, Inert):
            return
        if type(target) is not list:
            raise Refused(f"APPEND on {what(target)} (only on lists)")
        target.extend(items)

    def _additems(self) -> None:
        items = self._pop_mark()
        if type(self._top()) is not set:
            raise Refused(f"ADDITEMS on {what(self._top())} (only on sets)")
        self._top().update(items)

    def _persid(self) -> None:
        self.stack.append(self.load_storage(self._pop()))

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise Refused(f"memo entry {index} was never stored")
        self.stack.append(self.memo[index])

    def _put(self, index: int) -> None:
        self.memo[index] = self._top()


_STOP = object()


def _unpacked(fmt: str) -> Callable[[Unpickler], None]:
    size = struct.calcsize(fmt)
    return lambda u: u.stack.append(struct.unpack(fmt, u._read(size))[0])


def _counted(fmt: str, decode: Callable[[bytes], Any]) -> Callable[[Unpickler], None]:
    size = struct.calcsize(fmt)
    return lambda u: u.stack.append(decode(u._read(struct.unpack(fmt, u._read(size))[0])))


def _text(data: bytes) -> str:
    return str(data, "utf-8", "surrogatepass")


def _tuple(n: int) -> Callable[[Unpickler], None]:
    def handler(u: Unpickler) -> None:
        if len(u.stack) < n:
            raise Refused("the pickle reads an empty stack")
        items = tuple(u.stack[-n:])
        del u.stack[-n:]
        u.stack.append(items)
    return handler


def _marked(make: Callable[[list[Any]], Any]) -> Callable[[Unpickler], None]:
    def handler(u: Unpickler) -> None:
        items = u._pop_mark()  # first: it swaps u.stack back to the stack below the mark
        u.stack.append(make(items))
    return handler


def _pop_any(u: Unpickler) -> None:
    if u.stack:
        u.stack.pop()
    else:
        u._pop_mark()


def _dict(u: Unpickler) -> None:
    items = u._pop_mark()
    u.stack.append({})
    u._setitems(items)


def _setitem(u: Unpickler) -> None:
    value = u._pop()
    u._setitems([u._pop(), value])


def _append(u: Unpickler) -> None:
    u._appends([u._pop()])


_H = Callable[[Unpickler], Any]
_HANDLERS: dict[int, _H] = {op[0]: fn for op, fn in {
    pickle.PROTO: lambda u: u._read(1), pickle.FRAME: lambda u: u._read(8), pickle.STOP: lambda u: _STOP,
    pickle.MARK: Unpickler._mark,
    pickle.POP: _pop_any, pickle.POP_MARK: lambda u: u._pop_mark(), pickle.DUP: lambda u: u.stack.append(u._top()),
    pickle.NONE: lambda u: u.stack.append(None), pickle.NEWTRUE: lambda u: u.stack.append(True),
    pickle.NEWFALSE: lambda u: u.stack.append(False),
    pickle.BININT: _unpacked("<i"), pickle.BININT1: _unpacked("<B"), pickle.BININT2: _unpacked("<H"),
    pickle.BINFLOAT: _unpacked(">d"),
    pickle.LONG1: _counted("<B", lambda b: int.from_bytes(b, "little", signed=True)),
    pickle.BINUNICODE: _counted("<I", _text), pickle.SHORT_BINUNICODE: _counted("<B", _text),
    pickle.BINUNICODE8: _counted("<Q", _text),
    pickle.BINSTRING: _counted("<i", _text), pickle.SHORT_BINSTRING: _counted("<B", _text),
    pickle.BINBYTES: _counted("<I", bytes), pickle.SHORT_BINBYTES: _counted("<B", bytes),
    pickle.BINBYTES8: _counted("<Q", bytes),
    pickle.EMPTY_TUPLE: lambda u: u.stack.append(()), pickle.TUPLE: _marked(tuple),
    pickle.TUPLE1: _tuple(1), pickle.TUPLE2: _tuple(2), pickle.TUPLE3: _tuple(3),
    pickle.EMPTY_LIST: lambda u: u.stack.append([]), pickle.LIST: _marked(list),
    pickle.APPEND: _append, pickle.APPENDS: lambda u: u._appends(u._pop_mark()),
    pickle.EMPTY_DICT: lambda u: u.stack.append({}), pickle.DICT: _dict,
    pickle.SETITEM: _setitem, pickle.SETITEMS: lambda u: u._setitems(u._pop_mark()),
    pickle.EMPTY_SET: lambda u: u.stack.append(set()), pickle.ADDITEMS: Unpickler._additems,
    pickle.FROZENSET: _marked(frozenset),
    pickle.BINGET: lambda u: u._get(u._read(1)[0]),
    pickle.LONG_BINGET: lambda u: u._get(struct.unpack("<I", u._read(4))[0]),
    pickle.BINPUT: lambda u: u._put(u._read(1)[0]),
    pickle.LONG_BINPUT: lambda u: u._put(struct.unpack("<I", u._read(4))[0]),
    pickle.MEMOIZE: lambda u: u._put(len(u.memo)),
    pickle.GLOBAL: Unpickler._global, pickle.STACK_GLOBAL: Unpickler._stack_global,
    pickle.REDUCE: Unpickler._reduce, pickle.NEWOBJ: Unpickler._newobj, pickle.NEWOBJ_EX: Unpickler._newobj_ex,
    pickle.BUILD: Unpickler._build, pickle.BINPERSID: Unpickler._persid,
}.items()}
_OPNAMES = {ord(op.code): op.name for op in pickletools.opcodes}
