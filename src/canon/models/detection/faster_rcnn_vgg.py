"""Faster R-CNN as in the paper: VGG-16 conv5_3, an RPN of 9 anchors at stride 16, RoI pooling, fc6/fc7.

Paper: Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, Ren, He,
Girshick, Sun, 2015, arXiv:1506.01497.

Follows the paper:
    * One VGG-16 body (conv5_3 + ReLU, stride 16, 512 channels) shared by the RPN and the
      Fast R-CNN detector (Sec. 3, Fig. 2).
    * The RPN (Sec. 3.1): a 3 x 3 convolution of 512 channels with ReLU slides over conv5_3;
      two sibling 1 x 1 convolutions give per position k = 9 anchors' scores and 4k box deltas;
      the anchors are 128², 256², 512² at aspect ratios 1:1, 1:2, 2:1, centred on each stride-16
      position (canon.ops.AnchorGenerator).
    * RPN training (Sec. 3.1.2): positives are anchors with IoU > 0.7 with a ground truth and, per
      ground truth, the anchors of highest IoU; negatives below 0.3; 256 anchors sampled per image
      with up to half positive.
    * Proposals (Sec. 3.3): NMS at IoU 0.7; 2,000 proposals per image in training, 300 at test
      (from the top 12,000 / 6,000 anchors by score, the released code's numbers).
    * The detector is Fast R-CNN's (fast_rcnn.py): 7 x 7 RoI max pooling, fc6 and fc7 (4096,
      dropout), class scores and class-specific box deltas; its RoIs are the proposals plus the
      ground truths, 128 per image with 25 % foreground; shorter side 600 (at most 1000); per-class
      NMS at 0.3 at test.
    * Training is end to end (the paper's "approximate joint training", Sec. 3.2): the sum of the
      RPN's and the detector's losses.

Deviates, and why (canon's RPN and RoI heads, which follow torchvision):
    * Objectness is one sigmoid logit per anchor (binary cross-entropy), not a two-way softmax;
      both RPN and detector box losses use smooth L1 with β = 1/9 and background RoIs are all
      proposals below IoU 0.5 (torchvision's RoIHeads); the RPN's proposal filtering is
      torchvision's (see rpn.py). The detector's regression targets are scaled by (10, 10, 5, 5).
    * No ImageNet initialisation: VGG's initialisation, every layer trains.

Contract: as every canon detector, ``model(images, targets=None)``; in training {"loss_objectness",
"loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}; in eval per image {"boxes", "labels", "scores"}.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from canon.models.detection.fast_rcnn import FullyConnectedBoxHead, RoIPool, vgg16_conv5_backbone
from canon.models.detection.faster_rcnn import FasterRCNN
from canon.models.detection.roi_heads import FastRCNNPredictor
from canon.models.detection.rpn import RPNHead
from canon.ops import AnchorGenerator
from canon.registry import register_model

__all__ = ["FasterRCNNVGG16", "paper_anchor_generator", "faster_rcnn_vgg16"]

PAPER = "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, 2015, arXiv:1506.01497"


def paper_anchor_generator(sizes: Sequence[int] = (128, 256, 512),
                           aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> AnchorGenerator:
    """k = 9 anchors per position of one feature map: 3 scales x 3 aspect ratios (Sec. 3.1.1)."""
    return AnchorGenerator(sizes=(tuple(sizes),), aspect_ratios=(tuple(aspect_ratios),))


class FasterRCNNVGG16(FasterRCNN):
    """FasterRCNN with the paper's parts: VGG-16 conv5_3, 9 anchors at stride 16, RoI pooling, fc6/fc7.

    Every keyword of :class:`FasterRCNN` may be given; the defaults below are the paper's.
    """

    def __init__(self, *, num_classes: int = 21, representation_size: int = 4096, dropout: float = 0.5,
                 min_size: int | Sequence[int] = 600, max_size: int = 1000,
                 rpn_pre_nms_top_n_train: int = 12000, rpn_pre_nms_top_n_test: int = 6000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 300,
                 box_batch_size_per_image: int = 128, box_nms_threshold: float = 0.3, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (it includes the background), got {num_classes!r}")
        backbone = kwargs.pop("backbone", None) or vgg16_conv5_backbone()  # (N, 512, H/16, W/16)
        anchors = kwargs.pop("rpn_anchor_generator", None) or paper_anchor_generator()
        pool = kwargs.pop("box_roi_pool", None) or RoIPool(7, 1.0 / backbone.stride)
        head = kwargs.pop("box_head", None) or FullyConnectedBoxHead(
            backbone.out_channels * pool.output_size[0] * pool.output_size[1], representation_size, dropout)
        predictor = kwargs.pop("box_predictor", None)
        if predictor is None:  # zero-mean Gaussians of std 0.01 and 0.001 (Fast R-CNN, Sec. 2.3)
            predictor = FastRCNNPredictor(representation_size, num_classes)
            for layer, std in ((predictor.cls_score, 0.01), (predictor.bbox_pred, 0.001)):
                nn.init.normal_(layer.weight, 0.0, std)
                nn.init.zeros_(layer.bias)
        rpn_head = kwargs.pop("rpn_head", None) or RPNHead(backbone.out_channels,
                                                           anchors.num_anchors_per_location()[0])
        super().__init__(num_classes=num_classes, backbone=backbone, rpn_anchor_generator=anchors, rpn_head=rpn_head,
                         box_roi_pool=pool, box_head=head, box_predictor=predictor, box_feature_names=("0",),
                         min_size=min_size, max_size=max_size, rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
                         rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                         rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
                         rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                         box_batch_size_per_image=box_batch_size_per_image, box_nms_threshold=box_nms_threshold,
                         **kwargs)
        self.transform.size_divisible = backbone.stride


# ----------------------------------------------------------------------------- registered names
@register_model(FasterRCNNVGG16, task="detection", paper=PAPER, num_classes=21, input_size=(3, 600, 600))
def faster_rcnn_vgg16(**kwargs) -> FasterRCNNVGG16:
    return FasterRCNNVGG16(**kwargs)
