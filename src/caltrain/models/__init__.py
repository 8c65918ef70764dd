"""Model zoo and partitioning of `nn.Module`s into FrontNet (enclave) and BackNet (host)."""

from caltrain.models.partition import Partition, PartitionError, candidate_cuts, partition
from caltrain.models.zoo import ZOO, ModelSpec, build_model, spec_for_dataset

__all__ = [
    "ZOO",
    "ModelSpec",
    "Partition",
    "PartitionError",
    "build_model",
    "candidate_cuts",
    "partition",
    "spec_for_dataset",
]
