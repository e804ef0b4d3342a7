"""``rtdecode decode``: the decoder process. Betas in (acknowledged), results out (PUB), all on disk.

Per beta: retrieval goes out at once (a ``result`` with ``stage = "retrieval"``), the reconstruction
follows (``stage = "reconstruction"``) from a queue that a policy keeps from falling behind the trial
stream. Every result is written to its session's folder (rtdecode.decoder.results) before it is
published and before the beta is acknowledged, so a decoder killed at any point and restarted decodes
each beta exactly once and finishes any reconstruction it had not done. One ``--out`` serves a whole
day: each session (subject, session label, uid) has its own folder under it.

Nothing received can stop the loop: a message that fails validation is counted and logged by the
receiver. A beta is acknowledged only once decoded: one of a session whose folder holds another uid, one
of a participant the model is not for (another participant, another voxel count: models.folder's
identity) and one the model fails on (recorded in refused.tsv) are left unacknowledged with one line,
so the scanner side keeps them and resends them to the decoder restarted with the right model.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rtdecode.base.crash import crash_point
from rtdecode.base.storage import FolderLock, is_storage, storage_error
from rtdecode.decoder.core import Decoder
from rtdecode.decoder.later import REFINE, AfterRetrieval, refine_mode
from rtdecode.decoder.results import (
    ResultStore,
    SessionMismatch,
    newest_pictures,
    session_folder,
    session_stores,
    stem,
)
from rtdecode.wire.lifecycle import lifecycle_messages, note_alive, record_start
from rtdecode.wire.protocol import MAX_FRAME_BYTES, Message
from rtdecode.wire.reliable import BetaReceiver, beta_key
from rtdecode.wire.schema import refine_delay
from rtdecode.wire.sockets import Publisher

log = logging.getLogger(__name__)

POLICIES = ("every", "newest", "refine")  # or "every-N": reconstruct every N-th trial


def version_rank(version: str) -> float:
    """How far into a trial's response an estimate was made: a refinement by its delay, 'realtime' as
    Real-time MindEye's fast tier (7.5 s: its own delay is not in the key), 'endofrun' after every other."""
    if version == "endofrun":
        return float("inf")
    delay = refine_delay(version)
    return 7.5 if delay is None else delay


def trial_of(key: str) -> tuple[str, float]:
    """(uid:run:trial, the version's rank) of a beta key."""
    head, version = key.rsplit(":", 1)
    return head, version_rank(version)


IDENTITY = ("subject", "session", "session_uid")


# Pictures kept for consoles that join late or reopen, and re-sent after a restart: the newest up to this
# many bytes of PNG (every picture of a session at the demo's size; ~600 at 768 px), beyond it the oldest go.
PICTURES_KEPT_BYTES = 512 * 2**20


def keep_result(msg: Message) -> tuple[str, Message] | None:
    """Every trial's retrieval result and picture goes to a console that joins late (pictures in the
    group 'picture', bounded by PICTURES_KEPT_BYTES)."""
    f = msg.fields
    if msg.type == "status" and f.get("state") == "restarted":  # every restart (rtdecode.wire.lifecycle)
        return f"restarted:{f.get('boot_id', '')}", msg
    if msg.type != "result":
        return None
    trial = f"{f.get('session_uid', '')}:{f['run']}:{f['trial']}:{f.get('version', 'realtime')}"
    if f.get("stage") == "retrieval":
        return trial, msg
    if f.get("stage") == "caption":  # published after the retrieval (kept without it: a late console's caption)
        return f"caption:{trial}", msg
    if "reconstruction" in msg.images:
        return f"picture:{trial}:{f.get('stage', 'reconstruction')}", msg
    return None


