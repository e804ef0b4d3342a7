"""Error hierarchy shared by every rtdecode stage.

Each error names the file or field, what was expected and what came, so an operator can act on a
single log line.
"""

from __future__ import annotations


class RtdecodeError(Exception):
    """Base class of every error rtdecode raises on purpose."""


class ConfigError(RtdecodeError, ValueError):
    """A session configuration key is unknown, missing or holds a bad value."""


class VoxelSpaceError(RtdecodeError, ValueError):
    """Arrays of two voxel sets met (a run's mask against the session's, a beta against saved statistics)."""


class IngestError(RtdecodeError):
    """A scanner file cannot be turned into a volume (truncated, wrong shape, unreadable)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class PartialFileError(IngestError):
    """A file is (still) shorter than its header says: it may be half-written."""


class ProtocolError(RtdecodeError, ValueError):
    """A wire message is malformed, too large, of an unknown type or of another version."""


class StateError(RtdecodeError):
    """A stage was used before it was ready (no reference volume, no mask, ...)."""
