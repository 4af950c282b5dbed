"""canon.metrics: image quality, classification, segmentation and text metrics."""
from canon.metrics.classification import (ClassificationMetrics, accuracy, confusion_matrix,
                                          precision_recall_f1, precision_recall_f1_from_confusion,
                                          topk_accuracy)
from canon.metrics.detection import coco_box_iou, coco_evaluate, coco_keypoint_oks, voc_ap, voc_precision_recall
from canon.metrics.image import MS_SSIM_WEIGHTS, mae, ms_ssim, mse, psnr, rmse, ssim
from canon.metrics.segmentation import (SegmentationMetrics, dice_from_confusion, iou_from_confusion,
                                        segmentation_confusion_matrix)
from canon.metrics.text import (bleu, corpus_bleu, normalize_answer, rouge_l, squad_evaluate,
                                squad_exact_match, squad_f1)

__all__ = [
    # image quality
    "mse", "rmse", "mae", "psnr", "ssim", "ms_ssim", "MS_SSIM_WEIGHTS",
    # classification
    "accuracy", "topk_accuracy", "confusion_matrix", "precision_recall_f1",
    "precision_recall_f1_from_confusion", "ClassificationMetrics",
    # segmentation
    "segmentation_confusion_matrix", "iou_from_confusion", "dice_from_confusion", "SegmentationMetrics",
    # detection
    "coco_evaluate", "coco_box_iou", "coco_keypoint_oks", "voc_ap", "voc_precision_recall",
    # text
    "normalize_answer", "squad_exact_match", "squad_f1", "squad_evaluate", "corpus_bleu", "bleu", "rouge_l",
]

# generative models
from canon.metrics.generative import (bits_per_dimension, class_shares, feature_statistics,  # noqa: E402
                                      frechet_distance, frechet_distance_from_features, mode_coverage)

__all__ += ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "class_shares",
            "mode_coverage", "bits_per_dimension"]
