"""The decoder's output folder: one sub-folder per session, each decoded beta written exactly once.

    OUT/sub-XX/ses-YY/
        session.json            subject, session and the session's uid (the first beta's)
        sources.json            the model and gallery folders decoding with (for rtdecode evaluate)
        results.tsv             one row per decoded beta: the commit point (fsynced)
        tokens/<stem>.npy       prior tokens; <stem>_clip.npy retrieval tokens; <stem>_blurry.npy
        images/<stem>.png       reconstructions (written to a temporary name, fsynced, renamed)
        images/<stem>_refined.png  refined reconstructions (--refine), a later version of the same picture
        reconstructed.keys      betas whose reconstruction is done or skipped by policy
        captions.tsv            each decoded beta's caption (key, caption), when a captioner is loaded
        refused.tsv             betas the model failed on, with the reason (a record: never acknowledged,
                                so the scanner side resends them and a decoder with another model retries)

``<stem>`` is ``run-RR_trial-TTT_<version>``, built from validated integers and an allow-listed version
(rtdecode.wire.schema), never from received text. Write order: tokens (fsynced, renamed into place),
then the results row (fsynced): a process killed anywhere before the row decodes that beta again and
overwrites the same token files; killed after it, the row's key says "decoded" and a resend is only
acknowledged. No ledger can disagree with the rows, because the rows are the ledger.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from rtdecode.base.errors import ProtocolError
from rtdecode.base.session import append_tsv, read_tsv, repair_tail
from rtdecode.wire.protocol import Message
from rtdecode.wire.reliable import Ledger
from rtdecode.wire.schema import WORD, check_fields, check_identity

log = logging.getLogger(__name__)

COLUMNS = ("key", "run", "trial", "version", "image", "top_ids", "top_scores", "backbone_ms", "retrieval_ms",
           "prior_ms", "t_received", "t_done")
CAPTIONS = "captions.tsv"  # key, caption: written after the retrieval is out (rtdecode.decoder.service)


TIER_TEXT = "rtdecode-tier"  # a reconstruction PNG's text key: what drew it (unclip, blurry, standin)


class SessionMismatch(Exception):
    """The folder holds another session's results (same subject and session labels, another uid)."""


def session_folder(out: Path, subject: str, session: str) -> Path:
    return Path(out) / f"sub-{subject}" / f"ses-{session}"


