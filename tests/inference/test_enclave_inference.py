"""Inference at the enclave boundary: answers equal the plain model's, batches never mix answers, replays,
tampering and wrong or dead sessions are rejected alone, and no input byte crosses the channel or the shared
slots in the clear."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.crypto.errors import IntegrityError
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.enclave.authority import UNSIGNED
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import DeployModel
from caltrain.errors import AuthError, Unauthenticated
from caltrain.inference.errors import (
    BadRequest,
    DuplicateModel,
    ReplayedRequest,
    SessionExpired,
    UnknownModel,
    UnknownSession,
)
from caltrain.inference.owner import prepare_deployment
from caltrain.inference.requests import ClientSession
from caltrain.inference.serving import BatchingConfig, InferenceService
from caltrain.inference.sessions import REORDER_WINDOW, SessionTable
from caltrain.models import build_model
from tests.helpers import People, signed_by, with_field

torch.set_num_threads(1)
ARCH, M = "digits-cnn", 2


def plain_top_k(model: torch.nn.Module, x: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    with torch.inference_mode():
        p, i = torch.topk(torch.softmax(model(torch.from_numpy(x)[None]), 1), k)
    return i[0].tolist(), p[0].tolist()


def deploy_request(model_id: str, sealed_weights: bytes, ternary: bool) -> DeployModel:
    return DeployModel(
        model_id=model_id, job_id="", front_digest="", architecture=ARCH, m=M, ternary=ternary,
        sealed_weights=sealed_weights, slot_paths=[], max_batch=0, auth=UNSIGNED,
    )


def deploy(service: InferenceService, people: People, model_id: str, model: torch.nn.Module, ternary: bool) -> None:
    prepared = prepare_deployment(service.enclave.keys, model_id, ARCH, M, ternary, model.state_dict())
    msg = signed_by(deploy_request(model_id, prepared.sealed_weights, ternary), people.owner, service.enclave.keys)
    service.deploy(msg, prepared.host_state)


@pytest.fixture
def served(people: People, tmp_path: Path) -> Iterator[tuple[InferenceService, list[bytes], torch.nn.Module]]:
    frames: list[bytes] = []
    host = EnclaveHost(state_dir=tmp_path / "state", config=EnclaveConfig(people.consortium),
                       tap=lambda _d, frame: frames.append(frame))
    host.start()
    service = InferenceService(host, BatchingConfig(max_batch=16, max_wait_ms=20))
    model = build_model(ARCH, seed=3).eval()
    deploy(service, people, "normal", model, ternary=False)
    deploy(service, people, "ternary", model, ternary=True)
    yield service, frames, model
    service.close()
    host.stop()


def session(service: InferenceService) -> ClientSession:
    opened = ClientSession(service.enclave.keys.hpke)
    service.open_session(opened.session_id, opened.sealed)
    return opened


def ask(service: InferenceService, s: ClientSession, model_id: str, x: np.ndarray, k: int = 3) -> dict[str, object]:
    counter, ct = s.seal(model_id, x, k)
    return s.open_answer(model_id, counter, service.get(model_id).submit(s.session_id, counter, k, ct).result(30))


Served = tuple[InferenceService, list[bytes], torch.nn.Module]


def test_concurrent_clients_get_their_own_answers(served: Served) -> None:
    service, frames, model = served
    xs = np.random.default_rng(0).random((48, 1, 8, 8), dtype=np.float32)
    sessions = [session(service) for _ in range(3)]  # threads share sessions: counters arrive out of order
    results: dict[tuple[str, int], dict[str, object]] = {}

    def client(model_id: str, i: int) -> None:
        results[model_id, i] = ask(service, sessions[i % 3], model_id, xs[i])

    threads = [threading.Thread(target=client, args=(mid, i)) for mid in ("normal", "ternary") for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (mid, i), answer in results.items():
        labels, probs = plain_top_k(model, xs[i], 3)
        assert answer["labels"] == labels and answer["model_id"] == mid
        assert np.allclose(answer["probabilities"], probs, atol=1e-5)
    batches = [t["batch"] for t in service.get("normal").timings]
    assert len(results) == 96 and max(batches) > 1, "concurrent requests were batched"
    # Host-side byte scan: no input (nor any 16-byte window of it) crossed the channel or sits in a shared slot.
    shared = b"".join(slot.view((slot.capacity,)).numpy().tobytes()
                      for mid in ("normal", "ternary") for part in service.get(mid).slots for slot in part)
    seen = b"".join(frames) + shared
    for x in xs[:8]:
        raw = x.tobytes()
        assert all(raw[j : j + 16] not in seen for j in range(0, len(raw) - 16, 16))


def test_replay_tamper_wrong_session_and_bad_requests_fail_alone(served: Served, people: People) -> None:
    service, _, model = served
    x = np.random.default_rng(1).random((1, 8, 8), dtype=np.float32)
    server, mine, other = service.get("normal"), session(service), session(service)
    counter, ct = mine.seal("normal", x, 2)
    good = mine.open_answer("normal", counter, server.submit(mine.session_id, counter, 2, ct).result(30))
    assert good["labels"] == plain_top_k(model, x, 2)[0]
    with pytest.raises(ReplayedRequest):  # the same request again
        server.submit(mine.session_id, counter, 2, ct).result(30)
    counter, ct = mine.seal("normal", x, 2)
    tampered = bytearray(ct)
    tampered[20] ^= 1
    cases = [
        ((mine.session_id, counter, 2, bytes(tampered)), IntegrityError),
        ((other.session_id, counter, 2, ct), IntegrityError),  # sealed under another session's key
        ((mine.session_id, counter + 1, 2, ct), IntegrityError),  # counter is bound in
        ((mine.session_id, counter, 3, ct), IntegrityError),  # so is top-k
        (("0" * 32, counter, 2, ct), UnknownSession),
    ]
    for args, error in cases:
        with pytest.raises(error):
            server.submit(*args).result(30)
    with pytest.raises(IntegrityError):  # bound to another model: does not open
        service.get("ternary").submit(mine.session_id, counter, 2, ct).result(30)
    assert server.submit(mine.session_id, counter, 2, ct).result(30), "forgeries did not burn the counter"
    with pytest.raises(ReplayedRequest):  # a replayed session open would reset the counters
        service.open_session(mine.session_id, mine.sealed)
    with pytest.raises(BadRequest):
        server.submit(mine.session_id, counter + 1, 2, ct[:-1])
    with pytest.raises(BadRequest):
        server.submit(mine.session_id, 0, 2, ct)
    nan = np.full((1, 8, 8), np.nan, dtype=np.float32)
    with pytest.raises(BadRequest, match="NaN"):
        ask(service, mine, "normal", nan)
    with pytest.raises(UnknownModel):
        service.get("nope")
    with pytest.raises(DuplicateModel):
        deploy(service, people, "normal", model, ternary=False)
    # A deployment not signed by an owner (the host's own FrontNet, or a participant's) is refused by the enclave.
    host_state = {k: v for k, v in model.state_dict().items() if not k.startswith("conv")}
    prepared = prepare_deployment(service.enclave.keys, "evil", ARCH, M, False, model.state_dict())
    forged = signed_by(deploy_request("evil", prepared.sealed_weights, False), people.owner, service.enclave.keys)
    with pytest.raises(Unauthenticated):  # sealed weights swapped after the owner signed
        other = prepare_deployment(service.enclave.keys, "evil", ARCH, M, False, build_model(ARCH).state_dict())
        service.deploy(with_field(forged, sealed_weights=other.sealed_weights), host_state)
    with pytest.raises(AuthError, match="owner"):
        service.deploy(signed_by(forged, people.alice, service.enclave.keys), host_state)
    assert ask(service, mine, "normal", x)["labels"] == plain_top_k(model, x, 3)[0], "still serving"


def test_session_table_counters_expiry_and_bound() -> None:
    hpke = HpkeKeyPair.generate()
    table = SessionTable(ttl_s=60, max_requests=3, max_sessions=2)
    client = ClientSession(hpke.public_bytes)
    live = table.open(hpke, client.session_id, client.sealed)
    now = table.opens.now()
    table.opens.seen.clear()  # even once the open itself is forgotten, a live session is never replaced
    with pytest.raises(ReplayedRequest):
        table.open(hpke, client.session_id, client.sealed)
    for counter in (5, 3, 4):  # out of order within the window: each accepted once
        table.get(client.session_id, now).check(counter)
        live.accept(counter)
    for counter in (3, 4, 5):
        with pytest.raises(ReplayedRequest):
            live.check(counter)
    with pytest.raises(SessionExpired):  # request limit
        table.get(client.session_id, now)
    with pytest.raises(UnknownSession):  # and gone
        table.get(client.session_id, now)
    window = table.open(hpke, (c := ClientSession(hpke.public_bytes)).session_id, c.sealed)
    window.accept(1 << 62)  # a huge jump neither fails nor builds a huge bitmap
    window.check((1 << 62) - REORDER_WINDOW + 1)
    with pytest.raises(ReplayedRequest):
        window.check((1 << 62) - REORDER_WINDOW)
    with pytest.raises(SessionExpired):  # lifetime
        table.get(c.session_id, now + 61_000)
    first, second, third = (ClientSession(hpke.public_bytes) for _ in range(3))
    for s in (first, second, third):
        table.open(hpke, s.session_id, s.sealed)
    with pytest.raises(UnknownSession):  # the least recently used was evicted to stay within max_sessions
        table.get(first.session_id, now)
    assert table.get(third.session_id, now) and len(table.live) == 2
