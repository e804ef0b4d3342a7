"""``rtdecode decode``: the decoder process. Betas in (acknowledged), results out (PUB), all on disk.

Per beta: retrieval goes out at once (a ``result`` with ``stage = "retrieval"``), the reconstruction
follows (``stage = "reconstruction"``) from a queue that a policy keeps from falling behind the trial
stream. Every result is written to the output folder before it is published and before the beta is
acknowledged, so a decoder killed at any point and restarted decodes each beta exactly once and
finishes any reconstruction it had not done.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rtdecode.decoder.core import Decoder
from rtdecode.protocol import Message, encode_png
from rtdecode.reliable import BetaReceiver, Ledger, beta_key
from rtdecode.transport import Publisher

log = logging.getLogger(__name__)

POLICIES = ("every", "newest")  # or "every-N": reconstruct every N-th trial


class ResultStore:
    """``results.tsv`` (one row per decoded beta), tokens and images per trial, and two ledgers."""

    COLUMNS = ("key", "run", "trial", "version", "image", "top_ids", "top_scores", "backbone_ms", "retrieval_ms",
               "prior_ms", "t_received", "t_done")

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        (self.folder / "tokens").mkdir(parents=True, exist_ok=True)
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        self.decoded = Ledger(self.folder / "decoded.keys")
        self.reconstructed = Ledger(self.folder / "reconstructed.keys")

    @staticmethod
    def stem(key: str) -> str:
        run, trial, version = key.split(":")
        return f"run-{int(run):02d}_trial-{int(trial):03d}_{version}"

    def save_retrieval(self, key: str, fields: dict, tokens: np.ndarray, ids: list[str], scores: list[float],
                       timings: dict, t_received: float, blurry_latent: np.ndarray | None = None,
                       clip: np.ndarray | None = None) -> None:
        np.save(self.folder / "tokens" / f"{self.stem(key)}.npy", tokens.astype(np.float32))
        if clip is not None:  # for scoring retrieval against any set of images later
            np.save(self.folder / "tokens" / f"{self.stem(key)}_clip.npy", clip.astype(np.float32))
        if blurry_latent is not None:
            np.save(self.folder / "tokens" / f"{self.stem(key)}_blurry.npy", blurry_latent.astype(np.float32))
        path = self.folder / "results.tsv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            if new:
                w.writerow(self.COLUMNS)
            w.writerow([key, fields["run"], fields["trial"], fields.get("version", "realtime"), fields.get("image", ""),
                        ",".join(ids), ",".join(f"{s:.4f}" for s in scores), f"{timings['backbone_ms']:.2f}",
                        f"{timings['retrieval_ms']:.2f}", f"{timings['prior_ms']:.2f}", f"{t_received:.3f}",
                        f"{time.time():.3f}"])
        self.decoded.add(key)  # the commit point: after this the beta is never decoded again

    def save_image(self, key: str, image: np.ndarray) -> None:
        from PIL import Image

        tmp = self.folder / "images" / f".{self.stem(key)}.png"
        Image.fromarray(image).save(tmp, format="PNG")
        tmp.replace(self.folder / "images" / f"{self.stem(key)}.png")
        self.reconstructed.add(key)

    def pending_reconstructions(self) -> list[str]:
        return [k for k in sorted(self.decoded.keys) if k not in self.reconstructed]

    def clip_tokens(self, key: str) -> np.ndarray:
        """The retrieval-head tokens of a decoded beta."""
        return np.load(self.folder / "tokens" / f"{self.stem(key)}_clip.npy", allow_pickle=False)

    def tokens(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The prior tokens of a decoded beta, and its blurry latent when the model has one."""
        blurry = self.folder / "tokens" / f"{self.stem(key)}_blurry.npy"
        return (np.load(self.folder / "tokens" / f"{self.stem(key)}.npy", allow_pickle=False),
                np.load(blurry, allow_pickle=False) if blurry.exists() else None)


