"""`caltrain train` and `caltrain export`: partitioned training jobs on a server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from caltrain.cli.args import out_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="ask the enclave to admit a training job, then follow it")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
    p.add_argument("--config", type=Path, required=True, help="training config JSON (model, frontnet_layers, ...)")
    p.add_argument("--home", type=Path, required=True, help="an owner's home (signs the job for the enclave)")
    p.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    p.add_argument("--detach", action="store_true", help="print the job id and return without waiting")
    p.set_defaults(func=train)

    e = sub.add_parser(
        "export", help="fetch a trained model: FrontNet and seed sealed to you by the enclave, plus the BackNet"
    )
    e.add_argument("--server", required=True, help="server URL")
    e.add_argument("--home", type=Path, required=True, help="a member every dataset's policy names a recipient")
    e.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    e.add_argument("--job", required=True, help="a finished job's id")
    e.add_argument("--out", type=out_file, required=True, help="model file to write (caltrain model format)")
    e.set_defaults(func=export)


def print_epoch(epoch: dict[str, Any]) -> None:
    if epoch.get("loss") is None:  # full-enclave mode: loss and accuracy never leave the enclave
        print(f"epoch {epoch['epoch']:3d}  (inside the enclave)  {epoch['samples_per_s']:.0f} samples/s", flush=True)
        return
    acc = epoch.get("eval_accuracy")
    print(
        f"epoch {epoch['epoch']:3d}  loss {epoch['loss']:.4f}  train acc {epoch['train_accuracy']:.3f}  "
        f"eval acc {'-' if acc is None else f'{acc:.3f}'}  {epoch['samples_per_s']:.0f} samples/s",
        flush=True,
    )


def train(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.service.client import CaltrainClient, pretty
    from caltrain.service.participant import MemberHome
    from caltrain.training.config import TrainConfig

    home = MemberHome.load(args.home)
    config = TrainConfig.load(args.config)
    policy = Policy.load(args.policy)
    with CaltrainClient(args.server, home=home) as client:
        created = client.start_job(config, policy)
        mode = "full-enclave mode" if created.full_enclave else f"FrontNet = first {config.frontnet_layers} blocks"
        print(f"job {created.job_id} admitted by the enclave ({mode}; architecture {created.architecture[:16]}…)")
        if args.detach:
            return 0
        done = client.wait_job(created.job_id, on_progress=print_epoch)
    print(pretty({k: done[k] for k in ("job_id", "state", "front_digest")}))
    return 0


def export(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.cli.model_file import ModelFile
    from caltrain.models import build_model
    from caltrain.service.client import CaltrainClient
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    policy = Policy.load(args.policy)
    with CaltrainClient(args.server, home=home) as client:
        config, state, seed = client.trained_model(args.job, policy)
    build_model(config.model).load_state_dict(state, strict=True)  # the halves keep their block names
    ModelFile(config.model, state, {"job_id": args.job, "seed": seed}).save(args.out)
    print(f"model {config.model} of job {args.job} (seed {seed}) -> {args.out}")
    return 0
