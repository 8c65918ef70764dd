"""Bring up the trusted context: configuration, measurement, platform binding, keys, sealing."""

from __future__ import annotations

from pathlib import Path

import torch

from caltrain.attestation.backends.simulated import SimulatedPlatform
from caltrain.attestation.registry import make_collector
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.sealing import Sealer, derive_sealing_key
from caltrain.crypto.signing import Identity
from caltrain.enclave.allocator import keep_freed_memory
from caltrain.enclave.manifest import CONFIG_FILE, EnclaveConfig, measure
from caltrain.enclave.runtime import EnclaveContext
from caltrain.errors import EnclaveError

IDENTITY_FILE = "identity.sealed"


def boot(*, state_dir: Path, backend: str) -> EnclaveContext:
    torch.set_num_threads(1)
    keep_freed_memory()
    config = EnclaveConfig.from_consortium_file(state_dir / CONFIG_FILE)
    measurement = measure(config)
    if backend != "simulated":
        raise EnclaveError(
            f"backend {backend!r}: this process must run under its TEE (Gramine for sgx-dcap, a confidential VM "
            "for tdx/sev-snp); see the README section 'Running on real hardware'"
        )
    # In simulation the "hardware" is a key pair and a secret on the host's disk: no protection, only protocol.
    platform = SimulatedPlatform.load_or_create(state_dir / "platform")
    collector = make_collector("simulated", platform=platform, measurement=measurement)
    sealer = Sealer(derive_sealing_key(platform.sealing_secret, bytes.fromhex(measurement)), bytes.fromhex(measurement))
    enclave_dir = state_dir / "enclave"
    enclave_dir.mkdir(parents=True, exist_ok=True)
    identity_path = enclave_dir / IDENTITY_FILE
    if identity_path.exists():
        identity = Identity.from_private_bytes(sealer.unseal(identity_path.read_bytes(), label=IDENTITY_FILE))
    else:
        identity = Identity.generate()
        sealer.seal_file(identity_path, identity.private_bytes(), label=IDENTITY_FILE)
    return EnclaveContext(
        config=config,
        measurement=measurement,
        platform=backend,
        simulated=True,
        state_dir=enclave_dir,
        hpke=HpkeKeyPair.generate(),
        identity=identity,
        sealer=sealer,
        collector=collector,
        counters=platform,
    )