class DecoderService(AfterRetrieval):
    """Owns the sockets, the session stores and the reconstruction queue; :meth:`run` is the loop."""

    def __init__(self, decoder: Decoder, out: str | Path, betas_address: str, results_address: str,
                 policy: str = "every", heartbeat_s: float = 1.0, curve: dict | None = None,
                 replay: int = 20, context=None, max_bytes: int = MAX_FRAME_BYTES, refine: str | None = None) -> None:
        if policy not in POLICIES and not (policy.startswith("every-") and policy[6:].isdigit()):
            raise ValueError(f"reconstruction policy must be every, newest, refine or every-N, got {policy!r}")
        self.refine = refine_mode(refine, decoder.refiner is not None)
        self.decoder = decoder
        self.policy = policy
        self.refine_queue: deque[tuple[ResultStore, str, dict]] = deque()  # reconstructions to refine, oldest first
        self.caption_queue: deque[tuple[ResultStore, str, dict]] = deque()  # after a restart: trials to caption
        self.refined_here = 0
        self.superseded = 0  # reconstructions dropped by the refine policy for a newer version
        self.out = Path(out)
        # One decoder per --out, before anything is read, written or bound (rtdecode.base.storage).
        self._lock = FolderLock(self.out, "rtdecode decode").acquire()
        try:
            self._open(betas_address, results_address, curve, replay, context, max_bytes)
        except OSError as exc:
            self._lock.release()
            if is_storage(exc, self.out):
                raise storage_error(exc, self.out, "the decoder") from None
            raise
        except BaseException:
            self._lock.release()
            raise
        self.heartbeat_s = heartbeat_s
        self.decoded_here = 0
        self.refused = 0  # betas not decoded: another session's folder, or the model could not take them
        self._mismatch_logged: set[tuple[str, str]] = set()  # (uid, reason) already logged
        self._failed: set[str] = set()  # keys the model failed on, recorded once per process
        self._sourced: set[Path] = set()  # session folders whose sources.json this process has written
        self._stop = threading.Event()
        self._last_beat = 0.0
        if self.queue:
            log.info("resuming: %d reconstruction(s) still to do", len(self.queue))

    def _open(self, betas_address: str, results_address: str, curve: dict | None, replay: int, context,
              max_bytes: int) -> None:
        """The stores already in --out (and their unfinished reconstructions), then the two sockets."""
        self.stores: dict[tuple[str, str], ResultStore] = {}
        self.queue: deque[tuple[ResultStore, str, dict]] = deque()
        for store in session_stores(self.out):
            self.stores[(store.identity["subject"], store.identity["session"])] = store
            rows = {r["key"]: r for r in store.rows()}
            pending = store.pending_reconstructions()
            fields = {k: {"image": r["image"], "caption": r.get("caption") or ""} for k, r in rows.items()}
            for k in pending:
                self._enqueue((store, k, fields[k]))
            if self.decoder.captioner is not None:  # decoded, and not captioned when the last decoder stopped
                # (the same fields as a pending reconstruction's: captioned first, its picture carries it)
                self.caption_queue.extend((store, k, f) for k, f in fields.items() if not f["caption"])
            if self.refine != "off":  # drawn, captioned and not yet refined when the last decoder stopped
                for k, r in rows.items():
                    if (r.get("caption") and k not in pending and store.image_path(k).exists()
                            and not store.refined_path(k).exists()):
                        self.refine_queue.append((store, k, {"image": r["image"], "caption": r["caption"]}))
        self.receiver = BetaReceiver(betas_address, context=context, curve=curve, max_bytes=max_bytes)
        self.publisher = Publisher(results_address, context=context, curve=curve, replay=replay, max_bytes=max_bytes,
                                   keep=keep_result, keep_bytes={"picture": PICTURES_KEPT_BYTES})
        record_start(self.out, "decoder", self.publisher.boot)  # before the re-sends: a console logs it first
        for msg in lifecycle_messages(self.out, "decoder"):
            self.publisher.send(msg)
        for store in self.stores.values():  # after a restart: every decoded trial again, for consoles that join
            for msg in store.retrieval_messages():  # rows that fail the schema are skipped with one line
                self.publisher.send(msg)
        for msg in newest_pictures(list(self.stores.values()), PICTURES_KEPT_BYTES):  # each trial's, as kept live
            self.publisher.send(msg)

    @property
    def store(self) -> ResultStore | None:
        """The only session's store, when there is exactly one (tests, the demo)."""
        return next(iter(self.stores.values())) if len(self.stores) == 1 else None

    def decoded_count(self) -> int:
        return sum(len(s.decoded) for s in self.stores.values())

    def stop(self) -> None:
        self._stop.set()

    def run(self, until: Callable[[DecoderService], bool] | None = None) -> None:
        try:
            while not self._stop.is_set() and not (until and until(self)):
                self.step(timeout_ms=20 if self.queue or self.refine_queue or self.caption_queue else 100)
        except OSError as exc:
            if not is_storage(exc, self.out):
                raise
            # Full or read-only --out: one line, and stop. A beta is acknowledged only after its row is on
            # disk, so the scanner side still holds every beta not decoded, and a restart takes them.
            failure = storage_error(exc, self.out, "the decoder")
            log.debug("storage failure", exc_info=True)
            self.publisher.send(Message("status", {"state": "storage_error", "service": "decoder",
                                                   "reason": str(failure)[:2000]}))
            raise failure from None
        finally:
            self.close()

    def step(self, timeout_ms: int = 100) -> None:
        got = self.receiver.recv(timeout_ms)
        if got is not None:
            peer, msg = got
            if msg.type == "beta":
                self._on_beta(peer, msg)
            else:
                self.refused += 1
                log.warning("betas channel: ignored a %r message", msg.type)
        elif self.caption_queue:  # after a restart only: before the pictures, which then carry the caption
            store, key, fields = self.caption_queue.popleft()
            fields["caption"] = self._caption(store, key, fields, store.tokens(key)[0])
            if (self.refine != "off" and fields["caption"] and store.image_path(key).exists()
                    and not store.refined_path(key).exists()):  # drawn before it had a caption
                self.refine_queue.append((store, key, fields))
        elif self.queue:
            self._reconstruct_next()
        elif self.refine_queue:  # idle: no beta came and no first reconstruction waits
            self._refine_next()
        self.publisher.serve()  # a display that joins now gets the latest results at once
        now = time.monotonic()
        if now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            note_alive(self.out)  # the next start's silence begins here
            self.publisher.send(Message("heartbeat", {"service": "decoder", "queue": len(self.queue), "model": self.decoder.name,
                                                      "gallery": len(self.decoder.gallery_ids),
                                                      "decoded": self.decoded_count(),
                                                      "refused": self.refused + self.receiver.rejected}))

    def _store_for(self, fields: dict) -> ResultStore | None:
        identity = {k: fields[k] for k in IDENTITY}
        label = (fields["subject"], fields["session"])
        store = self.stores.get(label)
        if store is None:
            try:
                store = ResultStore(session_folder(self.out, *label), identity)
            except SessionMismatch as exc:
                self._refuse_session(label, fields["session_uid"], str(exc))
                return None
            self.stores[label] = store
            store.record_sources(self.decoder.sources)
            log.info("session sub-%s ses-%s (uid %s): results in %s", *label, fields["session_uid"], store.folder)
        elif store.identity["session_uid"] != fields["session_uid"]:
            self._refuse_session(label, fields["session_uid"],
                                 f"{store.folder} holds session uid {store.identity['session_uid']}; a beta of "
                                 f"uid {fields['session_uid']} came. Not decoded: give the decoder another --out, "
                                 "or move that folder away")
            return None
        return store

    def _refuse_session(self, label: tuple[str, str], uid: str, reason: str, level: int = logging.ERROR) -> None:
        self.refused += 1
        if (uid, reason) not in self._mismatch_logged:  # the scanner side resends: one line, not one per resend
            self._mismatch_logged.add((uid, reason))
            log.log(level, "decoder: %s", reason)

    def _on_beta(self, peer: bytes, msg: Message) -> None:
        f = msg.fields
        label = (f["subject"], f["session"])
        reason = self.decoder.refusal(f["subject"], int(msg.arrays["beta"].size))
        if reason is not None:  # not this model's participant: before any folder is made for the session
            self._refuse_session(label, f["session_uid"], reason)
            return  # not acknowledged: the scanner side keeps the beta until a decoder can take it
        if self.decoder.identity.participant is None and (f["session_uid"], "unnamed") not in self._mismatch_logged:
            self._mismatch_logged.add((f["session_uid"], "unnamed"))
            log.warning("decoder: model %s names no participant (written before rtdecode recorded it); decoding "
                        "sub-%s ses-%s because the voxel count matches", self.decoder.name, *label)
        store = self._store_for(f)
        if store is None:
            return  # not acknowledged: the scanner side keeps the beta until a decoder can take it
        key = beta_key(f)
        if key in store.decoded:
            self.receiver.ack(peer, key)  # a resend after a restart: acknowledged, not decoded again
            return
        if store.folder not in self._sourced:  # a session decoded after a model change names the model now used
            self._sourced.add(store.folder)
            store.record_sources(self.decoder.sources)
        t_received = time.time()
        try:
            ret = self.decoder.retrieve(msg.arrays["beta"])
        except Exception as exc:  # the model failed on a beta it is for: kept by the scanner side, retried
            self.refused += 1
            why = f"model {self.decoder.name}: {type(exc).__name__}: {exc}"
            if key not in self._failed:
                self._failed.add(key)
                log.error("beta %s cannot be decoded (not acknowledged): %s", key, why)
                store.refuse(key, why)
            return
        crash_point("retrieved")
        store.save_retrieval(key, msg.fields, ret.tokens, ret.ids, ret.scores, ret.timings_ms, t_received,
                             ret.blurry_latent, ret.clip, crash_point=crash_point)
        crash_point("committed")
        self.decoded_here += 1
        self.publisher.send(Message("result", {
            "run": f["run"], "trial": f["trial"], "version": f["version"], "image": f["image"], "stage": "retrieval",
            "top_ids": ret.ids, "top_scores": ret.scores, "timings_ms": ret.timings_ms, "tier": self.decoder.tier,
            **store.identity}))
        self.receiver.ack(peer, key)
        crash_point("acked")
        # The caption after the retrieval is out: GIT's 20 greedy steps never delay a trial's retrieval.
        fields = {"image": f["image"], "caption": self._caption(store, key, {"image": f["image"]}, ret.tokens)}
        if self._wants_reconstruction(f):
            self._enqueue((store, key, fields))
        else:
            store.skip_reconstruction(key)  # skipped by policy: nothing left to do for it

    def _enqueue(self, item: tuple[ResultStore, str, dict]) -> None:
        """Queue a reconstruction as the policy says. ``refine``: a trial has at most one pending, its
        latest version; an older one waiting is dropped (and recorded as skipped, so a restart does not
        redo it), and one older than what waits is dropped on arrival."""
        if self.policy == "newest":
            self.queue.appendleft(item)
            return
        if self.policy == "refine":
            store, key, _ = item
            trial, rank = trial_of(key)
            for waiting in [q for q in self.queue if q[0] is store and trial_of(q[1])[0] == trial]:
                if trial_of(waiting[1])[1] >= rank:
                    store.skip_reconstruction(key)
                    self.superseded += 1
                    return
                self.queue.remove(waiting)
                store.skip_reconstruction(waiting[1])
                self.superseded += 1
        self.queue.append(item)

    def _wants_reconstruction(self, fields: dict) -> bool:
        if not self.decoder.can_reconstruct:
            return False
        if self.policy.startswith("every-"):
            return int(fields["trial"]) % int(self.policy[6:]) == 0
        return True

    def _reconstruct_next(self) -> None:
        store, key, fields = self.queue.popleft()
        image, ms = self.decoder.reconstruct(*store.tokens(key))
        if image is None:
            store.skip_reconstruction(key)
            return
        crash_point("reconstructed")
        store.save_image(key, image, self.decoder.tier)
        crash_point("image_saved")
        self._publish_image(store, key, fields, "reconstruction", image, {"reconstruction_ms": ms})
        if self.refine != "off" and fields.get("caption"):
            self.refine_queue.append((store, key, fields))
            if self.refine == "always":  # the next trial's first reconstruction waits for this one's refinement
                self._refine_next()

    def close(self) -> None:
        """Close the sockets and let the next decoder use --out."""
        self.receiver.close()
        self.publisher.close()
        self._lock.release()


