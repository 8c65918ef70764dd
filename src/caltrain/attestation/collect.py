"""Evidence collection inside the TEE, through the interfaces Linux and Gramine expose as files.

* `sgx-dcap`: Gramine's pseudo-files: write 64 bytes to `/dev/attestation/user_report_data`, read
  `/dev/attestation/quote` (Gramine asks the host's quoting enclave through the AESM/QGS socket).
* `tdx`, `sev-snp`: configfs-tsm (Linux 6.7+): `mkdir /sys/kernel/config/tsm/report/<entry>`, write the
  64 bytes to `inblob`, read `outblob` (the quote or SNP report), `provider` (which driver answered),
  `generation` (to detect a concurrent writer) and `auxblob` (SNP certificates from the host, when present).

Every root path is a parameter so the file protocol can be tested against a fake tree; that is not a test of
hardware.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from caltrain.attestation.errors import EvidenceCollectionError, NoTeeAvailable

GRAMINE_ROOT = Path("/dev/attestation")
TSM_ROOT = Path("/sys/kernel/config/tsm/report")
DEV_ROOT = Path("/dev")
REPORT_DATA_BYTES = 64
TSM_PROVIDERS = {"tdx": "tdx_guest", "sev-snp": "sev_guest"}
_GUEST_DEVICES = {"tdx": "tdx_guest", "sev-snp": "sev-guest"}


def _check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_BYTES:
        raise EvidenceCollectionError(f"report_data must be {REPORT_DATA_BYTES} bytes, got {len(report_data)}")


class GramineCollector:
    """SGX quote through Gramine's /dev/attestation (manifest: `sgx.remote_attestation = "dcap"`)."""

    platform = "sgx-dcap"

    def __init__(self, *, root: Path = GRAMINE_ROOT) -> None:
        self.root = Path(root)

    def collect(self, report_data: bytes) -> tuple[bytes, dict[str, bytes]]:
        _check_report_data(report_data)
        try:
            kind = (self.root / "attestation_type").read_text().strip()
        except OSError as exc:
            raise NoTeeAvailable(f"not running under Gramine-SGX ({self.root}/attestation_type: {exc})") from None
        if kind != "dcap":
            raise EvidenceCollectionError(
                f"Gramine attestation type is {kind!r}, not 'dcap'; "
                'set sgx.remote_attestation = "dcap" in the manifest'
            )
        try:
            (self.root / "user_report_data").write_bytes(report_data)
            quote = (self.root / "quote").read_bytes()
        except OSError as exc:
            raise EvidenceCollectionError(f"Gramine did not produce a quote: {exc}") from None
        if not quote:
            raise EvidenceCollectionError("Gramine returned an empty quote")
        return quote, {}


class ConfigfsTsmCollector:
    """TDX quote or SEV-SNP report through configfs-tsm; checks that the expected driver answered."""

    def __init__(self, platform: str, *, root: Path = TSM_ROOT, privlevel: int | None = None) -> None:
        if platform not in TSM_PROVIDERS:
            raise EvidenceCollectionError(f"configfs-tsm serves {sorted(TSM_PROVIDERS)}, not {platform!r}")
        self.platform = platform
        self.root = Path(root)
        self.privlevel = privlevel

    def _create_entry(self, entry: Path) -> None:
        """On real configfs, mkdir makes the kernel populate the entry's attribute files."""
        entry.mkdir()

    def collect(self, report_data: bytes) -> tuple[bytes, dict[str, bytes]]:
        _check_report_data(report_data)
        if not self.root.is_dir():
            raise NoTeeAvailable(f"configfs-tsm is not available: {self.root} is missing (not a confidential VM?)")
        entry = self.root / f"caltrain-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._create_entry(entry)
        except OSError as exc:
            raise EvidenceCollectionError(f"cannot create configfs-tsm entry {entry}: {exc}") from None
        try:
            return self._collect(entry, report_data)
        except OSError as exc:
            raise EvidenceCollectionError(f"configfs-tsm entry {entry}: {exc}") from None
        finally:
            with contextlib.suppress(OSError):  # the kernel drops the attribute files; a fake tree may not
                entry.rmdir()

    def _collect(self, entry: Path, report_data: bytes) -> tuple[bytes, dict[str, bytes]]:
        if self.privlevel is not None:
            (entry / "privlevel").write_text(str(self.privlevel))
        (entry / "inblob").write_bytes(report_data)
        generation = (entry / "generation").read_text().strip()
        outblob = (entry / "outblob").read_bytes()
        provider = (entry / "provider").read_text().strip()
        aux = entry / "auxblob"
        auxblob = aux.read_bytes() if aux.exists() else b""
        if (entry / "generation").read_text().strip() != generation:
            raise EvidenceCollectionError("configfs-tsm entry was rewritten while reading it (concurrent writer)")
        if provider != TSM_PROVIDERS[self.platform]:
            raise EvidenceCollectionError(
                f"configfs-tsm provider is {provider!r}, expected {TSM_PROVIDERS[self.platform]!r} for {self.platform}"
            )
        if not outblob:
            raise EvidenceCollectionError("configfs-tsm returned an empty outblob (is the quoting service running?)")
        return outblob, ({"auxblob": auxblob} if auxblob else {})


def detect_platform(*, dev_root: Path = DEV_ROOT, tsm_root: Path = TSM_ROOT) -> str:
    """Which real TEE this process runs in: Gramine-SGX first (it may run inside a VM), then TDX / SNP guests."""
    dev_root = Path(dev_root)
    gramine = dev_root / "attestation"
    if (gramine / "quote").exists():
        return "sgx-dcap"
    if Path(tsm_root).is_dir():
        for platform, device in _GUEST_DEVICES.items():
            if (dev_root / device).exists():
                return platform
    raise NoTeeAvailable(
        f"no TEE attestation interface found: neither Gramine's {gramine}/quote nor configfs-tsm at {tsm_root} "
        f"with {dev_root}/tdx_guest or {dev_root}/sev-guest; use the simulated backend (allow_simulated) for testing"
    )
