"""File-name patterns such as the Siemens real-time export ``001_{run:06d}_{volume:06d}.dcm``.

Placeholders: ``{run}`` (series number), ``{volume}`` (0-based index), and for exports written one
file per slice ``{slice}`` and ``{instance}`` (matched, not used: a slice's volume comes from its header).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{(run|volume|slice|instance)(?::0?(\d+)d)?\}")


@dataclass(frozen=True)
class FileKey:
    """Which run (series) and which volume a file name announces."""

    run: int
    volume: int  # -1 when the name does not carry it (per-slice exports)


def compile_pattern(pattern: str, per_slice: bool = False) -> re.Pattern[str]:
    """Turn a pattern with placeholders into a regular expression; ``*`` matches any run of characters.

    Raises ValueError if a per-volume pattern lacks ``{volume}``, or a per-slice one lacks both ``{slice}``
    and ``{instance}`` (each slice needs a name of its own).
    """
    if per_slice and "{slice" not in pattern and "{instance" not in pattern:
        raise ValueError(f"a per-slice pattern must contain a {{slice}} or {{instance}} placeholder, got {pattern!r}")
    if not per_slice and "{volume" not in pattern:
        raise ValueError(f"pattern must contain a {{volume}} placeholder, got {pattern!r}")
    out, pos, seen = [], 0, set()
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(_literal(pattern[pos : m.start()]))
        width = m.group(2)
        digits = rf"\d{{{int(width)},}}" if width else r"\d+"
        name = m.group(1)
        out.append(f"(?P<{name}>{digits})" if name not in seen else digits)
        seen.add(name)
        pos = m.end()
    out.append(_literal(pattern[pos:]))
    if "{" in _PLACEHOLDER.sub("", pattern) or "}" in _PLACEHOLDER.sub("", pattern):
        raise ValueError(f"pattern has an unknown placeholder: {pattern!r} (allowed: {{run}}, {{volume}}, {{slice}}, "
                         "{instance})")
    return re.compile("\\A" + "".join(out) + "\\Z")  # the whole name: "$" lets a final newline in


def _literal(text: str) -> str:
    return ".*".join(re.escape(part) for part in text.split("*"))


def parse_name(regex: re.Pattern[str], name: str) -> FileKey | None:
    """Return the run and volume a file name announces, or None when it does not match."""
    m = regex.fullmatch(name)
    if m is None:
        return None
    groups = m.groupdict()
    volume = groups.get("volume")
    return FileKey(run=int(groups.get("run") or 0), volume=int(volume) if volume is not None else -1)
