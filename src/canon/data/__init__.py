"""canon.data: datasets (one file per format), tensor transforms and the class-imbalance toolkit.

    from canon.data import build_dataset, transforms as T
    ds = build_dataset("mnist", split="train")          # ds.info, ds.targets, ds[i] -> (image, label)
    train = TransformedDataset(ds, T.default_transforms(ds.info, (28, 28), train=True))

Images (classification, segmentation, detection) come from :func:`build_dataset`; parallel text
from :mod:`canon.data.translation`, SQuAD from :mod:`canon.data.squad`.
"""
from canon.data import transforms
from canon.data.build import build_dataset, list_datasets
from canon.data.core import DataError, DatasetInfo, SubsetDataset, TransformedDataset, load_image, stratified_subset
from canon.data.imbalance import balanced_sampler, class_counts, class_weights

__all__ = ["build_dataset", "list_datasets", "DataError", "DatasetInfo", "TransformedDataset",
           "SubsetDataset", "stratified_subset", "load_image", "transforms", "class_weights", "class_counts",
           "balanced_sampler"]

# detection (VOC, VOC XML folders, COCO)
from canon.data.detection import AnnotationWarning, DetectionDataset, DetectionInfo  # noqa: E402

__all__ += ["DetectionDataset", "DetectionInfo", "AnnotationWarning"]

# translation (Multi30k and any parallel text)
from canon.data.translation import (SubwordVocabulary, TranslationDataset, collate_translation,  # noqa: E402
                                    read_multi30k, read_parallel_text)

__all__ += ["read_parallel_text", "read_multi30k", "SubwordVocabulary", "TranslationDataset", "collate_translation"]
