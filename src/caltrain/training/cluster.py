"""Scale-out orchestration: worker processes under torch's elastic launcher, admitted by a job's first enclave.

`caltrain serve --workers N` starts N worker processes with `torchrun` (torch's elastic agent and its c10d
rendezvous; on several machines, one `torchrun` per machine joins the same rendezvous). Each worker runs its own
enclave and its BackNet replica, and joins the workers' process group (gloo on CPU, NCCL on GPUs). The server
(the host of the job's first enclave) talks to the workers through a control store it hosts (a torch.distributed
`TCPStore`): it posts commands, the workers answer, rank 0 reports progress. The server never joins the
collectives, so a worker that dies never takes the server with it.

When a worker dies the agent restarts all workers (a new *generation*, registered under a fresh token); the
attempt fails, and the server runs the job again from the newest checkpoint every worker holds. A worker whose
evidence the first enclave refuses fails the job, which says which rank and why.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from caltrain.enclave.host import EnclaveHost
from caltrain.enclave.manifest import EnclaveConfig
from caltrain.enclave.wire import (
    AcceptGrant,
    AdmitWorker,
    ClusterOpened,
    CollectHits,
    FanOutTrace,
    FinishCluster,
    JoinCluster,
    Joined,
    LinkageBuilt,
    MergeLinkage,
    Ok,
    OpenCluster,
    PeerEvidence,
    SealedReply,
    SealedRequest,
    ShardHits,
    ShardLinkage,
    ShardLinked,
    TracePlan,
    TraceShard,
    TrainResult,
    WorkerGrant,
    from_json,
    to_json,
)
from caltrain.errors import AttestationError, CaltrainError, TrainingError
from caltrain.training.config import TrainConfig
from caltrain.training.distributed import ShardTrainer
from caltrain.training.errors import WorkerFailed, WorkerNotAdmitted, WorkersRestarted
from caltrain.training.plain import EpochStats, Progress, TrainingReport

log = logging.getLogger("caltrain.cluster")

POLL_S = (0.001, 0.05)  # polling the control store: first interval, doubling up to the last
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
SIMULATED_PLATFORM_FILES = ("platform_key.pem", "sealing_secret")
EPOCH_FIELDS = ("epoch", "loss", "train_accuracy", "eval_accuracy", "seconds", "samples_per_s")


# --- the server side -------------------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    """Where the workers run and how they are launched."""

    state_dir: Path  # the server's state; workers keep theirs under state_dir / "workers"
    consortium: Path
    workers: int  # worker processes on this machine
    world_size: int = 0  # workers on every machine together (0: this machine's only)
    nnodes: int = 1
    rdzv_endpoint: str = ""  # torchrun's c10d rendezvous for several machines; empty: standalone on this one
    control_host: str = "127.0.0.1"
    control_port: int = 0  # 0: any free port
    backend: str = "simulated"
    device: str = "cpu"
    micro_batch: int = 0  # records per micro-batch; 0: the job's batch size divided by 8
    max_attempts: int = 3
    launcher: Sequence[str] = (sys.executable, "-m", "torch.distributed.run")

    @property
    def world(self) -> int:
        return self.world_size or self.workers

    def launch_command(self, control: str) -> list[str]:
        """The torchrun command that starts this machine's workers, reporting to the server's `control` store."""
        rdzv = ["--standalone"] if not self.rdzv_endpoint else [
            "--nnodes", str(self.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint]
        return [
            *self.launcher, *rdzv, "--nproc-per-node", str(self.workers), "--max-restarts", "1000",
            "--monitor-interval", "0.5", "-m", "caltrain.training.cluster", "--control", control,
            "--state", str(self.state_dir / "workers"), "--consortium", str(self.consortium), "--backend",
            self.backend, "--device", self.device, "--platform", str(self.state_dir / "platform"),
        ]


@dataclass
class ClusterRun:
    report: TrainingReport
    result: TrainResult
    linkage: LinkageBuilt
    backnet: bytes  # the final BackNet (torch state_dict), the hosts' anyway
    attempts: int
    timings: dict[str, float] = field(default_factory=dict)
    counters: list[dict[str, float]] = field(default_factory=list)  # per rank, the last attempt's (ShardTrainer)


class Cluster:
    """The server's view of its workers: launches them, relays between them and the first enclave."""

    def __init__(self, leader: EnclaveHost, config: ClusterConfig) -> None:
        self.leader, self.config = leader, config
        self.store = dist.TCPStore(config.control_host, config.control_port, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=30))
        self._agent: subprocess.Popen[bytes] | None = None
        self._next: dict[str, int] = {}
        self._attached: dict[str, set[str]] = {}  # generation -> jobs whose shards it holds
        self.jobs: dict[str, TrainConfig] = {}  # the jobs these workers trained, by id

    @property
    def control(self) -> str:
        return f"{self.config.control_host}:{self.store.port}"

    def launch_command(self) -> list[str]:
        """The torchrun command that starts this machine's workers."""
        return self.config.launch_command(self.control)

    def start(self) -> None:
        if self.config.workers:
            self._agent = subprocess.Popen(self.launch_command(), start_new_session=True, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Ask the workers to stop (their agent then exits); if they do not, the agent is asked to stop them
        (SIGTERM: it terminates its workers first), and killed last."""
        agent, self._agent = self._agent, None
        if agent is None or agent.poll() is not None:
            return
        signals: list[signal.Signals | None] = [signal.SIGTERM, signal.SIGKILL]
        if self.store.check(["generation"]):  # workers that registered can be asked
            self._post(json.loads(self.store.get("generation"))["token"], "stop", [{}] * self.config.world)
            signals.insert(0, None)
        for sig in signals:
            if sig is not None:
                os.killpg(agent.pid, sig)
            try:
                agent.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                continue

    def generation(self, *, after: str = "", timeout_s: float = 600.0) -> str:
        """The token of the current generation of workers (another than `after`), once all of them registered."""
        def registered() -> bool:
            if self._agent is not None and self._agent.poll() is not None:
                raise TrainingError(f"the worker launcher exited with code {self._agent.returncode}")
            if self.store.check(["boot-error"]):
                raise TrainingError(f"a worker cannot start: {self.store.get('boot-error').decode()}")
            return self.store.check(["generation"]) and json.loads(self.store.get("generation"))["token"] != after

        if not wait_for(registered, time.monotonic() + timeout_s):
            raise TrainingError(f"the workers did not all register within {timeout_s:.0f} s")
        gen = json.loads(self.store.get("generation"))
        if gen["world"] != self.config.world:
            raise TrainingError(f"{gen['world']} workers registered; the cluster is for {self.config.world}")
        return str(gen["token"])

    def workers(self, gen: str) -> list[dict[str, Any]]:
        """What each worker of generation `gen` registered (rank order): its pid and its enclave's."""
        return [json.loads(self.store.get(f"gen/{gen}/rank/{r}")) for r in range(self.config.world)]

    def _post(self, gen: str, kind: str, per_rank: list[dict[str, Any]]) -> int:
        index = self._next.get(gen, 0)
        self._next[gen] = index + 1
        self.store.set(f"gen/{gen}/cmd/{index}", json.dumps({"kind": kind, "ranks": per_rank}))
        return index

    def command(self, gen: str, kind: str, per_rank: list[dict[str, Any]],
                poll: Callable[[], None] | None = None) -> list[dict[str, Any]]:
        """Post one command to every worker of `gen` and collect their answers (rank order)."""
        index = self._post(gen, kind, per_rank)
        keys = [f"gen/{gen}/reply/{index}/{r}" for r in range(self.config.world)]
        replies: dict[int, dict[str, Any]] = {}

        def answered() -> bool:
            for r, key in enumerate(keys):
                if r not in replies and self.store.check([key]):
                    replies[r] = json.loads(self.store.get(key))
                    if "error" in replies[r]:
                        raise WorkerFailed(f"worker {r}: {replies[r]['error']}")
            if json.loads(self.store.get("generation"))["token"] != gen:
                raise WorkersRestarted(f"the workers restarted during {kind!r}", gen)
            if poll is not None:
                poll()
            return len(replies) == len(keys)

        wait_for(answered)
        return [replies[r] for r in range(len(keys))]

    def micro_batch(self, config: TrainConfig) -> int:
        return self.config.micro_batch or max(1, config.batch_size // 8)

    def _admit(self, gen: str, job_id: str, micro_batch: int) -> list[dict[str, Any]]:
        """Mutual attestation of every worker with the first enclave; the grants; what each worker joined."""
        world = self.config.world
        opened = self.leader.call(OpenCluster(job_id=job_id, world_size=world, micro_batch=micro_batch), ClusterOpened)
        containers = str(self.leader.state_dir / "enclave")
        evidence = self.command(gen, "join", [
            {"job_id": job_id, "world": world, "nonce": opened.nonces[r], "containers": containers}
            for r in range(world)
        ])
        grants = []
        for rank, doc in enumerate(evidence):
            e = from_json(PeerEvidence, doc)
            try:
                grant = self.leader.call(AdmitWorker(job_id=job_id, rank=rank, platform=e.platform, quote=e.quote,
                                                     supporting=e.supporting, keys=e.keys, nonce=e.nonce), WorkerGrant)
            except AttestationError as exc:
                raise WorkerNotAdmitted(f"worker {rank} refused: {type(exc).__name__}: {exc}") from None
            grants.append({"job_id": job_id, "grant": to_json(grant)})
        return self.command(gen, "accept", grants)

    def _progress_poller(
        self, job_id: str, epochs: list[dict[str, Any]], progress: Progress | None
    ) -> Callable[[], None]:
        def poll() -> None:
            key = f"progress/{job_id}"
            if self.store.check([key]):
                reported = json.loads(self.store.get(key))
                for stats in reported[len(epochs):]:
                    epochs.append(stats)
                    if progress:
                        progress(stats)
        return poll

    def train(self, job_id: str, config: TrainConfig, *, progress: Progress | None = None) -> ClusterRun:
        """Train an admitted job on the workers, resuming after worker failures; merge its sharded linkage log.

        A worker that fails during training exits (its peers may be waiting in a collective) and the agent
        restarts them all: the next attempt waits for that generation, re-admits it and resumes. A refusal
        before training (attestation, a grant) is no failure a restart mends: it ends the job."""
        micro = self.micro_batch(config)
        epochs: list[dict[str, Any]] = []
        last: WorkersRestarted | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            gen = self.generation(after=last.generation if last else "")
            try:
                started = time.perf_counter()
                joined = self._admit(gen, job_id, micro)
                resume = max(set.intersection(*(set(j["checkpoints"]) for j in joined)) or {0})
                admitted = time.perf_counter()
                poll = self._progress_poller(job_id, epochs, progress)
                try:
                    replies = self.command(gen, "train", [
                        {"job_id": job_id, "config": config.to_dict(), "micro_batch": micro, "resume_step": resume}
                    ] * self.config.world, poll=poll)
                except WorkerFailed as exc:
                    raise WorkersRestarted(f"{exc}; the workers restart", gen) from None
                poll()  # rank 0 reports its last epoch before it answers
            except WorkersRestarted as exc:
                log.warning("job %s attempt %d failed: %s; resuming from the newest common checkpoint", job_id,
                            attempt, exc)
                last = exc
                continue
            trained = time.perf_counter()
            backnet = base64.b64decode(replies[0]["backnet"])
            result = self.leader.call(FinishCluster(job_id=job_id, backnet=backnet,
                                                    sealed_front=base64.b64decode(replies[0]["sealed_front"])),
                                      TrainResult)
            self.jobs[job_id] = config
            linkage = self._link(gen, job_id)
            report = TrainingReport(config, [EpochStats(**{k: e[k] for k in EPOCH_FIELDS}) for e in epochs],
                                    result.front_digest)
            timings = {"admit_s": admitted - started, "train_s": trained - admitted,
                       "link_s": time.perf_counter() - trained}
            return ClusterRun(report, result, linkage, backnet, attempt, timings, [r["counters"] for r in replies])
        raise TrainingError(f"job {job_id} failed {self.config.max_attempts} times; last: {last}")

    def _link(self, gen: str, job_id: str) -> LinkageBuilt:
        shards = [r["shard"] for r in self.command(gen, "link", [{"job_id": job_id}] * self.config.world)]
        built = self.leader.call(MergeLinkage(job_id=job_id, shards=shards), LinkageBuilt)
        self._attached.setdefault(gen, set()).add(job_id)
        return built

    def holds(self, job_id: str) -> bool:
        """Whether `job_id` trained on these workers (its linkage log is sharded over them)."""
        return job_id in self.jobs

    def attach(self, job_id: str) -> str:
        """Make the current generation hold `job_id`'s shards (after a restart: rejoin, reload the final
        checkpoint, recommit the same blocks, which the first enclave checks against its signed root)."""
        gen, config = self.generation(), self.jobs[job_id]
        if job_id not in self._attached.get(gen, set()):
            joined = self._admit(gen, job_id, self.micro_batch(config))
            final = max(set.intersection(*(set(j["checkpoints"]) for j in joined)) or {0})
            self.command(gen, "train", [{"job_id": job_id, "config": config.to_dict(), "micro_batch":
                                         self.micro_batch(config), "resume_step": final}] * self.config.world)
            self._link(gen, job_id)
        return gen

    def trace(self, job_id: str, ciphertext: bytes) -> bytes:
        """An auditor's sealed `TraceQuery` of a sharded job: fan out to every worker, merge in the first enclave;
        returns the sealed answer (for the auditor only)."""
        gen = self.attach(job_id)
        plan = self.leader.call(FanOutTrace(ciphertext=ciphertext), TracePlan)
        payload = {"job_id": job_id, "plan": base64.b64encode(plan.plan).decode()}
        for reply in self.command(gen, "trace", [payload] * self.config.world):
            self.leader.call(CollectHits(job_id=job_id, hits=base64.b64decode(reply["hits"])), Ok)
        return self.leader.call(SealedRequest(ciphertext=ciphertext), SealedReply).ciphertext


# --- a worker process (torchrun's entry point) -----------------------------------------------------------


@dataclass
class Worker:
    """One worker process: its rank, its enclave, the control store, the process group."""

    rank: int
    world: int
    token: str
    enclave: EnclaveHost
    control: dist.TCPStore
    state: Path
    device: str

    def reply(self, index: int, answer: dict[str, Any]) -> None:
        self.control.set(f"gen/{self.token}/reply/{index}/{self.rank}", json.dumps(answer))

    def join(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Bring the job's containers (the participants' ciphertext) next to this enclave from the server's
        directory (on another machine: where shared storage mounts it), then attest."""
        target = self.state / "enclave"
        target.mkdir(parents=True, exist_ok=True)
        for source in Path(cmd["containers"]).glob("*.ctd"):
            if not (target / source.name).exists():
                try:
                    os.link(source, target / source.name)
                except OSError:
                    shutil.copyfile(source, target / source.name)
        reply = self.enclave.call(JoinCluster(job_id=cmd["job_id"], rank=self.rank, world_size=cmd["world"],
                                              leader_nonce=bytes.fromhex(cmd["nonce"])), PeerEvidence)
        return to_json(reply)

    def accept(self, cmd: dict[str, Any]) -> dict[str, Any]:
        grant = from_json(WorkerGrant, cmd["grant"])
        joined = self.enclave.call(AcceptGrant(job_id=cmd["job_id"], rank=self.rank, platform=grant.platform,
                                               quote=grant.quote, supporting=grant.supporting, keys=grant.keys,
                                               grant=grant.grant), Joined)
        return to_json(joined)

    def train(self, cmd: dict[str, Any]) -> dict[str, Any]:
        job_id, config = cmd["job_id"], TrainConfig.from_dict(cmd["config"])
        epochs: list[dict[str, Any]] = []

        def progress(stats: dict[str, Any]) -> None:
            epochs.append(stats)
            self.control.set(f"progress/{job_id}", json.dumps(epochs))

        trainer = ShardTrainer(self.enclave, config, job_id=job_id, rank=self.rank, world=self.world,
                               micro_batch=int(cmd["micro_batch"]), workdir=self.state / "jobs" / job_id,
                               device=self.device, progress=progress if self.rank == 0 else None)
        try:
            _, result = trainer.run_shard(resume_step=int(cmd["resume_step"]),
                                          on_step=lambda step: self.control.set(f"step/{job_id}", str(step)))
        finally:
            trainer.close()
        return {"steps": result.steps, "front_digest": result.front_digest,
                "sealed_front": base64.b64encode(result.sealed_front).decode(),
                "backnet": base64.b64encode(trainer.backnet_bytes()).decode(), "counters": trainer.counters}

    def link(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"shard": self.enclave.call(ShardLinkage(job_id=cmd["job_id"]), ShardLinked).shard}

    def trace(self, cmd: dict[str, Any]) -> dict[str, Any]:
        hits = self.enclave.call(TraceShard(job_id=cmd["job_id"], plan=base64.b64decode(cmd["plan"])), ShardHits)
        return {"hits": base64.b64encode(hits.hits).decode()}

    def serve(self) -> None:
        """Answer the server's commands in order; a failed training step ends this process (its peers may wait in
        a collective), so that the agent restarts every worker and the job resumes."""
        handlers = {"join": self.join, "accept": self.accept, "train": self.train, "link": self.link,
                    "trace": self.trace}
        index = 0
        while True:
            key = f"gen/{self.token}/cmd/{index}"
            wait_for(partial(self.control.check, [key]))
            cmd = json.loads(self.control.get(key))
            kind, payload = cmd["kind"], cmd["ranks"][self.rank]
            if kind == "stop":
                return
            try:
                self.reply(index, handlers[kind](payload))
            except Exception as exc:  # reported to the server, typed when it is one of ours
                self.reply(index, {"error": f"{type(exc).__name__}: {exc}"})
                if kind == "train" or not isinstance(exc, CaltrainError):
                    raise
            index += 1


def wait_for(ready: Callable[[], bool], deadline: float = float("inf")) -> bool:
    """Poll `ready` (a control-store lookup) until it holds, 1 ms apart at first, backing off to 50 ms; False at
    `deadline` (time.monotonic)."""
    interval = POLL_S[0]
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(2 * interval, POLL_S[1])
    return True


def _process_group(device: str) -> None:
    """Join the workers' process group through torchrun's rendezvous store, under a prefix per restart (the
    agent's store outlives a restart; stale addresses of the previous generation must not be read)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=COLLECTIVE_TIMEOUT)
    prefix = f"caltrain/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", store=dist.PrefixStore(prefix, store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=COLLECTIVE_TIMEOUT)


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caltrain-worker", description="a caltrain worker (started by torchrun)")
    parser.add_argument("--control", required=True, help="HOST:PORT of the server's control store")
    parser.add_argument("--state", type=Path, required=True, help="workers' state directory on this machine")
    parser.add_argument("--consortium", type=Path, required=True)
    parser.add_argument("--backend", default="simulated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--platform", type=Path, help="simulated backend: the platform directory to run on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    _process_group(args.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    state = args.state / f"local-{os.environ.get('LOCAL_RANK', rank)}"
    if args.backend == "simulated" and args.platform:  # one simulated platform root for the whole deployment
        (state / "platform").mkdir(parents=True, exist_ok=True)
        for name in SIMULATED_PLATFORM_FILES:
            if not (state / "platform" / name).exists():
                shutil.copyfile(args.platform / name, state / "platform" / name)
    host, _, port = args.control.rpartition(":")
    control = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=60))
    enclave = EnclaveHost(state_dir=state, config=EnclaveConfig.from_consortium_file(args.consortium),
                          backend=args.backend)
    try:
        enclave.start()
    except CaltrainError as exc:  # e.g. sealed state of other code: the server says why instead of waiting
        control.set("boot-error", f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    token = [secrets.token_hex(8) if rank == 0 else ""]
    dist.broadcast_object_list(token, src=0)
    control.set(f"gen/{token[0]}/rank/{rank}", json.dumps({"pid": os.getpid(), "enclave_pid": enclave.pid}))
    dist.barrier()
    if rank == 0:
        control.set("generation", json.dumps({"token": token[0], "world": world}))
    worker = Worker(rank, world, token[0], enclave, control, state, args.device)
    try:
        worker.serve()
    finally:
        enclave.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
