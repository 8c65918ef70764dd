"""Evidence collection through Gramine's /dev/attestation and Linux configfs-tsm.

These run against fake file trees in a temp dir: they test the file protocol (what is written, read and
checked, in which order), not hardware. The fake configfs "kernel" populates an entry when it is created,
as configfs does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from caltrain.attestation.collect import ConfigfsTsmCollector, GramineCollector, detect_platform
from caltrain.attestation.errors import EvidenceCollectionError, NoTeeAvailable
from caltrain.attestation.registry import make_collector

REPORT_DATA = bytes(range(64))


def fake_gramine(root: Path, kind: str = "dcap", quote: bytes = b"QUOTE") -> Path:
    root.mkdir(parents=True)
    (root / "attestation_type").write_text(kind + "\n")
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(quote)
    return root


def test_gramine_writes_report_data_then_reads_the_quote(tmp_path: Path) -> None:
    root = fake_gramine(tmp_path / "attestation")
    quote, supporting = GramineCollector(root=root).collect(REPORT_DATA)
    assert quote == b"QUOTE" and supporting == {}
    assert (root / "user_report_data").read_bytes() == REPORT_DATA


def test_gramine_without_dcap_or_absent(tmp_path: Path) -> None:
    with pytest.raises(EvidenceCollectionError, match="remote_attestation"):
        GramineCollector(root=fake_gramine(tmp_path / "a", kind="none")).collect(REPORT_DATA)
    with pytest.raises(NoTeeAvailable):
        GramineCollector(root=tmp_path / "missing").collect(REPORT_DATA)
    with pytest.raises(EvidenceCollectionError, match="64 bytes"):
        GramineCollector(root=tmp_path / "a").collect(b"short")


class FakeKernel(ConfigfsTsmCollector):
    """configfs-tsm as the kernel presents it: mkdir yields attribute files; outblob answers inblob."""

    provider = "tdx_guest"
    outblob = b"TDX-QUOTE"
    auxblob: bytes | None = None

    def _create_entry(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("1\n")
        (entry / "outblob").write_bytes(self.outblob)
        if self.auxblob is not None:
            (entry / "auxblob").write_bytes(self.auxblob)
        self.entry = entry

    def _collect(self, entry: Path, report_data: bytes) -> tuple[bytes, dict[str, bytes]]:
        out = super()._collect(entry, report_data)
        self.written = (entry / "inblob").read_bytes()
        return out


def test_configfs_tsm_protocol(tmp_path: Path) -> None:
    kernel = FakeKernel("tdx", root=tmp_path)
    quote, supporting = kernel.collect(REPORT_DATA)
    assert quote == b"TDX-QUOTE" and supporting == {}
    assert kernel.written == REPORT_DATA


def test_configfs_tsm_returns_snp_auxblob_and_privlevel(tmp_path: Path) -> None:
    kernel = FakeKernel("sev-snp", root=tmp_path, privlevel=2)
    kernel.provider, kernel.outblob, kernel.auxblob = "sev_guest", b"SNP-REPORT", b"CERTS"
    quote, supporting = kernel.collect(REPORT_DATA)
    assert (quote, supporting) == (b"SNP-REPORT", {"auxblob": b"CERTS"})
    assert (kernel.entry / "privlevel").read_text() == "2"


def test_configfs_tsm_refuses_bad_provider_empty_outblob_and_races(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = FakeKernel("sev-snp", root=tmp_path)  # provider says tdx_guest
    with pytest.raises(EvidenceCollectionError, match="provider"):
        kernel.collect(REPORT_DATA)
    empty = FakeKernel("tdx", root=tmp_path)
    empty.outblob = b""
    with pytest.raises(EvidenceCollectionError, match="empty"):
        empty.collect(REPORT_DATA)
    racy = FakeKernel("tdx", root=tmp_path)
    read_bytes = Path.read_bytes

    def another_writer_meanwhile(path: Path) -> bytes:
        if path.name == "outblob":
            (path.parent / "generation").write_text("2\n")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", another_writer_meanwhile)
    with pytest.raises(EvidenceCollectionError, match="concurrent"):
        racy.collect(REPORT_DATA)


def test_configfs_tsm_absent(tmp_path: Path) -> None:
    with pytest.raises(NoTeeAvailable):
        ConfigfsTsmCollector("tdx", root=tmp_path / "nope").collect(REPORT_DATA)


def test_registered_collectors(tmp_path: Path) -> None:
    assert isinstance(make_collector("sgx-dcap", root=tmp_path), GramineCollector)
    tdx = make_collector("tdx", root=tmp_path)
    assert isinstance(tdx, ConfigfsTsmCollector) and tdx.platform == "tdx"
    assert make_collector("sev-snp", root=tmp_path).platform == "sev-snp"


def test_detect_platform(tmp_path: Path) -> None:
    dev, tsm = tmp_path / "dev", tmp_path / "tsm"
    dev.mkdir()
    with pytest.raises(NoTeeAvailable, match="no TEE"):
        detect_platform(dev_root=dev, tsm_root=tsm)
    tsm.mkdir()
    (dev / "sev-guest").touch()
    assert detect_platform(dev_root=dev, tsm_root=tsm) == "sev-snp"
    (dev / "sev-guest").unlink()
    (dev / "tdx_guest").touch()
    assert detect_platform(dev_root=dev, tsm_root=tsm) == "tdx"
    fake_gramine(dev / "attestation")
    assert detect_platform(dev_root=dev, tsm_root=tsm) == "sgx-dcap"
