"""The enclave process: `python -m caltrain.enclave.main --fd N --state DIR --backend NAME`.

Started by the host as a fresh interpreter (never forked from it), optionally under a launcher such as
`gramine-sgx`. It generates its keys inside, announces them with `Ready`, then answers calls until
`Shutdown` or until the host closes the channel.
"""

from __future__ import annotations

import os

# Before numpy/torch load: two processes sharing 2 cores must not each spawn a thread pool (MACHINE-NOTES).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import fcntl  # noqa: E402
import importlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from caltrain.enclave.boot import boot  # noqa: E402
from caltrain.enclave.channel import Channel, ChannelClosed  # noqa: E402
from caltrain.enclave.manifest import CONFIG_FILE, ECALL_MODULES, guard_imports  # noqa: E402
from caltrain.enclave.runtime import BOOT_HOOKS, dispatch  # noqa: E402
from caltrain.enclave.wire import Failure, Ok, Ready, Shutdown, WireError, decode  # noqa: E402
from caltrain.errors import CaltrainError, EnclaveError  # noqa: E402

PR_SET_PDEATHSIG = 1
LOCK_FILE = "enclave.lock"


def die_with_host() -> None:
    """Exit when the host process that started us dies (Linux): a host killed with -9 leaves no enclave behind
    that could still write sealed state beside its successor's."""
    host = os.getppid()
    name = ctypes.util.find_library("c")
    if name is not None:
        ctypes.CDLL(name).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host:  # it died before we asked
        os._exit(1)


def lock_state(state_dir: Path, timeout_s: float = 60.0) -> int:
    """One enclave per state directory: wait (a predecessor may still be dying) for an exclusive lock."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise EnclaveError(f"another enclave holds {state_dir / LOCK_FILE}") from None
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caltrain-enclave")
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--fd", type=int, help="inherited socket to the host (a spawned process)")
    link.add_argument("--connect", metavar="HOST:PORT", help="connect to the host (under Gramine, which passes no fds)")
    parser.add_argument("--state", type=Path, required=True, help="directory for sealed state")
    parser.add_argument("--config", type=Path, help=f"enclave configuration (default: STATE/{CONFIG_FILE})")
    parser.add_argument("--backend", default="simulated")
    args = parser.parse_args(argv)
    if args.fd is not None:
        die_with_host()
        sock = socket.socket(fileno=args.fd)
    else:
        host, _, port = args.connect.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=60)
        sock.settimeout(None)
    channel = Channel(sock)
    guard_imports()  # from here on, only measured caltrain code loads
    for name in ECALL_MODULES:
        importlib.import_module(name)
    try:
        lock_state(args.state)
        ctx = boot(state_dir=args.state, backend=args.backend, config_path=args.config or args.state / CONFIG_FILE)
        for hook in BOOT_HOOKS:
            hook(ctx)
    except CaltrainError as exc:  # e.g. tampered sealed state: tell the host why, then stop
        channel.send(Failure(error=type(exc).__name__, detail=str(exc)))
        return 1
    channel.send(
        Ready(
            platform=ctx.platform,
            measurement=ctx.measurement,
            hpke_public_key=ctx.hpke.public_bytes,
            signing_public_key=ctx.identity.public_key,
            simulated=ctx.simulated,
        )
    )
    try:
        while True:
            frame = channel.recv_frame()
            try:
                msg = decode(frame)
            except WireError as exc:  # a malformed frame is refused, typed; the enclave keeps serving
                channel.send(Failure(error=type(exc).__name__, detail=str(exc)))
                continue
            if isinstance(msg, Shutdown):
                channel.send(Ok())
                return 0
            channel.send(dispatch(ctx, msg))
    except ChannelClosed:
        return 0


if __name__ == "__main__":
    sys.exit(main())
