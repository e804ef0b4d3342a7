"""The small JSON files that sit beside safetensors weights: a dataclass written and read back strictly."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Mixin for a config dataclass: ``to_json`` writes its fields; ``from_json`` refuses unknown ones."""

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        raw = json.loads(Path(path).read_text())
        unknown = set(raw) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"{path}: unknown {cls.__name__} field(s) {sorted(unknown)}")
        return cls(**raw)
