"""Inference at the enclave boundary: answers equal the plain model's, batches never mix answers, replays
and tampering are rejected alone, and no input byte crosses the channel or the shared slots in the clear."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from caltrain.crypto import aead
from caltrain.crypto.errors import BadSignature, IntegrityError
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.inference.errors import BadRequest, DuplicateModel, ReplayedRequest, UnknownModel
from caltrain.inference.owner import prepare_deployment
from caltrain.inference.requests import new_request_id, open_answer, seal_request
from caltrain.inference.serving import BatchingConfig, InferenceService
from caltrain.models import build_model
from tests.helpers import People

torch.set_num_threads(1)
ARCH, M = "digits-cnn", 2


def plain_top_k(model: torch.nn.Module, x: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    with torch.inference_mode():
        p, i = torch.topk(torch.softmax(model(torch.from_numpy(x)[None]), 1), k)
    return i[0].tolist(), p[0].tolist()


def deploy(service: InferenceService, people: People, model_id: str, model: torch.nn.Module, ternary: bool) -> None:
    prepared = prepare_deployment(service.enclave.keys, people.alice, model_id, ARCH, M, ternary, model.state_dict())
    service.deploy(
        model_id=model_id, architecture=ARCH, m=M, ternary=ternary, owner="alice", signature=prepared.signature,
        host_state=prepared.host_state, sealed_weights=prepared.sealed_weights,
    )


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


def ask(service: InferenceService, model_id: str, x: np.ndarray, k: int = 3) -> dict[str, object]:
    request_id, key = new_request_id(), aead.new_key()
    ct = seal_request(service.enclave.keys.hpke, model_id, request_id, x, k, key)
    return open_answer(key, model_id, request_id, service.get(model_id).submit(request_id, ct).result(30))


Served = tuple[InferenceService, list[bytes], torch.nn.Module]


def test_concurrent_clients_get_their_own_answers(served: Served) -> None:
    service, frames, model = served
    xs = np.random.default_rng(0).random((48, 1, 8, 8), dtype=np.float32)
    results: dict[tuple[str, int], dict[str, object]] = {}

    def client(model_id: str, i: int) -> None:
        results[model_id, i] = ask(service, model_id, xs[i])

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
    # Host-side byte scan: no input (nor any 16-byte window of it) crossed the channel.
    channel = b"".join(frames)
    for x in xs[:8]:
        raw = x.tobytes()
        assert all(raw[j : j + 16] not in channel for j in range(0, len(raw) - 16, 16))


def test_replay_tamper_and_bad_requests_fail_alone(
    served: tuple[InferenceService, list[bytes], torch.nn.Module], people: People
) -> None:
    service, _, model = served
    x = np.random.default_rng(1).random((1, 8, 8), dtype=np.float32)
    keys, server = service.enclave.keys, service.get("normal")
    rid, key = new_request_id(), aead.new_key()
    ct = seal_request(keys.hpke, "normal", rid, x, 2, key)
    good = open_answer(key, "normal", rid, server.submit(rid, ct).result(30))
    assert good["labels"] == plain_top_k(model, x, 2)[0]
    with pytest.raises(ReplayedRequest):
        server.submit(rid, ct).result(30)
    tampered = bytearray(seal_request(keys.hpke, "normal", (rid2 := new_request_id()), x, 2, key))
    tampered[60] ^= 1
    with pytest.raises(IntegrityError):
        server.submit(rid2, bytes(tampered)).result(30)
    moved = seal_request(keys.hpke, "normal", (rid3 := new_request_id()), x, 2, key)
    with pytest.raises(IntegrityError):  # bound to another model (or request id): does not open
        service.get("ternary").submit(rid3, moved).result(30)
    with pytest.raises(BadRequest):
        server.submit(new_request_id(), ct[:-1])
    nan = np.full((1, 8, 8), np.nan, dtype=np.float32)
    rid4 = new_request_id()
    with pytest.raises(BadRequest, match="NaN"):
        server.submit(rid4, seal_request(keys.hpke, "normal", rid4, nan, 2, key)).result(30)
    with pytest.raises(UnknownModel):
        service.get("nope")
    with pytest.raises(DuplicateModel):
        deploy(service, people, "normal", model, ternary=False)
    # A deployment not signed by a member (the host's own FrontNet) is refused by the enclave.
    with pytest.raises(BadSignature):
        service.deploy(model_id="evil", architecture=ARCH, m=M, ternary=False, owner="alice", signature=b"0" * 64,
                       host_state={k: v for k, v in model.state_dict().items() if not k.startswith("conv")},
                       sealed_weights=b"")
    assert ask(service, "normal", x)["labels"] == plain_top_k(model, x, 3)[0], "still serving"
