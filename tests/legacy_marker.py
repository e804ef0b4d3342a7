"""Objects that do something when unpickled: the proof that a reader ran nothing it read."""

from __future__ import annotations

from pathlib import Path


def touch(path: str) -> str:
    Path(path).write_text("a stored object's code ran")
    return path


class Tripwire:
    """Pickles as ``touch(path)``: whoever unpickles it normally writes the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return touch, (self.path,)
