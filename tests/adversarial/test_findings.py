"""The fourteen findings of the malicious-host review, each replayed as an attack that must now fail.

Each test plays the attacker (the host driving the enclave channel or standing in the middle of the HTTP API, or
a consortium member overreaching) and passes only when the enclave, or the client checking the enclave's
signature, refuses.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from caltrain.accountability.errors import AccountabilityError, UnknownMethod
from caltrain.attestation import Evidence, Policy, Verifier
from caltrain.attestation.errors import PolicyError
from caltrain.crypto.container import open_container
from caltrain.crypto.hashing import record_commitment, record_salt, tagged_hash
from caltrain.data.datasets import load_dataset
from caltrain.enclave.authority import UNSIGNED, open_signed_reply
from caltrain.enclave.consent import Grantees
from caltrain.enclave.consortium import Consortium, Role
from caltrain.enclave.errors import ConsentRefused, ReplyInvalid, StateRolledBack, UnknownDataset
from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig, measured_modules
from caltrain.enclave.wire import (
    BuildLinkage,
    CreateJob,
    DatasetList,
    DatasetReceipt,
    DeployModel,
    EvidenceReply,
    Exported,
    ExportModel,
    ForensicReply,
    ForwardOut,
    FrontForward,
    GetEvidence,
    JobCreated,
    LinkageBuilt,
    ListDatasets,
    ModelDeployed,
    SignedReply,
    SuspicionQuery,
    TraceQuery,
    TrainReady,
    TrainStart,
    decode,
    encode,
    to_json,
)
from caltrain.errors import AuthError, CaltrainError, ModelError
from caltrain.inference.serving import InferenceService
from caltrain.models import PartitionError, build_model
from caltrain.service.client import AttestedEnclave, CaltrainClient, check_report, draft_policy
from caltrain.service.loopback import LoopbackServer, free_port
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig
from caltrain.training.errors import JobRefused, NoActiveJob, StepOutOfOrder
from caltrain.training.partitioned import PartitionedTrainer
from tests.adversarial.conftest import World
from tests.helpers import (
    People,
    call_sealed,
    call_signed,
    create_job,
    ingest,
    open_policy,
    pack,
    sealed_answer,
    signed_by,
    submission,
    with_field,
)


def start_unknown(job_id: str) -> TrainStart:
    return TrainStart(job_id=job_id, ir_path="/nonexistent", grad_path="/nonexistent", label_path="/nonexistent",
                      slot_capacity=1, resume=False)


def digits(lo: int, hi: int) -> Any:
    return load_dataset("digits")[0].subset(np.arange(lo, hi))


def train_quickly(host: EnclaveHost, people: People, datasets: list[str], workdir: Path) -> str:
    created = create_job(host, people.owner, TrainConfig(epochs=1, datasets=datasets))
    PartitionedTrainer(host, TrainConfig.from_dict(created.spec), job_id=created.job_id, workdir=workdir).run()
    host.call(BuildLinkage(job_id=created.job_id), LinkageBuilt)
    return created.job_id


# 1 ---------------------------------------------------------------------------------------------------------
def test_01_host_cannot_choose_a_job_config_nor_learn_the_initial_weights(world: World) -> None:
    """The host once started a job of its own (cut after one block, public seed, every dataset as evaluation) and
    inverted every record from the IRs. Now a job exists only as an owner signed it, its cut and evaluation use
    must be admitted by every dataset's policy, and the initial weights come from a seed the host never sees."""
    assert "config" not in TrainStart.__dataclass_fields__, "the host names a job, never its configuration"
    with pytest.raises(NoActiveJob):
        world.host.call(start_unknown("job-of-my-own"), TrainReady)
    owner = world.people.owner
    with pytest.raises(ConsentRefused, match=r"alice/a0.*min_frontnet_blocks"):
        create_job(world.host, owner, TrainConfig(frontnet_layers=1, datasets=["alice/a0"]))
    with pytest.raises(ConsentRefused, match=r"alice/a0.*evaluation"):
        create_job(world.host, owner, TrainConfig(datasets=["bob/b0"], eval_datasets=["alice/a0"]))
    with pytest.raises(JobRefused, match="seed"):
        create_job(world.host, owner, TrainConfig(datasets=["bob/b0"], seed=0))
    # Where a participant allows a shallow cut (bob does), the host still cannot rebuild the FrontNet: the seed is
    # drawn inside, differs per job, and what the host receives is only the BackNet's initial weights.
    firsts = []
    for _ in range(2):
        created = create_job(world.host, owner, TrainConfig(frontnet_layers=1, epochs=1, datasets=["bob/b0"]))
        assert "seed" not in created.spec
        trainer = PartitionedTrainer(world.host, TrainConfig.from_dict(created.spec), job_id=created.job_id,
                                     workdir=world.state.parent / created.job_id)
        ready = trainer.start()
        trainer.close()
        firsts.append(torch.load(io.BytesIO(ready.backnet), weights_only=True))
    assert any(not torch.equal(firsts[0][k], firsts[1][k]) for k in firsts[0]), "two jobs drew the same seed"
    for seed in range(50):  # the public-seed models the attack rebuilt
        public = build_model("digits-cnn", seed=seed).state_dict()
        assert not all(torch.equal(public[k], v) for k, v in firsts[0].items())


