"""What the operator console knows, built only from wire messages. No Qt here: plain data, testable.

Messages come from the scanner side's events socket (run_started, volume, volume_missing,
volume_rejected, run_ended, beta, status) and the decoder's results socket (result, heartbeat).
They arrive validated (rtdecode.wire.schema); still, no message can raise out of :meth:`ConsoleState.apply`:
one that a handler cannot use is counted in ``refused`` with its reason, and the console goes on.

Restarts are normal: every sender stamps a boot id, and a new boot id from a source resets that
source's duplicate filter (a restarted process counts ``seq`` from 1 again) and leaves a notice.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from gui.lifecycle import SOURCE_NAMES, elided, restart_record, session_started, silence_line
from gui.quality import RunQuality, episodes
from gui.sessions import SessionFilter
from gui.views import LIVE, AlignmentView, LogEntry, TrialView, trial_key
from rtdecode.wire.protocol import Message, decode_png
from rtdecode.wire.schema import refine_delay

log = logging.getLogger(__name__)
SEVERITIES = ("info", "warning", "error")
REFUSAL_LOG_S = 60.0  # a rising refusal count is logged at most this often
STOPPED_BY_OPERATOR = "run stopped by operator"  # the scanner side's reason for a stopped series' later files
RESPONSE_S = 15.0  # a trial's response window for its FD: the HRF has risen and fallen within ~15 s


@dataclass
class ConsoleState:
    fd_threshold_mm: float = 0.5  # the console's own, until a run_started brings the scanner side's
    run: int | None = None
    volumes_expected: int = 0
    runs: dict[int, RunQuality] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    trials: dict[tuple[int, int, str], TrialView] = field(default_factory=dict)
    current: tuple[int, int, str] | None = None
    last_seen: dict[str, float] = field(default_factory=dict)  # service -> wall time of its last message
    status: str = "waiting for the scanner"
    seen_seq: dict[str, set[int]] = field(default_factory=dict)
    boots: dict[str, str] = field(default_factory=dict)  # source -> boot id of the process heard from
    restarts: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # messages that reached the state but could not be used (and refused upstream, added by the feed)
    last_refused: str = ""
    log: deque = field(default_factory=lambda: deque(maxlen=5000))  # LogEntry, oldest first
    identity: dict[str, str] = field(default_factory=dict)  # subject, session, session_uid of the session shown
    sessions: SessionFilter = field(default_factory=SessionFilter)  # one session shown (gui/sessions.py)
    decoder_queue: int | None = None
    decoder_decoded: int | None = None
    decoder_refused: int | None = None  # the decoder's heartbeat: betas and messages it did not take
    _refusal_logged: float | None = None
    last_result: float | None = None  # wall time of the newest decoder result
    replay: bool = False  # drawn from a finished session's folders, not live
    alignment: dict[int, AlignmentView] = field(default_factory=dict)
    model: str = ""  # the decoder's model folder name, from its heartbeat
    gallery_size: int = 0  # images the decoder retrieves among (top-1 chance is 1 / this); 0: not said
    gallery_from: str = ""  # who said gallery_size: "decoder" (its heartbeat), else the console's --gallery
    run_warnings: dict[int, str] = field(default_factory=dict)  # run -> why it gives no betas (shown on its row)
    silent: set[str] = field(default_factory=set)  # services whose silence is logged and not yet over
    silence_s: float = 5.0  # a silence longer than this is logged (the console's light; a rebuilt one uses it too)
    restart_boots: set[str] = field(default_factory=set)  # boot ids whose start is counted as a restart
    _boot_lines: dict[str, list[LogEntry]] = field(default_factory=dict)  # boot -> its live restart/silence lines
    _silence_line: dict[str, LogEntry] = field(default_factory=dict)  # service -> its silence line not yet over
    _at: float | None = None  # while a message is applied: when its sender produced it (the log's time)

    def apply(self, msg: Message, source: str = "scanner") -> bool:
        """Update from one message; False for a repeat (a late-joiner replay already seen) or a refusal."""
        if msg.boot and self.boots.get(source) != msg.boot:
            if source in self.boots:  # heard live; the start's record (wire.lifecycle) then sets its time
                self.restarts[source] = self.restarts.get(source, 0) + 1
                self.restart_boots.add(msg.boot)
                self.status = f"{SOURCE_NAMES.get(source, source)} restarted"
                self._boot_lines.setdefault(msg.boot, []).append(self.add_log("warning", self.status, time.time()))
            self.boots[source] = msg.boot
            self.seen_seq[source] = set()
        seen = self.seen_seq.setdefault(source, set())
        if msg.seq in seen:
            return False
        seen.add(msg.seq)
        self.last_seen[source] = time.time()
        uid = msg.fields.get("session_uid") if isinstance(msg.fields, dict) else None
        if source != "scanner" and uid and not self.sessions.admit(self, msg, source, str(uid)):
            return False  # another session's result (a decoder serves the whole day), or held until it is named
        if source == "scanner" and uid and uid != self.identity.get("session_uid"):
            self._new_session(msg)  # the next participant's scanner side: a clean page before its first run
        if source in self.silent:
            self.silent.discard(source)
            lines = self._boot_lines.setdefault(msg.boot, [])
            if source in self._silence_line:
                lines.append(self._silence_line.pop(source))
            lines.append(self.add_log("info", f"{SOURCE_NAMES.get(source, source)} heard from again", time.time()))
        handler = getattr(self, f"_on_{msg.type}", None)
        if handler is not None:
            self._at = msg.time or None  # a replayed or re-sent event is logged at the time it happened
            try:
                handler(msg.fields, msg)
            except Exception as exc:  # a field no handler expected: counted and shown, never fatal
                self._at = None
                self.refuse(f"{msg.type} from {source}: {type(exc).__name__}: {exc}")
                return False
            finally:
                self._at = None
        return True

    def _new_session(self, msg: Message) -> None:
        """The scanner side names another session: nothing of the one shown stays (gui/sessions.py)."""
        f = msg.fields
        self.sessions.switch(self, {k: str(f[k]) for k in ("subject", "session", "session_uid") if k in f})
        line = f"session sub-{f.get('subject')} ses-{f.get('session')}"
        self.add_log("info", line, msg.time or None)
        # The first console of the day too (the operator guide's words); the run's own lines follow it.
        self.status = f"{line}: waiting for its first run"

    def check_silence(self, limit_s: float, now: float | None = None) -> list[str]:
        """Log each service silent for longer than ``limit_s`` once per silence; returns the silent ones."""
        now = now or time.time()
        self.silence_s = limit_s
        for service, last in self.last_seen.items():
            if service not in self.silent and now - last > limit_s and not self.replay:
                self.silent.add(service)
                # At the moment it became a silence, as a console rebuilding it from the start's record says.
                self._silence_line[service] = self.add_log("warning", silence_line(service, limit_s), last + limit_s)
        return sorted(self.silent)

    def refuse(self, reason: str, count: int = 1) -> None:
        self.refused += count
        self.last_refused = reason
        log.warning("console: refused a message: %s", reason)
        self.add_log("error", f"refused: {reason}")

    def add_log(self, severity: str, text: str, when: float | None = None) -> LogEntry:
        """A log line at ``when``, else at the time the message being applied was produced, else now."""
        when = when if when is not None else (self._at if self._at is not None else time.time())
        entry = LogEntry(when, severity if severity in SEVERITIES else "info", text)
        self.log.append(entry)
        return entry

    def notice(self, text: str, severity: str = "info") -> None:
        """A line in the event log that also becomes the status line."""
        self.add_log(severity, text)
        self.status = text

    # -- current run (the plots) -------------------------------------------------------------------
    def _quality(self, run: int) -> RunQuality:
        return self.runs.setdefault(run, RunQuality(run, expected=self.volumes_expected))

    @property
    def current_run(self) -> RunQuality:
        return self.runs[self.run] if self.run in self.runs else RunQuality(0)

    @property
    def volume_index(self) -> list[int]:
        return self.current_run.index

    @property
    def missing(self) -> list[int]:
        return self.current_run.missing

    @property
    def run_counts(self) -> dict[int, dict[str, int]]:
        return {r: {"volumes": q.received, "missing": len(q.missing), "rejected": q.rejected} for r, q in self.runs.items()}

    # -- scanner side ---------------------------------------------------------------------------
    def _on_run_started(self, f: dict, msg: Message) -> None:
        run = int(f["run"])
        self.volumes_expected = int(f.get("n_volumes", self.volumes_expected) or 0)
        if "fd_threshold_mm" in f:
            self.fd_threshold_mm = float(f["fd_threshold_mm"])
        self.run = run
        known = run in self.runs
        q = self.runs.setdefault(run, RunQuality(run))  # known: a repeat (late join, restarted sender): kept
        q.expected = self.volumes_expected or q.expected
        q.tr_s = float(f["tr_s"]) if "tr_s" in f else q.tr_s
        q.final_delay_s = float(f["final_delay_s"]) if "final_delay_s" in f else q.final_delay_s
        if not known:
            voxels = f" {f['n_voxels']} voxels in the mask" if f.get("n_voxels") else ""
            self.notice(f"run {run} started (series {f['series']}):{voxels}")
        view = self.alignment.setdefault(run, AlignmentView(run))
        figures = {k: float(f[k]) for k in ("shift_mm", "rotation_deg", "in_brain", "match") if k in f}
        if figures or not known:
            view.figures, view.warning = figures, str(f.get("alignment_warning", ""))
            view.registered_to = str(f.get("registered_to", ""))
        if "alignment" in msg.images:
            view.mosaic = decode_png(msg.images["alignment"])
        if view.warning and not known:
            self.notice(f"run {run}: check the alignment: {view.warning}", "error")

    def _on_qa_map(self, f: dict, msg: Message) -> None:
        view = self.alignment.setdefault(int(f["run"]), AlignmentView(int(f["run"])))
        view.tsnr = decode_png(msg.images["tsnr"]) if "tsnr" in msg.images else view.tsnr
        view.tsnr_at, view.median_tsnr = int(f["index"]), float(f["median_tsnr"])

    def _on_volume(self, f: dict, _msg: Message) -> None:
        run = int(f["run"])
        if "n_volumes" in f:
            self.volumes_expected = int(f["n_volumes"])
        q = self._quality(run)
        q.expected = q.expected or self.volumes_expected
        self.run = run
        fd = float(f["fd"])
        alarm = bool(f["fd_alarm"]) if "fd_alarm" in f else fd > self.fd_threshold_mm
        index = int(f["index"])
        before = q.alarm[-1] if q.alarm and q.index[-1] < index else False
        new = q.put(index, [float(v) for v in f["motion"]], fd, alarm, float(f["dvars"]), float(f["tsnr"]),
                    float(f["latency_ms"]), {k: float(v) for k, v in f.get("stages_ms", {}).items()})
        if new and alarm and not before:
            self.add_log("warning", f"run {run}: FD alarm at volume {index + 1} ({fd:.2f} mm)")
        if new:  # a volume heard again (a restarted scanner side's history) is not news: the status stays
            total = f" of {q.expected}" if q.expected else ""
            self.status = f"run {run}: volume {int(f['index']) + 1}{total}"

    def _on_volume_missing(self, f: dict, _msg: Message) -> None:
        run = int(f["run"])
        q = self._quality(run)
        if int(f["index"]) in q.missing:
            return
        q.missing.append(int(f["index"]))
        self.notice(f"run {run}: volume {int(f['index']) + 1} missing", "warning")

    def _on_volume_rejected(self, f: dict, _msg: Message) -> None:
        line = f"{f['path']}: {f['reason']}"
        if line in self.rejected:
            return
        self.rejected.append(line)
        run = int(f["run"]) if "run" in f else self.run
        if run is not None:
            self._quality(run).rejected += 1
        # Files of a series the operator stopped are expected to be set aside: a plain line, not an error.
        expected = str(f["reason"]).startswith(STOPPED_BY_OPERATOR)
        # The reason first and the name shortened in its middle: a 60-character UID hid it at 1366 px.
        self.notice(f"file set aside: {f['reason']} (file {elided(str(f['path']))})", "info" if expected else "error")

    def _on_run_ended(self, f: dict, _msg: Message) -> None:
        run = int(f["run"])
        q = self._quality(run)
        why = f" ({f['reason']})" if f.get("reason") else ""
        text = (f"run {run} ended{why}: {q.received} volumes" + (f" of {q.expected}" if q.expected else "")
                + (f", {len(q.missing)} missing" if q.missing else ""))
        if q.ended:  # heard again after a restart: the status says the current run's state, nothing logged
            if run == self.run:
                self.status = text
            return
        q.ended = f"ended{why}"
        self.notice(text)

    def _on_status(self, f: dict, _msg: Message) -> None:
        state = f.get("state")
        if state in ("glm_error", "no_betas"):  # no_betas: known at run start (no events table), a warning
            text = f"run {f.get('run')}: no betas ({f.get('reason', '')})"
            if "run" in f:
                self.run_warnings[int(f["run"])] = f"no betas: {f.get('reason', '')}"
            if not any(e.text == text for e in self.log):  # once, though a late joiner hears it again
                self.notice(text, "error" if state == "glm_error" else "warning")
        elif state in ("storage_low", "storage_error"):  # free space short, or the disk stopped a process
            text = str(f.get("reason", state))
            if not any(e.text == text for e in self.log):
                self.notice(text, "warning" if state == "storage_low" else "error")
        elif state == "restarted":
            restart_record(self, f, _msg)
        elif state == "started":  # the scanner side's first start: when the session began
            session_started(self, f, _msg)
        elif state == "warning":  # the scanner side's warning (e.g. a run left open at shutdown), once
            if not any(e.text == f.get("reason") for e in self.log):
                self.add_log("warning", str(f.get("reason", "")))
        elif state in ("disarmed", "armed", "waiting_for_start"):
            self.notice({"disarmed": "stopped by the operator: a new series waits for start run",
                         "armed": "armed: the next series starts a new run",
                         "waiting_for_start": "a new series is waiting: press start run"}[state])
        elif f.get("reason"):
            self.add_log("info", f"{state}: {f['reason']}")

    def _on_mark(self, f: dict, _msg: Message) -> None:
        """The scanner side's record of an operator's mark (from this console or any other)."""
        key = trial_key(int(f["run"]), int(f["trial"]), str(f["version"]))
        view = self.trials.setdefault(key, TrialView(*key[:2], version=str(f["version"])))
        if view.bad != bool(f["bad"]) or view.note != str(f.get("note", "")):
            self.mark_bad(key, bool(f["bad"]), str(f.get("note", "")))

    def _on_trial(self, f: dict, msg: Message) -> None:
        self._on_beta(f, msg)

    def _on_beta(self, f: dict, _msg: Message) -> None:
        version = str(f.get("version", "realtime"))
        key = trial_key(int(f["run"]), int(f["trial"]), version)
        view = self.trials.setdefault(key, TrialView(key[0], key[1], str(f.get("image", "")), version))
        view.image = str(f.get("image") or view.image)  # what this session showed, as its scanner side says
        if "onset" in f:
            view.onset_s = float(f["onset"])

    def trial_fd(self, view: TrialView) -> float | None:
        """The largest FD among the volumes of a trial's response window (onset to onset + RESPONSE_S)."""
        q = self.runs.get(view.run)
        if q is None or view.onset_s is None or not q.tr_s or not q.fd:
            return None
        lo = bisect.bisect_left(q.index, view.onset_s / q.tr_s)  # q.index is kept sorted
        hi = bisect.bisect_right(q.index, (view.onset_s + RESPONSE_S) / q.tr_s)
        return max(q.fd[lo:hi]) if hi > lo else None

    # -- decoder -----------------------------------------------------------------------------------
    def _on_result(self, f: dict, msg: Message) -> None:
        version = str(f.get("version", "realtime"))
        key = trial_key(int(f["run"]), int(f["trial"]), version)
        view = self.trials.setdefault(key, TrialView(key[0], key[1], str(f.get("image", "")), version))
        view.image = view.image or str(f.get("image", ""))
        delay = refine_delay(version)
        if delay is not None:
            q = self.runs.get(key[0])
            view.final_delay_s = q.final_delay_s if q is not None else None
            # A refinement older than what the row shows (a resend, a slow reconstruction) changes nothing.
            newest = refine_delay(view.recon_version if "reconstruction" in msg.images else view.version)
            if newest is not None and delay < newest and (view.top_ids or "reconstruction" in msg.images):
                return
        if f.get("stage") == "evaluation" and f.get("metric") == "METEOR":  # the caption's score, not the picture's
            view.caption_score = float(f.get("score", 0.0))
            return
        if f.get("stage") == "evaluation":  # an offline score, not a decoder event: no timings, no "received"
            view.eval_metric, view.eval_score = str(f.get("metric", "")), float(f.get("score", 0.0))
            return
        view.timings_ms.update({k: float(v) for k, v in f.get("timings_ms", {}).items()})
        view.tier = str(f.get("tier", view.tier))
        view.caption = str(f.get("caption", view.caption))
        # When the decoder produced it (a result re-sent after a restart keeps its stored time), not now.
        view.received = msg.time or time.time()
        self.last_result = max(self.last_result or 0.0, view.received)
        if f.get("stage") == "retrieval":
            view.top_ids = list(f.get("top_ids", []))
            view.top_scores = [float(s) for s in f.get("top_scores", [])]
            view.version = version
            if key[2] in LIVE:
                self.current = key
        elif "reconstruction" in msg.images:
            refined = f.get("stage") == "refined"
            if view.refined and not refined and view.recon_version == version:
                return  # the first picture again (a replay) after its refinement: the refined one stays
            view.reconstruction = decode_png(msg.images["reconstruction"])
            view.recon_version, view.refined = version, refined

    def _on_heartbeat(self, f: dict, _msg: Message) -> None:
        if f.get("service") == "decoder":
            self.decoder_queue, self.decoder_decoded = f.get("queue"), f.get("decoded")
            self.model = str(f.get("model", self.model))
            if "gallery" in f:
                self.gallery_size, self.gallery_from = int(f["gallery"]), "decoder"
            self._note_refusals(f.get("refused"), _msg.time or time.time())

    def _note_refusals(self, refused: int | None, when: float) -> None:
        """A rising refusal count in the log, at most once a minute (a beta the decoder holds no model for
        is resent every few seconds, and refused each time until the right model is loaded)."""
        before, self.decoder_refused = self.decoder_refused, refused
        if refused is None or before is None or refused <= before:
            return
        if self._refusal_logged is None or when - self._refusal_logged >= REFUSAL_LOG_S:
            self._refusal_logged = when
            self.add_log("warning", f"the decoder is refusing betas or messages ({refused} since it started): its "
                                    "log says why (another participant's model, another voxel count, or a folder "
                                    "of another session)", when)

    # -- views -------------------------------------------------------------------------------------
    @property
    def fd_alarms(self) -> int:
        """FD alarm episodes in the current run (consecutive alarmed volumes count once)."""
        return episodes(self.current_run.alarm)

    def heartbeat_age(self, service: str, now: float | None = None) -> float | None:
        last = self.last_seen.get(service)
        return None if last is None else (now or time.time()) - last

    def result_age(self, now: float | None = None) -> float | None:
        return None if self.last_result is None else (now or time.time()) - self.last_result

    def history(self, n: int = 10) -> list[TrialView]:
        """The live estimates of the latest trials (refining: each trial's newest version)."""
        realtime = [v for k, v in sorted(self.trials.items()) if k[2] in LIVE]
        return realtime[-n:]

    def decoded_in_session(self) -> int:
        """Betas of the session shown that have a decoded result (a refined trial's versions count once)."""
        return sum(1 for v in self.trials.values() if v.top_ids)

    def decoded_runs(self) -> list[int]:
        return sorted({k[0] for k, v in self.trials.items() if v.top_ids})

    def hits(self, run: int | None = None, version: str | None = None) -> list[bool]:
        """Top-1 hits of the decoded trials that were not marked bad (one run, or all); by default the
        live estimates ('realtime', or each refined trial's newest version)."""
        versions = LIVE if version is None else (version,)
        return [bool(v.hit) for k, v in sorted(self.trials.items())
                if k[2] in versions and v.hit is not None and not v.bad and (run is None or k[0] == run)]

    def mark_bad(self, key: tuple[int, int, str], bad: bool = True, note: str = "") -> None:
        view = self.trials[key]
        view.bad, view.note = bad, note if bad else ""
        what = "marked bad" + (f" ({note})" if note else "") if bad else "mark removed"
        self.add_log("info", f"run {key[0]} trial {key[1]} {what}")
