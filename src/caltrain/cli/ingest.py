"""Participant-side commands: identities, the consortium file, packing, policies, submission, status."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.cli.args import fraction, out_file
from caltrain.enclave.consortium import Role
from caltrain.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("participant", help="manage a participant identity")
    psub = p.add_subparsers(dest="action", required=True)
    init = psub.add_parser(
        "init", help="create a member's keys in HOME (Ed25519 to sign, X25519 to receive answers); print them"
    )
    init.add_argument("--home", type=Path, required=True, help="folder for the member's keys (created)")
    init.add_argument("--name", required=True, help="the member's name in the consortium")
    init.set_defaults(func=participant_init)

    c = sub.add_parser("consortium", help="edit a consortium file")
    csub = c.add_subparsers(dest="action", required=True)
    add = csub.add_parser("add", help="add (or update) the member whose home is HOME")
    add.add_argument("--file", type=Path, required=True, help="consortium file (created if missing)")
    add.add_argument("--home", type=Path, required=True, help="the member's home (its public keys are added)")
    add.add_argument(
        "--role", choices=[r.value for r in Role], action="append", required=True,
        help="participant (contributes data), owner (starts jobs, deploys), auditor (forensics); repeatable",
    )
    add.set_defaults(func=consortium_add)
    schema = csub.add_parser("schema", help="declare what every dataset's records must be (checked by the enclave)")
    schema.add_argument("--file", type=Path, required=True, help="consortium file (created if missing)")
    schema.add_argument("--shape", required=True, help="sample shape, e.g. 1,8,8 (channels, height, width)")
    schema.add_argument("--classes", type=int, required=True, help="number of classes: labels are 0..N-1")
    schema.add_argument("--range", default="0,1", help="allowed value range LOW,HIGH")
    schema.set_defaults(func=consortium_schema)

    pack = sub.add_parser(
        "pack", help="encrypt and sign a dataset into a container; write a default data-use policy to review"
    )
    pack.add_argument("--home", type=Path, required=True, help="the participant's home (signs the container)")
    pack.add_argument("--data", required=True, help=".npz with arrays x and y, or a dataset name (digits, ...)")
    pack.add_argument("--out", type=out_file, required=True, help="container file to create (never overwritten)")
    pack.add_argument("--dataset-id", help="the dataset's id (default: NAME-<random>)")
    pack.add_argument("--holdout", type=fraction, default=0.0,
                      help="fraction of the records to leave out of the container (say, for your own testing)")
    pack.add_argument("--consortium", type=Path,
                      help="consortium file: check every record against its dataset schema before packing")
    pack.set_defaults(func=pack_cmd)

    pol = sub.add_parser("policy", help="fetch the server's platform key and measurement into a policy to review")
    pol.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
    pol.add_argument("--out", type=out_file, required=True, help="policy file to write")
    pol.set_defaults(func=policy_cmd)

    sb = sub.add_parser("submit", help="attest the enclave, wrap the data key to it, upload the container")
    sb.add_argument("--home", type=Path, required=True, help="the participant's home (holds the data key)")
    sb.add_argument("--server", required=True, help="server URL")
    sb.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    sb.add_argument("--container", type=Path, required=True, help="a container this participant packed")
    sb.add_argument(
        "--data-policy", type=Path, help="data-use policy to sign with the upload (default: the one pack wrote)"
    )
    sb.set_defaults(func=submit_cmd)

    st = sub.add_parser("status", help="datasets ingested by the server (JSON)")
    st.add_argument("--server", required=True, help="server URL")
    st.set_defaults(func=status_cmd)


def participant_init(args: argparse.Namespace) -> int:
    from caltrain.service.participant import MemberHome

    home = MemberHome.init(args.home, args.name)
    print(f"signing key     {home.identity.public_key.hex()}")
    print(f"encryption key  {home.encryption.public_bytes.hex()}")
    return 0


def consortium_add(args: argparse.Namespace) -> int:
    from caltrain.enclave.consortium import Consortium
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    consortium = Consortium.load(args.file) if args.file.exists() else Consortium()
    consortium = consortium.with_member(home.member(frozenset(Role(r) for r in args.role)))
    consortium.save(args.file)
    print(f"{home.name} ({', '.join(sorted(set(args.role)))}) -> {args.file}: {len(consortium.members)} members")
    return 0


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"{what} {text!r} must be comma-separated numbers") from None


def consortium_schema(args: argparse.Namespace) -> int:
    from caltrain.enclave.consortium import Consortium, DatasetSchema

    shape = [int(v) for v in _floats(args.shape, "--shape")]
    bounds = _floats(args.range, "--range")
    if len(bounds) != 2:
        raise DataError(f"--range {args.range!r} must be LOW,HIGH")
    low, high = bounds
    consortium = Consortium.load(args.file) if args.file.exists() else Consortium()
    schema = DatasetSchema(tuple(shape), args.classes, (low, high))
    consortium.with_schema(schema).save(args.file)
    print(f"dataset schema -> {args.file}: {schema.to_json()}")
    return 0


def pack_cmd(args: argparse.Namespace) -> int:
    import numpy as np

    from caltrain.data.datasets import check_records, load_records
    from caltrain.enclave.consortium import Consortium
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    records = load_records(args.data)
    schema = Consortium.load(args.consortium).schema if args.consortium else None
    check_records(records, schema.value_range if schema else (0.0, 1.0))
    if schema is not None:
        if records.sample_shape != schema.shape:
            raise DataError(f"{records.name}: records of shape {list(records.sample_shape)}; the consortium's "
                            f"schema takes {list(schema.shape)}")
        if records.y.max() >= schema.num_classes:
            raise DataError(f"{records.name}: label {int(records.y.max())} is outside the schema's "
                            f"0..{schema.num_classes - 1}")
    packed, held = records, 0
    if args.holdout:
        order = np.random.default_rng(0).permutation(len(records))
        held = round(len(records) * args.holdout)
        packed = records.subset(np.sort(order[held:]))
    receipt = home.pack(packed, args.out, dataset_id=args.dataset_id)
    kept = f"all {receipt.record_count} records" if not held else \
        f"{receipt.record_count} of {len(records)} records ({held} held out by --holdout, not packed)"
    print(
        f"packed {kept} of {records.name} as dataset {receipt.dataset_id} -> {args.out}\n"
        f"commitment (Merkle root): {receipt.merkle_root.hex()}\n"
        f"data-use policy to review before `caltrain submit`: {home.policy_path(receipt.dataset_id)}\n"
        "  (default: the whole model stays in the enclave, no evaluation use, auditors may trace, nobody receives\n"
        "  the FrontNet; see docs/security.md)"
    )
    return 0


def policy_cmd(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy, Verifier
    from caltrain.service.client import CaltrainClient, draft_policy

    with CaltrainClient(args.server) as client:
        probe = Verifier(Policy(platforms=[], measurements=[]))
        evidence = client.evidence(probe.new_nonce())
    policy = draft_policy(evidence)
    # Check the draft at once against fresh evidence, so a policy that cannot verify is never written.
    with CaltrainClient(args.server) as client:
        client.attest(Verifier(policy))
    policy.save(args.out)
    print(f"platform:     {evidence.platform}")
    if policy.simulated:
        print(f"platform key: {policy.simulated.platform_keys[0]}")
        print("WARNING: SIMULATED TEE. The policy says allow_simulated: true; no hardware protects your data.")
    print(f"measurement:  {policy.measurements[0]}")
    print(f"policy -> {args.out}. Compare the measurement with `caltrain measure --consortium FILE` from source.")
    return 0


def submit_cmd(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.crypto.container import read_header
    from caltrain.enclave.consent import DataUsePolicy
    from caltrain.enclave.wire import to_json
    from caltrain.service.client import CaltrainClient, pretty
    from caltrain.service.errors import HomeError
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    try:
        container = args.container.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read container {args.container}: {exc.strerror}") from None
    header, _ = read_header(container)
    if header.participant_id != home.name:
        raise HomeError(f"{args.container} is {header.participant_id!r}'s container, not {home.name!r}'s: a "
                        "participant submits only what it packed")
    receipt = home.receipt(header.dataset_id)
    consent = DataUsePolicy.load(args.data_policy) if args.data_policy else home.policy(header.dataset_id)
    with CaltrainClient(args.server, home=home) as client:
        ingested, enclave = client.submit(
            container, home.data_key(header.dataset_id), Policy.load(args.policy), consent
        )
    ok = (ingested.merkle_root, ingested.record_count, ingested.policy_digest) == (
        receipt.merkle_root.hex(), receipt.record_count, consent.digest,
    )
    home.remember_enclave(receipt.dataset_id, enclave.identity())
    mine = {
        "dataset_id": receipt.dataset_id,
        "participant": receipt.participant_id,
        "record_count": receipt.record_count,
        "merkle_root": receipt.merkle_root.hex(),
        "policy_digest": consent.digest,
    }
    print(pretty({"receipt": mine, "enclave_signed": to_json(ingested), "commitment_matches": ok}))
    print(f"the enclave signed this receipt; your copy is in {home.root / 'receipts'}")
    return 0 if ok else 1


def status_cmd(args: argparse.Namespace) -> int:
    from caltrain.service.client import CaltrainClient, pretty

    with CaltrainClient(args.server) as client:
        print(pretty(client.status()))
    return 0
