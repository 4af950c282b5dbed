"""Mask R-CNN learns 8 real COCO-mini training images by heart (slow).

The first 8 images of ``../shared/data/coco-mini``'s train split (in the annotation file's order)
that hold one to three instances, each covering at least 5 % of its image, resized so that the
longer side is 128 px (boxes scaled, masks resized by nearest neighbour). After a short full-batch
Adam run from scratch, the eval-mode detections on those same images must reach COCO box AP50 >= 0.9
(``canon.metrics.coco_evaluate``, pycocotools-exact): the RPN's and the heads' losses, the target
assignment (masks included) and the decoding agree with one another. Skipped when the real data
are absent.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import canon
from canon.data.detection import build_coco
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
        scale = SIDE / max(height, width)
        size = (round(height * scale), round(width * scale))
        images.append(F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                    align_corners=False)[0].clamp(0, 1))
        masks = F.interpolate(target["masks"][None].float(), size=size, mode="nearest")[0].to(torch.uint8)
        factor = torch.tensor([size[1] / width, size[0] / height, size[1] / width, size[0] / height])
        targets.append({"boxes": boxes * factor, "labels": target["labels"], "masks": masks})
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
    for _ in range(50):  # in our run (one thread): AP50 0.66 at step 30, 1.0 from step 40
        losses = model(images, targets)
        assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert ap50_on(model, images, targets) >= 0.9
    # the masks come back at the input's size, one per detection
    model.eval()
    with torch.no_grad():
        found = model(images[:1])[0]
    assert found["masks"].shape[1:] == (1, *images[0].shape[-2:])
