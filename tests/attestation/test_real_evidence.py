"""Verification of real SGX, TDX and SEV-SNP evidence under policies that match it, and fail-closed rejections.

Sample report_data was chosen by whoever captured the sample, so it cannot bind our key and nonce: the
backends and policy checks are tested directly, and `Verifier.verify` is shown to pass every check up to
`KeyNotBound`, the last one.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.attestation import errors as E
from caltrain.attestation.evidence import Evidence, QuoteClaims
from caltrain.attestation.registry import get_backend
from caltrain.attestation.trace import Trace
from caltrain.attestation.verifier import NonceTracker, Verifier, check_claims
from tests.attestation.conftest import BY_NAME, SAMPLES, TDX_ANY_WORKLOAD, Sample, at, vector


def verify(sample: Sample, evidence: Evidence | None = None, **section_changes: object) -> QuoteClaims:
    policy = sample.policy(**section_changes)
    claims = get_backend(sample.platform).verify_quote(evidence or sample.evidence(), policy, now=sample.now)
    check_claims(policy, claims, sample.now)
    return claims


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_sample_verifies_under_matching_policy(sample: Sample) -> None:
    claims = verify(sample)
    assert claims.measurement == sample.measurement
    assert claims.debug is sample.debug
    assert not claims.simulated


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_verifier_passes_every_check_up_to_key_binding(sample: Sample) -> None:
    verifier = Verifier(sample.policy(), nonces=NonceTracker(), now=lambda: sample.now)
    evidence = dataclasses.replace(sample.evidence(), nonce=verifier.new_nonce())
    with pytest.raises(E.KeyNotBound):
        verifier.verify(evidence)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_measurement_mismatch(sample: Sample) -> None:
    policy = sample.policy().model_copy(update={"measurements": ["00" * (len(sample.measurement) // 2)]})
    claims = get_backend(sample.platform).verify_quote(sample.evidence(), policy, now=sample.now)
    with pytest.raises(E.MeasurementMismatch):
        check_claims(policy, claims, sample.now)


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.debug], ids=lambda s: s.name)
def test_debug_enclaves_are_refused_by_default(sample: Sample) -> None:
    policy = sample.policy().model_copy(update={"allow_debug": False})
    claims = get_backend(sample.platform).verify_quote(sample.evidence(), policy, now=sample.now)
    with pytest.raises(E.DebugNotAllowed):
        check_claims(policy, claims, sample.now)


# One changed policy field -> the error naming that field.
SINGLE_FIELD_CHANGES = [
    ("sgx-dcapqvl+collateral", {"mrsigners": ["11" * 32]}, E.SignerMismatch),
    ("sgx-dcapqvl+collateral", {"isv_prod_id": 1}, E.ReportFieldMismatch),
    ("sgx-dcapqvl+collateral", {"min_isv_svn": 1}, E.SvnTooLow),
    ("sgx-dcapqvl+collateral", {"accepted_tcb_statuses": ["UpToDate"]}, E.TcbOutOfDate),
    ("sgx-occlum", {"require_collateral": True}, E.CollateralMissing),
    ("tdx-dcapqvl+collateral", {"min_tee_tcb_svn": "07010300000000000000000000000000"}, E.SvnTooLow),
    ("tdx-dcapqvl+collateral", {"accepted_tcb_statuses": ["OutOfDate"]}, E.TcbOutOfDate),
    ("snp-gosev-milan", {"min_tcb": {"bootloader": 2, "snp": 6, "microcode": 68}}, E.SvnTooLow),
    ("snp-gosev-milan", {"min_tcb": {"microcode": 69}}, E.SvnTooLow),
    ("snp-gosev-milan", {"chip_ids": ["00" * 64]}, E.ReportFieldMismatch),
    ("snp-gosev-milan", {"require_collateral": True}, E.CollateralMissing),
    ("snp-trustee-idblock", {"min_guest_svn": 5}, E.SvnTooLow),
    ("snp-trustee-idblock", {"id_key_digests": ["00" * 48]}, E.ReportFieldMismatch),
    ("snp-aws-vlek", {"vmpls": [0]}, E.ReportFieldMismatch),
    ("snp-aws-vlek", {"allow_vlek": False}, E.ReportFieldMismatch),
]


@pytest.mark.parametrize(("name", "change", "error"), SINGLE_FIELD_CHANGES, ids=lambda v: str(v)[:40])
def test_single_policy_field_change_is_refused(name: str, change: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        verify(BY_NAME[name], **change)


def test_tcb_verdicts_match_the_sources() -> None:
    sgx = verify(BY_NAME["sgx-dcapqvl+collateral"])
    assert sgx.details["tcb_statuses"] == {"qe": "UpToDate", "platform": "ConfigurationAndSWHardeningNeeded"}
    assert sgx.details["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]  # dcap-qvl's snapshot
    assert sgx.caveats == ()
    tdx = verify(BY_NAME["tdx-dcapqvl+collateral"])
    assert tdx.details["tcb_statuses"] == {"qe": "UpToDate", "platform": "UpToDate", "tdx_module": "UpToDate"}
    assert tdx.report_data.hex().startswith("9a9d48e7f6799642")


def test_without_collateral_the_verdict_says_so() -> None:
    claims = verify(BY_NAME["sgx-occlum"])
    assert "signature and chain verified; TCB status not checked" in claims.caveats[0]
    claims = verify(BY_NAME["snp-virtee-milan"])
    assert "signature and chain verified; TCB status not checked" in claims.caveats[0]


def test_missing_collateral_is_refused_by_default() -> None:
    sample = BY_NAME["sgx-occlum"]
    policy = sample.policy().model_copy(update={"sgx_dcap": None})
    with pytest.raises(E.CollateralMissing):
        get_backend("sgx-dcap").verify_quote(sample.evidence(), policy, now=sample.now)


def test_a_policy_without_the_platform_section_accepts_nothing() -> None:
    for name in ("tdx-trustee", "snp-virtee-milan"):
        sample = BY_NAME[name]
        policy = sample.policy().model_copy(update={"tdx": None, "sev_snp": None})  # bypasses the load-time check
        with pytest.raises(E.PolicyError, match=r"no \"(tdx|sev-snp)\" section"):
            get_backend(sample.platform).verify_quote(sample.evidence(), policy, now=sample.now)


# Each register that identifies a TD beyond MRTD: how a policy pins it, and the error a different value gives.
TDX_REGISTERS: dict[str, tuple[str, type[Exception]]] = {
    **{f"RTMR{i}": ("rtmrs", E.MeasurementMismatch) for i in range(4)},
    "MRSEAM": ("mr_seams", E.MeasurementMismatch),
    "MRCONFIGID": ("mr_config_id", E.ReportFieldMismatch),
    "MROWNER": ("mr_owner", E.ReportFieldMismatch),
    "MROWNERCONFIG": ("mr_owner_config", E.ReportFieldMismatch),
}


def pin(section: dict[str, object], register: str, value: str) -> dict[str, object]:
    field, _ = TDX_REGISTERS[register]
    if field == "rtmrs":
        return {**section, "rtmrs": {**section["rtmrs"], int(register[-1]): value}}  # type: ignore[dict-item]
    return {**section, field: [value] if field == "mr_seams" else value}


@settings(max_examples=30, deadline=None)
@given(
    sample=st.sampled_from([s for s in SAMPLES if s.platform == "tdx"]),
    unchecked=st.sets(st.sampled_from(sorted(TDX_REGISTERS))),
    data=st.data(),
)
def test_tdx_any_written_out_skips_a_register_and_every_other_is_exact(
    sample: Sample, unchecked: set[str], data: st.DataObject
) -> None:
    section = dict(sample.section)
    for register in unchecked:
        section = pin(section, register, "any")
    assert verify(sample, **section).measurement == sample.measurement  # the right MRTD, the rest "any" or exact
    pinned = sorted(set(TDX_REGISTERS) - unchecked)
    if pinned:  # the same TD, one register the policy pins differs: refused although MRTD matches
        register = data.draw(st.sampled_from(pinned))
        with pytest.raises(TDX_REGISTERS[register][1], match=f"^{register} "):
            verify(sample, **pin(section, register, "11" * 48))


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.platform == "sev-snp"], ids=lambda s: s.name)
def test_snp_host_data_is_exact_unless_any_is_written(sample: Sample) -> None:
    assert verify(sample, host_data="any").measurement == sample.measurement
    with pytest.raises(E.ReportFieldMismatch, match="HOST_DATA"):
        verify(sample, host_data="01" * 32)


def test_preproduction_root_is_rejected_under_the_pinned_intel_root() -> None:
    sample = Sample("preprod", "sgx-dcap", "sgx/intel_dcap13_sample_quote_v3_preprod_root.bin", "2020-01-01T00:00:00Z")
    trace = Trace()
    with pytest.raises(E.UntrustedRoot):
        get_backend("sgx-dcap").verify_quote(sample.evidence(), sample.policy(require_collateral=False), now=sample.now,
                                             trace=trace)  # fmt: skip
    # everything before the chain is genuine: only the root is wrong
    assert [s.outcome for s in trace.steps] == ["pass", "pass", "pass", "fail"]


def test_tdx_v5_with_no_matching_tcb_level() -> None:
    sample = Sample(
        "v5-outdated", "tdx", "tdx/dcapqvl_tdx_quote_v5_outdated.bin", "2026-03-01T00:00:00Z",
        {"collateral": "tdx/dcapqvl_tdx_quote_v5_outdated_collateral.json"}, section=TDX_ANY_WORKLOAD,
    )  # fmt: skip
    with pytest.raises(E.TcbLevelNotFound):
        get_backend("tdx").verify_quote(sample.evidence(), sample.policy(), now=sample.now)


def test_nonzero_trailing_bytes_are_refused_and_zero_padding_is_reported() -> None:
    raw = vector("tdx/gotdx_tdx_prod_quote_SPR_E4_v4.bin")
    sample = Sample("spr", "tdx", "tdx/gotdx_tdx_prod_quote_SPR_E4_v4.bin", "2025-01-01T00:00:00Z",
                    section=TDX_ANY_WORKLOAD)  # fmt: skip
    policy = sample.policy(require_collateral=False)
    with pytest.raises(E.MalformedQuote, match="non-zero bytes"):
        get_backend("tdx").verify_quote(sample.evidence(), policy, now=sample.now)
    stripped = dataclasses.replace(sample.evidence(), quote=raw[: len(raw) - 39])  # go-tdx-guest's test suffix
    assert get_backend("tdx").verify_quote(stripped, policy, now=sample.now).measurement.startswith("6363b804")
    padded = verify(BY_NAME["tdx-dcapqvl+collateral"])
    assert padded.details["trailing_bytes"] == 70 and "70 zero padding bytes" in padded.caveats[0]


def test_cross_platform_evidence_is_refused() -> None:
    sgx = BY_NAME["sgx-occlum"]
    with pytest.raises(E.MalformedQuote, match="SGX quote, not TDX"):
        get_backend("tdx").verify_quote(dataclasses.replace(sgx.evidence(), platform="tdx"), sgx.policy(), now=sgx.now)


@pytest.mark.parametrize(
    ("name", "when", "error"),
    [
        ("sgx-occlum", "2023-01-01T00:00:00Z", E.CertificateExpired),  # before the PCK leaf was issued
        ("snp-aws-vlek", "2026-01-01T00:00:00Z", E.CertificateExpired),  # the VLEK expired 2025-12-10
        ("sgx-dcapqvl+collateral", "2025-08-01T00:00:00Z", E.CollateralInvalid),  # TCB info past nextUpdate
        ("tdx-dcapqvl+collateral", "2025-06-01T00:00:00Z", E.CollateralInvalid),  # before the TCB info was issued
    ],
)
def test_verification_time_matters(name: str, when: str, error: type[Exception]) -> None:
    sample = dataclasses.replace(BY_NAME[name], when=when)
    with pytest.raises(error):
        verify(sample)


def test_collateral_for_another_platform_is_refused() -> None:
    sample = dataclasses.replace(BY_NAME["sgx-dcapqvl+collateral"],
                                 supporting={"collateral": "tdx/dcapqvl_tdx_quote_v4_collateral.json"})  # fmt: skip
    with pytest.raises(E.CollateralInvalid):
        verify(sample)


def test_vcek_of_another_chip_is_refused() -> None:
    sample = dataclasses.replace(BY_NAME["snp-virtee-milan"], supporting={"vcek": "sev-snp/trustee_vcek_milan.der"})
    with pytest.raises((E.BadQuoteSignature, E.KeyCertificateMismatch)):
        verify(sample)


def test_vcek_for_another_product_is_refused() -> None:
    sample = dataclasses.replace(BY_NAME["snp-azure-genoa"], supporting={"vcek": "sev-snp/virtee_vcek_milan.der"})
    with pytest.raises(E.BadQuoteSignature):
        verify(sample)


def test_snp_chain_from_auxblob_and_explicit_chain() -> None:
    sample = BY_NAME["snp-virtee-milan"]
    vcek = vector("sev-snp/virtee_vcek_milan.der")
    guid = bytes.fromhex("8d75da6364e66445adc5f4b93be8accd")  # 63da758d-e664-4564-adc5-f4b93be8accd, little-endian
    table = guid + (48).to_bytes(4, "little") + len(vcek).to_bytes(4, "little") + bytes(24)
    via_aux = Evidence("sev-snp", vector(sample.quote), b"", b"", {"auxblob": table + vcek})
    assert verify(sample, via_aux).measurement == sample.measurement
    genoa_chain = Evidence("sev-snp", vector(sample.quote), b"", b"",
                           {"vcek": vcek, "cert_chain": vector("sev-snp/amd_genoa_ask_ark.pem")})  # fmt: skip
    with pytest.raises(E.UntrustedRoot):
        verify(sample, genoa_chain)


def test_snp_vcek_tcb_must_match_reported_tcb() -> None:
    sample = BY_NAME["snp-trustee-idblock"]
    # current_tcb (ucode 206) differs from reported_tcb (ucode 115): the VCEK certifies the reported one
    claims = verify(sample)
    assert claims.details["reported_tcb"]["microcode"] == 115
    assert claims.details["current_tcb"]["microcode"] == 206


def test_turin_vcek_chains_to_the_pinned_turin_ark() -> None:
    from caltrain.attestation.pki import load_certificates, load_packaged, load_root, verify_chain

    vcek = load_certificates(vector("sev-snp/virtee_vcek_turin.der"), "VCEK")
    root = verify_chain([*vcek, load_packaged("amd_ask_turin.pem")], [load_root("amd_ark_turin.pem")],
                        at("2025-01-01T00:00:00Z"), "Turin")  # fmt: skip
    assert root.subject.rfc4514_string().startswith("CN=ARK-Turin")
    with pytest.raises(E.UntrustedRoot):
        verify_chain([*vcek, load_packaged("amd_ask_turin.pem")], [load_root("amd_ark_milan.pem")],
                     at("2025-01-01T00:00:00Z"), "Turin")  # fmt: skip
