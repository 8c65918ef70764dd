"""`caltrain jobs list|show|follow|cancel`: the server's job queue, as a member sees it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="the server's training jobs: list, show, follow, cancel")
    inner = p.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")
    for name, what, func in (
        ("list", "every job, in queue order: id, state, progress, who asked", list_jobs),
        ("show", "one job in full (JSON): spec, progress, errors, signed result and statement", show),
        ("follow", "print a job's epochs as they finish, until it is done", follow),
        ("cancel", "cancel a queued job, or a running one at its next epoch end", cancel),
    ):
        q = inner.add_parser(name, help=what)
        q.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
        q.add_argument("--home", type=Path, required=True, help="a member's home (job routes need a member)")
        if name != "list":
            q.add_argument("job", help="the job's id")
        q.set_defaults(func=func)


def _client(args: argparse.Namespace) -> Any:
    from caltrain.service.client import CaltrainClient
    from caltrain.service.participant import MemberHome

    return CaltrainClient(args.server, home=MemberHome.load(args.home))


def list_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.jobs()
    print(f"{'job':<40} {'state':<10} {'epochs':>6}  requested by")
    for job in jobs:
        epochs = f"{len(job['progress'])}/{job['config'].get('epochs', '?')}"
        note = f"  ({job['phase']})" if job.get("phase") else ""
        print(f"{job['job_id']:<40} {job['state']:<10} {epochs:>6}  {job['requested_by']}{note}")
    return 0


def show(args: argparse.Namespace) -> int:
    from caltrain.service.client import pretty

    with _client(args) as client:
        print(pretty(client.job(args.job)))
    return 0


def follow(args: argparse.Namespace) -> int:
    from caltrain.cli.train import print_epoch
    from caltrain.service.client import pretty

    with _client(args) as client:
        done = client.wait_job(args.job, on_progress=print_epoch)
    print(pretty({k: done[k] for k in ("job_id", "state", "front_digest")}))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job)
    when = "now" if job["state"] == "cancelled" else "at its next epoch end"
    print(f"job {job['job_id']} cancelled {when} (state {job['state']})")
    return 0
