"""canon.data: classification datasets, tensor transforms and the class-imbalance toolkit.

    from canon.data import build_dataset, transforms as T
    ds = build_dataset("mnist", split="train")          # ds.info, ds.targets, ds[i] -> (image, label)
    train = TransformedDataset(ds, T.default_transforms(ds.info, (28, 28), train=True))
"""
from canon.data import transforms
from canon.data.build import build_dataset, list_datasets
from canon.data.core import DataError, DatasetInfo, SubsetDataset, TransformedDataset, load_image, stratified_subset
from canon.data.imbalance import balanced_sampler, class_counts, class_weights

__all__ = ["build_dataset", "list_datasets", "DataError", "DatasetInfo", "TransformedDataset",
           "SubsetDataset", "stratified_subset", "load_image", "transforms", "class_weights", "class_counts", "balanced_sampler"]
