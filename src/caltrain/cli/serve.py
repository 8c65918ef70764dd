"""`caltrain serve`: the host side of the enclave, over HTTP."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
from pathlib import Path

from caltrain.errors import CaltrainError

BACKENDS = ("simulated", "sgx-dcap", "tdx", "sev-snp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the enclave and serve its HTTP API")
    p.add_argument("--state", type=Path, required=True, help="state directory (sealed enclave state, containers)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8700, help="port to listen on")
    p.add_argument("--backend", default="simulated", choices=BACKENDS, help="TEE backend")
    p.add_argument("--consortium", type=Path, required=True, help="consortium file (members, roles, keys)")
    p.add_argument("--device", default="cpu", help="where the BackNet trains: cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for the host's BackNet (default 1: the enclave holds the other core, and a plain run "
        "reproduces the protected one bit for bit only at the same thread count)",
    )
    p.add_argument("--max-batch", type=int, default=64, help="inference: most requests per batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="inference: wait after a first request")
    p.add_argument(
        "--launcher",
        help="command that starts the enclave in its TEE, e.g. 'gramine-sgx caltrain-enclave' (its manifest fixes "
        "the enclave's argv and makes it connect back to --enclave-port); default: a local simulated process",
    )
    p.add_argument("--enclave-port", type=int, default=7801, help="loopback port the launched enclave connects to")
    scale = p.add_argument_group("scale-out (docs/scale.md)")
    scale.add_argument("--workers", type=int, default=0, help="train every job data-parallel on N worker enclaves "
                       "started here by torchrun, each attested by this enclave (default 0: in this enclave alone)")
    scale.add_argument("--world-size", type=int, default=0,
                       help="workers on every machine together, when other machines' workers join (default: --workers)")
    scale.add_argument("--nnodes", type=int, default=1, help="machines running workers (torchrun --nnodes)")
    scale.add_argument("--rdzv-endpoint", default="", help="HOST:PORT of torchrun's c10d rendezvous the workers of "
                       "every machine join (default: a standalone one on this machine)")
    scale.add_argument("--control-host", default="127.0.0.1", help="address workers reach this server's control at")
    scale.add_argument("--control-port", type=int, default=0, help="port of the control store (default: any free)")
    scale.add_argument("--micro-batch", type=int, default=0,
                       help="records per gradient piece (default: batch size / 8); a job resumes only with the same")
    scale.add_argument("--join", metavar="HOST:PORT", help="run only this machine's --workers for the server whose "
                       "control store is at HOST:PORT (with --nnodes and --rdzv-endpoint); no HTTP, no enclave")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from caltrain.enclave.allocator import keep_freed_memory
    from caltrain.enclave.consortium import Consortium
    from caltrain.enclave.host import EnclaveHost
    from caltrain.enclave.manifest import EnclaveConfig
    from caltrain.inference.serving import BatchingConfig
    from caltrain.service.app import create_app
    from caltrain.training.cluster import ClusterConfig

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    consortium = Consortium.load(args.consortium)
    workers = None
    if args.workers or args.world_size:
        workers = ClusterConfig(
            state_dir=args.state, consortium=args.consortium, workers=args.workers, world_size=args.world_size,
            nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint, control_host=args.control_host,
            control_port=args.control_port, backend=args.backend, device=args.device, micro_batch=args.micro_batch,
        )
    if args.join:  # another machine's workers: torchrun joins the rendezvous, the workers report to the server
        if workers is None or not args.workers:
            raise CaltrainError("--join needs --workers: how many worker processes run on this machine")
        return subprocess.run(workers.launch_command(args.join), check=False).returncode
    enclave = EnclaveHost(
        state_dir=args.state,
        config=EnclaveConfig(consortium),
        backend=args.backend,
        launcher=shlex.split(args.launcher) if args.launcher else (),
        listen_port=args.enclave_port,
    )
    enclave.start()  # a misconfiguration fails here, in one line; later deaths are supervised
    app = create_app(
        state_dir=args.state,
        consortium=consortium,
        enclave=enclave,
        backend=args.backend,
        device=args.device,
        batching=BatchingConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms),
        workers=workers,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        enclave.stop()
    return 0