# 2 ---------------------------------------------------------------------------------------------------------
def test_02_frontnet_goes_only_to_a_named_recipient_under_its_own_key(world: World) -> None:
    p = world.people
    with pytest.raises(AuthError, match="must travel sealed"):  # the host could read an export in the clear
        world.host.call(signed_by(ExportModel(job_id=world.job_id, auth=UNSIGNED), p.owner, world.host.keys),
                        SignedReply)
    for not_named in (p.auditor, p.alice):  # members, but alice's policy names only `owner`
        with pytest.raises(ConsentRefused, match=r"alice/a0.*frontnet_recipients"):
            call_sealed(world.host, ExportModel(job_id=world.job_id, auth=UNSIGNED), not_named, Exported)
    exported = call_sealed(world.host, ExportModel(job_id=world.job_id, auth=UNSIGNED), p.owner, Exported)
    assert exported.front_state and exported.seed >= 0  # sealed to owner's consortium key, opened only with it


# 3 ---------------------------------------------------------------------------------------------------------
def test_03_forensics_only_for_auditors_the_policies_name_and_hashes_confirm_nothing(
    world: World, people: People
) -> None:
    query = TraceQuery(job_id=world.job_id, inputs=world.inputs(), k=5, method="ours", auth=UNSIGNED)
    suspicion = SuspicionQuery(job_id=world.job_id, method="ours", auth=UNSIGNED)
    for msg in (query, suspicion):
        with pytest.raises(AuthError, match="must travel sealed"):
            world.host.call(signed_by(msg, people.auditor, world.host.keys), SignedReply)
        for wrong in (people.alice, people.owner):
            with pytest.raises(AuthError, match="auditor"):
                call_sealed(world.host, msg, wrong, ForensicReply)
    assert call_sealed(world.host, suspicion, people.auditor, ForensicReply).report["ranking"]
    # The instance hash an answer publishes confirms a guessed record to nobody without the data key.
    opened = open_container(world.alice_data.container, world.alice_data.data_key,
                            participant_key=people.alice.identity.public_key)
    payload, label = bytes(opened.payload(0)), opened.labels[0]
    unsalted = tagged_hash("caltrain/record/v1", payload, label.to_bytes(8, "big", signed=True))
    assert opened.record_hashes[0] not in {unsalted, record_commitment(record_salt(b"\0" * 32), 0, payload, label)}
    assert record_commitment(record_salt(world.alice_data.data_key), 0, payload, label) == opened.record_hashes[0]


