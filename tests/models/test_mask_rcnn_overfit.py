"""Mask R-CNN learns 8 real COCO-mini training images by heart (slow).

The first 8 images of ``../shared/data/coco-mini``'s train split (in the annotation file's order)
that hold one to three instances, each covering at least 5 % of its image, resized so that the
longer side is 128 px (``canon.data.detection_transforms.resize_min_max``). After a short full-batch
Adam run from scratch, the eval-mode detections on those same images must reach COCO box AP50 >= 0.9
(``canon.metrics.coco_evaluate``, pycocotools-exact) and their pasted masks a mean IoU >= 0.6 with the
instances' own masks: the RPN's and the heads' losses, the target assignment (masks included) and
the decoding agree with one another. Skipped when the real data
are absent.
"""
from __future__ import annotations

import pytest
import torch

import canon
from canon.data.detection import build_coco
from canon.data.detection_transforms import resize_min_max
from test_yolo import ap50_on  # COCO AP50 of a detector's eval-mode detections

pytestmark = pytest.mark.slow

NUM_IMAGES = 8
SIDE = 128


def small_coco_images(root):
    """The 8 images described above, as (images, targets with boxes, labels and masks)."""
    folder = root / "coco-mini"
    if not folder.is_dir():
        pytest.skip(f"coco-mini not found in {folder}")
    dataset = build_coco(folder / "annotations" / "instances_train2017.json", folder / "train2017", "train",
                         masks=True)
    images, targets = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[-2:]
        boxes = target["boxes"]
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        if not 1 <= len(boxes) <= 3 or float(areas.min()) < 0.05 * height * width:
            continue
        image, target = resize_min_max(image, target, SIDE, SIDE)  # boxes scaled, masks nearest
        images.append(image.clamp(0, 1))
        targets.append({"boxes": target["boxes"], "labels": target["labels"], "masks": target["masks"]})
        if len(images) == NUM_IMAGES:
            break
    return images, targets


def test_maskrcnn_learns_eight_coco_mini_images(shared_data):
    torch.manual_seed(0)
    images, targets = small_coco_images(shared_data)
    assert len(images) == NUM_IMAGES
    assert all(t["masks"].shape[0] == len(t["boxes"]) and t["masks"].any() for t in targets)
    # 81 classes (COCO's 80 and background); 32 sampled RoIs an image keep the mask head's cost low
    model = canon.create_model("maskrcnn_resnet18_fpn", num_classes=81, min_size=SIDE, max_size=SIDE,
                               box_batch_size_per_image=32)
    assert ap50_on(model, images, targets) < 0.1  # not by chance at the start
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(80):  # in our run: AP50 0.68 at step 30, 0.82 at 50, 1.0 at 80
        losses = model(images, targets)
        assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert ap50_on(model, images, targets) >= 0.9
    # the masks: one per detection at the input's size, and the top detection of each instance's class
    # covers that instance's own mask (IoU written here with plain tensor ops; 0.84 on average in our run)
    model.eval()
    with torch.no_grad():
        found = model(images)
    ious = []
    for detections, target in zip(found, targets):
        assert detections["masks"].shape[1:] == (1, *target["masks"].shape[-2:])
        for label, truth in zip(target["labels"], target["masks"].bool()):
            same_class = (detections["labels"] == label).nonzero().flatten()
            if len(same_class) == 0:
                ious.append(0.0)
                continue
            predicted = detections["masks"][same_class[0], 0] > 0.5
            ious.append(float((predicted & truth).sum() / (predicted | truth).sum()))
    assert sum(ious) / len(ious) >= 0.6, ious
