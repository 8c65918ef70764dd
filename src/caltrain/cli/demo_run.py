"""`caltrain demo` at work (the command is registered by `caltrain.cli.demo`): the main job, end to end on
loopback.

A consortium forms, each participant packs and encrypts its share with its data-use policy, attests the server's
(simulated) enclave and submits; the owner has the enclave admit a job and trains it partitioned; the enclave
releases the FrontNet and seed to the owner, who trains plainly with that seed and checks both gave the same
model; the auditor traces the backdoor; the demo writes report.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from caltrain.accountability.attacks import FLIP_PAIRS, badnets_trigger
from caltrain.attestation import Policy
from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset, split_among
from caltrain.enclave.consent import ApprovedModel, DataUsePolicy, Grantees
from caltrain.enclave.consortium import Consortium, DatasetSchema, Role
from caltrain.enclave.manifest import EnclaveConfig, measure
from caltrain.enclave.wire import ForensicReply
from caltrain.errors import CaltrainError
from caltrain.exposure.assess import assess
from caltrain.models import build_model, resolve_model, spec_for_dataset
from caltrain.service.client import CaltrainClient, draft_policy
from caltrain.service.loopback import LoopbackServer
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig
from caltrain.training.plain import train_plain

MARKER = ".caltrain-demo"
PARTICIPANTS = ("hospital-a", "hospital-b", "lab-c", "clinic-d")
AUDITOR = "auditor"  # the consortium's auditor, also its model owner (starts the job, receives the model)
FRONTNET_LAYERS = 2
BACKDOOR = "lab-c"  # plants a BadNets backdoor: trigger patch + relabel to TARGET
FLIPPER = "clinic-d"  # a sloppy participant: relabels FLIP_FROM as FLIP_TO
TARGET, POISON_PER_CLASS = 0, 5
FLIP_FROM, FLIP_TO = FLIP_PAIRS["digits"]


@dataclass(frozen=True)
class Shares:
    """Every participant's (possibly poisoned) share and which of its records the demo poisoned."""

    data: dict[str, ArrayDataset]
    poisoned: dict[str, np.ndarray]

    def merged(self) -> ArrayDataset:
        parts = [self.data[n] for n in PARTICIPANTS]
        return ArrayDataset(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            parts[0].name,
            parts[0].num_classes,
        )


def poisoned_shares(train: ArrayDataset, seed: int) -> Shares:
    """Deal the data out; the backdoor participant triggers and relabels a few images of every other class,
    the sloppy one relabels all its FLIP_FROM images as FLIP_TO."""
    rng = np.random.default_rng(seed)
    data, poisoned = {}, {}
    for name, share in zip(PARTICIPANTS, split_among(train, len(PARTICIPANTS), seed=seed), strict=True):
        x, y, mask = share.x.copy(), share.y.copy(), np.zeros(len(share), dtype=bool)
        if name == BACKDOOR:
            for c in range(share.num_classes):
                if c != TARGET:
                    mask[rng.permutation(np.flatnonzero(y == c))[:POISON_PER_CLASS]] = True
            x[mask], y[mask] = badnets_trigger(x[mask]), TARGET
        elif name == FLIPPER:
            mask = y == FLIP_FROM
            y[mask] = FLIP_TO
        data[name], poisoned[name] = ArrayDataset(x, y, share.name, share.num_classes), mask
    return Shares(data, poisoned)


def say(text: str) -> None:
    print(text, flush=True)


def demo_consent(model: str) -> DataUsePolicy:
    """What the demo's participants agree to (instead of `caltrain pack`'s cautious default): this one
    architecture, at least the first two blocks inside the enclave, the auditor may trace and may receive the
    trained FrontNet and seed (for the demo's bit-identical parity check), owners may deploy."""
    return DataUsePolicy(
        models=[ApprovedModel(name=model, architecture=resolve_model(model).hash)],
        min_frontnet_blocks=FRONTNET_LAYERS,
        frontnet_recipients=Grantees(members=[AUDITOR]),
    )


