"""`caltrain serve`: the host side of the enclave, over HTTP."""

from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

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

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    consortium = Consortium.load(args.consortium)
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
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        enclave.stop()
    return 0
