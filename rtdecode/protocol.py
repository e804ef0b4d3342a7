"""The rtdecode wire protocol: ``[topic, JSON header, raw frames...]``, versioned and validated.

Every process speaks this module and nothing else: arrays travel as a dtype/shape description in the
header plus their raw bytes in a frame, images as PNG bytes. Nothing is ever pickled. A message that
fails validation raises :class:`~rtdecode.errors.ProtocolError` naming the field at fault, so a receiver
can log one line and carry on.

This module imports neither ZeroMQ nor Qt: the GUI and the tests use it on plain byte lists.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtdecode.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_FRAMES = 32
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Little-endian numeric dtypes only: anything else (objects, strings, big-endian) is refused.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)

# Message type -> header fields it must carry (beyond the envelope). Topics are the type names, so a
# subscriber filters by type with a plain prefix subscription.
MESSAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "volume": ("run", "index", "motion", "fd", "dvars", "tsnr", "latency_ms"),
    "volume_rejected": ("path", "reason"),
    "volume_missing": ("run", "index"),
    "run_started": ("run", "series", "shape", "n_voxels"),
    "run_ended": ("run", "n_volumes"),
    "status": ("state",),
    "heartbeat": ("service",),
    "beta": ("run", "trial", "image"),
    "ack": ("ref",),
    "result": ("run", "trial"),
    "command": ("action",),  # console -> scanner side: start_run | stop_run
    "reply": ("action", "ok", "detail"),
}

ENVELOPE_FIELDS = ("v", "type", "seq", "time", "frames")


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
    """

    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    seq: int = 0
    time: float = 0.0


def encode(message: Message) -> list[bytes]:
    """Encode a message to ZeroMQ frames ``[topic, header, *raw]``."""
    _check_type(message.type)
    _check_fields(message.type, message.fields)
    frames_desc: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for name, arr in message.arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _little_endian()):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        dtype = arr.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype must be one of {sorted(ALLOWED_DTYPES)}, got {dtype}")
        frames_desc.append({"name": name, "kind": "array", "dtype": dtype, "shape": list(arr.shape)})
        raw.append(arr.tobytes())
    for name, png in message.images.items():
        if not bytes(png[:8]) == PNG_SIGNATURE:
            raise ProtocolError(f"image {name!r}: expected PNG bytes, got data starting {bytes(png[:8])!r}")
        frames_desc.append({"name": name, "kind": "png"})
        raw.append(bytes(png))
    header = {
        "v": PROTOCOL_VERSION,
        "type": message.type,
        "seq": int(message.seq),
        "time": float(message.time or time.time()),
        "frames": frames_desc,
        **message.fields,
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{topic}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"{topic}: header must be a JSON object, got {type(header).__name__}")
    missing = [k for k in ENVELOPE_FIELDS if k not in header]
    if missing:
        raise ProtocolError(f"{topic}: header lacks envelope field(s) {missing}")
    if header["v"] != PROTOCOL_VERSION:
        raise ProtocolError(f"{topic}: protocol version {PROTOCOL_VERSION} expected, got {header['v']!r}")
    mtype = header["type"]
    _check_type(mtype)
    if mtype != topic:
        raise ProtocolError(f"topic {topic!r} does not match header type {mtype!r}")
    descs = header["frames"]
    if not isinstance(descs, list) or len(descs) != len(frames) - 2:
        n = len(descs) if isinstance(descs, list) else descs
        raise ProtocolError(f"{mtype}: header describes {n} frame(s), message carries {len(frames) - 2}")
    fields = {k: v for k, v in header.items() if k not in ENVELOPE_FIELDS}
    _check_fields(mtype, fields)
    msg = Message(type=mtype, fields=fields, seq=int(header["seq"]), time=float(header["time"]))
    for desc, frame in zip(descs, frames[2:], strict=False):
        _decode_frame(mtype, desc, frame, msg)
    return msg


def _decode_frame(mtype: str, desc: Any, frame: bytes | memoryview, msg: Message) -> None:
    if not isinstance(desc, Mapping) or "name" not in desc or "kind" not in desc:
        raise ProtocolError(f"{mtype}: frame description must have 'name' and 'kind', got {desc!r}")
    name, kind = str(desc["name"]), desc["kind"]
    data = bytes(frame)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{mtype}.{name}: frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    if kind == "png":
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
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if expected != len(data):
        raise ProtocolError(
            f"{mtype}.{name}: dtype {dtype} shape {shape} needs {expected} bytes, frame has {len(data)}"
        )
    msg.arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape)


def _check_type(mtype: Any) -> None:
    if mtype not in MESSAGE_FIELDS:
        raise ProtocolError(f"message type must be one of {sorted(MESSAGE_FIELDS)}, got {mtype!r}")


def _check_fields(mtype: str, fields: Mapping[str, Any]) -> None:
    clash = [k for k in fields if k in ENVELOPE_FIELDS]
    if clash:
        raise ProtocolError(f"{mtype}: field name(s) {clash} are reserved for the envelope")
    missing = [k for k in MESSAGE_FIELDS[mtype] if k not in fields]
    if missing:
        raise ProtocolError(f"{mtype}: missing field(s) {missing}")


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
