"""Deployed models across restarts, on the host's side.

The host keeps, in its store, each deployment's public record and the enclave's signed confirmation, and on
disk the host's part of the model (a job's BackNet, or the clear part an owner sent). After the server or the
enclave restarts it offers each deployment to the enclave again (`InferenceService.reopen`): the enclave serves
only what its own sealed registry says an owner authorized, whatever the host asks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from caltrain.crypto.hashing import tagged_hash
from caltrain.enclave.wire import DeployModel, SignedReply, to_json
from caltrain.errors import CaltrainError
from caltrain.inference.serving import InferenceService, ModelInfo
from caltrain.service.store import ServerStore

log = logging.getLogger("caltrain.deployments")


class Deployments:
    def __init__(self, service: InferenceService, store: ServerStore, state_dir: Path) -> None:
        self.service = service
        self._store = store
        self._dir = state_dir / "models"
        self.failed: dict[str, str] = {}  # model id -> why it could not be re-opened
        self.restoring = False

    def _host_path(self, model_id: str) -> Path:
        return self._dir / f"{tagged_hash('caltrain/model-id', model_id.encode()).hex()[:32]}.pt"

    def deploy(self, request: DeployModel, host_state: dict[str, torch.Tensor]) -> tuple[SignedReply, ModelInfo]:
        """Deploy through the enclave, then keep what a restart needs to offer it again."""
        signed, info = self.service.deploy(request, host_state)
        path = self._host_path(info.model_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(host_state, tmp)
        tmp.replace(path)
        self._store.put("deployments", info.model_id, {"info": info.to_json(), "signed": to_json(signed)})
        return signed, info

    def restore(self) -> None:
        """Offer every stored deployment to the (re)started enclave; one that fails is reported, not fatal."""
        docs = self._store.list("deployments")
        self.restoring = True
        self.service.suspend([d["info"]["model_id"] for d in docs])
        try:
            self._reopen(docs)
        finally:
            self.restoring = False

    def _reopen(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            info = ModelInfo(**doc["info"])
            try:
                host_state = torch.load(self._host_path(info.model_id), weights_only=True)
                self.service.reopen(info, host_state)
                self.failed.pop(info.model_id, None)
            except (CaltrainError, OSError, RuntimeError) as exc:
                self.failed[info.model_id] = f"{type(exc).__name__}: {exc}"
                log.error("deployment %s not re-opened: %s", info.model_id, self.failed[info.model_id])

    def health(self) -> dict[str, Any]:
        return {"served": sorted(self.service.models), "not_served": self.failed, "restoring": self.restoring}
