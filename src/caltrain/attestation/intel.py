"""Intel DCAP collateral: PCK certificate extensions, TCB info, QE identity and CRLs, evaluated at a given time.

Collateral comes from Intel's PCS (or a PCCS cache) and needs the network, so it is optional input: one JSON
file in the `QuoteCollateralV3` shape (keys `tcb_info`, `tcb_info_signature`, `tcb_info_issuer_chain`,
`qe_identity`, `qe_identity_signature`, `qe_identity_issuer_chain`, `pck_crl`, `root_ca_crl`) as written by
dcap-qvl and PCCS clients. The signed JSON bodies are kept as the exact text Intel signed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from caltrain.attestation.errors import (
    CollateralInvalid,
    MalformedQuote,
    QeIdentityMismatch,
    TcbLevelNotFound,
)
from caltrain.attestation.pki import (
    check_crl,
    der_items,
    extension_bytes,
    load_certificates,
    verify_chain,
    verify_p256_rs,
)
from caltrain.attestation.quotes.dcap import SgxReportBody, TdReportBody
from caltrain.attestation.trace import Trace

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_TCB = SGX_EXTENSION_OID + ".2"
_PCEID = SGX_EXTENSION_OID + ".3"
_FMSPC = SGX_EXTENSION_OID + ".4"
_OID_TAG = 0x06


def _decode_oid(content: bytes) -> str:
    """DER OBJECT IDENTIFIER content to dotted text (only to match Intel's fixed OIDs)."""
    if not content:
        raise MalformedQuote("PCK extension: empty OID")
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _oid_pairs(seq_content: bytes, what: str) -> dict[str, tuple[int, bytes]]:
    """Intel encodes its extension as SEQUENCE OF SEQUENCE { OID, value }: map OID to (tag, value)."""
    out = {}
    for tag, inner in der_items(seq_content, what):
        pair = der_items(inner, what)
        if tag != 0x30 or len(pair) != 2 or pair[0][0] != _OID_TAG:
            raise MalformedQuote(f"{what}: expected SEQUENCE {{OID, value}}")
        out[_decode_oid(pair[0][1])] = pair[1]
    return out


@dataclass(frozen=True)
class PckInfo:
    """What the PCK leaf certificate says about the platform: its TCB components, PCE SVN, FMSPC, PCE id."""

    sgx_tcb_components: tuple[int, ...]
    pce_svn: int
    fmspc: bytes
    pce_id: bytes

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PckInfo:
        raw = extension_bytes(cert, SGX_EXTENSION_OID)
        if raw is None:
            raise MalformedQuote("PCK leaf certificate has no Intel SGX extension (1.2.840.113741.1.13.1)")
        top = der_items(raw, "PCK extension")
        if len(top) != 1 or top[0][0] != 0x30:
            raise MalformedQuote("PCK extension is not a SEQUENCE")
        fields = _oid_pairs(top[0][1], "PCK extension")
        try:
            tcb = _oid_pairs(fields[_TCB][1], "PCK TCB")
            comps = tuple(_int_value(tcb[f"{_TCB}.{i}"]) for i in range(1, 17))
            return cls(comps, _int_value(tcb[f"{_TCB}.17"]), fields[_FMSPC][1], fields[_PCEID][1])
        except KeyError as exc:
            raise MalformedQuote(f"PCK extension lacks field {exc}") from None


def _int_value(item: tuple[int, bytes]) -> int:
    tag, content = item
    if tag != 0x02 or not content:
        raise MalformedQuote("PCK extension: expected an INTEGER SVN")
    return int.from_bytes(content, "big")


def _parse_time(value: Any, what: str) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise CollateralInvalid(f"{what}: bad timestamp {value!r}") from None


@dataclass(frozen=True)
class SignedJson:
    """A TCB info or QE identity body, its raw r||s signature and its issuer chain."""

    body: Mapping[str, Any]
    text: str
    signature: bytes
    issuer_chain: tuple[x509.Certificate, ...]

    def verify(self, roots: Sequence[x509.Certificate], now: datetime, what: str) -> None:
        verify_chain(self.issuer_chain, roots, now, f"{what} issuer chain")
        key = self.issuer_chain[0].public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not verify_p256_rs(
            key, self.signature, self.text.encode()
        ):
            raise CollateralInvalid(f"{what}: signature does not verify under the Intel TCB signing key")
        issued, nxt = _parse_time(self.body.get("issueDate"), what), _parse_time(self.body.get("nextUpdate"), what)
        if not issued <= now <= nxt:
            raise CollateralInvalid(
                f"{what} is valid {issued:%Y-%m-%dT%H:%M:%SZ} .. {nxt:%Y-%m-%dT%H:%M:%SZ}, "
                f"not at {now:%Y-%m-%dT%H:%M:%SZ}"
            )


@dataclass(frozen=True)
class DcapCollateral:
    tcb_info: SignedJson
    qe_identity: SignedJson
    pck_crl: bytes
    root_ca_crl: bytes

    @classmethod
    def from_json(cls, data: bytes) -> DcapCollateral:
        try:
            obj = json.loads(data)

            def signed(key: str) -> SignedJson:
                text = obj[key]
                return SignedJson(
                    body=json.loads(text),
                    text=text,
                    signature=bytes.fromhex(obj[f"{key}_signature"]),
                    issuer_chain=tuple(load_certificates(obj[f"{key}_issuer_chain"].encode(), f"{key} issuer chain")),
                )

            return cls(
                signed("tcb_info"), signed("qe_identity"), _crl_bytes(obj["pck_crl"]), _crl_bytes(obj["root_ca_crl"])
            )
        except (ValueError, KeyError, TypeError, AttributeError, MalformedQuote) as exc:
            raise CollateralInvalid(f"collateral JSON is not in the QuoteCollateralV3 shape: {exc!r}") from None


def _crl_bytes(value: str) -> bytes:
    """CRLs appear as hex DER (dcap-qvl) or PEM text (PCCS); keep whichever bytes `check_crl` can load."""
    return value.encode() if value.lstrip().startswith("-----BEGIN") else bytes.fromhex(value)


def _first_level(levels: Any, matches: Any, what: str) -> Mapping[str, Any]:
    for level in levels or ():
        if matches(level["tcb"]):
            return dict(level)
    raise TcbLevelNotFound(f"{what}: no TCB level matches this platform (TCB not supported)")


def evaluate_collateral(
    collateral: DcapCollateral,
    *,
    body: SgxReportBody | TdReportBody,
    qe_report: SgxReportBody,
    pck_chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    now: datetime,
    trace: Trace,
) -> tuple[dict[str, str], list[str]]:
    """Check the collateral and evaluate the TCB; return statuses by component and the advisory ids."""
    try:
        return _evaluate(collateral, body, qe_report, pck_chain, root, now, trace)
    except (KeyError, ValueError, TypeError) as exc:  # signed by Intel yet not the documented shape
        raise CollateralInvalid(f"collateral content is not in Intel's documented shape: {exc!r}") from None


def _evaluate(
    collateral: DcapCollateral,
    body: SgxReportBody | TdReportBody,
    qe_report: SgxReportBody,
    pck_chain: Sequence[x509.Certificate],
    root: x509.Certificate,
    now: datetime,
    trace: Trace,
) -> tuple[dict[str, str], list[str]]:
    tdx = isinstance(body, TdReportBody)
    pck = PckInfo.from_certificate(pck_chain[0])
    statuses: dict[str, str] = {}
    advisories: list[str] = []
    with trace.step("collateral signatures") as notes:
        collateral.tcb_info.verify([root], now, "TCB info")
        collateral.qe_identity.verify([root], now, "QE identity")
        tcb_info, qe_id = collateral.tcb_info.body, collateral.qe_identity.body
        if tcb_info.get("id", "SGX") != ("TDX" if tdx else "SGX") or qe_id.get("id", "QE") != (
            "TD_QE" if tdx else "QE"
        ):
            raise CollateralInvalid(f"collateral is for {tcb_info.get('id')}/{qe_id.get('id')}, not this quote type")
        if (
            str(tcb_info.get("fmspc", "")).lower() != pck.fmspc.hex()
            or str(tcb_info.get("pceId", "")).lower() != pck.pce_id.hex()
        ):
            raise CollateralInvalid(
                f"TCB info is for FMSPC {tcb_info.get('fmspc')}, the PCK certificate says {pck.fmspc.hex()}"
            )
        notes.append(f"TCB info eval #{tcb_info.get('tcbEvaluationDataNumber')}, FMSPC {pck.fmspc.hex()}")
    with trace.step("revocation (CRLs)"):
        intermediates = [c for c in pck_chain[1:] if c != root]
        check_crl(collateral.root_ca_crl, root, intermediates, now, "root CA CRL")
        check_crl(collateral.pck_crl, pck_chain[1], pck_chain[:1], now, "PCK CRL")
    with trace.step("QE identity") as notes:
        _check_qe_identity(qe_id, qe_report)
        level = _first_level(qe_id.get("tcbLevels"), lambda t: qe_report.isv_svn >= int(t["isvsvn"]), "QE identity")
        statuses["qe"] = str(level["tcbStatus"])
        notes.append(f"QE ISVSVN {qe_report.isv_svn}: {statuses['qe']}")
    with trace.step("TCB level") as notes:
        tee_svn = body.tee_tcb_svn if isinstance(body, TdReportBody) else b""
        first_tdx = 2 if tee_svn[1:2] not in (b"", b"\0") else 0  # with a TDX module version, its SVN is checked below

        def matches(t: Mapping[str, Any]) -> bool:
            if any(own < int(c["svn"]) for own, c in zip(pck.sgx_tcb_components, t["sgxtcbcomponents"], strict=True)):
                return False
            if pck.pce_svn < int(t["pcesvn"]):
                return False
            return not tdx or all(
                tee_svn[i] >= int(c["svn"]) for i, c in enumerate(t["tdxtcbcomponents"]) if i >= first_tdx
            )

        level = _first_level(tcb_info.get("tcbLevels"), matches, f"TCB info for FMSPC {pck.fmspc.hex()}")
        statuses["platform"] = str(level["tcbStatus"])
        advisories += [str(a) for a in level.get("advisoryIDs", ())]
        notes.append(f"platform: {statuses['platform']} {advisories or ''}".strip())
        if isinstance(body, TdReportBody):
            statuses["tdx_module"] = _tdx_module_status(tcb_info, body)
            notes.append(f"TDX module: {statuses['tdx_module']}")
    return statuses, advisories


def _check_qe_identity(qe_id: Mapping[str, Any], qe: SgxReportBody) -> None:
    def masked(value: bytes, mask_hex: str) -> bytes:
        mask = bytes.fromhex(mask_hex)
        return bytes(a & b for a, b in zip(value, mask, strict=True))

    if qe.mr_signer.hex() != str(qe_id["mrsigner"]).lower():
        raise QeIdentityMismatch(f"QE MRSIGNER {qe.mr_signer.hex()} is not Intel's {qe_id['mrsigner']}")
    if qe.isv_prod_id != int(qe_id["isvprodid"]):
        raise QeIdentityMismatch(f"QE ISVPRODID {qe.isv_prod_id} is not {qe_id['isvprodid']}")
    misc = qe.misc_select.to_bytes(4, "little")[::-1]  # Intel's JSON writes MISCSELECT big-endian
    if masked(misc, qe_id["miscselectMask"]) != bytes.fromhex(qe_id["miscselect"]):
        raise QeIdentityMismatch("QE MISCSELECT does not match Intel's QE identity")
    if masked(qe.attributes, qe_id["attributesMask"]) != bytes.fromhex(qe_id["attributes"]):
        raise QeIdentityMismatch("QE ATTRIBUTES do not match Intel's QE identity")


def _tdx_module_status(tcb_info: Mapping[str, Any], body: TdReportBody) -> str:
    """TDX module identity: from TCB info v3, `TDX_<major version>` with the module's ISV SVN (TEE_TCB_SVN[0])."""
    version, svn = body.tee_tcb_svn[1], body.tee_tcb_svn[0]
    if version == 0:
        return "UpToDate"  # TDX 1.0 modules carry no separate identity; their SVN is in tdxtcbcomponents
    module_id = f"TDX_{version:02X}"
    identity = next((m for m in tcb_info.get("tdxModuleIdentities", ()) if m.get("id") == module_id), None)
    if identity is None:
        raise TcbLevelNotFound(f"TCB info has no TDX module identity {module_id}")
    if body.mr_signer_seam.hex() != str(identity["mrsigner"]).lower():
        raise QeIdentityMismatch(f"MRSIGNERSEAM is not the {module_id} signer in the TCB info")
    mask = bytes.fromhex(identity["attributesMask"])
    if bytes(a & b for a, b in zip(body.seam_attributes, mask, strict=True)) != bytes.fromhex(identity["attributes"]):
        raise QeIdentityMismatch(f"SEAM attributes do not match the {module_id} identity")
    level = _first_level(identity.get("tcbLevels"), lambda t: svn >= int(t["isvsvn"]), f"TDX module {module_id}")
    return str(level["tcbStatus"])
