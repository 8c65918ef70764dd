"""X.509 for attestation: pinned vendor roots, chain and CRL checks at a given time, raw ECDSA, a tiny DER reader.

`cryptography` does the signature maths; this module decides what is trusted. Roots are the public vendor
certificates shipped in `roots/`, each pinned by the SHA-256 of its DER here as well, so a swapped file fails.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from caltrain.attestation.errors import (
    CertificateChainError,
    CertificateExpired,
    CertificateRevoked,
    CollateralInvalid,
    MalformedQuote,
    UntrustedRoot,
)

ROOT_SHA256 = {
    "intel_sgx_root_ca.der": "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3",
    "amd_ark_milan.pem": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "amd_ark_genoa.pem": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "amd_ark_turin.pem": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


# What `cryptography` raises, possibly lazily, on a malformed certificate.
_X509_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


@contextmanager
def serial_zero_tolerated() -> Iterator[None]:
    """AMD issues every VCEK/VLEK with serial number 0, which RFC 5280 forbids. `cryptography` 50 (the range
    pinned in pyproject and tested here) still loads such certificates but warns that a future release will
    refuse them; silence exactly that warning, only around AMD key certificates."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Parsed a serial number which wasn't positive", category=CryptographyDeprecationWarning
        )
        yield


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """PEM (one or more, trailing NULs allowed) or a single DER certificate."""
    data = data.rstrip(b"\0").strip()
    try:
        with serial_zero_tolerated():
            if data.startswith(b"-----BEGIN"):
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
            for cert in certs:  # `cryptography` parses lazily: fail here, typed, rather than mid-verification
                _ = (cert.subject, cert.issuer, cert.extensions, cert.public_key(), cert.not_valid_after_utc)
    except _X509_PARSE_ERRORS as exc:
        raise MalformedQuote(f"{what}: not a well-formed PEM or DER certificate ({exc})") from None
    return certs


def load_root(name: str) -> x509.Certificate:
    raw = files("caltrain.attestation").joinpath("roots", name).read_bytes()
    cert = load_certificates(raw, name)[0]
    if hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest() != ROOT_SHA256[name]:
        raise UntrustedRoot(f"packaged root {name} does not match its pinned fingerprint")
    return cert


def load_packaged(name: str) -> x509.Certificate:
    """A packaged public intermediate (AMD ASK/ASVK); it is only ever trusted after verifying under a root."""
    return load_certificates(files("caltrain.attestation").joinpath("roots", name).read_bytes(), name)[0]


def describe(cert: x509.Certificate) -> str:
    """The subject's common name (what vendors use to tell their CAs apart), else the full subject."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{what} {describe(cert)} is valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not at {now:%Y-%m-%dT%H:%M:%SZ}"
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verify_chain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: datetime, what: str
) -> x509.Certificate:
    """Verify leaf-first `chain` up to one of `roots` (by exact DER) at `now`; return the root it reached.

    The chain may end with the root itself or with a certificate a pinned root issued. Only pinned roots are
    trusted: a self-signed "Intel SGX Root CA" with another key is `UntrustedRoot`.
    """
    if not chain:
        raise CertificateChainError(f"{what}: empty certificate chain")
    pinned = {r.public_bytes(Encoding.DER): r for r in roots}
    certs = list(chain)
    last = certs[-1]
    root = pinned.get(last.public_bytes(Encoding.DER))
    if root is None:
        root = next((r for r in roots if _issued_by(last, r)), None)
        if root is None:
            raise UntrustedRoot(f"{what}: chain ends at {describe(last)}, which is not issued by a pinned root")
        certs.append(root)
    for i, cert in enumerate(certs):
        check_validity(cert, now, what)
        issuer = certs[i + 1] if i + 1 < len(certs) else cert
        if i > 0 and not _is_ca(cert):
            raise CertificateChainError(f"{what}: {describe(cert)} issues certificates but is not a CA")
        if not _issued_by(cert, issuer):
            raise CertificateChainError(
                f"{what}: signature on {describe(cert)} does not verify under {describe(issuer)}"
            )
    return root


def check_crl(
    crl_der: bytes, issuer: x509.Certificate, subjects: Sequence[x509.Certificate], now: datetime, what: str
) -> None:
    """Verify a CRL's signature and time window, then refuse any `subjects` it revokes."""
    try:
        crl = x509.load_der_x509_crl(crl_der)
    except ValueError:
        try:
            crl = x509.load_pem_x509_crl(crl_der)
        except ValueError as exc:
            raise CollateralInvalid(f"{what}: not a DER or PEM CRL ({exc})") from None
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise CollateralInvalid(f"{what}: CRL is not signed by {describe(issuer)}")
    next_update = crl.next_update_utc
    if now < crl.last_update_utc or (next_update is not None and now > next_update):
        raise CollateralInvalid(
            f"{what}: CRL is valid {crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ} .. {next_update:%Y-%m-%dT%H:%M:%SZ}, "
            f"not at {now:%Y-%m-%dT%H:%M:%SZ}"
        )
    for cert in subjects:
        with serial_zero_tolerated():
            serial = cert.serial_number
        if crl.get_revoked_certificate_by_serial_number(serial) is not None:
            raise CertificateRevoked(f"{what}: {describe(cert)} (serial {serial:#x}) is revoked")


def verify_ecdsa_raw(
    public_key: ec.EllipticCurvePublicKey, r: int, s: int, data: bytes, algorithm: hashes.HashAlgorithm
) -> bool:
    try:
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def p256_key(raw_xy: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw_xy)
    except ValueError:
        raise MalformedQuote("attestation key is not a point on P-256") from None


def verify_p256_rs(public_key: ec.EllipticCurvePublicKey, rs: bytes, data: bytes) -> bool:
    """ECDSA-P256/SHA-256 with the signature as raw big-endian r || s (Intel's format)."""
    return verify_ecdsa_raw(
        public_key, int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"), data, hashes.SHA256()
    )


def der_items(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split DER bytes into (tag, content) pairs, one level deep; enough for vendor certificate extensions."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise MalformedQuote(f"{what}: truncated DER")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise MalformedQuote(f"{what}: bad DER length")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise MalformedQuote(f"{what}: DER value runs past the end")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def der_int(data: bytes, what: str) -> int:
    items = der_items(data, what)
    if len(items) != 1 or items[0][0] != 0x02:
        raise MalformedQuote(f"{what}: expected one DER INTEGER")
    return int.from_bytes(items[0][1], "big", signed=True)


def extension_bytes(cert: x509.Certificate, oid: str) -> bytes | None:
    """The raw DER value of a vendor extension `cryptography` does not know, or None when absent."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None
