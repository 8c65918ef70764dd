"""Split a model into FrontNet (first m blocks, inside the enclave) and BackNet (the rest, on the host).

The two halves share parameters with the model they came from, so training them is training the model.
`nn.Sequential` models are sliced; any other model is traced with torch.fx and split where exactly one
value crosses the cut (a cut inside a residual block would need two, the block input and the branch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from caltrain.errors import ModelError


class PartitionError(ModelError):
    """The requested cut cannot be made (out of range, or inside a block whose values cross the cut)."""


@dataclass(frozen=True)
class Partition:
    front: nn.Module
    back: nn.Module
    m: int
    cut_after: str

    @property
    def full_enclave(self) -> bool:
        """FrontNet is the whole model: labels, logits and predictions stay inside the enclave."""
        return isinstance(self.back, nn.Sequential) and len(self.back) == 0


@dataclass(frozen=True)
class _Traced:
    """A traced model with each graph node assigned to the top-level block that produced it."""

    graph_module: fx.GraphModule
    nodes: list[fx.Node]  # compute nodes in execution order (no placeholders, get_attr or output)
    blocks: list[str]  # top-level block of each node: a child module's name, or the node's own name

    def live_after(self, i: int) -> list[fx.Node]:
        """Values computed by nodes[..i] (or graph inputs) still needed after nodes[i]."""
        later = set(self.nodes[i + 1 :]) | {n for n in self.graph_module.graph.nodes if n.op == "output"}
        early = [n for n in self.graph_module.graph.nodes if n.op == "placeholder"] + self.nodes[: i + 1]
        return [n for n in early if any(user in later for user in n.users)]

    def cut_indices(self) -> list[int]:
        """Last node of each top-level block where exactly one value crosses."""
        ends = [i for i in range(len(self.nodes)) if i + 1 == len(self.nodes) or self.blocks[i + 1] != self.blocks[i]]
        return [i for i in ends if len(self.live_after(i)) == 1]


def _trace(model: nn.Module) -> _Traced:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise PartitionError(f"cannot partition {type(model).__name__}: torch.fx cannot trace it ({exc})") from None
    nodes = [n for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    blocks = [next(iter(n.meta.get("nn_module_stack") or {n.name: None})) for n in nodes]
    return _Traced(gm, nodes, blocks)


def candidate_cuts(model: nn.Module) -> list[str]:
    """Names of the blocks after which the model can be cut (cut m = after the m-th name)."""
    if isinstance(model, nn.Sequential):
        return [name for name, _ in model.named_children()]
    traced = _trace(model)
    return [traced.blocks[i] for i in traced.cut_indices()]


def partition(model: nn.Module, m: int | str) -> Partition:
    """FrontNet = the first `m` candidate blocks (1 ≤ m ≤ number of cuts; m = all is full-enclave mode).

    `m` may also name a block or any submodule (e.g. "block1.conv1"): the cut is then after its last use,
    and it fails with `PartitionError` when more than one value would cross it.
    """
    cuts = candidate_cuts(model)
    if isinstance(m, int):
        if not 1 <= m <= len(cuts):
            raise PartitionError(f"cut m={m} out of range: this model has {len(cuts)} cuts {cuts} (m ≥ 1)")
        name = cuts[m - 1]
    else:
        name = m
    if isinstance(model, nn.Sequential) and name in cuts:
        k = cuts.index(name) + 1
        return Partition(front=model[:k], back=model[k:], m=k, cut_after=name)
    traced = _trace(model)
    owned = [i for i, n in enumerate(traced.nodes) if name in (n.meta.get("nn_module_stack") or {}) or n.name == name]
    if not owned:
        raise PartitionError(f"no block or submodule named {name!r}; the model can be cut after {cuts}")
    i = owned[-1]
    live = traced.live_after(i)
    if len(live) != 1:
        crossing = ", ".join(n.name for n in live)
        raise PartitionError(
            f"cannot cut after {name!r}: it lies inside block {traced.blocks[i]!r} and {len(live)} values "
            f"({crossing}) would cross the cut (a residual or branching block); cut after one of {cuts}"
        )
    k = sum(1 for j in traced.cut_indices() if j <= i)  # candidate cuts at or before this one
    if i == len(traced.nodes) - 1:
        return Partition(front=traced.graph_module, back=nn.Sequential(), m=k, cut_after=name)
    return Partition(*_split_graph(traced, i, live[0]), m=k, cut_after=name)


def _split_graph(traced: _Traced, i: int, crossing: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Front: inputs → `crossing`; back: `crossing` → outputs. Both reference the original submodules."""
    gm = traced.graph_module
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    attrs = [n for n in gm.graph.nodes if n.op == "get_attr"]
    output = next(n for n in gm.graph.nodes if n.op == "output")

    front = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs + attrs + traced.nodes[: i + 1]:
        env[node] = front.node_copy(node, lambda n: env[n])
    front.output(env[crossing])

    back = fx.Graph()
    env = {crossing: back.placeholder(crossing.name)}
    for node in attrs + traced.nodes[i + 1 :]:
        env[node] = back.node_copy(node, lambda n: env[n])
    back.output(fx.map_arg(output.args[0], lambda n: env[n]))
    return fx.GraphModule(gm, front), fx.GraphModule(gm, back)
