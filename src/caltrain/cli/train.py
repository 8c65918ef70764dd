"""`caltrain train` and `caltrain export`: partitioned training jobs on a server."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch

from caltrain.attestation import Policy
from caltrain.models import build_model
from caltrain.service.client import CaltrainClient, pretty
from caltrain.service.participant import MemberHome
from caltrain.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="ask the enclave to admit a training job, then follow it")
    p.add_argument("--server", required=True)
    p.add_argument("--config", type=Path, required=True, help="training config JSON (model, frontnet_layers, ...)")
    p.add_argument("--home", type=Path, required=True, help="an owner's home (signs the job for the enclave)")
    p.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    p.add_argument("--detach", action="store_true", help="print the job id and return without waiting")
    p.set_defaults(func=train)

    e = sub.add_parser(
        "export", help="fetch a trained model: FrontNet and seed sealed to you by the enclave, plus the BackNet"
    )
    e.add_argument("--server", required=True)
    e.add_argument("--home", type=Path, required=True, help="a member every dataset's policy names a recipient")
    e.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    e.add_argument("--job", required=True)
    e.add_argument("--out", type=Path, required=True, help="where to write the model file (.pt)")
    e.set_defaults(func=export)


def _print_epoch(epoch: dict[str, Any]) -> None:
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
    home = MemberHome.load(args.home)
    config = TrainConfig.load(args.config)
    with CaltrainClient(args.server, home=home) as client:
        created = client.start_job(config, Policy.load(args.policy))
        mode = "full-enclave mode" if created.full_enclave else f"FrontNet = first {config.frontnet_layers} blocks"
        print(f"job {created.job_id} admitted by the enclave ({mode}; architecture {created.architecture[:16]}…)")
        if args.detach:
            return 0
        done = client.wait_job(created.job_id, on_progress=_print_epoch)
    print(pretty({k: done[k] for k in ("job_id", "state", "front_digest")}))
    return 0


def export(args: argparse.Namespace) -> int:
    home = MemberHome.load(args.home)
    with CaltrainClient(args.server, home=home) as client:
        exported = client.export_model(args.job, Policy.load(args.policy))
        back = client.backnet(args.job)
        config = TrainConfig.from_dict(client.job(args.job)["config"])
    front = torch.load(io.BytesIO(exported.front_state), weights_only=True)
    state = {**front, **back}  # the halves keep their block names, so together they are the model's state
    build_model(config.model).load_state_dict(state, strict=True)
    torch.save({"model": config.model, "state_dict": state, "job_id": args.job, "seed": exported.seed}, args.out)
    print(f"model {config.model} of job {args.job} (seed {exported.seed}) -> {args.out}")
    return 0
