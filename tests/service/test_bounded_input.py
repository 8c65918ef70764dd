"""Bounded input through the real server: oversized, chunked and unauthenticated bodies are refused before they
are buffered (server and enclave RSS measured), every malformed body to every route gets a 4xx (never a 500),
timestamps are only well-formed finite numbers, every error class has its one HTTP status, and the API docs
work offline with every request body and the signed-request authentication described."""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import caltrain
from caltrain.errors import ERROR_MODULES, CaltrainError, Unauthenticated, error_class, http_status
from caltrain.service.auth import RequestAuthenticator, sign_request
from caltrain.service.loopback import LoopbackServer, solo_consortium
from caltrain.service.participant import MemberHome

MiB = 1 << 20
POST_ROUTES = ["/v1/jobs", "/v1/jobs/j/trace", "/v1/jobs/j/suspicion", "/v1/jobs/j/export", "/v1/jobs/j/cancel",
               "/v1/models", "/v1/sessions", "/v1/infer", "/v1/datasets"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("bounded")
    consortium = solo_consortium(root)
    server = LoopbackServer(root / "state", consortium, root / "server.log")
    yield server, MemberHome.load(root / "alice")
    server.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood(port: int, path: str, headers: dict[str, str], total: int, *, chunked: bool) -> int:
    """Send a `total`-byte body (declared, or chunked) as fast as the server reads it; return the status the
    server answers with, as soon as it answers."""
    sock = socket.create_connection(("127.0.0.1", port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}{framing}\r\n\r\n".encode())

    def send() -> None:
        block = b"A" * MiB
        piece = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
        try:
            for _ in range(total // MiB):
                sock.sendall(piece)
        except OSError:
            pass  # the server answered and closed: what we want

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sock.settimeout(60)
    status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    sock.close()
    sender.join(10)
    return int(status_line.split()[1])


def bogus_signature() -> dict[str, str]:
    return {"x-caltrain-member": "alice", "x-caltrain-timestamp": f"{time.time():.3f}",
            "x-caltrain-signature": base64.b64encode(b"\0" * 64).decode(), "x-caltrain-content-sha256": "0" * 64}


@pytest.mark.parametrize(("path", "chunked", "status"), [
    ("/v1/jobs", False, 413),  # declared too large: refused unread
    ("/v1/jobs", True, 401),  # chunked, unauthenticated: refused from the headers, unread
    ("/v1/datasets", False, 401),  # within the upload limit, but the signature is bogus: refused unread
    ("/v1/datasets", True, 401),
    ("/v1/infer", True, 413),  # anonymous route, chunked: cut off at its 1 MiB limit
    ("/v1/models", True, 401),
], ids=lambda v: str(v))
def test_400_mib_bodies_are_refused_before_they_are_buffered(
    served: tuple[LoopbackServer, MemberHome], path: str, chunked: bool, status: int
) -> None:
    server, _ = served
    enclave = server.enclave_pid()
    assert enclave is not None
    pids = {"server": server.proc.pid, "enclave": enclave}
    before = {k: rss_mib(p) for k, p in pids.items()}
    upload = {f"x-caltrain-{h}": "AA==" for h in ("request-id", "auth", "wrapped-key", "data-policy")}
    headers = {**bogus_signature(), **(upload if path == "/v1/datasets" else {})}
    assert flood(server.port, path, headers, 400 * MiB, chunked=chunked) == status
    grown = {k: rss_mib(p) - before[k] for k, p in pids.items()}
    assert grown["server"] < 32 and grown["enclave"] < 8, f"memory grew by {grown} MiB"
    assert httpx.get(f"{server.url}/v1/health").status_code == 200, "still serving"


@settings(max_examples=25)
@given(route=st.sampled_from(POST_ROUTES), body=st.one_of(
    st.binary(max_size=300), st.just(b"\xff\xfe\x00not utf-8"), st.just(b'{"sealed": "!!"}'),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
))
def test_no_malformed_body_gets_a_500(served: tuple[LoopbackServer, MemberHome], route: str, body: bytes) -> None:
    """Signed by a member holding every role, so the body is read and parsed: whatever it is, a 4xx."""
    server, alice = served
    headers = sign_request(alice.identity, alice.name, "POST", route, body)
    response = httpx.post(f"{server.url}{route}", content=body, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, (route, body[:80], response.status_code, response.text)
    assert set(response.json()) == {"error", "detail"}


@given(ts=st.one_of(st.text(max_size=24), st.sampled_from(["nan", "NaN", "inf", "-inf", "1e9", " 1", "+1",
                                                            "1_000", "١٢٣", "0x10", "1.", ".5", ""])))
def test_only_well_formed_finite_timestamps_pass(ts: str) -> None:
    from caltrain.crypto.signing import Identity
    from caltrain.enclave.consortium import Consortium, Member, Role

    identity = Identity.generate()
    consortium = Consortium((Member("m", frozenset({Role.OWNER}), identity.public_key, b"\0" * 32),))
    auth = RequestAuthenticator(consortium, clock=lambda: 1_000.0)
    headers = {**sign_request(identity, "m", "GET", "/v1/jobs", b""), "x-caltrain-timestamp": ts}
    well_formed = ts.isascii() and ts.replace(".", "", 1).isdigit() and not ts.startswith(".") and \
        not ts.endswith(".") and abs(float(ts) - 1_000) <= 120
    if not well_formed:
        with pytest.raises(Unauthenticated):
            auth.authenticate("GET", "/v1/jobs", headers)


def test_every_error_class_has_one_status_and_a_name_peers_can_raise() -> None:
    for module in pkgutil.walk_packages(caltrain.__path__, "caltrain."):
        if not module.name.endswith(("__main__", ".enclave.main")):
            importlib.import_module(module.name)
    classes: list[type[CaltrainError]] = []
    stack: list[type[CaltrainError]] = [CaltrainError]
    while stack:
        cls = stack.pop()
        if cls.__module__.startswith("caltrain."):
            classes.append(cls)
        stack.extend(cls.__subclasses__())
    names = [c.__name__ for c in classes]
    assert len(names) == len(set(names)), "two error classes share a name: peers could not tell them apart"
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if c.__module__ not in ERROR_MODULES]
    assert not outside, f"error classes outside caltrain.errors.ERROR_MODULES (peers cannot re-raise them): {outside}"
    for cls in classes:
        assert error_class(cls.__name__) is cls
    client_faults = ["ServiceError", "DataError", "SchemaViolation", "JobRefused", "QueryRejected", "IntegrityError",
                     "KeyUnwrapError", "ContainerFormatError", "BadRequest", "ConsentRefused", "PolicyInvalid",
                     "UnknownMethod", "PartitionError", "WireError", "RequestTooLarge", "TooManyUploads"]
    for name in client_faults:
        assert 400 <= http_status(error_class(name)) < 500, name
    assert http_status(error_class("EnclaveUnavailable")) == 503
    assert http_status(error_class("StateRolledBack")) == 500


def test_docs_work_offline_and_describe_every_body_and_the_signatures(served: tuple[LoopbackServer, MemberHome]) \
        -> None:
    server, _ = served
    page = httpx.get(f"{server.url}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{server.url}/docs-assets/{asset}").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) >= {"caltrain-signature", "caltrain-content-sha256"}
    assert "X-Caltrain-Content-SHA256".lower() in schema["info"]["description"].lower()
    anonymous = {"/v1/sessions", "/v1/infer"}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if method == "post" and not path.endswith("/cancel"):  # cancelling takes no body
                assert "requestBody" in op, f"POST {path} documents no body"
            if path.startswith("/v1/jobs") or (path in ("/v1/models", "/v1/datasets") and method == "post"):
                assert op.get("security"), f"{method.upper()} {path} does not say it needs a signature"
            if path in anonymous:
                assert not op.get("security")


def test_at_most_two_uploads_are_received_at_once(served: tuple[LoopbackServer, MemberHome]) -> None:
    """Two signed uploads that stall half-way hold both slots: a third is refused at once with 429 and
    Retry-After; when the stalled ones go away, their slots (and spooled halves) are freed."""
    server, alice = served
    blob = b"\0" * (8 * MiB)
    upload = {f"x-caltrain-{h}": "AA==" for h in ("request-id", "auth", "wrapped-key", "data-policy")}
    stalled = []
    for _ in range(2):
        headers = {**sign_request(alice.identity, alice.name, "POST", "/v1/datasets", blob), **upload}
        sock = socket.create_connection(("127.0.0.1", server.port))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /v1/datasets HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(blob)}\r\n\r\n".encode())
        sock.sendall(blob[: 2 * MiB])
        stalled.append(sock)
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/v1/health").json()["uploads"]["active"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    third = httpx.post(f"{server.url}/v1/datasets", content=blob,
                       headers={**sign_request(alice.identity, alice.name, "POST", "/v1/datasets", blob), **upload})
    assert third.status_code == 429 and third.json()["error"] == "TooManyUploads" and third.headers["retry-after"]
    for sock in stalled:
        sock.close()
    while httpx.get(f"{server.url}/v1/health").json()["uploads"]["active"]:
        assert time.monotonic() < deadline, "a dropped upload kept its slot"
        time.sleep(0.05)
    assert not list((server.state / "uploads").iterdir()), "a dropped upload left its spooled part"