def test_03b_an_auditor_a_policy_leaves_out_is_refused(people: People, tmp_path: Path) -> None:
    with EnclaveHost(state_dir=tmp_path, config=EnclaveConfig(people.consortium)) as host:
        ingest(host, pack(digits(0, 200), people.bob, "b"), people.bob,
               open_policy(tracers=Grantees(members=["someone-else"])))
        job_id = train_quickly(host, people, ["bob/b"], tmp_path / "w")
        with pytest.raises(ConsentRefused, match=r"bob/b.*tracers"):
            call_sealed(host, SuspicionQuery(job_id=job_id, method="ours", auth=UNSIGNED), people.auditor,
                        ForensicReply)


# 4 ---------------------------------------------------------------------------------------------------------
def evidence_for(world: World, nonce: bytes) -> Evidence:
    reply = world.host.call(GetEvidence(nonce=nonce), EvidenceReply)
    supporting = {k: base64.b64decode(v) for k, v in reply.supporting.items()}
    return Evidence(reply.platform, reply.quote, world.host.keys.to_bytes(), nonce, supporting)


def attested(world: World) -> AttestedEnclave:
    """What a client holds after attesting `world.host` (fresh nonce, the policy drafted from its evidence)."""
    verifier = Verifier(draft_policy(evidence_for(world, b"d" * 32)))
    return AttestedEnclave(verifier.verify(evidence_for(world, verifier.new_nonce())), world.host.keys)


def test_04_a_rewritten_report_is_caught_by_auditor_and_participant(
    world: World, people: People, tmp_path: Path
) -> None:
    query = TraceQuery(job_id=world.job_id, inputs=world.inputs(5), k=5, method="ours", auth=UNSIGNED)
    answer, signed = sealed_answer(world.host, query, people.auditor, ForensicReply)
    framed = decode(signed.frame).report  # type: ignore[attr-defined]
    framed["contributors"] = [{"contributor": "bob", "blame": 1.0}]  # the host blames an innocent participant
    forged = with_field(signed, frame=encode(ForensicReply(report=framed)))
    with pytest.raises(ReplyInvalid):  # what the auditor's client checks
        open_signed_reply(forged, enclave_key=world.host.keys.signing, request=signed.request_digest,
                          expect=ForensicReply)
    bob = MemberHome(tmp_path, "bob", people.bob.identity, people.bob.encryption)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b0.key").write_bytes(world.bob_data.data_key)
    container = tmp_path / "b0.ctd"
    container.write_bytes(world.bob_data.container)
    assert world.host.ready is not None
    bob.remember_enclave("b0", {"signing_key": world.host.keys.signing.hex(),
                                "measurement": world.host.ready.measurement})
    assert bob.verify_trace({"signed": to_json(signed)}, [container]) >= 0
    with pytest.raises(ReplyInvalid):  # what `caltrain proofs verify` checks first
        bob.verify_trace({"report": framed, "signed": to_json(forged)}, [container])
    with pytest.raises(ReplyInvalid, match="answers job"):  # a genuine report of another job is not this job's
        check_report({**answer.report, "job_id": "job-else"}, world.job_id, attested(world))


# 5 ---------------------------------------------------------------------------------------------------------
def test_05_a_finished_job_never_trains_again_and_its_log_never_gets_a_second_root(world: World) -> None:
    with pytest.raises(StepOutOfOrder, match="trains once"):
        world.host.call(start_unknown(world.job_id), TrainReady)
    started = create_job(world.host, world.people.owner, TrainConfig(epochs=1, datasets=["bob/b0"]))
    trainer = PartitionedTrainer(world.host, TrainConfig.from_dict(started.spec), job_id=started.job_id,
                                 workdir=world.state.parent / started.job_id)
    trainer.run(stop_after=2)
    with pytest.raises(StepOutOfOrder, match="never restarts"):  # replaying its batches from scratch
        trainer.start(resume=False)
    assert trainer.start(resume=True).next_step == 0  # resuming is allowed: from the newest sealed checkpoint
    trainer.close()
    with pytest.raises(AccountabilityError, match="built once"):
        world.host.call(BuildLinkage(job_id=world.job_id), LinkageBuilt)
    a = create_job(world.host, world.people.owner, TrainConfig(epochs=1, datasets=["bob/b0"]))
    b = create_job(world.host, world.people.owner, TrainConfig(epochs=1, datasets=["bob/b0"]))
    assert a.job_id != b.job_id and len(a.job_id) >= 36, "job ids come from enclave randomness"


