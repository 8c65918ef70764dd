"""Policies are refused on load unless every register that identifies the workload is written out.

A TDX policy that pinned only MRTD accepted any kernel and any TDX module on the right firmware (issue 10,
finding 12). These tests need no evidence: the samples' policies are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caltrain.attestation.errors import PolicyError
from caltrain.attestation.policy import Policy, SgxPolicy, SnpPolicy, TdxPolicy
from tests.attestation.conftest import BY_NAME, SAMPLES, Sample

TDX_SAMPLES = [s for s in SAMPLES if s.platform == "tdx"]
SNP_SAMPLES = [s for s in SAMPLES if s.platform == "sev-snp"]
# What a TDX section must name: each RTMR, and every other field TdxPolicy declares explicit.
TDX_NAMES = [f"RTMR{i}" for i in range(4)] + [f for f in TdxPolicy.explicit if f != "rtmrs"]


def without(sample: Sample, names: set[str]) -> dict[str, object]:
    section = dict(sample.section)
    section["rtmrs"] = {i: v for i, v in section["rtmrs"].items() if f"RTMR{i}" not in names}  # type: ignore[attr-defined]
    return {**sample.document(), sample.platform: {k: v for k, v in section.items() if k not in names}}


def refusal(document: dict[str, object]) -> str:
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(document)
    message = str(info.value)
    assert "\n" not in message and '"any"' in message  # one line, and it says how to accept anything explicitly
    return message


@settings(max_examples=60, deadline=None)
@given(sample=st.sampled_from(TDX_SAMPLES), missing=st.sets(st.sampled_from(TDX_NAMES), min_size=1))
def test_a_tdx_policy_missing_any_registers_is_refused_and_the_message_names_one(
    sample: Sample, missing: set[str]
) -> None:
    message = refusal(without(sample, missing))
    assert any(name in message for name in missing)


@pytest.mark.parametrize("sample", TDX_SAMPLES, ids=lambda s: s.name)
def test_the_samples_pin_every_tdx_register(sample: Sample) -> None:
    section = sample.policy().tdx_section()
    assert sorted(section.rtmrs) == [0, 1, 2, 3] and "any" not in section.rtmrs.values()
    assert section.mr_seams != ["any"] and len(section.mr_seams) == 1


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rtmrs": {}}, "tdx.rtmrs lacks RTMR0, RTMR1, RTMR2, RTMR3"),
        ({"mr_seams": []}, "tdx.mr_seams is empty"),
        ({"mr_seams": ["any", "00" * 48]}, 'write ["any"] alone'),
        ({"mr_config_id": "ANY"}, "tdx.mr_config_id 'ANY' is not hex"),
        ({"rtmrs": {0: "00" * 47, 1: "any", 2: "any", 3: "any"}}, "tdx.rtmrs[0] must be 48 bytes"),
        ({"mr_seams": ["00" * 32]}, "tdx.mr_seams entry must be 48 bytes"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_malformed_tdx_registers_are_refused(change: dict[str, object], named: str) -> None:
    assert named in refusal(BY_NAME["tdx-trustee"].document(**change))


@pytest.mark.parametrize(("platform", "section"), [("tdx", TdxPolicy), ("sev-snp", SnpPolicy)])
def test_accepting_tdx_or_snp_requires_its_section(platform: str, section: type[TdxPolicy | SnpPolicy]) -> None:
    message = refusal({"platforms": [platform], "measurements": []})
    assert f'no "{platform}" section' in message and all(name in message for name in section.explicit)
    with pytest.raises(PolicyError):
        Policy(platforms=[platform], measurements=[])  # constructing it in Python is refused the same way
    with pytest.raises(PolicyError, match="accepts no"):
        Policy(platforms=["sgx-dcap"], measurements=[]).tdx_section()


def test_any_written_out_everywhere_is_accepted_and_survives_a_file(tmp_path: Path) -> None:
    document = {
        "platforms": ["tdx", "sev-snp"],
        "measurements": ["00" * 48],
        "tdx": TdxPolicy.explicit,
        "sev-snp": SnpPolicy.explicit,
    }
    Policy.from_dict(document).save(tmp_path / "p.json")
    loaded = Policy.load(tmp_path / "p.json")
    assert loaded.tdx_section().rtmrs == {i: "any" for i in range(4)} and loaded.tdx_section().mr_seams == ["any"]
    assert loaded.snp_section().host_data == "any"
    assert json.loads((tmp_path / "p.json").read_text())["tdx"]["rtmrs"] == {str(i): "any" for i in range(4)}


@pytest.mark.parametrize("sample", SNP_SAMPLES, ids=lambda s: s.name)
def test_an_snp_policy_without_host_data_is_refused(sample: Sample) -> None:
    document = sample.document()
    section = {k: v for k, v in document["sev-snp"].items() if k != "host_data"}  # type: ignore[attr-defined]
    assert "sev-snp.host_data is missing" in refusal({**document, "sev-snp": section})
    assert "sev-snp.host_data" in refusal(sample.document(host_data="00" * 31))


def test_an_svn_floor_needs_a_pinned_signer() -> None:
    # ISVSVN/GUEST_SVN are whatever the signer wrote: without a pinned signer anyone can claim any SVN
    with pytest.raises(PolicyError, match=r"pin sgx-dcap\.mrsigners"):
        SgxPolicy(min_isv_svn=2)
    with pytest.raises(PolicyError, match=r"pin sgx-dcap\.mrsigners"):
        SgxPolicy(isv_prod_id=0)
    with pytest.raises(PolicyError, match=r"pin sev-snp\.id_key_digests"):
        BY_NAME["snp-trustee-idblock"].policy(id_key_digests=[])
    assert SgxPolicy().mrsigners == []  # MRENCLAVE pins the code: with no floor, any signer is fine
