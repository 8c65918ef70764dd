"""The host's proxy to the enclave process, and its supervisor. The host holds this object, never the enclave's.

Supervised (`supervise`), the host notices when the enclave process dies, starts a new one (which restores its
sealed state at boot) and then tells the service (`on_ready`), which re-opens what must be served again. While
the enclave is down every call fails at once with `EnclaveUnavailable`, never waits for it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
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
from caltrain.errors import CaltrainError, EnclaveError, EnclaveUnavailable, error_class

R = TypeVar("R", bound=Message)
log = logging.getLogger("caltrain.enclave")

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
        self.status = "stopped"  # starting | up | restarting | failed | stopped
        self.last_error: str | None = None
        self.restarts = 0
        self._stopping = False
        self._up = threading.Condition()

    def start(self) -> Ready:
        """Launch the enclave process and wait for its `Ready`.

        Without a launcher the enclave is this interpreter, spawned fresh, and inherits one end of a socket
        pair. With a launcher (e.g. `gramine-sgx caltrain-enclave`), whose argv is fixed in its measured
        manifest, the host listens on `listen_port` on loopback and the enclave connects.
        """
        self._set_status("starting")
        try:
            proc, channel, ready = self._launch()
        except BaseException as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._set_status("failed")
            raise
        with self._lock:
            self._proc, self._channel, self.ready = proc, channel, ready
        self.last_error = None
        self._set_status("up")
        if self._stopping:  # stopped while this one started (the supervisor's restart racing `stop`)
            self.stop()
        return ready

    def _set_status(self, status: str) -> None:
        with self._up:
            self.status = status
            self._up.notify_all()

    def wait_up(self, timeout_s: float) -> bool:
        """Wait until the enclave is up (or `timeout_s` passed); whether it is."""
        with self._up:
            return self._up.wait_for(lambda: self.status == "up" or self._stopping, timeout=timeout_s) and \
                self.status == "up"

    def supervise(self, on_ready: Callable[[Ready], None] = lambda ready: None, *, backoff_s: float = 1.0,
                  max_backoff_s: float = 30.0) -> threading.Thread:
        """Watch the enclave process; when it dies, start a new one (backing off while starts fail) and call
        `on_ready` with it. Returns the watching thread (a daemon); `stop` ends it."""

        def watch() -> None:
            delay = backoff_s
            while not self._stopping:
                proc = self._proc
                if proc is not None:
                    if self.status != "up":  # the channel broke first: make sure that process is gone too
                        proc.kill()
                    code = proc.wait()
                    if self._stopping:
                        return
                    log.error("enclave process %d exited with code %s; restarting it", proc.pid, code)
                    self._mark_down(f"enclave process exited with code {code}")
                try:
                    ready = self.start()
                except CaltrainError as exc:
                    log.error("enclave restart failed (%s: %s); next try in %.0f s", type(exc).__name__, exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, max_backoff_s)
                    continue
                delay = backoff_s
                self.restarts += 1
                log.info("enclave restarted (%d restarts); restoring what it serves", self.restarts)
                try:
                    on_ready(ready)
                except CaltrainError as exc:  # a restore step that failed is reported; the enclave serves on
                    log.error("restoring after the enclave restart failed: %s: %s", type(exc).__name__, exc)

        thread = threading.Thread(target=watch, name="caltrain-enclave-supervisor", daemon=True)
        thread.start()
        return thread

    def _mark_down(self, why: str) -> None:
        """The enclave is gone: fail calls at once from now on, and free the channel and the process."""
        if self.status == "up":
            self._set_status("restarting")
            self.last_error = why
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._proc = None

    def _launch(self) -> tuple[subprocess.Popen[bytes], Channel, Ready]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / CONFIG_FILE).write_bytes(self.config.consortium.canonical_bytes())
        env = {**os.environ, **_THREAD_ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if self.launcher:
            with socket.create_server(("127.0.0.1", self.listen_port)) as server:
                proc = subprocess.Popen(list(self.launcher), env=env, stdin=subprocess.DEVNULL)
                server.settimeout(self.start_timeout_s)
                try:
                    host_sock, _ = server.accept()
                except TimeoutError:
                    proc.kill()
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
            proc = subprocess.Popen(cmd, pass_fds=[child_sock.fileno()], env=env, stdin=subprocess.DEVNULL)
            child_sock.close()
        channel = Channel(host_sock, tap=self._tap)
        try:
            ready = channel.recv()
        except ChannelClosed:
            code = proc.wait(timeout=30)
            channel.close()
            raise EnclaveError(f"enclave process exited with code {code} before it was ready") from None
        if isinstance(ready, Failure):
            channel.close()
            proc.wait(timeout=30)
            raise_failure(ready)
        if not isinstance(ready, Ready):
            channel.close()
            proc.kill()
            raise WireError(f"expected Ready from the enclave, got {ready.type_name}")
        return proc, channel, ready

    @property
    def keys(self) -> EnclaveKeys:
        if self.ready is None or self.status != "up":
            raise self._unavailable()
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
        if self.status != "up":
            raise self._unavailable()
        with self._lock:
            if self._channel is None:
                raise self._unavailable()
            channel = self._channel
            try:
                channel.send(msg)
            except ChannelClosed as exc:
                raise self._gone(exc) from None
            received: list[Message] = []

            def reply() -> R:
                if not received:
                    try:
                        received.append(channel.recv())
                    except ChannelClosed as exc:
                        raise self._gone(exc) from None
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

    def _unavailable(self) -> EnclaveUnavailable:
        why = f": {self.last_error}" if self.last_error else ""
        return EnclaveUnavailable(f"the enclave is {self.status}{why}; retry shortly")

    def _gone(self, exc: Exception) -> EnclaveUnavailable:
        """The channel broke mid-call: the enclave process died, or is of no use without its channel (it is killed);
        the supervisor starts a new one."""
        if self.status == "up":
            self._set_status("restarting")
            self.last_error = f"enclave process is gone: {exc}"
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        return EnclaveUnavailable(f"the enclave process died during the call ({exc}); retry shortly")

    def stop(self) -> None:
        """Ask the enclave to shut down; kill it if it does not within 10 s."""
        self._stopping = True
        proc = self._proc
        try:
            if proc is not None:
                if proc.poll() is None and self.status == "up":
                    self.call(Shutdown(), Ok)
                proc.wait(timeout=10)
        except (CaltrainError, subprocess.TimeoutExpired):
            assert proc is not None
            proc.kill()
            proc.wait()
        finally:
            self._set_status("stopped")
            self._close()

    def kill(self) -> None:
        """SIGKILL the enclave (crash tests): sealed state on disk is all that survives. Unsupervised, it stays
        down; supervised, the supervisor starts a new one."""
        proc = self._proc
        if proc is not None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            self._mark_down("killed")

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