# 6 ---------------------------------------------------------------------------------------------------------
def test_06_full_enclave_mode_sends_no_labels_logits_or_irs(world: World) -> None:
    created = create_job(world.host, world.people.owner,
                         TrainConfig(frontnet_layers=5, epochs=1, datasets=["alice/a0", "bob/b0"]))
    assert created.full_enclave
    trainer = PartitionedTrainer(world.host, TrainConfig.from_dict(created.spec), job_id=created.job_id,
                                 workdir=world.state.parent / created.job_id)
    trainer.labels.view((trainer.labels.capacity,)).fill_(-7)
    ready = trainer.start()
    assert ready.full_enclave and ready.backnet == b"" and ready.eval_records == 0
    with pytest.raises(StepOutOfOrder):
        world.host.call(FrontForward(phase="train", index=0), ForwardOut)
    report = trainer.run(resume=True)
    trainer.close()
    assert report.epochs and all(e.loss is None for e in report.epochs)
    assert bool((trainer.labels.view((trainer.labels.capacity,)) == -7).all())


# 7 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["older", "deleted"])
def test_07_an_older_or_missing_dataset_index_stops_the_enclave(people: People, tmp_path: Path, how: str) -> None:
    config = EnclaveConfig(people.consortium)
    index = tmp_path / "enclave" / "datasets.sealed"
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        ingest(host, pack(digits(0, 100), people.alice, "one"), people.alice)
        shutil.copy(index, tmp_path / "old")
        ingest(host, pack(digits(100, 200), people.alice, "two"), people.alice)
    if how == "older":
        shutil.copy(tmp_path / "old", index)
    else:
        index.unlink()
    with pytest.raises(StateRolledBack):
        EnclaveHost(state_dir=tmp_path, config=config).start()


def test_07b_an_older_job_registry_stops_the_enclave(people: People, tmp_path: Path) -> None:
    config = EnclaveConfig(people.consortium)
    registry = tmp_path / "enclave" / "jobs.sealed"
    with EnclaveHost(state_dir=tmp_path, config=config) as host:
        ingest(host, pack(digits(0, 100), people.bob, "b"), people.bob)
        create_job(host, people.owner, TrainConfig(epochs=1, datasets=["bob/b"]))
        shutil.copy(registry, tmp_path / "old")
        create_job(host, people.owner, TrainConfig(epochs=1, datasets=["bob/b"]))
    shutil.copy(tmp_path / "old", registry)
    with pytest.raises(StateRolledBack):
        EnclaveHost(state_dir=tmp_path, config=config).start()


# 8 and 11 go through the HTTP API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(people: People, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopbackServer, Policy, Path]]:
    root = tmp_path_factory.mktemp("http")
    homes = {n: MemberHome.init(root / n, n) for n in ("alice", "owner")}
    roles = {"alice": {Role.PARTICIPANT}, "owner": {Role.OWNER}}
    consortium = Consortium(tuple(homes[n].member(frozenset(roles[n])) for n in homes), people.consortium.schema)
    consortium.save(root / "consortium.json")
    server = LoopbackServer(root / "state", root / "consortium.json", root / "server.log", timeout_s=60)
    with CaltrainClient(server.url) as client:
        policy = draft_policy(client.evidence(b"n" * 32))
    yield server, policy, root
    server.stop()


