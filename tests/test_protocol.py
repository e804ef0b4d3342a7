import json

import numpy as np
import pytest

from rtdecode.base.errors import ProtocolError
from rtdecode.wire.protocol import PROTOCOL_VERSION, Message, decode, decode_png, encode, encode_png

UID = "0123456789abcdef0123456789abcdef"


def _volume_msg(**extra):
    fields = {"run": 1, "index": 3, "motion": [0.1, 0, 0, 0, 0, 0], "fd": 0.1, "dvars": 2.0, "tsnr": 50.0, "latency_ms": 30.0}
    return Message("volume", {**fields, **extra})


def _beta_msg(**extra):
    fields = {"run": 2, "trial": 7, "image": "sim-00007", "version": "realtime", "subject": "01", "session": "02",
              "session_uid": UID}
    return Message("beta", {**fields, **extra}, arrays={"beta": np.arange(15, dtype=np.float32)})


def test_roundtrip_keeps_fields_arrays_and_images():
    img = np.zeros((7, 9, 3), np.uint8)
    img[2, 3] = (255, 10, 0)
    out = decode(encode(_beta_msg()))
    assert out.type == "beta" and out.fields["trial"] == 7 and out.fields["session_uid"] == UID
    np.testing.assert_array_equal(out.arrays["beta"], np.arange(15))
    assert out.arrays["beta"].dtype == np.float32
    assert len(out.boot) == 16
    res = decode(encode(Message("result", {"run": 1, "trial": 0}, images={"reconstruction": encode_png(img)})))
    np.testing.assert_array_equal(decode_png(res.images["reconstruction"]), img)


def test_frames_are_topic_header_raw():
    frames = encode(_beta_msg())
    assert frames[0] == b"beta"
    header = json.loads(frames[1])
    assert header["v"] == PROTOCOL_VERSION == 2 and header["frames"][0]["shape"] == [15]
    assert len(header["boot"]) == 16
    assert len(frames[2]) == 15 * 4


def _tamper(raw, drop=(), **changes):
    header = json.loads(raw[1])
    header.update(changes)
    for k in drop:
        header.pop(k)
    return [raw[0], json.dumps(header).encode(), *raw[2:]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: _tamper(f, v=1), "version 2 expected, got 1"),
        (lambda f: _tamper(f, v=True), "version 2 expected"),
        (lambda f: [b"volume", *f[1:]], "does not match header type"),
        (lambda f: _tamper(f, type="pickle"), "message type must be one of"),
        (lambda f: [f[0], b"\x80\x04not json", *f[2:]], "not JSON"),
        (lambda f: [*f[:2], f[2][:-4]], "needs 60 bytes, frame has 56"),
        (lambda f: f[:2], "describes 1 frame(s), message carries 0"),
        (lambda f: [f[0], f[1].replace(b'"<f4"', b'"|O8"'), *f[2:]], "dtype must be one of"),
        (lambda f: _tamper(f, drop=["run"]), "missing field 'run'"),
        (lambda f: [f[0]], "at least 2 frames"),
        (lambda f: [f[0], b"x" * 70000], "exceeds"),
        # wrong types, ranges, path characters, huge numbers, NaN
        (lambda f: _tamper(f, run="abc"), "beta.run: expected an integer, got 'abc'"),
        (lambda f: _tamper(f, run=True), "beta.run: expected an integer"),
        (lambda f: _tamper(f, trial=10**40), "beta.trial: expected a finite value"),
        (lambda f: _tamper(f, run=0), "beta.run: expected a finite value in [1, 9999]"),
        (lambda f: _tamper(f, version="a:b"), "beta.version: expected a value matching"),
        (lambda f: _tamper(f, version="x/../../y"), "beta.version: expected a value matching"),
        (lambda f: _tamper(f, image="../../etc/passwd"), "beta.image: expected a value matching"),
        (lambda f: _tamper(f, subject="01/.."), "beta.subject: expected a value matching"),
        (lambda f: _tamper(f, session_uid="zz"), "beta.session_uid"),
        (lambda f: _tamper(f, drop=["session_uid"]), "missing field 'session_uid'"),
        (lambda f: _tamper(f, onset=float("nan")), "beta.onset: expected a finite value"),
        (lambda f: _tamper(f, surprise=1), "unknown field 'surprise'"),
        (lambda f: _tamper(f, seq="1"), "envelope seq must be an integer"),
        (lambda f: _tamper(f, boot="../x"), "envelope boot must be 16 hex digits"),
        (lambda f: _tamper(f, frames=[{"name": "../x", "kind": "array", "dtype": "<f4", "shape": [15]}]),
         "frame name must be a short identifier"),
        (lambda f: _tamper(f, frames=[{"name": "other", "kind": "array", "dtype": "<f4", "shape": [15]}]),
         "unexpected array frame 'other'"),
        (lambda f: _tamper(f, frames=[{"name": "beta", "kind": "array", "dtype": "<f4", "shape": [3, 5]}]),
         "expected 1-D"),
        (lambda f: [*f[:2], np.full(15, np.nan, np.float32).tobytes()], "15 value(s) are NaN or infinite"),
        (lambda f: [f[0], f[1][:-1] + b',"deep":' + b"[" * 5000 + b"]" * 5000 + b"}", *f[2:]], "not JSON"),
        (lambda f: [f[0], f[1][:-1] + b',"big":' + b"9" * 6000 + b"}", *f[2:]], "not JSON"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(mutate, message):
    with pytest.raises(ProtocolError) as info:
        decode(mutate(encode(_beta_msg())))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"motion": [0.1, 0, 0]}, "volume.motion: expected 6 items, got 3"),
        ({"fd": -1.0}, "volume.fd: expected a finite value"),
        ({"fd": "0.1"}, "volume.fd: expected a number, got '0.1'"),
        ({"fd_alarm": 1}, "volume.fd_alarm: expected true or false"),
        ({"index": 1.5}, "volume.index: expected an integer"),
    ],
)
def test_every_field_is_typed_and_ranged(fields, message):
    frames = encode(_volume_msg())
    with pytest.raises(ProtocolError) as info:
        decode(_tamper(frames, **fields))
    assert message in str(info.value)


def test_a_beta_without_its_array_is_refused_both_ways():
    with pytest.raises(ProtocolError, match="missing array frame"):
        encode(Message("beta", _beta_msg().fields))
    frames = encode(_beta_msg())
    with pytest.raises(ProtocolError, match="missing array frame"):
        decode(_tamper(frames[:2], frames=[]))


def test_encode_refuses_missing_fields_and_non_json():
    with pytest.raises(ProtocolError, match="missing field"):
        encode(Message("volume", {"run": 1}))
    with pytest.raises(ProtocolError, match="expected a string"):
        encode(Message("status", {"state": "x", "reason": object()}))
    with pytest.raises(ProtocolError, match="expected PNG"):
        encode(Message("result", {"run": 1, "trial": 1}, images={"reconstruction": b"GIF89a..."}))
    with pytest.raises(ProtocolError, match="NaN"):
        encode(_beta_msg().__class__("beta", _beta_msg().fields, arrays={"beta": np.array([np.nan], np.float32)}))


def test_big_endian_arrays_arrive_little_endian():
    msg = _beta_msg()
    msg.arrays["beta"] = np.arange(4, dtype=">f4")
    out = decode(encode(msg))
    assert out.arrays["beta"].dtype.str == "<f4"
    np.testing.assert_array_equal(out.arrays["beta"], [0, 1, 2, 3])
