"""`InferenceClient`: attest the enclave once, open a session, then send inputs only it can read and read answers
only we can."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caltrain.attestation import Policy, Verifier
from caltrain.crypto.errors import IntegrityError
from caltrain.enclave.authority import UNSIGNED
from caltrain.enclave.wire import DeployModel, ModelDeployed, to_json
from caltrain.inference.errors import BadRequest, UnknownSession
from caltrain.inference.owner import prepare_deployment
from caltrain.inference.requests import ClientSession
from caltrain.inference.split import ModelRef
from caltrain.service.client import AttestedEnclave, CaltrainClient
from caltrain.service.participant import MemberHome


@dataclass(frozen=True)
class Prediction:
    """Top-k labels and probabilities, as the enclave computed and encrypted them, and which weights did."""

    labels: list[int]
    probabilities: list[float]
    model_id: str
    owner: str
    front_digest: str
    session_id: str
    counter: int


class InferenceClient:
    """Attests the enclave (fresh nonce, `policy`) on construction; every request then goes to that key only.

    The first request opens a session (one HPKE seal to the attested key); later ones are AES-GCM under its
    key. A session that expired, ran out of requests or was evicted is replaced once, transparently; when the
    enclave restarted meanwhile (the session key no longer opens), the new instance is attested under the same
    policy first.
    """

    def __init__(self, server: str, policy: Policy, *, home: MemberHome | None = None) -> None:
        self.http = CaltrainClient(server, home=home, timeout=60.0)
        self._policy = policy
        self.enclave: AttestedEnclave = self.http.attest(Verifier(policy))
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._session: ClientSession | None = None
        self._session_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def models(self) -> list[dict[str, object]]:
        result: list[dict[str, object]] = self.http.request("GET", "/v1/models")
        return result

    def _deploy(self, msg: DeployModel, backnet: bytes = b"") -> ModelDeployed:
        """Sign the deployment for the attested enclave; accept only its signed confirmation of exactly this."""
        deployed, _ = self.http.call_signed_body(
            "/v1/models", msg, ModelDeployed, self.enclave,
            lambda signed: {"request": to_json(signed), "backnet": base64.b64encode(backnet).decode()},
        )
        return deployed

    def deploy_job(self, model_id: str, job_id: str) -> ModelDeployed:
        """Deploy a model trained by caltrain: its FrontNet never leaves the enclave, the host has its BackNet.
        The owner signs the FrontNet digest the enclave signed when the job finished, so no other weights can be
        deployed under this signature."""
        job = self.http.job(job_id)
        result = self.http.verified_result(job, self.enclave)
        config = job["config"]
        return self._deploy(DeployModel(
            model_id=model_id, job_id=job_id, front_digest=result["front_digest"], architecture=config["model"],
            m=int(config["frontnet_layers"]), ternary=False, sealed_weights=b"", slot_paths=[], max_batch=0,
            auth=UNSIGNED,
        ))

    def deploy_external(
        self, model_id: str, architecture: ModelRef, m: int, state: dict[str, torch.Tensor], *, ternary: bool = False
    ) -> ModelDeployed:
        """Register an owner's model: the enclave's blocks sealed to the attested enclave, the rest in the clear."""
        prepared = prepare_deployment(self.enclave.keys, model_id, architecture, m, ternary, state)
        buf = io.BytesIO()
        torch.save(prepared.host_state, buf)
        return self._deploy(
            DeployModel(
                model_id=model_id, job_id="", front_digest="", architecture=architecture, m=m, ternary=ternary,
                sealed_weights=prepared.sealed_weights, slot_paths=[], max_batch=0, auth=UNSIGNED,
            ),
            buf.getvalue(),
        )

    def input_shape(self, model_id: str) -> tuple[int, ...]:
        if model_id not in self._shapes:
            info = self.http.request("GET", f"/v1/models/{model_id}")
            self._shapes[model_id] = tuple(int(d) for d in info["input_shape"])
        return self._shapes[model_id]

    def classify(self, x: np.ndarray, model_id: str, *, top_k: int = 5) -> Prediction:
        """One input (the model's input shape, float32 in [0, 1]) → its encrypted top-k, opened here."""
        shape = self.input_shape(model_id)
        x = np.asarray(x, dtype=np.float32)
        if x.shape != shape:
            raise BadRequest(f"model {model_id} takes inputs of shape {shape}, got {x.shape}")
        session = self._current_session()
        try:
            return self._classify(session, x, model_id, top_k)
        except UnknownSession:  # expired, used up or evicted: one fresh session, one retry
            self._drop_session(session)
            return self._classify(self._current_session(), x, model_id, top_k)

    def _classify(self, session: ClientSession, x: np.ndarray, model_id: str, top_k: int) -> Prediction:
        counter, ciphertext = session.seal(model_id, x, top_k)
        out = self._post("/v1/infer", {"model_id": model_id, "session_id": session.session_id, "counter": counter,
                                       "top_k": top_k, "ciphertext": base64.b64encode(ciphertext).decode()})
        answer = session.open_answer(model_id, counter, base64.b64decode(out["ciphertext"]))
        return Prediction(
            answer["labels"], answer["probabilities"], answer["model_id"], answer["owner"], answer["front_digest"],
            session.session_id, counter,
        )

    def _post(self, path: str, body: dict[str, object], *, signed: bool = False) -> Any:
        return self.http.request(
            "POST", path, body=json.dumps(body).encode(), headers={"content-type": "application/json"}, signed=signed
        )

    def _current_session(self) -> ClientSession:
        with self._session_lock:
            if self._session is None:
                try:
                    self._session = self._open_session()
                except IntegrityError:  # sealed to a key the enclave no longer holds: it restarted
                    self.enclave = self.http.attest(Verifier(self._policy))
                    self._session = self._open_session()
            return self._session

    def _open_session(self) -> ClientSession:
        session = ClientSession(self.enclave.keys.hpke)
        self._post("/v1/sessions", {"session_id": session.session_id,
                                    "ciphertext": base64.b64encode(session.sealed).decode()})
        return session

    def _drop_session(self, stale: ClientSession) -> None:
        with self._session_lock:
            if self._session is stale:
                self._session = None

    def classify_many(
        self, xs: np.ndarray, model_id: str, *, top_k: int = 5, concurrency: int = 8
    ) -> list[Prediction]:
        """Many inputs, `concurrency` requests in flight (the server batches them); answers in input order."""
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda x: self.classify(x, model_id, top_k=top_k), xs))