def demo_data(name: str, records: int, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    try:
        train, test = load_dataset(name)
    except DatasetUnavailable as exc:
        raise CaltrainError(str(exc)) from None
    if name != "digits":
        rng = np.random.default_rng(seed)
        train = train.subset(np.sort(rng.permutation(len(train))[:records]))
        test = test.subset(np.sort(rng.permutation(len(test))[: max(1000, records // 6)]))
    return train, test


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise CaltrainError(f"{out} is not empty and not an earlier demo's output; pass another --out")
        shutil.rmtree(out)  # an earlier demo run: start afresh (its keys and state are throwaway)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `caltrain demo`; the next demo run into this folder replaces it\n")
    epochs = args.epochs or {"digits": 20, "colour-digits": 8}.get(args.dataset, 2)
    say("caltrain demo — SIMULATED TEE: the enclave is an ordinary process here (no hardware protection)")

    train, test = demo_data(args.dataset, args.records, args.seed)
    shares = poisoned_shares(train, args.seed)
    homes = {n: MemberHome.init(out / "participants" / n, n) for n in (*PARTICIPANTS, AUDITOR)}
    roles = {n: frozenset({Role.PARTICIPANT}) for n in PARTICIPANTS} | {AUDITOR: frozenset({Role.AUDITOR, Role.OWNER})}
    consortium = Consortium(
        tuple(homes[n].member(roles[n]) for n in homes),
        DatasetSchema(tuple(train.sample_shape), train.num_classes, (0.0, 1.0)),
    )
    consortium.save(out / "consortium.json")
    say(
        f"1. consortium of {len(PARTICIPANTS)} participants + 1 auditor (also the model owner) and the dataset "
        f"schema {list(train.sample_shape)}, {train.num_classes} classes -> {out / 'consortium.json'}"
    )

    containers: dict[str, Path] = {}
    participants: list[dict[str, Any]] = []
    for name in PARTICIPANTS:
        containers[name] = out / "participants" / name / "train.ctd"
        receipt = homes[name].pack(shares.data[name], containers[name], dataset_id=f"{name}-train")
        role = {BACKDOOR: "malicious: BadNets backdoor", FLIPPER: "malicious: label flips"}.get(name, "honest")
        participants.append(
            {
                "name": name,
                "dataset_id": receipt.dataset_id,
                "records": receipt.record_count,
                "merkle_root": receipt.merkle_root.hex(),
                "role": role,
                "poisoned_records": int(shares.poisoned[name].sum()),
            }
        )
    eval_path = out / "participants" / PARTICIPANTS[0] / "eval.ctd"
    homes[PARTICIPANTS[0]].pack(test, eval_path, dataset_id="heldout-eval")
    model_name = spec_for_dataset(args.dataset).name
    for name in PARTICIPANTS:
        consent = demo_consent(model_name)
        consent.save(homes[name].policy_path(f"{name}-train"))
        if name == PARTICIPANTS[0]:
            consent.model_copy(update={"evaluation": True}).save(homes[name].policy_path("heldout-eval"))
    say(
        f"2. each participant packed its share ({', '.join(str(p['records']) for p in participants)} records), "
        f"encrypted with AES-256-GCM and signed; {BACKDOOR} hid a BadNets backdoor "
        f"({int(shares.poisoned[BACKDOOR].sum())} triggered images relabelled {TARGET}), {FLIPPER} relabelled its "
        f"{int(shares.poisoned[FLIPPER].sum())} '{FLIP_FROM}'s as '{FLIP_TO}'"
    )

    server = LoopbackServer(out / "server-state", out / "consortium.json", out / "server.log")
    try:
        report = _protocol(args, out, server, homes, containers, eval_path, participants, shares, test, epochs)
    finally:
        server.stop()
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _summary(report, out)
    return 0 if report["training"]["weights_identical"] else 1


def _protocol(
    args: argparse.Namespace,
    out: Path,
    server: LoopbackServer,
    homes: dict[str, MemberHome],
    containers: dict[str, Path],
    eval_path: Path,
    participants: list[dict[str, Any]],
    shares: Shares,
    test: ArrayDataset,
    epochs: int,
) -> dict[str, Any]:
    expected = measure(EnclaveConfig(Consortium.load(out / "consortium.json")))
    with CaltrainClient(server.url) as client:
        evidence = client.evidence(os.urandom(32))
    policy = draft_policy(evidence)
    if policy.measurements != [expected]:
        raise CaltrainError(f"server measurement {policy.measurements} != {expected} computed from this source")
    policy.save(out / "policy.json")
    say(f"3. server at {server.url}: enclave measurement {expected[:16]}… matches this source tree")

    policy = Policy.load(out / "policy.json")
    for name in PARTICIPANTS:
        uploads = [(containers[name], f"{name}-train")]
        if name == PARTICIPANTS[0]:
            uploads.append((eval_path, "heldout-eval"))
        with CaltrainClient(server.url, home=homes[name]) as client:
            for path, dataset_id in uploads:
                consent = homes[name].policy(dataset_id)
                receipt, enclave = client.submit(path.read_bytes(), homes[name].data_key(dataset_id), policy, consent)
                mine = homes[name].receipt(dataset_id)
                if (receipt.merkle_root, receipt.policy_digest) != (mine.merkle_root.hex(), consent.digest):
                    raise CaltrainError(f"the enclave's signed receipt for {dataset_id} does not match the upload")
                homes[name].remember_enclave(dataset_id, enclave.identity())
    say(
        "4. every participant attested the enclave (fresh nonce, policy), wrapped its data key to the enclave "
        "key with HPKE and uploaded it with its signed data-use policy; the enclave verified every container "
        "against the consortium's schema, ingested it and signed a receipt each participant checked"
    )

    spec = spec_for_dataset(args.dataset)
    config = TrainConfig(
        model=spec.name,
        frontnet_layers=FRONTNET_LAYERS,
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        datasets=[f"{p['name']}/{p['dataset_id']}" for p in participants],
        eval_datasets=[f"{PARTICIPANTS[0]}/heldout-eval"],
    )
    (out / "train.json").write_text(json.dumps(config.to_dict(), indent=2))
    auditor = homes[AUDITOR]
    with CaltrainClient(server.url, home=auditor) as client:
        created = client.start_job(config, policy)
        job = {"job_id": created.job_id}
        say(
            f"5. the enclave admitted job {created.job_id[:16]}… (every dataset's policy allows it; id and seed "
            f"drawn inside); training {spec.name} partitioned (FrontNet = first {config.frontnet_layers} blocks in "
            f"the enclave, {epochs} epochs)"
        )
        done = client.wait_job(created.job_id)
        exported = client.export_model(created.job_id, policy)
        back = client.backnet(created.job_id)
    front = torch.load(io.BytesIO(exported.front_state), weights_only=True)
    say(f"   the enclave released the trained FrontNet and the seed to the auditor; training plainly with seed "
        f"{exported.seed} to compare")
    plain_model, plain = train_plain(config.model_copy(update={"seed": exported.seed}), shares.merged(), test)
    plain_state = plain_model.state_dict()
    protected = {**front, **back}
    identical = protected.keys() == plain_state.keys() and all(
        torch.equal(protected[k], plain_state[k]) for k in plain_state
    )
    max_diff = max(float((protected[k] - plain_state[k]).abs().max()) for k in plain_state)
    model = build_model(spec.name)
    model.load_state_dict(protected)
    accountability = _accountability(server.url, out, homes, containers, job["job_id"], model, shares, test)
    exposure = _exposure(model, spec.name, shares, test, config, out, args.seed)
    return {
        "seed": args.seed,
        "job_seed": exported.seed,
        "dataset": args.dataset,
        "simulated_tee": True,
        "server": {"measurement": expected, "platform": "simulated"},
        "participants": participants,
        "training": {
            "model": spec.name,
            "frontnet_layers": config.frontnet_layers,
            "epochs": epochs,
            "job_id": job["job_id"],
            "accuracy_plain": plain.final_accuracy,
            "accuracy_protected": done["progress"][-1]["eval_accuracy"],
            "weights_identical": identical,
            "max_abs_weight_difference": max_diff,
            "front_digest": done["front_digest"],
            "protected_samples_per_s": done["progress"][-1]["samples_per_s"],
            "plain_samples_per_s": plain.epochs[-1].samples_per_s,
        },
        "accountability": accountability,
        "exposure": exposure,
    }


def _exposure(
    model: torch.nn.Module, name: str, shares: Shares, test: ArrayDataset, config: TrainConfig, out: Path, seed: int
) -> dict[str, Any]:
    """How much of an input the host could reconstruct from the IR at each cut of the trained model."""
    aux = ArrayDataset(
        np.concatenate([shares.data[n].x for n in PARTICIPANTS[:2]]),
        np.concatenate([shares.data[n].y for n in PARTICIPANTS[:2]]),
        "digits-aux",
        test.num_classes,
    )
    report = assess(
        model,
        train_data=aux,
        targets=test,
        budget="tiny",
        out_dir=out / "exposure",
        seed=seed,
        model_name=name,
        model_hash=resolve_model(name).hash,
        progress=False,
    ).to_json()
    cuts = report["model"]["cuts"]
    chosen = cuts[config.frontnet_layers - 1]
    say(
        f"8. exposure assessment (tiny budget): {report['summary']['headline']} The seed rule alone would cut after "
        f"'{report['seed_rule_layer']}'; this job cut after '{chosen}'. Report: {out / 'exposure' / 'report.html'}"
    )
    return {
        "recommended_layer": report["recommended_layer"],
        "summary": report["summary"],
        "seed_rule_layer": report["seed_rule_layer"],
        "trained_cut": chosen,
        "seed_rule_misses": report["seed_rule_misses"],
        "layers": report["layers"],
    }


def _predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def _accountability(
    url: str,
    out: Path,
    homes: dict[str, MemberHome],
    containers: dict[str, Path],
    job_id: str,
    model: torch.nn.Module,
    shares: Shares,
    test: ArrayDataset,
) -> dict[str, Any]:
    """The auditor traces the backdoor's and the flips' mispredictions through the enclave and names who."""
    policy = Policy.load(out / "policy.json")
    triggered = badnets_trigger(test.x[test.y != TARGET])
    hits = _predict(model, triggered) == TARGET
    flipped_in = test.x[test.y == FLIP_FROM]
    flip_hits = _predict(model, flipped_in) == FLIP_TO
    poisoned = {f"{n}/{n}-train/{i}" for n in PARTICIPANTS for i in np.flatnonzero(shares.poisoned[n])}
    say(
        f"6. the backdoor works: {hits.mean():.0%} of triggered test images are classified as {TARGET}; "
        f"{flip_hits.mean():.0%} of test '{FLIP_FROM}'s come out as '{FLIP_TO}'"
    )

    auditor = homes[AUDITOR]
    signed: dict[str, Any] = {}
    with CaltrainClient(url, home=auditor) as client:

        def trace(inputs: np.ndarray, predicted: int, method: str = "ours") -> dict[str, Any]:
            x = inputs[:50]
            if not len(x):  # the attack produced no misprediction to trace
                return {"method": method, "answers": [], "contributors": []}
            answer = client.trace(job_id, x, policy, predicted=np.full(len(x), predicted), k=10, method=method)
            assert isinstance(answer.reply, ForensicReply)
            signed[method] = answer.to_json()
            return answer.reply.report

        backdoor = trace(triggered[hits], TARGET)
        backdoor_doc = {"report": backdoor, **signed["ours"]} if backdoor["answers"] else None
        seed = trace(triggered[hits], TARGET, "caltrain-knn")
        flips = trace(flipped_in[flip_hits], FLIP_TO) if flip_hits.any() else None
        ranking = client.suspicion(job_id, policy)["ranking"]
    (out / "trace-backdoor.json").write_text(json.dumps(backdoor_doc, indent=2))

    def precision(report: dict[str, Any]) -> float:
        hits = [np.mean([r["record"]["record_id"] in poisoned for r in a["records"]]) for a in report["answers"]]
        return float(np.mean(hits)) if hits else 0.0

    truth = np.array([r["record_id"] in poisoned for r in ranking])
    auroc = float(roc_auc_score(truth, [r["score"] for r in ranking]))
    named, named_flip = _named(backdoor), _named(flips) if flips else []
    verified = homes[BACKDOOR].verify_trace(backdoor_doc, [containers[BACKDOOR]]) if backdoor_doc else 0
    say(
        f"7. auditor traced {len(backdoor['answers'])} triggered mispredictions inside the enclave: "
        f"precision@10 {precision(backdoor):.2f} (paper's kNN: {precision(seed):.2f}); named: {named or 'nobody'}"
        + (f"; the flips' mispredictions name {named_flip or 'nobody'}" if flips else "")
    )
    say(
        f"   every answer carries a Merkle proof against the enclave-signed log; {BACKDOOR} itself checked the "
        f"{verified} proofs naming it against its own upload receipt. Dataset-level AUROC {auroc:.3f}"
    )
    return {
        "method": backdoor["method"],
        "precision_at_10": precision(backdoor),
        "contributor_top1_correct": named == [BACKDOOR],
        "contributors_named": named,
        "auroc": auroc,
        "queries": len(backdoor["answers"]),
        "attack_success_rate": float(hits.mean()),
        "seed_method": {
            "method": seed["method"],
            "precision_at_10": precision(seed),
            "contributors_named": _named(seed),
        },
        "label_flip": None
        if flips is None
        else {
            "queries": len(flips["answers"]),
            "contributors_named": named_flip,
            "contributor_top1_correct": named_flip == [FLIPPER],
            "attributed": sum(a["responsible"] for a in flips["answers"]),
        },
        "proofs_verified_by_participant": verified,
        "blame": backdoor["contributors"],
    }


def _named(report: dict[str, Any]) -> list[str]:
    """The contributors a trace names (set detection), not merely those with some evidence."""
    return sorted(c["contributor"] for c in report["contributors"] if c.get("named"))


def _summary(report: dict[str, Any], out: Path) -> None:
    t = report["training"]
    say("")
    say("=" * 72)
    say(
        f"dataset {report['dataset']}, seed {report['seed']}, {len(report['participants'])} participants, "
        f"{report['seconds']} s"
    )
    say(f"accuracy  plain {t['accuracy_plain']:.4f}   protected {t['accuracy_protected']:.4f}")
    say(f"weights identical (FrontNet from the enclave + BackNet from the host vs plain): {t['weights_identical']}")
    a = report["accountability"]
    say(
        f"backdoor traced to {', '.join(a['contributors_named']) or 'nobody'} "
        f"(correct: {a['contributor_top1_correct']}), precision@10 {a['precision_at_10']:.2f}, AUROC {a['auroc']:.3f}"
    )
    say(f"report -> {out / 'report.json'}")
    say("=" * 72)
