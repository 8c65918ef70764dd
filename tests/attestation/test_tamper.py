"""A one-bit change anywhere in a real sample (quote, report or its VCEK) must be refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caltrain.attestation.registry import get_backend
from caltrain.errors import AttestationError
from tests.attestation.conftest import BY_NAME, SAMPLES, Sample


def refused(sample: Sample, field: str, offset: int) -> bool:
    evidence = sample.evidence()
    if field == "quote":
        data = bytearray(evidence.quote)
        data[offset] ^= 1 << (offset % 8)
        evidence = dataclasses.replace(evidence, quote=bytes(data))
    else:
        data = bytearray(evidence.supporting[field])
        data[offset] ^= 1 << (offset % 8)
        evidence = dataclasses.replace(evidence, supporting={**evidence.supporting, field: bytes(data)})
    try:
        get_backend(sample.platform).verify_quote(evidence, sample.policy(), now=sample.now)
    except AttestationError:
        return True
    return False


@pytest.mark.parametrize(
    ("name", "stride"),
    [("sgx-dcapqvl+collateral", 5), ("tdx-dcapqvl+collateral", 5), ("snp-gosev-milan", 2), ("snp-aws-vlek", 3)],
)
def test_bit_flips_across_the_whole_quote_are_refused(name: str, stride: int) -> None:
    sample = BY_NAME[name]
    size = len(sample.evidence().quote)
    accepted = [off for off in range(0, size, stride) if not refused(sample, "quote", off)]
    assert accepted == []


def test_bit_flips_in_the_vcek_are_refused() -> None:
    sample = BY_NAME["snp-virtee-milan"]
    size = len(sample.evidence().supporting["vcek"])
    assert [off for off in range(0, size, 3) if not refused(sample, "vcek", off)] == []


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bit_flip_is_refused(sample: Sample, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(sample.evidence().quote) - 1))
    assert refused(sample, "quote", offset)
