"""`caltrain deploy` and `caltrain infer`: serve a partitioned model; classify private inputs through it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from caltrain.cli.args import positive_int
from caltrain.errors import DataError, InferenceError

if TYPE_CHECKING:
    import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("deploy", help="deploy a model for inference (a trained job, or your own model file)")
    d.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8700")
    d.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    d.add_argument("--home", type=Path, required=True, help="the deploying member's home (signs the deployment)")
    d.add_argument("--model-id", required=True, help="the id clients will ask for")
    source = d.add_mutually_exclusive_group(required=True)
    source.add_argument("--job", help="a finished training job: its FrontNet never leaves the enclave")
    source.add_argument("--weights", type=Path, help="a caltrain model file (as `caltrain export` writes)")
    d.add_argument("--m", type=positive_int, help="with --weights: FrontNet = first m blocks")
    d.add_argument("--ternary", action="store_true", help="with --weights: last layer and softmax in the enclave")
    d.set_defaults(func=deploy)

    i = sub.add_parser("infer", help="classify inputs: encrypted to the attested enclave, answers encrypted back")
    i.add_argument("--server", required=True, help="server URL")
    i.add_argument("--policy", type=Path, required=True, help="attestation policy the enclave must satisfy")
    i.add_argument("--input", type=Path, required=True, help=".npz with x (N×H×W or N×C×H×W), or one image .npy")
    i.add_argument("--model", help="model id (default: the only deployed model)")
    i.add_argument("--top-k", type=positive_int, default=3, help="labels to answer per input")
    i.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight at once")
    i.set_defaults(func=infer)


def deploy(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.cli.model_file import ModelFile
    from caltrain.enclave.wire import to_json
    from caltrain.service.client import pretty
    from caltrain.service.inference_client import InferenceClient
    from caltrain.service.participant import MemberHome

    home = MemberHome.load(args.home)
    saved = None
    if args.weights:
        if args.m is None:
            raise InferenceError("--weights needs --m (where to cut)")
        saved = ModelFile.load(args.weights)
    policy = Policy.load(args.policy)
    with InferenceClient(args.server, policy, home=home) as client:
        if saved is None:
            info = client.deploy_job(args.model_id, args.job)
        else:
            info = client.deploy_external(args.model_id, saved.model, args.m, saved.state_dict, ternary=args.ternary)
    print(pretty(to_json(info)))
    return 0


def load_inputs(path: Path) -> np.ndarray:
    """Inputs as float32 N×C×H×W in [0, 1]: an .npz's `x`, or one image (.npy, H×W or C×H×W)."""
    import zipfile

    import numpy as np

    from caltrain.data.datasets import as_images

    try:
        if path.suffix == ".npy":
            one = np.load(path, allow_pickle=False)
            return as_images(one[None] if one.ndim == 2 else one[None, ...])
        with np.load(path, allow_pickle=False) as data:
            return as_images(data["x"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: expected an .npz with array 'x' or an image .npy ({exc})") from None


def infer(args: argparse.Namespace) -> int:
    from caltrain.attestation import Policy
    from caltrain.service.client import pretty
    from caltrain.service.inference_client import InferenceClient

    xs = load_inputs(args.input)
    policy = Policy.load(args.policy)
    with InferenceClient(args.server, policy) as client:
        model_id = args.model
        if model_id is None:
            ids = [str(m["model_id"]) for m in client.models()]
            if len(ids) != 1:
                raise InferenceError(f"pass --model: deployed models are {ids}")
            model_id = ids[0]
        predictions = client.classify_many(xs, model_id, top_k=args.top_k, concurrency=args.concurrency)
    for i, p in enumerate(predictions):
        ranked = ", ".join(f"{label}: {prob:.3f}" for label, prob in zip(p.labels, p.probabilities, strict=True))
        print(f"{i}: {ranked}")
    print(pretty({"model_id": model_id, "front_digest": predictions[0].front_digest if predictions else None,
                  "inputs": len(predictions)}))
    return 0
