"""File-name patterns such as the Siemens real-time export ``001_{run:06d}_{volume:06d}.dcm``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{(run|volume)(?::0?(\d+)d)?\}")


@dataclass(frozen=True)
class FileKey:
    """Which run (series) and which volume a file name announces."""

    run: int
    volume: int


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn a pattern with ``{run}`` and ``{volume}`` placeholders into a regular expression.

    ``*`` matches any run of characters. Raises ValueError if ``{volume}`` is missing.
    """
    if "{volume" not in pattern:
        raise ValueError(f"pattern must contain a {{volume}} placeholder, got {pattern!r}")
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(_literal(pattern[pos : m.start()]))
        width = m.group(2)
        digits = rf"\d{{{int(width)},}}" if width else r"\d+"
        out.append(f"(?P<{m.group(1)}>{digits})")
        pos = m.end()
    out.append(_literal(pattern[pos:]))
    if "{" in _PLACEHOLDER.sub("", pattern) or "}" in _PLACEHOLDER.sub("", pattern):
        raise ValueError(f"pattern has an unknown placeholder: {pattern!r} (allowed: {{run}}, {{volume}})")
    return re.compile("^" + "".join(out) + "$")


def _literal(text: str) -> str:
    return ".*".join(re.escape(part) for part in text.split("*"))


def parse_name(regex: re.Pattern[str], name: str) -> FileKey | None:
    """Return the run and volume a file name announces, or None when it does not match."""
    m = regex.match(name)
    if m is None:
        return None
    groups = m.groupdict()
    return FileKey(run=int(groups.get("run") or 0), volume=int(groups["volume"]))
