from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from caltrain.service.loopback import LoopbackServer


@pytest.fixture
def start_server() -> Iterator[Callable[[Path, Path, Path], LoopbackServer]]:
    """Start real `caltrain serve` processes on loopback; all are stopped after the test."""
    servers: list[LoopbackServer] = []

    def start(state: Path, consortium: Path, log: Path) -> LoopbackServer:
        servers.append(LoopbackServer(state, consortium, log, timeout_s=60))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
