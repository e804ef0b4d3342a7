"""``rtdecode bench wire``: the betas channel and result images over loopback."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from rtdecode.base.timing import summarize

BENCH_SESSION = {"subject": "bench", "session": "01", "session_uid": "0" * 32}


def bench_wire(picture: np.ndarray, n_voxels: int = 15724, n: int = 500, seed: int = 0) -> dict:
    """Beta send -> receive (validated) -> ack -> ack received, and ``picture`` as a PNG result end to end.

    PNG size and time depend on content, so ``picture`` should look like one (H x W x 3 uint8)."""
    from rtdecode.wire.protocol import Message, decode_png, encode_png
    from rtdecode.wire.reliable import BetaReceiver, BetaSender, beta_key, beta_message
    from rtdecode.wire.sockets import Publisher, Subscriber

    rng = np.random.default_rng(seed)
    beta = rng.normal(size=n_voxels).astype(np.float32)
    receiver = BetaReceiver("tcp://127.0.0.1:0")
    with tempfile.TemporaryDirectory() as tmp:
        sender = BetaSender(receiver.address, Path(tmp) / "acked.keys", resend_s=60)
        time.sleep(0.2)
        one_way, round_trip = [], []
        for trial in range(n):
            t0 = time.perf_counter()
            sender.send(beta_message(1, trial, beta, BENCH_SESSION, image="x"))
            peer, msg = receiver.recv(timeout_ms=5000)
            t1 = time.perf_counter()
            receiver.ack(peer, beta_key(msg.fields))
            sender.pump(timeout_ms=5000)
            t2 = time.perf_counter()
            assert msg.arrays["beta"].shape == (n_voxels,)
            one_way.append((t1 - t0) * 1e3)
            round_trip.append((t2 - t0) * 1e3)
        sender.close()
    receiver.close()
    image = np.ascontiguousarray(picture, np.uint8)
    pub = Publisher("tcp://127.0.0.1:0")
    sub = Subscriber(pub.address)
    time.sleep(0.3)
    png_ms, image_ms = [], []
    for trial in range(20):
        t0 = time.perf_counter()
        png = encode_png(image)
        t1 = time.perf_counter()
        pub.send(Message("result", {"run": 1, "trial": trial}, images={"reconstruction": png}))
        msg = sub.recv(timeout_ms=5000)
        decode_png(msg.images["reconstruction"])
        t2 = time.perf_counter()
        png_ms.append((t1 - t0) * 1e3)
        image_ms.append((t2 - t0) * 1e3)
    pub.close()
    sub.close()
    ow, rt, im = summarize(one_way), summarize(round_trip), summarize(image_ms)
    return {"stage": "wire", "voxels": n_voxels, "betas": n, "beta_one_way_median_ms": ow["median_ms"],
            "beta_one_way_p99_ms": ow["p99_ms"], "beta_acked_median_ms": rt["median_ms"], "beta_acked_p99_ms": rt["p99_ms"],
            "png_bytes": len(png), "png_encode_median_ms": float(np.median(png_ms)),
            "image_result_median_ms": im["median_ms"], "image_result_p99_ms": im["p99_ms"]}
