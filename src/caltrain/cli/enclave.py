"""`caltrain enclave gramine-manifest`: the Gramine manifest that runs this package's enclave under SGX.

It fills in the paths of this Python installation (interpreter, standard library, site-packages, caltrain's
source) so that exactly they are measured; Gramine's own paths stay as `{{ ... }}` for `gramine-manifest`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import sysconfig
from importlib.resources import files
from pathlib import Path

import caltrain
from caltrain.errors import EnclaveError

TEMPLATE = "caltrain-enclave.manifest.template"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enclave", help="run the enclave on real TEEs")
    inner = p.add_subparsers(dest="enclave_command", required=True, metavar="SUBCOMMAND")
    g = inner.add_parser("gramine-manifest", help="render the Gramine-SGX manifest template for this install")
    g.add_argument("--state-dir", type=Path, default=Path("/var/lib/caltrain/sealed"), help="sealed state directory")
    g.add_argument("--enclave-size", default="16G", help="SGX enclave size (power of two, e.g. 8G, 16G)")
    g.add_argument("--max-threads", type=int, default=32, help="most threads the enclave may run")
    g.add_argument("--isv-prod-id", type=int, default=0, help="ISV product id (16 bits)")
    g.add_argument("--isv-svn", type=int, default=0, help="raise on every security fix; policies pin a minimum")
    g.add_argument("--consortium", type=Path, required=True, help="consortium file, measured as a trusted file")
    g.add_argument("--port", type=int, default=7801, help="loopback port `caltrain serve --enclave-port` listens on")
    g.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    g.set_defaults(func=run)


def render(
    *,
    state_dir: Path,
    consortium: Path,
    enclave_size: str,
    max_threads: int,
    port: int = 7801,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[KMG]", enclave_size):
        raise EnclaveError(f"enclave size {enclave_size!r} must look like 16G")
    if not (0 <= isv_prod_id < 1 << 16 and 0 <= isv_svn < 1 << 16):
        raise EnclaveError("ISV product id and SVN are 16-bit values")
    if not state_dir.is_absolute():
        raise EnclaveError(f"the sealed state directory must be absolute, got {state_dir}")
    values = {
        "PYTHON": os.path.realpath(sys.executable),
        "PYTHON_PREFIX": sysconfig.get_paths()["stdlib"],
        "SITE_PACKAGES": sysconfig.get_paths()["purelib"],
        "CALTRAIN_SRC": str(Path(caltrain.__file__).resolve().parent),
        "STATE_DIR": str(state_dir),
        "CONSORTIUM": str(consortium.resolve()),
        "PORT": str(port),
        "ENCLAVE_SIZE": enclave_size,
        "MAX_THREADS": str(max_threads),
        "THREADS": str(max(1, max_threads - 4)),  # leave threads for Gramine's helpers and the channel
        "ISV_PROD_ID": str(isv_prod_id),
        "ISV_SVN": str(isv_svn),
    }
    text = files("caltrain.attestation").joinpath("gramine", TEMPLATE).read_text()
    rendered = re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)
    return rendered


def run(args: argparse.Namespace) -> int:
    text = render(
        state_dir=args.state_dir,
        consortium=args.consortium,
        port=args.port,
        enclave_size=args.enclave_size,
        max_threads=args.max_threads,
        isv_prod_id=args.isv_prod_id,
        isv_svn=args.isv_svn,
    )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
