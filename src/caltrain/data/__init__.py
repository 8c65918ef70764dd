"""Datasets (all offline: bundled digits, local IDX/CIFAR/ImageFolder/.npz) and participant packaging."""

from caltrain.data.datasets import ArrayDataset, DatasetUnavailable, load_dataset, split_among

__all__ = ["ArrayDataset", "DatasetUnavailable", "load_dataset", "split_among"]
