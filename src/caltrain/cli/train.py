"""`caltrain train` and `caltrain export`: partitioned training jobs on a server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from caltrain.models import build_model
from caltrain.service.client import CaltrainClient, pretty
from caltrain.service.participant import ParticipantHome
from caltrain.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="start partitioned training over the ingested datasets and follow it")
    p.add_argument("--server", required=True)
    p.add_argument("--config", type=Path, required=True, help="training config JSON (model, frontnet_layers, ...)")
    p.add_argument("--home", type=Path, required=True, help="a consortium member's home (signs the request)")
    p.add_argument("--detach", action="store_true", help="print the job id and return without waiting")
    p.set_defaults(func=train)

    e = sub.add_parser("export", help="fetch a trained model: FrontNet encrypted to you by the enclave + BackNet")
    e.add_argument("--server", required=True)
    e.add_argument("--home", type=Path, required=True)
    e.add_argument("--job", required=True)
    e.add_argument("--out", type=Path, required=True, help="where to write the full model's state_dict (.pt)")
    e.set_defaults(func=export)


def _print_epoch(epoch: dict[str, Any]) -> None:
    acc = epoch.get("eval_accuracy")
    print(
        f"epoch {epoch['epoch']:3d}  loss {epoch['loss']:.4f}  train acc {epoch['train_accuracy']:.3f}  "
        f"eval acc {'-' if acc is None else f'{acc:.3f}'}  {epoch['samples_per_s']:.0f} samples/s",
        flush=True,
    )


def train(args: argparse.Namespace) -> int:
    home = ParticipantHome.load(args.home)
    config = TrainConfig.load(args.config)
    with CaltrainClient(args.server, identity=home.identity, name=home.name) as client:
        job = client.start_job(config)
        print(f"job {job['job_id']} started (FrontNet = first {config.frontnet_layers} blocks in the enclave)")
        if args.detach:
            return 0
        done = client.wait_job(job["job_id"], on_progress=_print_epoch)
    print(pretty({k: done[k] for k in ("job_id", "state", "front_digest")}))
    return 0


def export(args: argparse.Namespace) -> int:
    home = ParticipantHome.load(args.home)
    with CaltrainClient(args.server, identity=home.identity, name=home.name) as client:
        front = client.export_frontnet(args.job)
        back = client.backnet(args.job)
        config = TrainConfig.from_dict(client.job(args.job)["config"])
    state = {**front, **back}  # the halves keep their block names, so together they are the model's state
    build_model(config.model).load_state_dict(state, strict=True)
    torch.save({"model": config.model, "state_dict": state}, args.out)
    print(f"model {config.model} of job {args.job} -> {args.out}")
    return 0
