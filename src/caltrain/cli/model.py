"""`caltrain model hash|show|check`: a model spec's canonical hash (what data-use policies approve), its blocks,
shapes and cuts, and whether it fits a data set; all before any job exists (docs/models.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models package imports torch: only when a command runs
    from caltrain.models import ModelSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="hash, show or check a model spec (a JSON file or a zoo name)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    spec_help = "a model spec JSON file, or a zoo model name (an unknown name lists them)"

    h = actions.add_parser("hash", help="print the spec's canonical hash")
    h.add_argument("spec", help=spec_help)
    h.set_defaults(func=run_hash)

    s = actions.add_parser("show", help="print name, hash, blocks with their output shapes and parameters")
    s.add_argument("spec", help=spec_help)
    s.add_argument("--json", action="store_true", help="print the normalised spec (defaults filled in) as JSON")
    s.set_defaults(func=run_show)

    c = actions.add_parser("check", help="validate a spec, and that it fits a data set and a cut")
    c.add_argument("spec", help=spec_help)
    c.add_argument("--data", help="a data set the model must take (as `caltrain assess --data`)")
    c.add_argument("--data-root", type=Path, help="folder of the data set's files (mnist, cifar10)")
    c.add_argument("--cut", type=int, help="frontnet_layers: the number of blocks in the enclave")
    c.set_defaults(func=run_check)


def spec_from_arg(ref: str) -> ModelSpec:
    """A zoo name, else a spec file."""
    from caltrain.models import ZOO, UnknownArchitecture, load_spec

    if ref in ZOO:
        return ZOO[ref]
    path = Path(ref)
    if not path.is_file():
        raise UnknownArchitecture(f"{ref!r} is neither a zoo model {sorted(ZOO)} nor a spec file")
    return load_spec(path)


def run_hash(args: argparse.Namespace) -> int:
    print(spec_from_arg(args.spec).hash)
    return 0


def run_show(args: argparse.Namespace) -> int:
    spec = spec_from_arg(args.spec)
    if args.json:
        print(json.dumps(spec.to_dict(), indent=2))
        return 0
    c, h, w = spec.input_shape
    print(f"model   {spec.name}")
    print(f"hash    {spec.hash}")
    print(f"input   {c}×{h}×{w}, {spec.num_classes} classes, {spec.parameters:,} parameters")
    print(f"{'cut m':>5}  {'after block':<14} {'type':<10} {'IR per input':<14} {'parameters':>10}")
    for m, (name, doc, shape, params) in enumerate(
        zip(spec.blocks, spec.to_dict()["blocks"], spec.block_shapes, spec.block_parameters, strict=True), start=1
    ):
        note = "  (full enclave)" if m == len(spec.blocks) else ""
        dims = "×".join(map(str, shape))
        print(f"{m:>5}  {name:<14} {doc['type']:<10} {dims:<14} {params:>10,}{note}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    spec = spec_from_arg(args.spec)
    if args.cut is not None:
        spec.cut_shape(args.cut)
    if args.data:
        from caltrain.data import load_dataset

        train, test = load_dataset(args.data, root=args.data_root)
        for part in (train, test):
            spec.check_data(part.sample_shape, int(part.y.max()) + 1 if len(part) else 0)
    fits = f"; takes {args.data}" if args.data else ""
    cut = f"; cut m={args.cut} sends {'×'.join(map(str, spec.cut_shape(args.cut)))} to the host" if args.cut else ""
    print(f"ok: {spec.name} {spec.hash}{fits}{cut}")
    return 0
