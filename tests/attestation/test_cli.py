"""`caltrain evidence inspect` on real evidence, and `caltrain enclave gramine-manifest`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caltrain.cli.main import main
from tests.attestation.conftest import BY_NAME, VECTORS, vector


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    vector("sgx/dcapqvl_sgx_quote_v3.bin")  # skips when the vectors are absent
    rc = main(["evidence", "inspect", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_sgx_with_collateral_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = inspect(capsys, str(VECTORS / "sgx/dcapqvl_sgx_quote_v3.bin"), "--at", "2025-07-01T00:00:00Z",
                         "--collateral", str(VECTORS / "sgx/dcapqvl_sgx_quote_v3_collateral.json"))  # fmt: skip
    assert rc == 0 and report["verified"] and report["platform"] == "sgx-dcap"
    assert report["parsed"]["body"]["mr_signer"].startswith("815f42f1")
    steps = {s["step"]: s["outcome"] for s in report["steps"]}
    assert steps["quote signature"] == steps["QE report binding"] == steps["TCB level"] == "pass"
    assert steps["policy"] == "skipped"


def test_preprod_quote_fails_at_the_chain_step(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = inspect(capsys, str(VECTORS / "sgx/intel_dcap13_sample_quote_v3_preprod_root.bin"),
                         "--at", "2020-01-01T00:00:00Z")  # fmt: skip
    assert rc == 1 and not report["verified"] and report["error"].startswith("UntrustedRoot")
    assert report["steps"][-1] == {"step": "PCK certificate chain", "outcome": "fail", "detail": report["error"]}
    assert report["parsed"]["body"]["mr_enclave"].startswith("4f8822f1")  # fields still shown


def test_snp_with_vcek_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = BY_NAME["snp-virtee-milan"]
    policy = tmp_path / "policy.json"
    sample.policy().save(policy)
    vcek = str(VECTORS / sample.supporting["vcek"])
    args = [str(VECTORS / "sev-snp/virtee_report_v2_milan.hex"), "--cert-chain", vcek, "--at", sample.when]
    rc, report = inspect(capsys, *args, "--policy", str(policy))
    assert rc == 0 and report["platform"] == "sev-snp" and report["claims"]["measurement"] == sample.measurement
    sample.policy().model_copy(update={"measurements": ["00" * 48]}).save(policy)
    rc, report = inspect(capsys, *args, "--policy", str(policy))
    assert rc == 1 and report["error"].startswith("MeasurementMismatch")


def test_tdx_without_policy_and_with_a_policy_lacking_registers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = BY_NAME["tdx-trustee"]
    quote = str(VECTORS / sample.quote)
    rc, report = inspect(capsys, quote, "--at", sample.when)  # no policy: every register reported, none judged
    assert rc == 0 and report["claims"]["measurement"] == sample.measurement
    assert {s["step"]: s["outcome"] for s in report["steps"]}["policy"] == "skipped"
    policy = tmp_path / "policy.json"
    document = sample.document()
    policy.write_text(json.dumps({**document, "tdx": {k: v for k, v in document["tdx"].items() if k != "mr_seams"}}))
    assert main(["evidence", "inspect", quote, "--at", sample.when, "--policy", str(policy)]) == 2
    assert "PolicyError: tdx.mr_seams is missing" in capsys.readouterr().err


def test_text_output_and_missing_vcek(capsys: pytest.CaptureFixture[str]) -> None:
    vector("sev-snp/virtee_report_v2_milan.bin")
    rc = main(["evidence", "inspect", str(VECTORS / "sev-snp/virtee_report_v2_milan.bin")])
    out = capsys.readouterr().out
    assert rc == 1 and "[FAIL] key certificate chain" in out and "measurement: 7a1e5c26" in out


def test_gramine_manifest(tmp_path: Path) -> None:
    out = tmp_path / "caltrain.manifest.template"
    consortium = tmp_path / "consortium.json"
    consortium.write_text('{"version": 1, "members": []}')
    args = ["enclave", "gramine-manifest", "--consortium", str(consortium), "--port", "7911"]
    assert main([*args, "--state-dir", "/srv/sealed", "-o", str(out)]) == 0
    text = out.read_text()
    # fixed, measured argv: connect back to the host, sealed state in the encrypted mount, measured consortium
    assert '"--connect", "127.0.0.1:7911"' in text and '"--backend", "sgx-dcap"' in text
    assert f'"--config", "{consortium}"' in text and f'"file:{consortium}"' in text
    assert "@" not in text.replace("_sgx_mrenclave", "")  # every caltrain field was filled in
    assert 'sgx.remote_attestation = "dcap"' in text and "sgx.debug = false" in text
    assert '"-m", "caltrain.enclave.main"' in text
    assert '{ type = "encrypted", path = "/srv/sealed"' in text
    assert "{{ gramine.libos }}" in text  # left for gramine-manifest
    assert main([*args, "--state-dir", "relative"]) == 2