def run_decoder(model: Path, out: Path, gallery: Path, betas: str, results: str, policy: str = "every",
                until: Callable | None = None, curve_secret: Path | None = None,
                curve_allowed: Path | None = None, unclip: Path | None = None,
                sd_vae: Path | None = None, allow_plaintext: bool = False, captioner: Path | None = None,
                refiner: Path | None = None, refine: str | None = None,
                refiner_config: Path | None = None) -> DecoderService:
    """``rtdecode decode``: load (GPU when present), bind, serve until stopped."""
    from rtdecode.wire.security import CurveServer, require_curve_off_host

    if curve_secret is not None and curve_allowed is None:
        raise ValueError("--curve-secret needs --curve-allowed (the folder of client public keys to accept)")
    require_curve_off_host({"--betas": betas, "--results": results}, curve_secret is not None, allow_plaintext)
    server = CurveServer(curve_secret, curve_allowed)
    refine_mode(refine, refiner is not None)  # a wrong --refine is one line before anything loads
    decoder = Decoder.from_folder(model, gallery, unclip=unclip, sd_vae=sd_vae, captioner=captioner, refiner=refiner,
                                  refiner_config=refiner_config)
    try:
        service = DecoderService(decoder, out, betas, results, policy=policy, curve=server.options,
                                 context=server.context, refine=refine)
        try:
            (Path(out) / "decoder.json").write_text(json.dumps({
                "betas": service.receiver.address, "results": service.publisher.address, "model": str(model),
                "gallery": str(gallery), "curve": server.secure, "pid": os.getpid()}))
        except OSError as exc:
            service.close()
            raise storage_error(exc, out, "the decoder") from None
        log.info("decoder: betas on %s, results on %s%s, gallery of %d images", service.receiver.address,
                 service.publisher.address, " (CURVE)" if server.secure else "", len(decoder.gallery_ids))
        service.run(until)
    finally:
        server.close()
    return service


__all__ = ["DecoderService", "POLICIES", "REFINE", "ResultStore", "crash_point", "run_decoder", "stem"]
