"""Per-volume work of the scanner side: reference, preprocessing, storage, QA event, GLM hand-off.

:class:`VolumeStage` takes volumes of a run in order (the sequencer's deliveries) and never raises for
one bad volume: a volume that cannot serve as the run's reference or cannot be processed is set aside
with its reason and counted missing, and a GLM failure ends that run's betas with a ``glm_error``
status while its volumes go on being stored.

Every run of a session is sampled in one voxel space (:mod:`rtdecode.preprocess.space`): the first
run's mask, on its reference (or on ``preprocess.session_reference``), stored in the session folder;
later runs are registered to that reference once at their start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtdecode.base.errors import ConfigError, IngestError, VoxelSpaceError
from rtdecode.base.session import SessionFolder
from rtdecode.base.settings import SessionConfig
from rtdecode.base.storage import FULL
from rtdecode.glm.runner import TrialBetas
from rtdecode.ingest.reader import Volume
from rtdecode.preprocess.alignment import (
    AlignmentLimits,
    alignment_warnings,
    check_alignment,
    mosaic,
    volume_of,
)
from rtdecode.preprocess.pipeline import Mask, RunPreprocessor
from rtdecode.preprocess.space import SpaceFiles, VoxelSpace, config_conflict, same_mask
from rtdecode.scanner.history import store_tsnr
from rtdecode.scanner.runs import RunState
from rtdecode.wire.protocol import Message, encode_png

log = logging.getLogger(__name__)

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass
class VolumeEvent:
    """What the scanner side reports for each processed volume (also sent on the wire)."""

    run: int
    index: int
    motion: np.ndarray  # mm and degrees
    fd: float
    dvars: float
    tsnr: float
    latency_ms: float
    vector: np.ndarray


def return_free_memory() -> None:
    """Once per run: collect the ended run's cyclic garbage now, and give freed heap back to the OS.

    Without it RSS crept up ~4 MB a run over a long session (rtdecode bench endurance): an ended run's
    arrays waited in reference cycles for a full collection, and glibc kept freed heap after raising
    its mmap threshold. malloc_trim exists in glibc only; elsewhere that half does nothing.
    """
    import gc

    gc.collect()  # an ended run's arrays may sit in reference cycles until the next full collection
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, IngestError) else f"{type(exc).__name__}: {exc}"


def space_files(folder: SessionFolder) -> SpaceFiles:
    """Where this session's voxel space is kept (beside the runs' own references and masks)."""
    return SpaceFiles(folder.derivatives, f"sub-{folder.subject}_ses-{folder.session}_task-{folder.task}")


def open_space(config: SessionConfig, folder: SessionFolder, mask: Mask | None,
               reference: Volume | None) -> VoxelSpace | None:
    """The session's stored voxel space (None before its first run), checked against the configured mask
    and session reference: a different one is a :class:`ConfigError` in one line, before any file is read.

    A session whose runs began before the space was stored (or that stopped between the first run's
    reference and the space) takes its first stored run's mask, as that run was sampled.
    """
    files = space_files(folder)
    space = files.load()
    if space is None:
        for row in sorted(folder.runs(), key=lambda r: int(r["run"])):
            stored = folder.run_store(int(row["run"])).load_reference()
            if stored is None:
                continue
            boldref, mask_img = stored
            own = Volume(np.asarray(boldref.dataobj, np.float32), np.asarray(boldref.affine, float))
            space = VoxelSpace(reference if reference is not None else own,
                               Mask(np.asarray(mask_img.dataobj) > 0, np.asarray(mask_img.affine, float)),
                               {"reference": f"run {row['run']}'s reference", "mask": f"run {row['run']}'s mask"})
            files.save(space)
            log.info("session voxel space taken from run %s: %d voxels", row["run"], space.n_voxels)
            break
    if space is None:
        return None
    pp = config.preprocess
    conflict = config_conflict(space, files.mask, mask, pp.mask, reference, pp.session_reference)
    if conflict is not None:
        raise ConfigError(conflict)
    return space


class VolumeStage:
    """Reference, preprocessing, storage and GLM for the volumes of each run, in order."""

    def __init__(self, config: SessionConfig, betas: TrialBetas, mask: Mask | None, session_reference: Volume | None,
                 send: Callable[[Message], None], reject: Callable[[Path, str], None],
                 on_volume: Callable[[VolumeEvent], None] | None = None, identity: dict | None = None,
                 space: VoxelSpace | None = None) -> None:
        self.config = config
        self.betas = betas
        self.mask = mask  # configured; until the session has its space (then ``space.mask``)
        self.session_reference = session_reference
        self.space = space  # the session's one voxel space; None until its first run starts
        self.space_files = space_files(betas.folder)
        self.send = send
        self.reject = reject
        self.on_volume = on_volume
        self.identity = identity or {}
        self.processed = 0

    def make_preprocessor(self, reference: Volume, mask: Mask | None, session_reference: Volume | None) -> RunPreprocessor:
        pp = self.config.preprocess
        return RunPreprocessor(reference, mask=mask, session_reference=session_reference,
                               mask_threshold=pp.mask_threshold, sample_stride=pp.sample_stride,
                               max_iterations=pp.max_iterations)

    def start_preprocessor(self, reference: Volume) -> RunPreprocessor:
        """A run's preprocessor in the session's voxel space (the first run's: as configured)."""
        if self.space is None:
            return self.make_preprocessor(reference, self.mask, self.session_reference)
        return self.make_preprocessor(reference, self.space.mask, self.space.reference)

    def keep_space(self, run: RunState, reference: Volume, pre: RunPreprocessor) -> None:
        """The first run's mask (on the session reference, or on this run's reference) becomes the session's."""
        if self.space is not None:
            return
        pp = self.config.preprocess
        base = self.session_reference if self.session_reference is not None else reference
        origin = {"reference": str(pp.session_reference) if pp.session_reference else f"run {run.number}'s reference",
                  "mask": str(pp.mask) if pp.mask else f"intensity mask at {pp.mask_threshold:g} of the reference"}
        self.space = VoxelSpace(Volume(np.asarray(base.data, np.float32), np.asarray(base.affine, float)), pre.mask,
                                origin)
        # A full disk stops the scanner side here as anywhere (one line); a restart then takes the space
        # from this run's stored mask (open_space).
        self.space_files.save(self.space)
        log.info("run %d: the session's voxel space: %d voxels", run.number, self.space.n_voxels)

    def registered_to(self) -> str:
        """What a starting run's reference is registered to, in words; "" for nothing (the session's first
        run without a configured session reference: its own reference becomes the session's)."""
        if self.space is not None:
            own = str(self.space.origin.get("reference", ""))
            return own if own.startswith("run ") else "the session reference"  # a configured file: not its path
        return "the session reference" if self.session_reference is not None else ""

    def alignment(self, reference: Volume, pre: RunPreprocessor, run: RunState) -> tuple[dict, dict[str, bytes]]:
        """Run-start figures, warning and mosaic of where the mask landed, also stored beside the run's
        reference (never fatal: a failure is logged)."""
        pp = self.config.preprocess
        limits = AlignmentLimits(pp.alignment_max_shift_mm, pp.alignment_max_rotation_deg, pp.alignment_min_in_brain,
                                 pp.alignment_min_match, pp.alignment_min_voxels)
        try:
            base = self.space.reference if self.space is not None else self.session_reference
            # The mask's own values on that reference need the mask on its grid (a configured mask may not be).
            session = base.data if base is not None and base.data.shape == pre.mask.data.shape else None
            found = check_alignment(reference.data, reference.affine, pre.mask.data, pre.mask.affine,
                                    pre.registration, session, pp.mask_threshold, registered_to=self.registered_to())
        except Exception:
            log.exception("alignment check failed; the run goes on without it")
            return {}, {}
        problems = alignment_warnings(found, limits)
        if problems:
            log.warning("alignment: %s", "; ".join(problems))
        fields = {**found.fields(), **({"alignment_warning": "; ".join(problems)[:2000]} if problems else {})}
        png = encode_png(found.mosaic)
        try:
            run.store.alignment_png.write_bytes(png)
            run.store.alignment.write_text(json.dumps(fields))
        except OSError:
            log.exception("run %d: could not store the alignment check", run.number)
        return fields, {"alignment": png}

    def qa_map(self, run: RunState, index: int) -> None:
        """Every ``tsnr_map_every`` volumes: the temporal SNR map so far, as a mosaic for the console."""
        every = self.config.preprocess.tsnr_map_every
        pre = run.preprocessor
        if every <= 0 or pre is None or run.n_ok % every:
            return
        try:
            tsnr = pre.qa.tsnr_map()
            image = mosaic(volume_of(tsnr, pre.mask.data), pre.mask.data, vmax=100.0, colour=True)
            fields, png = {"run": run.number, "index": index, "median_tsnr": float(np.median(tsnr))}, encode_png(image)
            self.send(Message("qa_map", fields, images={"tsnr": png}))
        except Exception:
            log.exception("tSNR map failed; volumes go on")
            return
        try:  # the newest one kept in the session folder: a console that joins after a restart gets it too
            store_tsnr(run.store.folder.derivatives, run.store.folder.prefix(run.number), fields, png)
        except OSError:
            log.exception("run %d: could not store the tSNR map", run.number)

    def resume(self, run: RunState) -> None:
        """Rebuild an open run's preprocessor and GLM, or an ended run's betas state, from the session folder."""
        rows, vectors = run.store.load()
        for r in rows:
            idx = int(r["volume"])
            if r["status"] == "ok":
                run.sequencer.done.add(idx)
            run.sequencer.next_index = max(run.sequencer.next_index, idx + 1)
        run.n_ok = len(vectors)
        run.n_missing = sum(1 for r in rows if r["status"] != "ok")
        if len(rows) >= self.config.scanner.volumes_per_run and not run.ended:
            run.ended, run.end_reason = True, "complete"
        ref = run.store.load_reference()
        if ref is None or not run.n_ok:
            return
        if not run.ended:
            boldref, mask_img = ref
            reference = Volume(np.asarray(boldref.dataobj, np.float32), np.asarray(boldref.affine), series=run.series_uid)
            mask = Mask(np.asarray(mask_img.dataobj) > 0, np.asarray(mask_img.affine))
            if self.space is not None and same_mask(mask, self.space.mask):
                run.preprocessor = self.make_preprocessor(reference, self.space.mask, self.space.reference)
            else:  # a run recorded before its session kept one voxel space: resumed as it began
                run.preprocessor = self.make_preprocessor(reference, mask, self.session_reference)
            params = np.array([[float(r[c]) for c in MOTION_COLUMNS] for r in rows if r["status"] == "ok"])
            params[:, 3:] = np.deg2rad(params[:, 3:])
            run.preprocessor.resume(params, vectors)
        self._glm(run, "resume", lambda: self.betas.resume_run(run.number, run.series_key, rows, vectors))
        if run.ended:  # in case the process stopped between the last volume and the end-of-run betas
            self._glm(run, "end of run", lambda: self.betas.end_run(run.number))
            self.betas.release(run.number)

    def deliver(self, run: RunState, index: int, volume: Volume) -> None:
        if run.preprocessor is None:
            if index < self.config.preprocess.reference_volume:
                run.held.append((index, volume))
                return
            try:
                run.preprocessor = self.start_preprocessor(volume)
            except Exception as exc:  # any volume, however odd, must not stop the run
                self.reject(Path(volume.source), f"cannot serve as the run's reference: {_reason(exc)}")
                self.missing(run, index)
                return
            pre = run.preprocessor
            run.store.save_reference(volume.data, volume.affine, pre.mask.data, pre.mask.affine)
            run.store.save_acquisition(volume.meta, self.config.scanner.tr_s)
            fields, images = self.alignment(volume, pre, run)
            self.keep_space(run, volume, pre)  # (after the check: the first run is not compared with itself)
            self.send(Message("run_started", {"run": run.number, "series": run.series_key,
                                              "shape": [int(n) for n in volume.data.shape],
                                              "n_voxels": int(pre.mask.n_voxels),
                                              "n_volumes": self.config.scanner.volumes_per_run,
                                              "tr_s": self.config.scanner.tr_s,
                                              "fd_threshold_mm": self.config.preprocess.fd_threshold_mm,
                                              **({"final_delay_s": self.config.glm.final_delay_s}
                                                 if self.config.glm.refine else {}),
                                              **fields, **self.identity}, images=images))
            self._glm(run, "start", lambda: self.betas.start_run(run.number, run.series_key, pre.mask.n_voxels))
            held, run.held = run.held, []
            for i, v in held:
                self.process(run, i, v)
        self.process(run, index, volume)

    def process(self, run: RunState, index: int, volume: Volume) -> None:
        assert run.preprocessor is not None
        t_start = time.time()
        try:
            out = run.preprocessor.process(volume, save_resampled=self.config.preprocess.save_resampled)
        except Exception as exc:
            self.reject(Path(volume.source), _reason(exc))
            self.missing(run, index)
            return
        t_done = time.time()
        t_file = float(volume.meta.get("t_file", t_done))
        motion = np.r_[out.params[:3], np.rad2deg(out.params[3:])]
        latency_ms = max(0.0, (t_done - t_file) * 1e3)
        run.store.save_volume(index, volume.data, volume.affine)
        row = {"volume": index, "framewise_displacement": out.fd, "dvars": out.dvars, "tsnr": out.tsnr,
               "t_file": f"{t_file:.3f}", "t_done": f"{t_done:.3f}", "latency_ms": latency_ms}
        row.update(dict(zip(MOTION_COLUMNS, motion.tolist(), strict=True)))
        run.store.append(out.vector, row)
        # Where the time went: file written -> picked up and read -> motion corrected and masked -> stored.
        stages = {"read": max(0.0, (t_start - t_file) * 1e3), "preprocess": (t_done - t_start) * 1e3,
                  "store": (time.time() - t_done) * 1e3}
        run.n_ok += 1
        self.processed += 1
        event = VolumeEvent(run.number, index, motion, out.fd, out.dvars, out.tsnr, latency_ms, out.vector)
        self.send(Message("volume", {"run": run.number, "index": index, "motion": [round(float(m), 5) for m in motion],
                                     "fd": float(out.fd), "dvars": float(out.dvars), "tsnr": float(out.tsnr),
                                     "latency_ms": latency_ms, "n_volumes": self.config.scanner.volumes_per_run,
                                     "fd_alarm": bool(out.fd > self.config.preprocess.fd_threshold_mm),
                                     "stages_ms": {k: round(v, 3) for k, v in stages.items()}}))
        if self.on_volume is not None:
            self.on_volume(event)
        self.qa_map(run, index)
        self._glm(run, "volume", lambda: self.betas.volume(run.number, index, out.vector, motion))

    def missing(self, run: RunState, index: int) -> None:
        run.store.append_missing(index)
        run.n_missing += 1
        self.send(Message("volume_missing", {"run": run.number, "index": index}))
        self._glm(run, "missing volume", lambda: self.betas.missing(run.number, index))

    def end(self, run: RunState, reason: str, at: float | None = None) -> None:
        """End ``run``: its end-of-run betas, then the run_ended message stamped ``at`` (when it was recorded)."""
        run.ended, run.end_reason = True, reason
        self._glm(run, "end of run", lambda: self.betas.end_run(run.number))
        self.betas.release(run.number)
        run.release()
        return_free_memory()
        self.send(Message("run_ended", {"run": run.number, "n_volumes": run.n_ok, "reason": reason}, time=at or 0.0))
        log.info("run %d ended (%s): %d volumes stored, %d missing", run.number, reason, run.n_ok, run.n_missing)

    def _glm(self, run: RunState, what: str, call: Callable[[], object]) -> None:
        """Run a GLM step; a failure ends this run's betas with one line and a status, never the scanner side."""
        try:
            call()
        except (VoxelSpaceError, ConfigError) as exc:  # a refusal that says all in its line: no traceback
            log.error("run %d: no betas: %s", run.number, exc)
            self._glm_failed(run, str(exc))
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in FULL:
                raise  # the disk, not the GLM: the scanner side stops in one line, and a restart redoes the betas
            log.exception("run %d: GLM failed at %s; volumes go on, no more betas this run", run.number, what)
            self._glm_failed(run, f"{what}: {type(exc).__name__}: {exc}")

    def _glm_failed(self, run: RunState, reason: str) -> None:
        self.betas.abandon(run.number)
        self.send(Message("status", {"state": "glm_error", "service": "scanner", "run": run.number,
                                     "reason": reason[:2000], **self.identity}))