def test_08_a_faked_upload_reply_is_not_accepted_as_a_receipt(served: tuple[LoopbackServer, Policy, Path]) -> None:
    """A man in the middle lets one upload through, drops the next and answers it with the first's genuine
    signed receipt: the client refuses, because the enclave's signature binds the receipt to its request."""
    server, policy, root = served
    alice = MemberHome.load(root / "alice")
    first, second = root / "a.ctd", root / "b.ctd"
    alice.pack(digits(0, 100), first, dataset_id="a8")
    alice.pack(digits(100, 200), second, dataset_id="b8")
    genuine: list[Any] = []

    def man_in_the_middle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/datasets" and genuine:
            return httpx.Response(201, json=genuine[0])  # dropped, answered with a replayed genuine receipt
        real = httpx.request(request.method, str(request.url), headers=request.headers, content=request.content)
        if request.url.path == "/v1/datasets":
            genuine.append(real.json())
        return httpx.Response(real.status_code, content=real.content, headers=real.headers)

    with CaltrainClient(server.url, home=alice, transport=httpx.MockTransport(man_in_the_middle)) as client:
        client.submit(first.read_bytes(), alice.data_key("a8"), policy, alice.policy("a8"))
        with pytest.raises(ReplyInvalid):
            client.submit(second.read_bytes(), alice.data_key("b8"), policy, alice.policy("b8"))
    listed = {d["dataset_id"] for d in httpx.get(f"{server.url}/v1/status").json()["datasets"]}
    assert "alice/a8" in listed and "alice/b8" not in listed


# 9 ---------------------------------------------------------------------------------------------------------
def test_09_nobody_can_claim_another_participants_dataset_id(world: World, people: People) -> None:
    ingest(world.host, pack(digits(0, 60), people.bob, "alice-next"), people.bob)  # bob takes the name first...
    ingest(world.host, pack(digits(60, 120), people.alice, "alice-next"), people.alice)
    ids = {d["dataset_id"] for d in world.host.call(ListDatasets(), DatasetList).datasets}
    assert {"bob/alice-next", "alice/alice-next"} <= ids  # ...but only in its own namespace
    impostor = pack(digits(0, 60), people.bob, "x", participant="alice")
    with pytest.raises(CaltrainError):  # a container naming alice, signed by bob, is not alice's
        call_signed(world.host, with_field(submission(impostor, people.bob, world.host.keys), auth=UNSIGNED),
                    people.bob, DatasetReceipt)


# 10 --------------------------------------------------------------------------------------------------------
def test_10_a_deployment_signature_binds_the_jobs_frontnet(world: World, people: People) -> None:
    service = InferenceService(world.host)
    host_state = {k: v for k, v in build_model("digits-cnn").state_dict().items() if not k.startswith("conv")}
    request = DeployModel(model_id="d10", job_id=world.job_id, front_digest="ab" * 32, architecture="digits-cnn",
                          m=2, ternary=False, sealed_weights=b"", slot_paths=[], max_batch=0, auth=UNSIGNED)
    try:
        with pytest.raises(CaltrainError, match="signed for FrontNet"):  # the owner signed another FrontNet
            service.deploy(signed_by(request, people.owner, world.host.keys), host_state)
        exported = call_sealed(world.host, ExportModel(job_id=world.job_id, auth=UNSIGNED), people.owner, Exported)
        right = signed_by(with_field(request, front_digest=exported.front_digest), people.owner, world.host.keys)
        with pytest.raises(CaltrainError):  # the host swaps the digest after the owner signed: signature breaks
            service.deploy(with_field(right, front_digest="cd" * 32), host_state)
        _, info = service.deploy(right, host_state)
        assert info.front_digest and info.owner == "owner"
    finally:
        service.close()


