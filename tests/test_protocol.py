import json

import numpy as np
import pytest

from rtdecode.errors import ProtocolError
from rtdecode.protocol import PROTOCOL_VERSION, Message, decode, decode_png, encode, encode_png


def _volume_msg(**extra):
    fields = {"run": 1, "index": 3, "motion": [0.1, 0, 0, 0, 0, 0], "fd": 0.1, "dvars": 2.0, "tsnr": 50.0, "latency_ms": 30.0}
    return Message("volume", {**fields, **extra}, arrays={"vector": np.arange(15, dtype=np.float32).reshape(3, 5)})


def test_roundtrip_keeps_fields_arrays_and_images():
    img = np.zeros((7, 9, 3), np.uint8)
    img[2, 3] = (255, 10, 0)
    msg = _volume_msg()
    msg.images["recon"] = encode_png(img)
    out = decode(encode(msg))
    assert out.type == "volume" and out.fields["index"] == 3
    np.testing.assert_array_equal(out.arrays["vector"], msg.arrays["vector"])
    assert out.arrays["vector"].dtype == np.float32
    np.testing.assert_array_equal(decode_png(out.images["recon"]), img)


def test_frames_are_topic_header_raw():
    frames = encode(_volume_msg())
    assert frames[0] == b"volume"
    header = json.loads(frames[1])
    assert header["v"] == PROTOCOL_VERSION and header["frames"][0]["shape"] == [3, 5]
    assert len(frames[2]) == 15 * 4


def _tamper(frames, **changes):
    header = json.loads(frames[1])
    header.update(changes)
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: _tamper(f, v=99), "version 1 expected, got 99"),
        (lambda f: [b"beta", *f[1:]], "does not match header type"),
        (lambda f: _tamper(f, type="pickle"), "message type must be one of"),
        (lambda f: [f[0], b"\x80\x04not json", *f[2:]], "not JSON"),
        (lambda f: [*f[:2], f[2][:-4]], "needs 60 bytes, frame has 56"),
        (lambda f: f[:2], "describes 1 frame(s), message carries 0"),
        (lambda f: [f[0], f[1].replace(b'"<f4"', b'"|O8"'), *f[2:]], "dtype must be one of"),
        (lambda f: [f[0], f[1].replace(b'"run":1,', b""), *f[2:]], "missing field(s) ['run']"),
        (lambda f: [f[0]], "at least 2 frames"),
        (lambda f: [f[0], b"x" * 70000], "exceeds"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(mutate, message):
    with pytest.raises(ProtocolError) as info:
        decode(mutate(encode(_volume_msg())))
    assert message in str(info.value)


def test_encode_refuses_missing_fields_and_non_json():
    with pytest.raises(ProtocolError, match="missing field"):
        encode(Message("volume", {"run": 1}))
    with pytest.raises(ProtocolError, match="not plain JSON"):
        encode(_volume_msg(extra=object()))
    with pytest.raises(ProtocolError, match="expected PNG"):
        encode(Message("status", {"state": "x"}, images={"img": b"GIF89a..."}))


def test_big_endian_arrays_arrive_little_endian():
    msg = Message("status", {"state": "ok"}, arrays={"x": np.arange(4, dtype=">i4")})
    out = decode(encode(msg))
    assert out.arrays["x"].dtype.str == "<i4"
    np.testing.assert_array_equal(out.arrays["x"], [0, 1, 2, 3])
