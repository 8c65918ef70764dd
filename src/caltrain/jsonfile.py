"""Strict, frozen pydantic models read from and written to JSON files (policies, training configs).

What users hand us is validated on load and fails with the caller's own typed error naming the file and field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from caltrain.errors import CaltrainError


def validation_summary(exc: ValidationError | Sequence[Any]) -> str:
    """A validation failure (pydantic's, or FastAPI's list of them) on one line: `field.path: message; ...`
    (no URLs, no input echo)."""
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)


class JsonFileModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    # Subclasses name what they are and which error a bad file raises.
    what: ClassVar[str] = "document"
    error: ClassVar[type[CaltrainError]] = CaltrainError

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise cls.error(f"invalid {cls.what}: {validation_summary(exc)}") from None

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise cls.error(f"cannot read {cls.what} {path}: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
