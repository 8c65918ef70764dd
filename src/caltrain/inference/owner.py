"""The model owner's side of an external deployment: the enclave's weights sealed to it (bound to the model id,
cut and mode), the host's in the clear. The owner then signs the deployment request, which covers the sealed
weights (`caltrain.enclave.authority`)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from caltrain.crypto.hpke import seal_to
from caltrain.enclave.protocol import EnclaveKeys, weights_info
from caltrain.inference.split import ModelRef, split_model


@dataclass(frozen=True)
class OwnerDeployment:
    sealed_weights: bytes
    host_state: dict[str, torch.Tensor]


def prepare_deployment(
    keys: EnclaveKeys,
    model_id: str,
    architecture: ModelRef,
    m: int,
    ternary: bool,
    state: dict[str, torch.Tensor],
) -> OwnerDeployment:
    split = split_model(architecture, m, ternary)
    mine = {k for p in split.enclave_parts for k in p.state_dict()}
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k in mine}, buf)
    sealed = seal_to(keys.hpke, buf.getvalue(), weights_info(model_id, split.spec.hash, m, ternary))
    return OwnerDeployment(sealed, {k: v for k, v in state.items() if k not in mine})
