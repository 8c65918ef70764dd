"""Every attestation failure class denies the key, with its own typed error."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caltrain.attestation import Evidence, NonceTracker, Policy, Verifier
from caltrain.attestation.backends.simulated import SimulatedCollector, SimulatedPlatform, parse_quote
from caltrain.attestation.errors import (
    BadEvidenceSignature,
    DebugNotAllowed,
    KeyNotBound,
    MalformedEvidence,
    MeasurementMismatch,
    NonceReused,
    PolicyError,
    SimulatedNotAllowed,
    StaleEvidence,
    StaleNonce,
    UnknownPlatform,
)
from caltrain.crypto.hashing import report_data_for
from caltrain.errors import AttestationError

MEASUREMENT = "ab" * 32
ENCLAVE_KEY = bytes(range(64))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPlatform:
    return SimulatedPlatform.load_or_create(tmp_path_factory.mktemp("platform"))


def policy_for(platform: SimulatedPlatform, **changes: object) -> Policy:
    base = {
        "platforms": ["simulated"],
        "measurements": [MEASUREMENT],
        "allow_simulated": True,
        "simulated": {"platform_keys": [platform.public_key.hex()]},
    }
    return Policy.from_dict({**base, **changes})


def evidence(
    platform: SimulatedPlatform,
    nonce: bytes,
    *,
    key: bytes = ENCLAVE_KEY,
    debug: bool = False,
    measurement: str = MEASUREMENT,
) -> Evidence:
    collector = SimulatedCollector(platform=platform, measurement=measurement, debug=debug)
    quote, supporting = collector.collect(report_data_for(key, nonce))
    return Evidence("simulated", quote, key, nonce, supporting)


def test_valid_evidence_verifies(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    result = verifier.verify(evidence(platform, verifier.new_nonce()))
    assert result.public_key == ENCLAVE_KEY
    assert result.measurement == MEASUREMENT
    assert result.simulated and "SIMULATED" in result.claims.caveats[0]


def test_simulated_needs_explicit_opt_in(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform, allow_simulated=False))
    with pytest.raises(SimulatedNotAllowed):
        verifier.verify(evidence(platform, verifier.new_nonce()))


def test_default_policy_denies_simulated() -> None:
    assert Policy.from_dict({"platforms": ["simulated"], "measurements": []}).allow_simulated is False


def test_unknown_platform(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    ev = replace(evidence(platform, verifier.new_nonce()), platform="made-up-tee")
    with pytest.raises(UnknownPlatform):
        verifier.verify(ev)


def test_platform_not_accepted_by_policy(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform, platforms=["sgx-dcap"]))
    with pytest.raises(UnknownPlatform):
        verifier.verify(evidence(platform, verifier.new_nonce()))


def test_measurement_mismatch(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    with pytest.raises(MeasurementMismatch):
        verifier.verify(evidence(platform, verifier.new_nonce(), measurement="cd" * 32))


def test_tampered_quote_signature(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    ev = evidence(platform, verifier.new_nonce())
    body, _, sig = parse_quote(ev.quote)
    forged = json.dumps({**body, "measurement": "cd" * 32}, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(BadEvidenceSignature):
        verifier.verify(replace(ev, quote=forged + sig))
    flipped = bytearray(ev.quote)
    flipped[-1] ^= 1
    with pytest.raises(BadEvidenceSignature):
        verifier.verify(replace(ev, quote=bytes(flipped)))


def test_untrusted_platform_key(platform: SimulatedPlatform, tmp_path: Path) -> None:
    impostor = SimulatedPlatform.load_or_create(tmp_path)
    verifier = Verifier(policy_for(platform))
    with pytest.raises(BadEvidenceSignature, match="not trusted"):
        verifier.verify(evidence(impostor, verifier.new_nonce()))


def test_debug_enclave_denied_by_default(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    with pytest.raises(DebugNotAllowed):
        verifier.verify(evidence(platform, verifier.new_nonce(), debug=True))
    lenient = Verifier(policy_for(platform, allow_debug=True))
    assert lenient.verify(evidence(platform, lenient.new_nonce(), debug=True)).claims.debug


def test_nonce_not_issued_by_verifier(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    with pytest.raises(StaleNonce, match="not issued"):
        verifier.verify(evidence(platform, b"n" * 32))


def test_replayed_evidence_rejected(platform: SimulatedPlatform) -> None:
    verifier = Verifier(policy_for(platform))
    ev = evidence(platform, verifier.new_nonce())
    verifier.verify(ev)
    with pytest.raises(NonceReused):
        verifier.verify(ev)


def test_expired_nonce(platform: SimulatedPlatform) -> None:
    clock = [1000.0]
    verifier = Verifier(policy_for(platform), nonces=NonceTracker(60, clock=lambda: clock[0]))
    nonce = verifier.new_nonce()
    clock[0] += 61
    with pytest.raises(StaleNonce, match="issued 61 s ago"):
        verifier.verify(evidence(platform, nonce))


def test_old_evidence_rejected(platform: SimulatedPlatform) -> None:
    later = datetime.now(UTC) + timedelta(seconds=301)
    verifier = Verifier(policy_for(platform), now=lambda: later)
    with pytest.raises(StaleEvidence):
        verifier.verify(evidence(platform, verifier.new_nonce()))


def test_key_not_bound(platform: SimulatedPlatform) -> None:
    """A man in the middle swaps in its own key: report_data no longer matches."""
    verifier = Verifier(policy_for(platform))
    ev = evidence(platform, verifier.new_nonce())
    with pytest.raises(KeyNotBound):
        verifier.verify(replace(ev, enclave_public_key=bytes(64)))


@given(st.binary(max_size=400))
def test_random_quotes_never_crash_the_parser(data: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        parse_quote(data)


@given(st.dictionaries(st.sampled_from(["platform", "quote", "nonce", "x"]), st.one_of(st.text(), st.integers())))
def test_evidence_json_rejects_garbage(data: dict[str, object]) -> None:
    with pytest.raises(MalformedEvidence):
        Evidence.from_json(data)


@pytest.mark.parametrize(
    "bad",
    [
        {"platforms": ["simulated"]},
        {"platforms": ["simulated"], "measurements": ["zz"]},
        {"platforms": ["simulated"], "measurements": [], "surprise": True},
        {"platforms": ["simulated"], "measurements": [], "version": 2},
        {"platforms": ["simulated"], "measurements": [], "max_evidence_age_s": 0},
    ],
)
def test_malformed_policies_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        Policy.from_dict(bad)


def test_policy_json_round_trip(platform: SimulatedPlatform, tmp_path: Path) -> None:
    policy = policy_for(platform)
    policy.save(tmp_path / "p.json")
    assert Policy.load(tmp_path / "p.json") == policy


def test_all_errors_are_attestation_errors() -> None:
    for cls in (
        UnknownPlatform,
        SimulatedNotAllowed,
        BadEvidenceSignature,
        MeasurementMismatch,
        StaleNonce,
        NonceReused,
        KeyNotBound,
        DebugNotAllowed,
        StaleEvidence,
    ):
        assert issubclass(cls, AttestationError)
