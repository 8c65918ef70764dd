"""Parsers against the values the sample sources state, and against malformed input (typed errors only)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.attestation.errors import MalformedEvidence, MalformedQuote, UnsupportedEvidenceVersion
from caltrain.attestation.quotes.dcap import TdReportBody, parse_dcap_quote
from caltrain.attestation.quotes.snp import TcbVersion, parse_snp_report
from tests.attestation.conftest import vector


def test_sgx_quote_fields_match_dcap_qvl_snapshot() -> None:
    q = parse_dcap_quote(vector("sgx/dcapqvl_sgx_quote_v3.bin"))
    assert (q.header.version, q.header.attestation_key_type, q.header.tee_type) == (3, 2, 0)
    assert (q.header.qe_svn, q.header.pce_svn) == (10, 15)
    b = q.body
    assert b.mr_enclave.hex() == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert b.mr_signer.hex() == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert (b.isv_prod_id, b.isv_svn, b.debug) == (0, 0, False)
    assert b.report_data == b"Hello, world!" + bytes(51)
    assert q.certification.qe_report.isv_svn == 10


def test_occlum_sgx_quote_fields_match_trustee_claims() -> None:
    b = parse_dcap_quote(vector("sgx/trustee_occlum_sgx_quote_v3.bin")).body
    assert b.attributes.hex() == "0700000000000000e700000000000000" and b.debug
    assert b.cpu_svn.hex() == "06060c0cffff00000000000000000000" and b.misc_select == 1
    assert b.report_data == b"test" + bytes(60)


def test_tdx_v4_and_v5_fields() -> None:
    q = parse_dcap_quote(vector("tdx/trustee_tdx_quote_v4.bin"))
    assert isinstance(q.body, TdReportBody)
    assert q.body.td_attributes.hex() == "0100001000000000" and q.body.debug
    assert q.body.tee_tcb_svn.hex() == "03000500000000000000000000000000"
    assert q.body.rtmrs[2] == bytes(48) and q.body.rtmrs[3] == bytes(48)
    assert q.header.user_data.hex() == "d099bfec0a477aa85a605dceabf2b10800000000"
    v5 = parse_dcap_quote(vector("tdx/gotdx_quote_v5_sample.bin"))
    assert isinstance(v5.body, TdReportBody) and v5.header.version == 5
    assert v5.body.tee_tcb_svn2 is not None and v5.body.tee_tcb_svn2.hex().startswith("0d010400")
    assert len(parse_dcap_quote(vector("tdx/dcapqvl_tdx_quote_v4.bin")).trailing) == 70


def test_snp_report_fields_match_go_sev_guest() -> None:
    r = parse_snp_report(vector("sev-snp/gosev_attestation_report_v2_milan.bin"))
    assert r.version == 2 and r.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert r.report_id.hex() == "8edc638e1857c555d21f6b11bda3c8b1b5a09dba4852b4c8ee7aa2f16f22cc0a"
    assert r.report_id_ma == b"\xff" * 32 and r.host_data == bytes(32)
    assert r.reported_tcb == r.launch_tcb == 4901323769462652930
    assert r.debug and r.current_version == (1, 49, 3)
    tcb = TcbVersion.decode(r.reported_tcb, turin=False)
    assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode) == (2, 0, 5, 68)
    vlek = parse_snp_report(vector("sev-snp/trustee_vlek_report_v3_milan_aws.bin"))
    assert (vlek.version, vlek.vmpl, vlek.signing_key) == (3, 1, 1)
    assert (vlek.cpuid_family, vlek.cpuid_model, vlek.cpuid_stepping) == (0x19, 1, 1)


@pytest.mark.parametrize(
    "rel", ["sgx/dcapqvl_sgx_quote_v3.bin", "tdx/dcapqvl_tdx_quote_v4.bin", "tdx/gotdx_quote_v5_sample.bin"]
)
def test_dcap_truncation_at_every_structural_boundary(rel: str) -> None:
    raw = vector(rel)
    end = len(raw) - len(parse_dcap_quote(raw).trailing)
    for cut in [0, 1, 47, 48, 49, 431, 432, 436, 632, 636, 700, 1100, 1500, end - 1]:
        with pytest.raises(MalformedQuote):
            parse_dcap_quote(raw[:cut])


def test_dcap_wrong_version_and_key_type() -> None:
    raw = bytearray(vector("sgx/dcapqvl_sgx_quote_v3.bin"))
    raw[0] = 2
    with pytest.raises(UnsupportedEvidenceVersion):
        parse_dcap_quote(bytes(raw))
    raw[0], raw[2] = 3, 3
    with pytest.raises(UnsupportedEvidenceVersion):
        parse_dcap_quote(bytes(raw))


def test_dcap_signature_length_beyond_the_data() -> None:
    raw = bytearray(vector("sgx/dcapqvl_sgx_quote_v3.bin"))
    raw[432:436] = (len(raw)).to_bytes(4, "little")
    with pytest.raises(MalformedQuote):
        parse_dcap_quote(bytes(raw))


def test_snp_wrong_size_version_and_reserved_bits() -> None:
    raw = vector("sev-snp/virtee_report_v2_milan.bin")
    for bad in (raw[:-1], raw + b"\0", b""):
        with pytest.raises(MalformedQuote):
            parse_snp_report(bad)
    with pytest.raises(UnsupportedEvidenceVersion):
        parse_snp_report((1).to_bytes(4, "little") + raw[4:])
    with pytest.raises(MalformedQuote, match="reserved"):
        parse_snp_report(raw[:-1] + b"\x01")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_fuzz_dcap_parser_raises_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        parse_dcap_quote(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1184, max_size=1184))
def test_fuzz_snp_parser_raises_only_typed_errors(data: bytes) -> None:
    with contextlib.suppress(MalformedEvidence):
        parse_snp_report(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_quotes(data: st.DataObject) -> None:
    """Random splices of a real quote reach deep into the structure, unlike random bytes."""
    rel = data.draw(st.sampled_from(["sgx/dcapqvl_sgx_quote_v3.bin", "tdx/gotdx_quote_v5_sample.bin"]))
    raw = bytearray(vector(rel))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos : pos + 4] = data.draw(st.binary(min_size=0, max_size=6))
    with contextlib.suppress(MalformedEvidence):
        parse_dcap_quote(bytes(raw))
