"""Bring up the trusted context: configuration, measurement, platform binding, keys, sealing.

The platform binding is the only part that differs between backends: where the measurement comes from, who
signs evidence, and what secret the sealing key derives from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from caltrain.attestation.backends.simulated import SimulatedPlatform
from caltrain.attestation.collect import GRAMINE_ROOT
from caltrain.attestation.quotes.dcap import SgxReportBody, parse_dcap_quote
from caltrain.attestation.registry import EvidenceCollector, make_collector
from caltrain.crypto.hpke import HpkeKeyPair
from caltrain.crypto.sealing import Sealer, derive_sealing_key
from caltrain.crypto.signing import Identity
from caltrain.enclave.allocator import keep_freed_memory
from caltrain.enclave.counters import FileCounters
from caltrain.enclave.manifest import EnclaveConfig, measure
from caltrain.enclave.runtime import EnclaveContext
from caltrain.errors import EnclaveError

IDENTITY_FILE = "identity.sealed"


@dataclass(frozen=True)
class PlatformBinding:
    collector: EvidenceCollector
    measurement: str
    sealing_secret: bytes
    counters: FileCounters
    simulated: bool


def _simulated(state_dir: Path, config: EnclaveConfig) -> PlatformBinding:
    # The "hardware" is a key pair and a secret on the host's disk: no protection, only the protocol.
    platform = SimulatedPlatform.load_or_create(state_dir / "platform")
    measurement = measure(config)
    collector = make_collector("simulated", platform=platform, measurement=measurement)
    return PlatformBinding(
        collector, measurement, platform.sealing_secret, FileCounters(state_dir / "platform" / "counters"), True
    )


def _gramine_sgx(state_dir: Path) -> PlatformBinding:
    """Under Gramine-SGX: MRENCLAVE from our own quote, sealing from the MRENCLAVE-bound key Gramine derives
    (EGETKEY), counters inside the encrypted state mount. The configuration is measured as a trusted file."""
    collector = make_collector("sgx-dcap")
    quote, _ = collector.collect(bytes(64))
    body = parse_dcap_quote(quote).body
    if not isinstance(body, SgxReportBody):
        raise EnclaveError("Gramine returned a TDX quote where an SGX quote was expected")
    try:
        secret = (GRAMINE_ROOT / "keys" / "_sgx_mrenclave").read_bytes()
    except OSError as exc:
        raise EnclaveError(f"Gramine did not provide the MRENCLAVE sealing key: {exc}") from None
    return PlatformBinding(collector, body.mr_enclave.hex(), secret, FileCounters(state_dir / "counters"), False)


def boot(*, state_dir: Path, backend: str, config_path: Path) -> EnclaveContext:
    torch.set_num_threads(1)
    keep_freed_memory()
    config = EnclaveConfig.from_consortium_file(config_path)
    if backend == "simulated":
        binding = _simulated(state_dir, config)
    elif backend == "sgx-dcap":
        binding = _gramine_sgx(state_dir)
    else:
        raise EnclaveError(
            f"backend {backend!r}: in a {backend} confidential VM the whole VM is the TEE and its sealing key must "
            "come from a key broker after attestation, which is not implemented; see docs/attestation.md"
        )
    measurement = bytes.fromhex(binding.measurement)
    sealer = Sealer(derive_sealing_key(binding.sealing_secret, measurement), measurement)
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
        measurement=binding.measurement,
        platform=backend,
        simulated=binding.simulated,
        state_dir=enclave_dir,
        hpke=HpkeKeyPair.generate(),
        identity=identity,
        sealer=sealer,
        collector=binding.collector,
        counters=binding.counters,
    )
