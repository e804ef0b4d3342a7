"""The rtdecode wire protocol: ``[topic, JSON header, raw frames...]``, versioned and validated.

Every process speaks this module and nothing else: arrays travel as a dtype/shape description in the
header plus their raw bytes in a frame, images as PNG bytes. Nothing is ever pickled. A message that
fails validation raises :class:`~rtdecode.base.errors.ProtocolError` naming the field at fault, so a receiver
can log one line and carry on.

This module imports neither ZeroMQ nor Qt: the GUI and the tests use it on plain byte lists.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtdecode.base.errors import ProtocolError
from rtdecode.wire.schema import (
    BOOT,
    REQUIRED_ARRAYS,
    SCHEMAS,
    check_array,
    check_fields,
    check_image,
    sendable_text,
)

PROTOCOL_VERSION = 2  # 2: typed fields (rtdecode.wire.schema) and a boot id in every envelope
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024  # also each socket's ZMQ_MAXMSGSIZE unless configured otherwise
MAX_FRAMES = 8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Little-endian numeric dtypes only: anything else (objects, strings, big-endian) is refused.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)

ENVELOPE_FIELDS = ("v", "type", "seq", "time", "boot", "frames")
MESSAGE_TYPES = frozenset(SCHEMAS)


def new_boot_id() -> str:
    """A random id for one start of a sending process: receivers reset their duplicate filters on a new one."""
    return secrets.token_hex(8)


@dataclass
class Message:
    """One decoded wire message.

    Attributes:
        type: message type, also its topic.
        fields: header fields specific to the type (run, index, ...).
        arrays: numpy arrays carried as raw frames, by name.
        images: PNG-encoded images carried as raw frames, by name.
        seq: sender's sequence number.
        time: sender's wall-clock time (seconds since the epoch).
        boot: the sending process start's id (see :func:`new_boot_id`); "" until a socket stamps it.
    """

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    seq: int = 0
    time: float = 0.0
    boot: str = ""


def encode(message: Message) -> list[bytes]:
    """Encode a message to ZeroMQ frames ``[topic, header, *raw]``."""
    _check_type(message.type)
    fields = sendable_text(message.type, message.fields)
    _check_fields(message.type, fields)
    _check_required_arrays(message)
    frames_desc: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for name, arr in message.arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _little_endian()):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype must be one of {sorted(ALLOWED_DTYPES)}, got {dtype}")
        check_array(message.type, name, dtype, list(arr.shape))
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ProtocolError(f"{message.type}.{name}: {int((~np.isfinite(arr)).sum())} value(s) are NaN or infinite")
        frames_desc.append({"name": name, "kind": "array", "dtype": dtype, "shape": list(arr.shape)})
        raw.append(arr.tobytes())
    for name, png in message.images.items():
        check_image(message.type, name)
        if not bytes(png[:8]) == PNG_SIGNATURE:
            raise ProtocolError(f"image {name!r}: expected PNG bytes, got data starting {bytes(png[:8])!r}")
        frames_desc.append({"name": name, "kind": "png"})
        raw.append(bytes(png))
    header = {
        "v": PROTOCOL_VERSION,
        "type": message.type,
        "seq": int(message.seq),
        "time": float(message.time or time.time()),
        "boot": message.boot or _PROCESS_BOOT,
        "frames": frames_desc,
        **fields,
    }
    try:
        header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{message.type} header is not plain JSON: {exc}") from exc
    return [message.type.encode(), header_bytes, *raw]


def decode(frames: Sequence[bytes | memoryview]) -> Message:
    """Decode and validate frames received from a socket; raise ProtocolError on any defect."""
    if len(frames) < 2:
        raise ProtocolError(f"message: expected at least 2 frames (topic, header), got {len(frames)}")
    if len(frames) > MAX_FRAMES + 2:
        raise ProtocolError(f"message: at most {MAX_FRAMES} data frames allowed, got {len(frames) - 2}")
    topic = bytes(frames[0]).decode("utf-8", errors="replace")
    header_raw = bytes(frames[1])
    if len(header_raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{topic}: header of {len(header_raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(header_raw)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5,000-digit number, deep nesting
        raise ProtocolError(f"{topic}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"{topic}: header must be a JSON object, got {type(header).__name__}")
    missing = [k for k in ENVELOPE_FIELDS if k not in header]
    if missing:
        raise ProtocolError(f"{topic}: header lacks envelope field(s) {missing}")
    if header["v"] != PROTOCOL_VERSION or isinstance(header["v"], bool):
        raise ProtocolError(f"{topic}: protocol version {PROTOCOL_VERSION} expected, got {header['v']!r}")
    mtype = header["type"]
    _check_type(mtype)
    if mtype != topic:
        raise ProtocolError(f"topic {topic!r} does not match header type {mtype!r}")
    descs = header["frames"]
    if not isinstance(descs, list) or len(descs) != len(frames) - 2:
        n = len(descs) if isinstance(descs, list) else descs
        raise ProtocolError(f"{mtype}: header describes {n} frame(s), message carries {len(frames) - 2}")
    seq, sent, boot = header["seq"], header["time"], header["boot"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**53:
        raise ProtocolError(f"{mtype}: envelope seq must be an integer in [0, 2**53), got {seq!r}")
    if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not math.isfinite(sent):
        raise ProtocolError(f"{mtype}: envelope time must be a finite number, got {sent!r}")
    if not isinstance(boot, str) or not BOOT.fullmatch(boot):
        raise ProtocolError(f"{mtype}: envelope boot must be 16 hex digits, got {boot!r}")
    fields = {k: v for k, v in header.items() if k not in ENVELOPE_FIELDS}
    _check_fields(mtype, fields)
    msg = Message(type=mtype, fields=fields, seq=seq, time=float(sent), boot=boot)
    for desc, frame in zip(descs, frames[2:], strict=False):
        _decode_frame(mtype, desc, frame, msg)
    _check_required_arrays(msg)
    return msg


def _check_required_arrays(message: Message) -> None:
    missing = [a for a in REQUIRED_ARRAYS.get(message.type, ()) if a not in message.arrays]
    if missing:
        raise ProtocolError(f"{message.type}: missing array frame(s) {missing}")


def _decode_frame(mtype: str, desc: Any, frame: bytes | memoryview, msg: Message) -> None:
    if not isinstance(desc, Mapping) or "name" not in desc or "kind" not in desc:
        raise ProtocolError(f"{mtype}: frame description must have 'name' and 'kind', got {desc!r}")
    name, kind = desc["name"], desc["kind"]
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 32:
        raise ProtocolError(f"{mtype}: frame name must be a short identifier, got {name!r}")
    data = bytes(frame)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{mtype}.{name}: frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    if kind == "png":
        check_image(mtype, name)
        if data[:8] != PNG_SIGNATURE:
            raise ProtocolError(f"{mtype}.{name}: expected PNG bytes, got {data[:8]!r}")
        msg.images[name] = data
        return
    if kind != "array":
        raise ProtocolError(f"{mtype}.{name}: frame kind must be 'array' or 'png', got {kind!r}")
    dtype, shape = desc.get("dtype"), desc.get("shape")
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{mtype}.{name}: dtype must be one of {sorted(ALLOWED_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(f"{mtype}.{name}: shape must be a list of non-negative ints, got {shape!r}")
    check_array(mtype, name, dtype, shape)
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if expected != len(data):
        raise ProtocolError(
            f"{mtype}.{name}: dtype {dtype} shape {shape} needs {expected} bytes, frame has {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(f"{mtype}.{name}: {int((~np.isfinite(arr)).sum())} value(s) are NaN or infinite")
    msg.arrays[name] = arr


def _check_type(mtype: Any) -> None:
    if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:
        raise ProtocolError(f"message type must be one of {sorted(MESSAGE_TYPES)}, got {mtype!r}")


def _check_fields(mtype: str, fields: Mapping[str, Any]) -> None:
    clash = [k for k in fields if k in ENVELOPE_FIELDS]
    if clash:
        raise ProtocolError(f"{mtype}: field name(s) {clash} are reserved for the envelope")
    check_fields(mtype, fields)


_PROCESS_BOOT = new_boot_id()  # for messages sent outside a Publisher (replies, one-off commands)


def _little_endian() -> bool:
    return np.little_endian


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) image as PNG bytes."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ProtocolError(f"image must be uint8 (H, W[, 3]), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to a uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))
