"""Inference over loopback HTTP against `caltrain serve`: a model trained by `caltrain train` deployed and
queried with `caltrain infer`; an external model queried by concurrent clients, with answers equal to the
plain model's and no plaintext input in any HTTP body; bad requests get typed 4xx and serving goes on."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from caltrain.attestation import Policy
from caltrain.cli.main import main
from caltrain.data.datasets import load_dataset
from caltrain.enclave.consent import Grantees
from caltrain.inference.requests import ClientSession
from caltrain.models import build_model
from caltrain.service.inference_client import InferenceClient
from caltrain.service.participant import MemberHome


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out


def setup_server(tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server: Any) -> tuple[Any, Path]:
    consortium = tmp_path / "consortium.json"
    run(capsys, "participant", "init", "--home", tmp_path / "alice", "--name", "alice")
    run(capsys, "consortium", "add", "--file", consortium, "--home", tmp_path / "alice", "--role", "participant",
        "--role", "owner")
    run(capsys, "consortium", "schema", "--file", consortium, "--shape", "1,8,8", "--classes", "10")
    server = start_server(tmp_path / "state", consortium, tmp_path / "server.log")
    policy = tmp_path / "policy.json"
    assert run(capsys, "policy", "--server", server.url, "--out", policy)[0] == 0
    return server, policy


def test_trained_model_deploys_and_cli_infers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server: Any
) -> None:
    server, policy = setup_server(tmp_path, capsys, start_server)
    home = tmp_path / "alice"
    run(capsys, "pack", "--home", home, "--data", "digits", "--out", tmp_path / "a.ctd", "--dataset-id", "a")
    # alice reviews pack's cautious default and allows a cut after two blocks and herself receiving the FrontNet
    default = MemberHome.load(home).policy("a")
    consent = default.model_copy(update={"min_frontnet_blocks": 2, "frontnet_recipients": Grantees(members=["alice"])})
    consent.save(tmp_path / "consent.json")
    assert run(capsys, "submit", "--home", home, "--server", server.url, "--policy", policy,
               "--container", tmp_path / "a.ctd", "--data-policy", tmp_path / "consent.json")[0] == 0
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": "digits-cnn", "frontnet_layers": 2, "epochs": 2, "lr": 0.05}))
    code, out = run(capsys, "train", "--server", server.url, "--config", config, "--home", home, "--policy", policy)
    assert code == 0, out
    job_id = out.split()[1]
    code, out = run(capsys, "deploy", "--server", server.url, "--policy", policy, "--home", home,
                    "--model-id", "digits", "--job", job_id)
    assert code == 0 and json.loads(out)["owner"] == "alice"
    _, test = load_dataset("digits")
    np.savez(tmp_path / "inputs.npz", x=test.x[:20])
    code, out = run(capsys, "infer", "--server", server.url, "--policy", policy, "--input", tmp_path / "inputs.npz",
                    "--top-k", "2")
    assert code == 0
    predicted = [int(line.split(":")[1]) for line in out.splitlines()[:20]]
    # The same model, exported (FrontNet encrypted to alice) and run plainly, predicts the same.
    code, _ = run(capsys, "export", "--server", server.url, "--home", home, "--policy", policy, "--job", job_id,
                  "--out", tmp_path / "m.pt")
    assert code == 0
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    model = build_model("digits-cnn").eval()
    model.load_state_dict(saved["state_dict"])
    with torch.inference_mode():
        assert predicted == model(torch.from_numpy(test.x[:20])).argmax(1).tolist()
    # The README's flow: the exported file is what `assess --model` and `deploy --weights` read.
    code, _ = run(capsys, "assess", "--model", tmp_path / "m.pt", "--data", "digits", "--out", tmp_path / "assess",
                  "--budget", "tiny", "--layers", "conv1", "--tier", "no-data", "--trusted-training", "--no-progress")
    assert code == 0 and (tmp_path / "assess" / "report.json").exists()
    code, out = run(capsys, "deploy", "--server", server.url, "--policy", policy, "--home", home,
                    "--model-id", "exported", "--weights", tmp_path / "m.pt", "--m", "1")
    assert code == 0 and json.loads(out)["model_id"] == "exported"
    code, out = run(capsys, "infer", "--server", server.url, "--policy", policy, "--input", tmp_path / "inputs.npz",
                    "--model", "exported", "--top-k", "1")
    assert code == 0 and [int(line.split(":")[1]) for line in out.splitlines()[:20]] == predicted


def test_external_model_round_trip_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server: Any
) -> None:
    server, policy_path = setup_server(tmp_path, capsys, start_server)
    home = MemberHome.load(tmp_path / "alice")
    model = build_model("digits-cnn", seed=5).eval()
    xs = np.random.default_rng(2).random((40, 1, 8, 8), dtype=np.float32)
    bodies: list[bytes] = []
    with InferenceClient(server.url, Policy.load(policy_path), home=home) as client:
        client.http._http.event_hooks["request"] = [lambda r: bodies.append(r.read())]
        client.http._http.event_hooks["response"] = [lambda r: bodies.append(r.read())]
        info = client.deploy_external("ext", "digits-cnn", 1, model.state_dict(), ternary=True)
        assert info.ternary is True and info.owner == "alice"
        predictions = client.classify_many(xs, "ext", top_k=3, concurrency=16)
        with torch.inference_mode():
            expected = torch.topk(torch.softmax(model(torch.from_numpy(xs)), 1), 3)
        assert [p.labels for p in predictions] == expected.indices.tolist()
        assert np.allclose([p.probabilities for p in predictions], expected.values.numpy(), atol=1e-5)
        assert {p.front_digest for p in predictions} == {info.front_digest}
        keys = client.enclave.keys
    everything = b"".join(bodies)
    for x in xs:  # no input (nor its base64) in any HTTP body, in either direction
        raw = x.tobytes()
        assert all(raw[j : j + 16] not in everything for j in range(0, len(raw) - 16, 16))
        assert base64.b64encode(raw)[:24] not in everything

    def post(body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{server.url}/v1/infer", content=content, timeout=30)

    mine = ClientSession(keys.hpke)
    opened = httpx.post(f"{server.url}/v1/sessions", timeout=30,
                        json={"session_id": mine.session_id, "ciphertext": base64.b64encode(mine.sealed).decode()})
    assert opened.status_code == 201 and opened.json()["max_requests"] > 1000, opened.text
    counter, ct = mine.seal("ext", xs[0], 1)
    good = {"model_id": "ext", "session_id": mine.session_id, "counter": counter, "top_k": 1,
            "ciphertext": base64.b64encode(ct).decode()}
    assert post(good).status_code == 200
    counter, ct = mine.seal("ext", xs[0], 1)
    tampered = bytearray(ct)
    tampered[-1] ^= 1
    cases = [
        (post(good), 409, "ReplayedRequest"),
        (post({**good, "counter": counter, "ciphertext": base64.b64encode(bytes(tampered)).decode()}), 400,
         "IntegrityError"),
        (post({**good, "session_id": "0" * 32, "counter": counter}), 404, "UnknownSession"),
        (post(b"{not json"), 400, "BadRequest"),
        (post({"model_id": "ext"}), 400, "BadRequest"),
        (post({**good, "session_id": "xyz"}), 400, "BadRequest"),
        (post({**good, "counter": 0}), 400, "BadRequest"),
        (post({**good, "counter": counter, "ciphertext": "AAAA"}), 400, "BadRequest"),
        (post({**good, "ciphertext": "!!notbase64"}), 400, "BadRequest"),
        (post({**good, "model_id": "nope"}), 404, "UnknownModel"),
        (post(b"x" * (2 << 20)), 413, "RequestTooLarge"),
        (httpx.post(f"{server.url}/v1/sessions", json={"session_id": mine.session_id,
                                                        "ciphertext": base64.b64encode(mine.sealed).decode()}),
         409, "ReplayedRequest"),
    ]
    for response, code, error in cases:
        assert (response.status_code, response.json()["error"]) == (code, error), response.text
    assert httpx.get(f"{server.url}/v1/models/nope").status_code == 404
    with InferenceClient(server.url, Policy.load(policy_path)) as client:
        first = client.classify(xs[1], "ext", top_k=1)
        assert first.labels == [predictions[1].labels[0]], "still serving"
        client._session = ClientSession(keys.hpke)  # a session the enclave never opened (or evicted)
        again = client.classify(xs[1], "ext", top_k=1)
        assert again.labels == first.labels and again.session_id != first.session_id, "replaced once, transparently"
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/models", "/v1/models/{model_id}", "/v1/sessions", "/v1/infer"):
        assert path in schema["paths"]
    assert {"InferOut", "ModelOut", "SessionOut"} <= set(schema["components"]["schemas"])
    for path, body in (("/v1/infer", "InferIn"), ("/v1/models", "DeployIn"), ("/v1/sessions", "SessionIn")):
        assert schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["title"] == body
