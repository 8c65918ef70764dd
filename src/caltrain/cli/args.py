"""Argument types shared by the commands: a bad value is refused by the parser, in one line, before anything
runs or is written."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    """A fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def out_file(text: str) -> Path:
    """A file to write: its folder must exist (so nothing is computed, fetched or half-written first)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder, not a file")
    return path


def iso_time(text: str) -> datetime:
    """An ISO 8601 time (`2025-06-01T12:00:00Z`); without a zone, UTC."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2025-06-01T12:00:00Z") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
