"""The model owner's side of an external deployment: the enclave's weights sealed to it, the host's in the
clear, and the owner's signature binding both to the model id, cut, mode and attested enclave."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from caltrain.crypto.hpke import seal_to
from caltrain.crypto.signing import Identity
from caltrain.enclave.protocol import EnclaveKeys, deploy_digest, weights_info
from caltrain.inference.split import split_model


@dataclass(frozen=True)
class OwnerDeployment:
    sealed_weights: bytes
    host_state: dict[str, torch.Tensor]
    signature: bytes


def prepare_deployment(
    keys: EnclaveKeys,
    identity: Identity,
    model_id: str,
    architecture: str,
    m: int,
    ternary: bool,
    state: dict[str, torch.Tensor],
) -> OwnerDeployment:
    split = split_model(architecture, m, ternary)
    mine = {k for p in split.enclave_parts for k in p.state_dict()}
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k in mine}, buf)
    sealed = seal_to(keys.hpke, buf.getvalue(), weights_info(model_id, architecture, m, ternary))
    signature = identity.sign(deploy_digest(model_id, "", architecture, m, ternary, sealed, keys))
    return OwnerDeployment(sealed, {k: v for k, v in state.items() if k not in mine}, signature)