class DecoderService:
    """Owns the sockets, the result store and the reconstruction queue; :meth:`run` is the loop."""

    def __init__(self, decoder: Decoder, out: str | Path, betas_address: str, results_address: str,
                 policy: str = "every", heartbeat_s: float = 1.0, curve: dict | None = None,
                 replay: int = 20) -> None:
        if policy not in POLICIES and not (policy.startswith("every-") and policy[6:].isdigit()):
            raise ValueError(f"reconstruction policy must be every, newest or every-N, got {policy!r}")
        self.decoder = decoder
        self.store = ResultStore(out)
        self.receiver = BetaReceiver(betas_address, curve=curve)
        self.publisher = Publisher(results_address, curve=curve, replay=replay)
        self.policy = policy
        self.heartbeat_s = heartbeat_s
        self.queue: deque[tuple[str, dict]] = deque((k, {}) for k in self.store.pending_reconstructions())
        self.decoded_here = 0
        self._stop = threading.Event()
        self._last_beat = 0.0
        if self.queue:
            log.info("resuming: %d reconstruction(s) still to do", len(self.queue))

    def stop(self) -> None:
        self._stop.set()

    def run(self, until: Callable[[DecoderService], bool] | None = None) -> None:
        try:
            while not self._stop.is_set() and not (until and until(self)):
                self.step(timeout_ms=20 if self.queue else 100)
        finally:
            self.close()

    def step(self, timeout_ms: int = 100) -> None:
        got = self.receiver.recv(timeout_ms)
        if got is not None:
            peer, msg = got
            if msg.type == "beta":
                self._on_beta(peer, msg)
            else:
                log.warning("betas channel: ignored a %r message", msg.type)
        elif self.queue:
            self._reconstruct_next()
        self.publisher.serve()  # a display that joins now gets the latest results at once
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            self.publisher.send(Message("heartbeat", {"service": "decoder", "queue": len(self.queue),
                                                      "decoded": len(self.store.decoded.keys)}))

    def _on_beta(self, peer: bytes, msg: Message) -> None:
        key = beta_key(msg.fields)
        if key in self.store.decoded:
            self.receiver.ack(peer, key)  # a resend after a restart: acknowledged, not decoded again
            return
        beta = msg.arrays.get("beta")
        if beta is None or beta.ndim != 1:
            log.error("beta %s: expected a 1-D array 'beta', got %s", key, None if beta is None else beta.shape)
            self.receiver.ack(peer, key)
            return
        t_received = time.time()
        try:
            ret = self.decoder.retrieve(beta)
        except ValueError as exc:  # e.g. a voxel count the model's ridge does not take
            log.error("beta %s cannot be decoded: %s", key, exc)
            self.receiver.ack(peer, key)
            return
        self.store.save_retrieval(key, msg.fields, ret.tokens, ret.ids, ret.scores, ret.timings_ms, t_received,
                                  ret.blurry_latent, ret.clip)
        self.decoded_here += 1
        self.publisher.send(Message("result", {
            "run": msg.fields["run"], "trial": msg.fields["trial"], "version": msg.fields.get("version", "realtime"),
            "image": msg.fields.get("image", ""), "stage": "retrieval", "top_ids": ret.ids, "top_scores": ret.scores,
            "timings_ms": ret.timings_ms}))
        self.receiver.ack(peer, key)
        if self._wants_reconstruction(msg.fields):
            if self.policy == "newest":
                self.queue.appendleft((key, msg.fields))
            else:
                self.queue.append((key, msg.fields))
        else:
            self.store.reconstructed.add(key)  # skipped by policy: nothing left to do for it

    def _wants_reconstruction(self, fields: dict) -> bool:
        if not self.decoder.can_reconstruct:
            return False
        if self.policy.startswith("every-"):
            return int(fields["trial"]) % int(self.policy[6:]) == 0
        return True

    def _reconstruct_next(self) -> None:
        key, fields = self.queue.popleft()
        image, ms = self.decoder.reconstruct(*self.store.tokens(key))
        if image is None:
            return
        self.store.save_image(key, image)
        run, trial, version = key.split(":")
        self.publisher.send(Message("result", {"run": int(run), "trial": int(trial), "version": version,
                                               "image": fields.get("image", ""), "stage": "reconstruction",
                                               "timings_ms": {"reconstruction_ms": ms}},
                                    images={"reconstruction": encode_png(image)}))

    def close(self) -> None:
        self.receiver.close()
        self.publisher.close()


def run_decoder(model: Path, out: Path, gallery: Path, betas: str, results: str, policy: str = "every",
                until: Callable | None = None, curve_secret: Path | None = None,
                curve_allowed: Path | None = None, unclip: Path | None = None,
                sd_vae: Path | None = None) -> DecoderService:
    """``rtdecode decode``: load (GPU when present), bind, serve until stopped."""
    decoder = Decoder.from_folder(model, gallery, unclip=unclip, sd_vae=sd_vae)
    curve, auth = None, None
    if curve_secret is not None:
        from rtdecode.security import server_options, start_authenticator

        if curve_allowed is None:
            raise ValueError("--curve-secret needs --curve-allowed (the folder of client public keys to accept)")
        auth = start_authenticator(curve_allowed)
        curve = server_options(curve_secret)
    service = DecoderService(decoder, out, betas, results, policy=policy, curve=curve)
    (Path(out) / "decoder.json").write_text(json.dumps({"betas": service.receiver.address,
                                                         "results": service.publisher.address,
                                                         "model": str(model), "gallery": str(gallery)}))
    log.info("decoder: betas on %s, results on %s, gallery of %d images", service.receiver.address,
             service.publisher.address, len(decoder.gallery_ids))
    try:
        service.run(until)
    finally:
        if auth is not None:
            auth.stop()
    return service
