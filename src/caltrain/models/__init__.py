"""Models as data (specs over an allow-list of torch.nn layers), the zoo, and FrontNet/BackNet partitioning."""

from caltrain.models.layers import attach_generator
from caltrain.models.partition import Partition, PartitionError, candidate_cuts, partition
from caltrain.models.spec import (
    ModelSpec,
    ShapeMismatch,
    SpecError,
    UnknownArchitecture,
    UnknownLayer,
    block_seed,
    load_spec,
    loads_spec,
    parse_spec,
)
from caltrain.models.zoo import ZOO, build_model, resolve_model, spec_for_dataset

__all__ = [
    "ZOO",
    "ModelSpec",
    "Partition",
    "PartitionError",
    "ShapeMismatch",
    "SpecError",
    "UnknownArchitecture",
    "UnknownLayer",
    "attach_generator",
    "block_seed",
    "build_model",
    "candidate_cuts",
    "load_spec",
    "loads_spec",
    "parse_spec",
    "partition",
    "resolve_model",
    "spec_for_dataset",
]
