"""Accountability errors: each names the check that failed, so a caller can tell tampering from misuse."""

from __future__ import annotations

from caltrain.errors import AccountabilityError


class QueryRejected(AccountabilityError):
    """A forensic query is malformed or does not fit the model."""


class LinkageTampered(AccountabilityError):
    """The linkage log does not match what the enclave signed: something was altered, dropped, added or moved."""


class RecordTampered(LinkageTampered):
    """A stored record does not unseal or does not hash into the signed root (altered, forged, or moved)."""


class RecordsDropped(LinkageTampered):
    """Fewer records than the signed statement commits to, or a gap in the positions."""


class RecordsAdded(LinkageTampered):
    """More records than the signed statement commits to (a forged append)."""


class RecordOutOfOrder(LinkageTampered):
    """A record sits at a position other than the one it was committed at."""


class StatementInvalid(LinkageTampered):
    """The signed log statement is malformed, signed by someone else, or for another model or measurement."""


class RollbackDetected(LinkageTampered):
    """The stored log is older than (or diverges from) a statement the caller already trusts."""


class LinkageProofInvalid(AccountabilityError):
    """A query answer's linkage proof does not verify (offline check by a participant or auditor)."""


class ReceiptMismatch(LinkageProofInvalid):
    """A linkage proof names an instance hash or dataset the participant's own receipt does not contain."""


class UnknownMethod(AccountabilityError):
    """No attribution method is registered under that name (the message lists the ones that are)."""


class MethodAlreadyRegistered(AccountabilityError):
    """A second attribution method was registered under a name already taken."""


class ScenarioError(AccountabilityError):
    """An attack scenario cannot be built as asked (rate too high, too few records of a class, …)."""

class ShardInvalid(AccountabilityError):
    """A worker's shard or partial answer is not what this job's workers sign, or does not fit the job."""
