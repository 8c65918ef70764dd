"""Step time of partitioned training (FrontNet in the enclave process) against plain training, in one run.

Default: the 28x28 CNN (fmnist-cnn), FrontNet = first conv block, batch 128, one thread per process
(MACHINE-NOTES.md). `--model` takes any zoo name or spec file, e.g. the 3-channel `cifar-resnet`. Plain and
partitioned steps are timed in alternating rounds so machine noise hits both alike; the ratio is of the
medians. Data: Fashion-MNIST for 1x28x28 models when installed, the generated colour-digits for 3x32x32 ones,
else random images of the model's input shape (step time does not depend on pixel values). Last line: JSON
with "step_time_ratio" and the per-step boundary cost in ms.

    python benchmarks/training_overhead.py [--rounds 6] [--steps 8] [--model cifar-resnet --frontnet-layers 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tests.helpers import create_job, ingest, make_people, open_policy, pack  # noqa: E402

from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset  # noqa: E402
from caltrain.enclave.allocator import keep_freed_memory  # noqa: E402
from caltrain.enclave.consent import ApprovedModel  # noqa: E402
from caltrain.enclave.consortium import DatasetSchema  # noqa: E402
from caltrain.enclave.host import EnclaveHost  # noqa: E402
from caltrain.enclave.manifest import EnclaveConfig  # noqa: E402
from caltrain.enclave.wire import DatasetList, ListDatasets  # noqa: E402
from caltrain.models import ModelSpec, load_spec, resolve_model  # noqa: E402
from caltrain.training.config import TrainConfig  # noqa: E402
from caltrain.training.core import (  # noqa: E402
    build_split,
    dropout_seed,
    loss_fn,
    make_optimizer,
    seed_dropout,
    steps_per_epoch,
    training_batch,
)
from caltrain.training.partitioned import PartitionedTrainer  # noqa: E402


def data(spec: ModelSpec, records: int) -> tuple[ArrayDataset, str]:
    """Real data of the model's input shape where there is some here, else random images of that shape."""
    name = {(1, 28, 28): "fashion-mnist", (3, 32, 32): "colour-digits"}.get(spec.input_shape)
    try:
        if name is not None:
            train, _ = load_dataset(name)
            return train.subset(np.arange(min(records, len(train)))), name
    except DatasetUnavailable:
        pass
    rng = np.random.default_rng(0)
    x = rng.random((records, *spec.input_shape), dtype=np.float32)
    source = "random-" + "x".join(map(str, spec.input_shape))
    labels = rng.integers(0, spec.num_classes, records).astype(np.int64)
    return ArrayDataset(x, labels, source, spec.num_classes), source


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc), for the enclave's share of a step."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="steps per round and trainer")
    parser.add_argument("--model", default="fmnist-cnn", help="zoo name or spec .json file")
    parser.add_argument("--frontnet-layers", type=int, default=1, help="blocks in the enclave")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # same allocator settings as the enclave process, so the baseline is not handicapped
    total = args.rounds * args.steps
    spec = load_spec(Path(args.model)) if args.model.endswith(".json") else resolve_model(args.model)
    dataset, source = data(spec, 128 * (total + 2))
    epochs = math.ceil((total + 2) / steps_per_epoch(len(dataset), 128))  # a small data set: several epochs
    config = TrainConfig(
        model=spec.to_dict(), frontnet_layers=args.frontnet_layers, batch_size=128, epochs=epochs, augment=True
    )
    people = make_people()
    consortium = people.consortium.with_schema(DatasetSchema(spec.input_shape, spec.num_classes))
    with (
        tempfile.TemporaryDirectory() as tmp,
        EnclaveHost(state_dir=Path(tmp) / "state", config=EnclaveConfig(consortium)) as host,
    ):
        consent = open_policy(models=[ApprovedModel(name=spec.name, architecture=spec.hash)])
        ingest(host, pack(dataset, people.alice, "bench", chunk_bytes=1 << 20), people.alice, consent)
        # Admission (the owner's signed job, checked against the data-use policy) happens once per job, here.
        created = create_job(host, people.owner, config.model_copy(update={"datasets": ["alice/bench"]}))
        config = TrainConfig.from_dict(created.spec)
        trainer = PartitionedTrainer(host, config, job_id=created.job_id, workdir=Path(tmp) / "w")
        trainer.start()
        config = config.model_copy(update={"seed": 0})  # the plain twin's own seed: step time does not depend on it
        model, part = build_split(config)
        optimizer = make_optimizer(list(model.parameters()), config)
        x, y = torch.from_numpy(dataset.x), torch.from_numpy(dataset.y)

        def plain_step(step: int) -> None:
            xb, yb = training_batch(x, y, config, step)
            seed_dropout(part.front, dropout_seed(config, "front"), step)  # dropout streams as across the cut
            seed_dropout(part.back, dropout_seed(config, "back"), step)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        plain_times, part_times, call_times, cpu_ratios = [], [], [], []
        plain_step(0)  # warm-up outside the measurement (allocator, kernels)
        step = 0
        assert host.pid is not None
        for r in range(args.rounds):
            plain_cpu = part_cpu = 0.0
            for _ in range(args.steps):
                t, c = time.perf_counter(), time.process_time()
                plain_step(step + 1)
                plain_times.append(time.perf_counter() - t)
                plain_cpu += time.process_time() - c
                t, c, e = time.perf_counter(), time.process_time(), process_cpu(host.pid)
                trainer.step(step, forward_next=True)
                part_times.append(time.perf_counter() - t)
                part_cpu += time.process_time() - c + process_cpu(host.pid) - e
                step += 1
                t = time.perf_counter()
                host.call(ListDatasets(), DatasetList)
                call_times.append(time.perf_counter() - t)
            cpu_ratios.append(part_cpu / plain_cpu)
            print(
                f"round {r + 1}: plain {statistics.median(plain_times[-args.steps :]) * 1e3:.1f} ms/step, "
                f"partitioned {statistics.median(part_times[-args.steps :]) * 1e3:.1f} ms/step, "
                f"CPU time ratio {cpu_ratios[-1]:.3f}",
                flush=True,
            )
        trainer.close()
    plain_ms, part_ms = statistics.median(plain_times) * 1e3, statistics.median(part_times) * 1e3
    result = {
        "benchmark": "training_overhead",
        "data": source,
        "model": spec.name,
        "model_hash": spec.hash,
        "frontnet_layers": config.frontnet_layers,
        "batch_size": config.batch_size,
        "steps_each": len(plain_times),
        "plain_step_ms_median": round(plain_ms, 2),
        "partitioned_step_ms_median": round(part_ms, 2),
        "step_time_ratio": round(part_ms / plain_ms, 4),
        "boundary_ms_per_step": round(part_ms - plain_ms, 2),
        # CPU seconds (host + enclave process) per step over plain: what contention on a shared machine distorts
        # least; wall-clock ratios add the wait for a free core at every hand-off between the two processes.
        "cpu_time_ratio": round(statistics.median(cpu_ratios), 4),
        "empty_call_roundtrip_ms_median": round(statistics.median(call_times) * 1e3, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
