"""Enclave calls for attestation and confidential ingestion."""

from __future__ import annotations

import base64
import time

from caltrain.crypto.container import open_container, read_header
from caltrain.crypto.errors import ContainerMismatch
from caltrain.crypto.hashing import report_data_for
from caltrain.crypto.signing import verify_signature
from caltrain.enclave.consortium import Role
from caltrain.enclave.datastore import DatasetStore
from caltrain.enclave.protocol import submission_digest, wrap_context
from caltrain.enclave.runtime import EnclaveContext, ecall
from caltrain.enclave.wire import DatasetInfo, DatasetList, EvidenceReply, GetEvidence, IngestDataset, ListDatasets

STORE = "datasets"


def datasets(ctx: EnclaveContext) -> DatasetStore:
    """The enclave's dataset store, re-opened from sealed state on first use."""
    store = ctx.extensions.get(STORE)
    if store is None:
        store = ctx.extensions[STORE] = DatasetStore.load(ctx.state_dir, ctx.sealer, ctx.config.consortium)
    assert isinstance(store, DatasetStore)
    return store


@ecall(GetEvidence)
def get_evidence(ctx: EnclaveContext, req: GetEvidence) -> EvidenceReply:
    quote, supporting = ctx.collector.collect(report_data_for(ctx.public_keys.to_bytes(), req.nonce))
    return EvidenceReply(
        platform=ctx.platform,
        quote=quote,
        supporting={k: base64.b64encode(v).decode() for k, v in supporting.items()},
    )


@ecall(IngestDataset)
def ingest(ctx: EnclaveContext, req: IngestDataset) -> DatasetInfo:
    """Verify everything about an upload, then ingest it whole, or raise and ingest nothing."""
    member = ctx.config.consortium.member(req.participant, role=Role.PARTICIPANT)
    verify_signature(
        member.public_key,
        submission_digest(req.container, req.wrapped_key, ctx.public_keys),
        req.signature,
        what=f"submission by {member.name}",
    )
    header, _ = read_header(req.container)
    if header.participant_id != member.name:
        raise ContainerMismatch(f"container names participant {header.participant_id!r}, submitted by {member.name!r}")
    store = datasets(ctx)
    store.check_new(header.dataset_id)
    data_key = ctx.hpke.unwrap_key(req.wrapped_key, context=wrap_context(header.dataset_id, member.name))
    started = time.perf_counter()
    opened = open_container(
        req.container, data_key, participant_key=member.public_key, expected_dataset_id=header.dataset_id
    )
    opened_at = time.perf_counter()
    dataset = store.add(req.container, data_key, opened)
    return DatasetInfo(
        **dataset.info(), open_seconds=opened_at - started, store_seconds=time.perf_counter() - opened_at
    )


@ecall(ListDatasets)
def list_datasets(ctx: EnclaveContext, req: ListDatasets) -> DatasetList:
    return DatasetList(datasets=[d.info() for d in datasets(ctx).datasets.values()])