def stem(key: str) -> str:
    _uid, run, trial, version = key.split(":")
    return f"run-{int(run):02d}_trial-{int(trial):03d}_{version}"


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class ResultStore:
    """One session's decoded results. ``identity``: subject, session and session_uid of its betas."""

    def __init__(self, folder: str | Path, identity: dict[str, str] | None = None, readonly: bool = False) -> None:
        """``readonly``: a reader beside a live decoder (replay, evaluate) changes nothing: it neither
        creates folders nor cuts a torn last line, which may be a row the decoder is writing right now."""
        self.folder = Path(folder)
        info = self.folder / "session.json"
        if info.exists():
            self.identity = _stored_identity(info)
            if identity is not None and identity.get("session_uid") != self.identity.get("session_uid"):
                raise SessionMismatch(
                    f"{self.folder} holds session uid {self.identity.get('session_uid')}; a beta of "
                    f"sub-{identity['subject']} ses-{identity['session']} with uid {identity['session_uid']} came. "
                    "Not decoded: give the decoder another --out, or move that folder away")
        elif identity is None:
            raise FileNotFoundError(f"{info}: not a decoded session folder")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(info, lambda fh: fh.write(json.dumps(identity, indent=1).encode()))
            self.identity = dict(identity)
        self.table = self.folder / "results.tsv"
        if not readonly:
            (self.folder / "tokens").mkdir(parents=True, exist_ok=True)
            (self.folder / "images").mkdir(parents=True, exist_ok=True)
            repair_tail(self.table)
            repair_tail(self.folder / CAPTIONS)
        # A table begun with other columns (a caption column, as rtdecode wrote for a day) keeps its header:
        # rows are appended in its layout, as wide as it.
        self.columns = _header(self.table) or COLUMNS
        # Committed rows are never taken again. A refused.tsv row is not among them: a refusal is the model's,
        # so a resend after a model change is decoded (rows an older rtdecode acknowledged included).
        self.decoded: set[str] = {r["key"] for r in read_tsv(self.table)}  # read_tsv skips a torn last line
        self.reconstructed = None if readonly else Ledger(self.folder / "reconstructed.keys")

    # -- writing ----------------------------------------------------------------------------------
    def record_sources(self, sources: dict[str, str]) -> None:
        """Note the decoder's own model and gallery folders (its arguments, never received text)."""
        path = self.folder / "sources.json"
        if sources and (not path.exists() or json.loads(path.read_text()) != sources):
            _write_atomic(path, lambda fh: fh.write(json.dumps(sources, indent=1).encode()))

    def save_retrieval(self, key: str, fields: dict, tokens: np.ndarray, ids: list[str], scores: list[float],
                       timings: dict, t_received: float, blurry_latent: np.ndarray | None = None,
                       clip: np.ndarray | None = None, crash_point=lambda name: None) -> None:
        s = stem(key)
        for suffix, arr in (("", tokens), ("_clip", clip), ("_blurry", blurry_latent)):
            if arr is not None:
                _write_atomic(self.folder / "tokens" / f"{s}{suffix}.npy",
                              lambda fh, a=arr: np.save(fh, a.astype(np.float32), allow_pickle=False))
                crash_point("tokens")
        append_tsv(self.table, self.columns, {
            "key": key, "run": fields["run"], "trial": fields["trial"], "version": fields.get("version", "realtime"),
            "image": fields.get("image", ""), "top_ids": ",".join(ids), "top_scores": ",".join(f"{x:.4f}" for x in scores),
            "backbone_ms": f"{timings['backbone_ms']:.2f}", "retrieval_ms": f"{timings['retrieval_ms']:.2f}",
            "prior_ms": f"{timings['prior_ms']:.2f}", "t_received": f"{t_received:.3f}", "t_done": f"{time.time():.3f}"},
            fsync=True)
        self.decoded.add(key)  # the commit point: after the row is on disk the beta is never decoded again

    def save_image(self, key: str, image: np.ndarray, tier: str = "") -> None:
        """A reconstruction, with the tier that drew it in the PNG's text (re-sent with it after a restart)."""
        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        if tier:
            info.add_text(TIER_TEXT, tier)
        _write_atomic(self.folder / "images" / f"{stem(key)}.png",
                      lambda fh: Image.fromarray(image).save(fh, format="PNG", pnginfo=info))
        self.reconstructed.add(key)

    def save_refined(self, key: str, image: np.ndarray) -> None:
        """A refined reconstruction: its own file beside the first, which stays as it was."""
        from PIL import Image

        _write_atomic(self.refined_path(key), lambda fh: Image.fromarray(image).save(fh, format="PNG"))

    def refined_path(self, key: str) -> Path:
        return self.folder / "images" / f"{stem(key)}_refined.png"

    def save_caption(self, key: str, caption: str) -> None:
        """A decoded beta's caption (fsynced; the newest row of a key wins on reading)."""
        append_tsv(self.folder / CAPTIONS, ("key", "caption"), {"key": key, "caption": caption}, fsync=True)

    def captions(self) -> dict[str, str]:
        """Each decoded beta's caption ('' where none was made)."""
        return {r["key"]: r.get("caption") or "" for r in self.rows()}

    def skip_reconstruction(self, key: str) -> None:
        self.reconstructed.add(key)

    def refuse(self, key: str, reason: str) -> None:
        """Record why the model failed on a beta; it stays undecoded (not acknowledged: it comes again)."""
        append_tsv(self.folder / "refused.tsv", ("time", "key", "reason"),
                   {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "key": key, "reason": reason}, fsync=True)

    # -- reading ----------------------------------------------------------------------------------
    def pending_reconstructions(self) -> list[str]:
        done = self.reconstructed.keys | {k for k in self.decoded if (self.folder / "images" / f"{stem(k)}.png").exists()}
        return [k for k in sorted(self.decoded) if k not in done and (self.folder / "tokens" / f"{stem(k)}.npy").exists()]

    def rows(self) -> list[dict[str, str]]:
        """The results rows, each with its caption (captions.tsv; a caption column of the table otherwise)."""
        rows = read_tsv(self.table)
        captions = {r["key"]: r["caption"] for r in read_tsv(self.folder / CAPTIONS) if r.get("key") and r.get("caption")}
        for r in rows:
            if r.get("key") in captions:
                r["caption"] = captions[r["key"]]
        return rows

    def retrieval_messages(self) -> list[Message]:
        """Every stored row as its retrieval result. A row that would not pass the wire schema (written
        by an older rtdecode, or edited by hand) is skipped with one line: a restart never fails on it."""
        out = []
        for row in self.rows():
            try:
                msg = retrieval_message(row, self.identity)
                check_fields(msg.type, msg.fields)
            except (ProtocolError, ValueError, TypeError, AttributeError, KeyError) as exc:
                log.warning("%s: row %s not published again: %s", self.table, row.get("key"), exc)
                continue
            out.append(msg)
        return out

    def pictures(self) -> list[tuple[float, int, dict, Path, str]]:
        """Every stored picture: (when it was drawn, its bytes, its row, its file, its stage)."""
        out = []
        for row in self.rows():
            try:
                files = (("reconstruction", self.image_path(row["key"])), ("refined", self.refined_path(row["key"])))
            except (KeyError, ValueError):  # a row without a well-formed key names no file
                continue
            for stage, png in files:
                try:
                    st = png.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, row, png, stage))
        return out

    def image_path(self, key: str) -> Path:
        return self.folder / "images" / f"{stem(key)}.png"

    def clip_tokens(self, key: str) -> np.ndarray:
        """The retrieval-head tokens of a decoded beta."""
        return np.load(self.folder / "tokens" / f"{stem(key)}_clip.npy", allow_pickle=False)

    def tokens(self, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The prior tokens of a decoded beta, and its blurry latent when the model has one."""
        blurry = self.folder / "tokens" / f"{stem(key)}_blurry.npy"
        return (np.load(self.folder / "tokens" / f"{stem(key)}.npy", allow_pickle=False),
                np.load(blurry, allow_pickle=False) if blurry.exists() else None)


def _header(table: Path) -> tuple[str, ...] | None:
    """The columns of an existing table (None for a new or empty one)."""
    if not table.exists() or table.stat().st_size == 0:
        return None
    with open(table, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    return tuple(first.rstrip("\n").split("\t")) if first.endswith("\n") else None


def _stored_identity(info: Path) -> dict[str, str]:
    """A session folder's identity as stored; SessionMismatch when it is not one a beta could carry."""
    try:
        identity = json.loads(info.read_text(encoding="utf-8"))
        check_identity(identity if isinstance(identity, dict) else {}, str(info))
    except (ValueError, ProtocolError) as exc:
        raise SessionMismatch(f"{info}: not a session's identity ({exc}); no beta is decoded into that folder. "
                              "Move it away") from None
    return {k: identity[k] for k in ("subject", "session", "session_uid")}


def session_stores(out: str | Path, readonly: bool = False) -> list[ResultStore]:
    """Every session folder under a decoder's output folder; one whose session.json is unusable is
    left alone with one line (a beta of its labels is then refused, never decoded into it)."""
    stores = []
    for info in sorted(Path(out).glob("sub-*/ses-*/session.json")):
        try:
            stores.append(ResultStore(info.parent, readonly=readonly))
        except SessionMismatch as exc:
            log.error("decoder: %s", exc)
    return stores


def open_results(decoded: str | Path) -> ResultStore:
    """A session's results, read only: ``decoded`` is the session folder itself, or a decoder --out holding
    exactly one."""
    decoded = Path(decoded)
    if (decoded / "session.json").exists():
        return ResultStore(decoded, readonly=True)
    stores = session_stores(decoded, readonly=True)
    if len(stores) != 1:
        found = ", ".join(str(s.folder.relative_to(decoded)) for s in stores) or "none"
        raise FileNotFoundError(f"{decoded}: expected one decoded session (sub-XX/ses-YY), found {found}")
    return stores[0]


def retrieval_message(row: dict, identity: dict) -> Message:
    """A stored results row as the retrieval result it was published as, at the time it was produced
    (its t_done: a console shows a re-sent result's age from then, not from the restart)."""
    scores = [float(v) for v in row["top_scores"].split(",") if v]
    return Message("result", {"run": int(row["run"]), "trial": int(row["trial"]), "version": row["version"],
                              "image": row["image"], "stage": "retrieval", "top_ids": [i for i in row["top_ids"].split(",") if i],
                              "top_scores": scores, "timings_ms": {"prior_ms": float(row["prior_ms"] or 0)},
                              **_caption(row), **identity},
                   time=_stored_time(row.get("t_done")))


def newest_pictures(stores: list[ResultStore], max_bytes: int) -> list[Message]:
    """The newest stored pictures of every session, up to ``max_bytes`` of PNG, oldest first, as they were
    published: a console that joins after a restart shows each trial's picture, not only the last few."""
    found = sorted(((t, size, store, row, png, stage) for store in stores
                    for t, size, row, png, stage in store.pictures()), key=lambda p: p[0])
    taken, total = [], 0
    for _t, size, store, row, png, stage in reversed(found):
        if total + size > max_bytes:
            break
        total += size
        taken.append((store, row, png, stage))
    out = []
    for store, row, png, stage in reversed(taken):
        try:
            out.append(reconstruction_message(row, store.identity, png, stage))
        except (OSError, ValueError, KeyError) as exc:  # removed meanwhile, or a row the schema refuses
            log.warning("%s: not published again: %s", png, exc)
    return out


def reconstruction_message(row: dict, identity: dict, png: Path, stage: str = "reconstruction") -> Message:
    """A stored reconstruction as the result it was published as, at the time its image was written, with
    the tier that drew it (kept in the PNG's text; a refined picture: its first picture's)."""
    data = png.read_bytes()
    fields = {"run": int(row["run"]), "trial": int(row["trial"]), "version": row["version"], "image": row["image"],
              "stage": stage, **_caption(row), **identity}
    first = data if stage == "reconstruction" else png.with_name(png.name.replace("_refined.png", ".png"))
    tier = _png_tier(first)
    if tier:
        fields["tier"] = tier
    return Message("result", fields, images={"reconstruction": data}, time=_stored_time(str(png.stat().st_mtime)))


def _png_tier(png: bytes | Path) -> str:
    """The tier a stored reconstruction records ('' for none, or one that is not a plain word)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as im:
            tier = str(im.info.get(TIER_TEXT, ""))
    except (OSError, ValueError):
        return ""
    return tier if WORD.fullmatch(tier) else ""


def _caption(row: dict) -> dict[str, str]:
    """The caption field of a stored row's message: absent where none was made (or an older table)."""
    caption = row.get("caption")
    return {"caption": caption} if caption and caption != "n/a" else {}


def _stored_time(value: str | None) -> float:
    """A stored t_done as a message time; 0 (stamped at sending) when it is missing or not a finite time."""
    try:
        t = float(value or 0.0)
    except ValueError:
        return 0.0
    return t if math.isfinite(t) and t > 0 else 0.0
