"""Participant-side commands: identities, the consortium file, packing, policies, submission, status."""

from __future__ import annotations

import argparse
from pathlib import Path

from caltrain.attestation import Policy, Verifier
from caltrain.crypto.container import read_header
from caltrain.data.datasets import load_dataset
from caltrain.enclave.consortium import Consortium, Member, Role
from caltrain.service.client import CaltrainClient, draft_policy, pretty
from caltrain.service.participant import ParticipantHome


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("participant", help="manage a participant identity")
    psub = p.add_subparsers(dest="action", required=True)
    init = psub.add_parser("init", help="create an Ed25519 identity in HOME and print its public key")
    init.add_argument("--home", type=Path, required=True)
    init.add_argument("--name", required=True)
    init.set_defaults(func=participant_init)

    c = sub.add_parser("consortium", help="edit a consortium file")
    csub = c.add_subparsers(dest="action", required=True)
    add = csub.add_parser("add", help="add (or update) the member whose home is HOME")
    add.add_argument("--file", type=Path, required=True)
    add.add_argument("--home", type=Path, required=True)
    add.add_argument("--role", choices=[r.value for r in Role], required=True)
    add.set_defaults(func=consortium_add)

    pack = sub.add_parser("pack", help="encrypt and sign a dataset into a container")
    pack.add_argument("--home", type=Path, required=True)
    pack.add_argument("--data", required=True, help=".npz with arrays x and y, or a dataset name (digits, ...)")
    pack.add_argument("--out", type=Path, required=True)
    pack.add_argument("--dataset-id", help="defaults to NAME-<random>")
    pack.set_defaults(func=pack_cmd)

    pol = sub.add_parser("policy", help="fetch the server's platform key and measurement into a policy to review")
    pol.add_argument("--server", required=True)
    pol.add_argument("--out", type=Path, required=True)
    pol.set_defaults(func=policy_cmd)

    sb = sub.add_parser("submit", help="attest the enclave, wrap the data key to it, upload the container")
    sb.add_argument("--home", type=Path, required=True)
    sb.add_argument("--server", required=True)
    sb.add_argument("--policy", type=Path, required=True)
    sb.add_argument("--container", type=Path, required=True)
    sb.set_defaults(func=submit_cmd)

    st = sub.add_parser("status", help="datasets ingested by the server (JSON)")
    st.add_argument("--server", required=True)
    st.set_defaults(func=status_cmd)


def participant_init(args: argparse.Namespace) -> int:
    home = ParticipantHome.init(args.home, args.name)
    print(home.identity.public_key.hex())
    return 0


def consortium_add(args: argparse.Namespace) -> int:
    home = ParticipantHome.load(args.home)
    consortium = Consortium.load(args.file) if args.file.exists() else Consortium()
    consortium = consortium.with_member(Member(home.name, Role(args.role), home.identity.public_key))
    consortium.save(args.file)
    print(f"{home.name} ({args.role}) -> {args.file}: {len(consortium.members)} members")
    return 0


def pack_cmd(args: argparse.Namespace) -> int:
    home = ParticipantHome.load(args.home)
    train, _ = load_dataset(args.data)
    receipt = home.pack(train, args.out, dataset_id=args.dataset_id)
    print(
        f"packed {receipt.record_count} records of {train.name} as dataset {receipt.dataset_id} -> {args.out}\n"
        f"commitment (Merkle root): {receipt.merkle_root.hex()}"
    )
    return 0


def policy_cmd(args: argparse.Namespace) -> int:
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
    home = ParticipantHome.load(args.home)
    container = args.container.read_bytes()
    header, _ = read_header(container)
    receipt = home.receipt(header.dataset_id)
    with CaltrainClient(args.server, identity=home.identity, name=home.name) as client:
        result = client.submit(container, home.data_key(header.dataset_id), Policy.load(args.policy))
    ok = result["merkle_root"] == receipt.merkle_root.hex() and result["record_count"] == receipt.record_count
    home.remember_enclave(receipt.dataset_id, result["enclave"])
    mine = {
        "dataset_id": receipt.dataset_id,
        "participant": receipt.participant_id,
        "record_count": receipt.record_count,
        "merkle_root": receipt.merkle_root.hex(),
        "signature": receipt.signature.hex(),
    }
    print(pretty({"receipt": mine, "ingested": result, "commitment_matches": ok}))
    print(f"receipt kept in {home.root / 'receipts' / (receipt.dataset_id + '.json')}")
    return 0 if ok else 1


def status_cmd(args: argparse.Namespace) -> int:
    with CaltrainClient(args.server) as client:
        print(pretty(client.status()))
    return 0
