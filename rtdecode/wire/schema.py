"""Each wire message type's fields, with their types and ranges: the one place they are declared.

Every receiver validates through :func:`check_fields` (called by :func:`rtdecode.wire.protocol.decode`)
before it touches a field, so a handler downstream can trust ``int(f["run"])`` and friends. Strings
that could ever name a file (image ids, versions, session labels) are matched against allow-listed
patterns here; a file name is then built from validated integers and those strings only. A pattern
matches the whole field (``fullmatch`` on ``\\A...\\Z``: ``$`` would let a final newline through), and
a text field must be writable as UTF-8 (JSON can carry lone surrogates), so whatever passes can be
stored and read back through this schema unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rtdecode.base.errors import ProtocolError
from rtdecode.base.ids import IMAGE_ID

LABEL = re.compile(r"\A[A-Za-z0-9]{1,32}\Z")  # BIDS subject / session labels
UID = re.compile(r"\A[0-9a-f]{32}\Z")  # a session's uid (uuid4 hex)
BOOT = re.compile(r"\A[0-9a-f]{16}\Z")  # a process start's id
# What a trial's evaluation score can be (rtdecode.evaluate.report.ranking_metric picks one).
EVALUATION_METRICS = ("CLIP", "AlexNet(5)", "InceptionV3", "AlexNet(2)", "PixCorr")
# Beta versions: whole-run, the classic real-time estimate, and refinements at a delay (rt4.5, rt12.0).
VERSION = re.compile(r"\A(realtime|endofrun|rt[0-9]{1,2}\.[0-9])\Z")


def refine_delay(version: str) -> float | None:
    """Seconds after onset of a refinement version (rt6.0 -> 6.0); None for anything else."""
    return float(version[2:]) if version.startswith("rt") and VERSION.fullmatch(version) else None


# A trial's caption (rtdecode decode, from the brain's tokens): one line of printable UTF-8, no control,
# line-separator or lone-surrogate character, so it is stored in a TSV cell and drawn in a label as it came.
MAX_CAPTION = 300
CAPTION = re.compile(r"\A[^\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]{0,300}\Z")  # MAX_CAPTION
WORD = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")
KEY = re.compile(r"\A[0-9a-f]{32}:[0-9]{1,4}:[0-9]{1,5}:[a-z0-9.]{1,16}\Z")  # uid:run:trial:version
MAX_TEXT = 2000
MAX_RUN = 9999
MAX_INDEX = 100_000
MAX_TRIAL = 99_999
MAX_INT = 2**53  # the largest integer every JSON reader agrees on


@dataclass(frozen=True)
class F:
    """One field: ``kind`` is int, float, bool, text, name (pattern-checked), ints, floats, names or timings."""

    kind: str
    required: bool = True
    lo: float = -math.inf
    hi: float = math.inf
    pattern: re.Pattern | None = None
    choices: tuple[str, ...] = ()
    max_items: int = 64
    items: int | None = None  # exact list length


def _run() -> F:
    return F("int", lo=1, hi=MAX_RUN)


def _index() -> F:
    return F("int", lo=0, hi=MAX_INDEX)


def _trial() -> F:
    return F("int", lo=0, hi=MAX_TRIAL)


def _ms(required: bool = True) -> F:
    return F("float", required, lo=0, hi=1e7)


# Who a message is about: optional on every type, required where decoding state is kept per session.
IDENTITY = {"subject": F("name", False, pattern=LABEL), "session": F("name", False, pattern=LABEL),
            "session_uid": F("name", False, pattern=UID)}

SCHEMAS: dict[str, dict[str, F]] = {
    "volume": {"run": _run(), "index": _index(), "motion": F("floats", lo=-1e4, hi=1e4, items=6),
               "fd": F("float", lo=0, hi=1e4), "dvars": F("float", lo=0, hi=1e12), "tsnr": F("float", lo=0, hi=1e6),
               "latency_ms": _ms(), "fd_alarm": F("bool", False), "n_volumes": F("int", False, lo=1, hi=MAX_INDEX),
               "stages_ms": F("timings", False)},
    "volume_rejected": {"path": F("text", hi=255), "reason": F("text", hi=MAX_TEXT),
                        "run": F("int", False, lo=1, hi=MAX_RUN)},
    "volume_missing": {"run": _run(), "index": _index()},
    "run_started": {"run": _run(), "series": F("int", lo=0, hi=2**31), "shape": F("ints", lo=0, hi=100_000, max_items=4),
                    "n_voxels": F("int", lo=0, hi=10**8), "n_volumes": F("int", False, lo=1, hi=MAX_INDEX),
                    "tr_s": F("float", False, lo=0.05, hi=100), "fd_threshold_mm": F("float", False, lo=0, hi=1e3),
                    "registered_to": F("text", False, hi=200),  # what the run was registered to; absent: nothing
                    "shift_mm": F("float", False, lo=0, hi=1e4), "rotation_deg": F("float", False, lo=0, hi=360),
                    "in_brain": F("float", False, lo=0, hi=1), "match": F("float", False, lo=-1, hi=1),
                    "alignment_warning": F("text", False, hi=MAX_TEXT),
                    "final_delay_s": F("float", False, lo=0, hi=99.9)},  # refining: a trial's last version
    "qa_map": {"run": _run(), "index": _index(), "median_tsnr": F("float", lo=0, hi=1e6)},
    "run_ended": {"run": _run(), "n_volumes": F("int", lo=0, hi=MAX_INDEX), "reason": F("text", False, hi=MAX_TEXT)},
    "status": {"state": F("name", pattern=WORD), "service": F("name", False, choices=("scanner", "decoder")),
               "run": F("int", False, lo=1, hi=MAX_RUN), "reason": F("text", False, hi=MAX_TEXT),
               # state 'restarted' (rtdecode.wire.lifecycle): the new process's boot id, when the old one was last heard
               "boot_id": F("name", False, pattern=BOOT), "last_heard": F("float", False, lo=0, hi=1e11)},
    "heartbeat": {"service": F("name", choices=("scanner", "decoder")), "queue": F("int", False, lo=0, hi=MAX_INT),
                  "decoded": F("int", False, lo=0, hi=MAX_INT), "refused": F("int", False, lo=0, hi=MAX_INT),
                  "model": F("name", False, pattern=IMAGE_ID), "gallery": F("int", False, lo=1, hi=MAX_INT)},
    "beta": {"run": _run(), "trial": _trial(), "image": F("name", pattern=IMAGE_ID),
             "version": F("name", pattern=VERSION), "onset": F("float", False, lo=0, hi=1e6),
             "n_frames": F("int", False, lo=0, hi=MAX_INDEX), "n_repeats": F("int", False, lo=0, hi=MAX_INDEX),
             "estimate_ms": _ms(False),
             "subject": F("name", pattern=LABEL), "session": F("name", pattern=LABEL),
             "session_uid": F("name", pattern=UID)},
    # A beta's description without its values: what a late-joining console gets of every trial so far.
    "trial": {"run": _run(), "trial": _trial(), "image": F("name", pattern=IMAGE_ID),
              "version": F("name", pattern=VERSION), "onset": F("float", False, lo=0, hi=1e6)},
    # An operator's mark on a trial (bad, with a note; bad false removes it), kept in the session folder.
    "mark": {"run": _run(), "trial": _trial(), "version": F("name", pattern=VERSION), "bad": F("bool"),
             "note": F("text", False, hi=200)},
    "ack": {"ref": F("name", pattern=KEY)},
    "result": {"run": _run(), "trial": _trial(), "version": F("name", False, pattern=VERSION),
               "image": F("name", False, pattern=IMAGE_ID),
               # 'refined': the trial's reconstruction again, refined (SDXL img2img with its caption): a later
               # version of the same picture, never before the first reconstruction (docs/decoder.md)
               # 'caption': the trial's caption alone, published just after its retrieval (never delaying it)
               "stage": F("name", False, choices=("retrieval", "caption", "reconstruction", "refined", "evaluation")),
               "caption": F("name", False, pattern=CAPTION),
               "top_ids": F("names", False, pattern=IMAGE_ID, max_items=100),
               "top_scores": F("floats", False, lo=-1e6, hi=1e6, max_items=100),
               "timings_ms": F("timings", False), "tier": F("name", False, pattern=WORD),
               # stage 'evaluation': one trial's score from rtdecode evaluate (replayed from its trials.csv)
               # (or METEOR: the trial's caption against its image's, from evaluate's captions.csv)
               "metric": F("name", False, choices=(*EVALUATION_METRICS, "METEOR")),
               "score": F("float", False, lo=-1, hi=2)},
    "command": {"action": F("name", pattern=WORD), "run": F("int", False, lo=1, hi=MAX_RUN),
                "trial": F("int", False, lo=0, hi=MAX_INDEX), "version": F("name", False, pattern=VERSION),
                "bad": F("bool", False), "note": F("text", False, hi=200)},
    "reply": {"action": F("name", pattern=WORD), "ok": F("bool"), "detail": F("text", hi=MAX_TEXT)},
}

# Arrays a type may carry: name -> (ndim, dtypes, max elements); every element must be finite.
ARRAYS: dict[str, dict[str, tuple[int, frozenset[str], int]]] = {
    "beta": {"beta": (1, frozenset({"<f4", "<f8"}), 10**7)},
}
REQUIRED_ARRAYS: dict[str, tuple[str, ...]] = {"beta": ("beta",)}
# PNG images a type may carry, by name.
IMAGES: dict[str, frozenset[str]] = {"result": frozenset({"reconstruction"}), "run_started": frozenset({"alignment"}),
                                     "qa_map": frozenset({"tsnr"})}


def check_fields(mtype: str, fields: Mapping[str, Any]) -> None:
    """Raise ProtocolError naming the first field of ``fields`` that is unknown, missing or out of range."""
    schema = SCHEMAS[mtype]
    for name in fields:
        if name not in schema and name not in IDENTITY:
            raise ProtocolError(f"{mtype}: unknown field {name!r}; expected some of {sorted({*schema, *IDENTITY})}")
    for name, spec in {**IDENTITY, **schema}.items():
        if name not in fields:
            if spec.required:
                raise ProtocolError(f"{mtype}: missing field {name!r}")
            continue
        _check(f"{mtype}.{name}", spec, fields[name])


def sendable_text(mtype: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """``fields`` with our own free text made UTF-8 (a file name's undecodable bytes become visible
    escapes), so a sender never fails on a name the OS gave it; receivers still refuse such text."""
    schema = SCHEMAS.get(mtype, {})
    bad = [k for k, v in fields.items() if isinstance(v, str) and k in schema and schema[k].kind == "text"
           and not v.isascii() and not _is_utf8(v)]
    if not bad:
        return fields
    return {k: v.encode("utf-8", "backslashreplace").decode("utf-8") if k in bad else v for k, v in fields.items()}


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_identity(fields: Mapping[str, Any], where: str = "identity") -> None:
    """Raise ProtocolError unless ``fields`` holds a valid subject, session and session_uid."""
    for name, spec in IDENTITY.items():
        if name not in fields:
            raise ProtocolError(f"{where}: missing field {name!r}")
        _check(f"{where}.{name}", spec, fields[name])


def _check(where: str, spec: F, value: Any) -> None:
    kind = spec.kind
    if kind in ("ints", "floats", "names"):
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
        if spec.items is not None and len(value) != spec.items:
            raise ProtocolError(f"{where}: expected {spec.items} items, got {len(value)}")
        if len(value) > spec.max_items:
            raise ProtocolError(f"{where}: at most {spec.max_items} items, got {len(value)}")
        one = F(kind[:-1], lo=spec.lo, hi=spec.hi, pattern=spec.pattern)
        for i, item in enumerate(value):
            _check(f"{where}[{i}]", one, item)
        return
    if kind == "timings":
        if not isinstance(value, dict) or len(value) > 16:
            raise ProtocolError(f"{where}: expected an object of at most 16 timings, got {_show(value)}")
        for k, v in value.items():
            _check(f"{where} key", F("name", pattern=WORD), k)
            _check(f"{where}.{k}", F("float", lo=0, hi=1e7), v)
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected true or false, got {_show(value)}")
        return
    if kind in ("int", "float"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ProtocolError(f"{where}: expected {'an integer' if kind == 'int' else 'a number'}, got {_show(value)}")
        if not math.isfinite(value) or not spec.lo <= value <= spec.hi:
            raise ProtocolError(f"{where}: expected a finite value in [{spec.lo:g}, {spec.hi:g}], got {_show(value)}")
        return
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: expected a string, got {_show(value)}")
    if kind == "text":
        if len(value) > spec.hi:
            raise ProtocolError(f"{where}: at most {spec.hi:g} characters, got {len(value)}")
        if not value.isascii() and not _is_utf8(value):  # a lone surrogate passes JSON, and breaks a Qt label
            raise ProtocolError(f"{where}: expected text in UTF-8, got {_show(value)}")
        return
    if spec.choices and value not in spec.choices:
        raise ProtocolError(f"{where}: expected one of {list(spec.choices)}, got {_show(value)}")
    if spec.pattern is not None and not spec.pattern.fullmatch(value):
        raise ProtocolError(f"{where}: expected a value matching {shown(spec.pattern)} (the whole field), got {_show(value)}")


def check_array(mtype: str, name: str, dtype: str, shape: list[int]) -> tuple[int, frozenset[str], int]:
    """The spec of an array frame a type may carry; ProtocolError if it may not carry this one."""
    spec = ARRAYS.get(mtype, {}).get(name)
    if spec is None:
        raise ProtocolError(f"{mtype}: unexpected array frame {name!r}; allowed: {sorted(ARRAYS.get(mtype, {}))}")
    ndim, dtypes, max_size = spec
    if len(shape) != ndim or dtype not in dtypes or math.prod(shape) > max_size:
        raise ProtocolError(f"{mtype}.{name}: expected {ndim}-D {sorted(dtypes)} of at most {max_size} elements, "
                            f"got {dtype} {shape}")
    return spec


def check_image(mtype: str, name: str) -> None:
    if name not in IMAGES.get(mtype, frozenset()):
        raise ProtocolError(f"{mtype}: unexpected image frame {name!r}; allowed: {sorted(IMAGES.get(mtype, ()))}")


def shown(pattern: re.Pattern) -> str:
    """A whole-value pattern as an operator reads it (``\\A[0-9a-f]{16}\\Z`` -> ``[0-9a-f]{16}``)."""
    text = pattern.pattern
    return text[2:-2] if text.startswith("\\A") and text.endswith("\\Z") else text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
