"""The host's proxy to the enclave process. The host holds this object, never the enclave's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import caltrain.attestation.errors
import caltrain.crypto.errors
import caltrain.enclave.errors  # noqa: F401  (error classes the enclave may name)
from caltrain.enclave.authority import open_signed_reply, request_digest
from caltrain.enclave.channel import Channel, ChannelClosed, Tap
from caltrain.enclave.manifest import CONFIG_FILE, EnclaveConfig
from caltrain.enclave.protocol import EnclaveKeys
from caltrain.enclave.wire import Failure, Message, Ok, Ready, Shutdown, SignedReply, WireError
from caltrain.errors import CaltrainError, EnclaveError, error_class

R = TypeVar("R", bound=Message)

_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def raise_failure(failure: Failure) -> None:
    """Re-raise an enclave failure as the same caltrain error class on the host side."""
    cls = error_class(failure.error)
    raise (EnclaveError if cls is CaltrainError else cls)(failure.detail)


class EnclaveHost:
    """Starts the enclave as a separate OS process and makes calls to it, one at a time."""

    def __init__(
        self,
        *,
        state_dir: Path,
        config: EnclaveConfig,
        backend: str = "simulated",
        launcher: Sequence[str] = (),
        listen_port: int = 7801,
        start_timeout_s: float = 300.0,
        tap: Tap | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.config = config
        self.backend = backend
        self.launcher = tuple(launcher)
        self.listen_port = listen_port
        self.start_timeout_s = start_timeout_s
        self._tap = tap
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self.ready: Ready | None = None

    def start(self) -> Ready:
        """Launch the enclave process and wait for its `Ready`.

        Without a launcher the enclave is this interpreter, spawned fresh, and inherits one end of a socket
        pair. With a launcher (e.g. `gramine-sgx caltrain-enclave`), whose argv is fixed in its measured
        manifest, the host listens on `listen_port` on loopback and the enclave connects.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / CONFIG_FILE).write_bytes(self.config.consortium.canonical_bytes())
        env = {**os.environ, **_THREAD_ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if self.launcher:
            with socket.create_server(("127.0.0.1", self.listen_port)) as server:
                self._proc = subprocess.Popen(list(self.launcher), env=env, stdin=subprocess.DEVNULL)
                server.settimeout(self.start_timeout_s)
                try:
                    host_sock, _ = server.accept()
                except TimeoutError:
                    self._proc.kill()
                    raise EnclaveError(f"the enclave did not connect within {self.start_timeout_s:.0f} s") from None
                host_sock.settimeout(None)
        else:
            host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            cmd = [
                sys.executable,
                "-m",
                "caltrain.enclave.main",
                "--fd",
                str(child_sock.fileno()),
                "--state",
                str(self.state_dir),
                "--backend",
                self.backend,
            ]
            self._proc = subprocess.Popen(cmd, pass_fds=[child_sock.fileno()], env=env, stdin=subprocess.DEVNULL)
            child_sock.close()
        self._channel = Channel(host_sock, tap=self._tap)
        try:
            ready = self._channel.recv()
        except ChannelClosed:
            code = self._proc.wait(timeout=30)
            raise EnclaveError(f"enclave process exited with code {code} before it was ready") from None
        if isinstance(ready, Failure):
            raise_failure(ready)
        if not isinstance(ready, Ready):
            raise WireError(f"expected Ready from the enclave, got {ready.type_name}")
        self.ready = ready
        return ready

    @property
    def keys(self) -> EnclaveKeys:
        if self.ready is None:
            raise EnclaveError("enclave not started")
        return EnclaveKeys(self.ready.hpke_public_key, self.ready.signing_public_key)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def call(self, msg: Message, expect: type[R]) -> R:
        """Send one call and return its reply; an enclave-side failure re-raises its typed error."""
        with self.calling(msg, expect) as reply:
            return reply()

    def call_member(self, msg: Message, expect: type[R]) -> tuple[SignedReply, R]:
        """Forward a member's (not sealed) request: the enclave's signed answer, to pass on to the member, and
        what it says (checked here too: the host needs the answer as much as the member)."""
        signed = self.call(msg, SignedReply)
        reply = open_signed_reply(signed, enclave_key=self.keys.signing, request=request_digest(msg, self.keys),
                                  expect=expect)
        return signed, reply

    @contextmanager
    def calling(self, msg: Message, expect: type[R]) -> Iterator[Callable[[], R]]:
        """Send a call now and collect its reply later, inside the block: the host works while the enclave
        does. The channel stays reserved for this call until the block ends (the reply is read by then)."""
        with self._lock:
            if self._channel is None:
                raise EnclaveError("enclave not started")
            channel = self._channel
            try:
                channel.send(msg)
            except ChannelClosed as exc:
                raise EnclaveError(f"enclave process is gone: {exc}") from None
            received: list[Message] = []

            def reply() -> R:
                if not received:
                    try:
                        received.append(channel.recv())
                    except ChannelClosed as exc:
                        raise EnclaveError(f"enclave process is gone: {exc}") from None
                answer = received[0]
                if isinstance(answer, Failure):
                    raise_failure(answer)
                if not isinstance(answer, expect):
                    raise WireError(f"expected {expect.__name__} from the enclave, got {answer.type_name}")
                return answer

            try:
                yield reply
            finally:
                if not received:  # the block left early: keep the channel in step for the next call
                    with suppress(CaltrainError):
                        reply()

    def stop(self) -> None:
        """Ask the enclave to shut down; kill it if it does not within 10 s."""
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                self.call(Shutdown(), Ok)
            self._proc.wait(timeout=10)
        except (CaltrainError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._close()

    def kill(self) -> None:
        """SIGKILL the enclave (crash tests): sealed state on disk is all that survives."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._close()

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._proc = None

    def __enter__(self) -> EnclaveHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
