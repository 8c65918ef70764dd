"""`caltrain serve` as a child process on loopback: what the demo, the end-to-end tests, the load benchmark and
the chaos run talk to, so they exercise the real server over real HTTP (and can kill it, and its enclave, with
SIGKILL, and start it again on the same state and port)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from caltrain.errors import ServiceError

if TYPE_CHECKING:
    from caltrain.data.datasets import ArrayDataset
    from caltrain.training.config import TrainConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackServer:
    """Starts `caltrain serve` on a free loopback port and waits until it answers; `stop()` ends it."""

    def __init__(
        self, state: Path, consortium: Path, log: Path, *, extra_args: Sequence[str] = (), timeout_s: float = 90.0
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.state, self.consortium, self.extra_args, self.timeout_s = state, consortium, tuple(extra_args), timeout_s
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        cmd = [sys.executable, "-m", "caltrain", "serve", "--state", str(self.state), "--port", str(self.port),
               "--consortium", str(self.consortium), *self.extra_args]
        proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(f"server exited with code {proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        proc.kill()
        proc.wait()
        raise ServiceError(f"server did not start within {self.timeout_s:.0f} s; see {self.log}")

    def enclave_pid(self) -> int | None:
        """The enclave process (the server's one live child, started by whichever of its threads), if it runs."""
        children: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        live = [c for c in children if _state(c) not in ("Z", "X")]
        return live[0] if live else None

    def kill(self) -> None:
        """SIGKILL the server (its enclave exits with it): only what is on disk survives."""
        enclave = self.enclave_pid()
        self.proc.kill()
        self.proc.wait()
        if enclave is not None:  # gone with its host (PR_SET_PDEATHSIG); wait until it is
            for _ in range(300):
                if not Path(f"/proc/{enclave}").exists() or "Z" in _state(enclave):
                    break
                time.sleep(0.05)

    def kill_enclave(self) -> int:
        """SIGKILL the enclave process; the server's supervisor starts a new one. Returns the killed pid."""
        pid = self.enclave_pid()
        if pid is None:
            raise ServiceError("the server runs no enclave process right now")
        os.kill(pid, signal.SIGKILL)
        return pid

    def restart(self) -> None:
        """Start the server again on the same state directory and port (after `kill` or `stop`)."""
        self.proc = self._launch()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def solo_consortium(root: Path, name: str = "alice") -> Path:
    """A consortium of one member (home `root/name`) holding every role, with the digits schema (1×8×8 records,
    10 classes): what the restart and bounded-input tests and the chaos run serve. Returns the consortium file."""
    from caltrain.enclave.consortium import Consortium, DatasetSchema, Role
    from caltrain.service.participant import MemberHome

    home = MemberHome.init(root / name, name)
    path = root / "consortium.json"
    Consortium((home.member(frozenset(Role)),), DatasetSchema((1, 8, 8), 10, (0.0, 1.0))).save(path)
    return path


def equals_plain_training(state: dict[str, Any], config: TrainConfig, seed: int, data: ArrayDataset) -> bool:
    """Whether a job's final weights are plain training's of its seed on the same records in the same order:
    what an uninterrupted run gives (partitioned training equals plain training bit for bit)."""
    from caltrain.training.plain import train_plain

    model, _ = train_plain(config.model_copy(update={"seed": seed}), data)
    plain = model.state_dict()
    return state.keys() == plain.keys() and all(bool((v == plain[k]).all()) for k, v in state.items())


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"
