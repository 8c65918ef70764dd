"""An ordered record of verification steps, so a failed attestation says which check failed and why."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from caltrain.errors import AttestationError

Outcome = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class Step:
    name: str
    outcome: Outcome
    detail: str


class Trace:
    """Backends run each check inside `step(name)`; the first `AttestationError` is recorded, then re-raised."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        notes: list[str] = []
        try:
            yield notes
        except AttestationError as exc:
            self.steps.append(Step(name, "fail", f"{type(exc).__name__}: {exc}"))
            raise
        self.steps.append(Step(name, "pass", "; ".join(notes)))

    def skip(self, name: str, why: str) -> None:
        self.steps.append(Step(name, "skipped", why))
