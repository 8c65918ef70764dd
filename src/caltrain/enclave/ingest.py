"""Enclave calls for attestation and confidential ingestion."""

from __future__ import annotations

import base64
import time

from caltrain.crypto.container import open_container, read_header
from caltrain.crypto.errors import ContainerMismatch
from caltrain.crypto.hashing import report_data_for
from caltrain.enclave.consent import DataUsePolicy
from caltrain.enclave.consortium import Member
from caltrain.enclave.datastore import DatasetStore, check_schema, qualified_id
from caltrain.enclave.protocol import wrap_context
from caltrain.enclave.runtime import EnclaveContext, ecall, on_boot
from caltrain.enclave.wire import DatasetList, DatasetReceipt, EvidenceReply, GetEvidence, IngestDataset, ListDatasets

STORE = "datasets"


@on_boot
def restore_datasets(ctx: EnclaveContext) -> None:
    """Re-open the sealed dataset index at start: an older or missing index stops the enclave, typed."""
    ctx.extensions[STORE] = DatasetStore.load(ctx.state_dir, ctx.sealer, ctx.counters, ctx.config.consortium)


def datasets(ctx: EnclaveContext) -> DatasetStore:
    return ctx.extension(STORE, DatasetStore)


@ecall(GetEvidence)
def get_evidence(ctx: EnclaveContext, req: GetEvidence) -> EvidenceReply:
    quote, supporting = ctx.collector.collect(report_data_for(ctx.public_keys.to_bytes(), req.nonce))
    return EvidenceReply(
        platform=ctx.platform,
        quote=quote,
        supporting={k: base64.b64encode(v).decode() for k, v in supporting.items()},
    )


@ecall(IngestDataset)
def ingest(ctx: EnclaveContext, req: IngestDataset, member: Member) -> DatasetReceipt:
    """Verify everything about an upload, then ingest it whole, or raise and ingest nothing."""
    policy = DataUsePolicy.from_bytes(req.policy)
    header, _ = read_header(req.container)
    if header.participant_id != member.name:
        raise ContainerMismatch(f"container names participant {header.participant_id!r}, submitted by {member.name!r}")
    store = datasets(ctx)
    store.check_new(qualified_id(member.name, header.dataset_id))
    data_key = ctx.hpke.unwrap_key(req.wrapped_key, context=wrap_context(header.dataset_id, member.name))
    started = time.perf_counter()
    opened = open_container(
        req.container, data_key, participant_key=member.public_key, expected_dataset_id=header.dataset_id
    )
    check_schema(opened, ctx.config.consortium.schema)  # part of verifying: counted in open_seconds
    opened_at = time.perf_counter()
    dataset = store.add(req.container, data_key, opened, policy)
    return DatasetReceipt(
        **dataset.info(), open_seconds=opened_at - started, store_seconds=time.perf_counter() - opened_at
    )


@ecall(ListDatasets)
def list_datasets(ctx: EnclaveContext, req: ListDatasets) -> DatasetList:
    return DatasetList(datasets=[d.info() for d in datasets(ctx).datasets.values()])