# 11 --------------------------------------------------------------------------------------------------------
def test_11_participants_cannot_export_or_deploy_and_job_routes_need_a_member(
    world: World, people: People, served: tuple[LoopbackServer, Policy, Path]
) -> None:
    with pytest.raises(ConsentRefused):
        call_sealed(world.host, ExportModel(job_id=world.job_id, auth=UNSIGNED), people.alice, Exported)
    request = DeployModel(model_id="d11", job_id=world.job_id, front_digest="00" * 32, architecture="digits-cnn",
                          m=2, ternary=False, sealed_weights=b"", slot_paths=[], max_batch=0, auth=UNSIGNED)
    with pytest.raises(AuthError, match="owner"):
        call_signed(world.host, request, people.alice, ModelDeployed)
    server, _, _ = served
    for path in ("/v1/jobs", "/v1/jobs/job-x", "/v1/jobs/job-x/backnet"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 401 and response.json()["error"] == "Unauthenticated", path


# 12 --------------------------------------------------------------------------------------------------------
def test_12_a_tdx_policy_must_name_every_workload_register() -> None:
    with pytest.raises(PolicyError, match="rtmrs"):
        Policy.from_dict({"platforms": ["tdx"], "measurements": ["00" * 48], "tdx": {"mr_seams": ["any"]}})


# 13 --------------------------------------------------------------------------------------------------------
def test_13_the_enclave_loads_exactly_measured_code(people: People, tmp_path: Path) -> None:
    """Start a real enclave through a launcher that records, at exit, every module it loaded; drive a whole job
    through it; every caltrain module it loaded is measured, and no host-only module is."""
    port, loaded = free_port(), tmp_path / "loaded.json"
    script = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        f"sys.argv = ['caltrain-enclave', '--connect', '127.0.0.1:{port}', '--state', {str(tmp_path)!r}]\n"
        "runpy.run_module('caltrain.enclave.main', run_name='__main__')\n"
    )
    with EnclaveHost(state_dir=tmp_path, config=EnclaveConfig(people.consortium),
                     launcher=[sys.executable, "-c", script], listen_port=port) as host:
        ingest(host, pack(digits(0, 200), people.bob, "b"), people.bob)
        job_id = train_quickly(host, people, ["bob/b"], tmp_path / "w")
        buf = io.BytesIO()
        np.savez(buf, x=load_dataset("digits")[1].x[:3])
        call_sealed(host, TraceQuery(job_id=job_id, inputs=buf.getvalue(), k=3, method="ours", auth=UNSIGNED),
                    people.auditor, ForensicReply)
    used = {m for m in json.loads(loaded.read_text()) if m.partition(".")[0] == "caltrain"}
    measured = set(measured_modules())
    assert used and used <= measured | {"caltrain.enclave.main"}, f"loaded, not measured: {sorted(used - measured)}"
    assert "caltrain.jsonfile" in used  # the module the old hand-written list missed
    host_only = {m for m in measured if m.count(".") and m.split(".")[1] in ("service", "cli", "exposure")}
    assert not host_only, f"host-only modules are measured: {sorted(host_only)}"
    refused = subprocess.run(
        [sys.executable, "-c", "from caltrain.enclave.manifest import guard_imports; guard_imports(); "
         "import caltrain.service.app"], capture_output=True, text=True,
    )
    assert refused.returncode != 0 and "UnmeasuredImport" in refused.stderr


# 14 --------------------------------------------------------------------------------------------------------
def test_14_the_enclave_runs_only_its_own_methods(world: World, people: People) -> None:
    for method in ("art-activation", "cleanlab", "tracin-cp-fast", "pixel-knn", "../../etc"):
        query = TraceQuery(job_id=world.job_id, inputs=world.inputs(), k=3, method=method, auth=UNSIGNED)
        with pytest.raises(UnknownMethod):
            call_sealed(world.host, query, people.auditor, ForensicReply)
    baselines = {m for m in measured_modules() if m.endswith(("baselines", "evaluation"))}
    assert not baselines, f"research baselines are measured into the enclave: {baselines}"


def test_bad_job_specs_are_refused_at_admission(world: World) -> None:
    """What a client would refuse early, sent straight to the enclave by a member's own tooling."""
    base = TrainConfig(datasets=["bob/b0"]).to_dict()
    for spec, error in (
        ({**base, "frontnet_layers": 9}, PartitionError),
        ({**base, "model": {"name": "x", "blocks": [{"name": "b", "layers": [{"type": "eval"}]}]}}, ModelError),
        ({**base, "datasets": ["bob/nope"]}, UnknownDataset),
        ({**base, "eval_datasets": ["bob/b0"]}, JobRefused),
        ({**base, "model": "cifar-resnet"}, JobRefused),  # 3×32×32 inputs; the consortium's records are 1×8×8
    ):
        with pytest.raises(error):
            call_signed(world.host, CreateJob(spec=spec, auth=UNSIGNED), world.people.owner, JobCreated)
