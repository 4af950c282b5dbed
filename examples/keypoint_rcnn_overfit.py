"""Keypoint R-CNN R18-FPN learns 8 real COCO-mini person images by heart: a check that its keypoint
head, targets and decoding agree, for when the real run (80 images) is too small to learn keypoints.

    python examples/keypoint_rcnn_overfit.py [--data-dir ../shared/data/coco-mini] [--steps 80]

Takes the first 8 training images with one or two people, each with at least 8 labelled keypoints,
resized so the longer side is 160 px; trains from scratch on them in one full batch (Adam 1e-3,
32 sampled RoIs an image, one thread), then prints the keypoint loss every 10 steps and, per image,
the median distance in pixels between the top detection's keypoints and the first person's labelled
ones. About 3 minutes on one core.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import canon
from canon.data.detection import build_coco

SIDE = 160


def person_images(root: str, count: int = 8):
    dataset = build_coco(f"{root}/annotations/person_keypoints_train2017.json", f"{root}/train2017", "train")
    images, targets = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        if not 1 <= len(target["boxes"]) <= 2 or int(target["keypoints"][..., 2].gt(0).sum(-1).min()) < 8:
            continue
        height, width = image.shape[-2:]
        scale = SIDE / max(height, width)
        size = (round(height * scale), round(width * scale))
        fx, fy = size[1] / width, size[0] / height
        keypoints = target["keypoints"].clone()
        keypoints[..., 0] *= fx
        keypoints[..., 1] *= fy
        images.append(F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                                    align_corners=False)[0].clamp(0, 1))
        targets.append({"boxes": target["boxes"] * torch.tensor([fx, fy, fx, fy]), "labels": target["labels"],
                        "keypoints": keypoints})
        if len(images) == count:
            break
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/coco-mini")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images, targets = person_images(args.data_dir)
    model = canon.create_model("keypointrcnn_resnet18_fpn", min_size=SIDE, max_size=SIDE,
                               box_batch_size_per_image=32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for step in range(1, args.steps + 1):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if step % 10 == 0:
            keypoint_loss = float(losses["loss_keypoint"].detach())
            print(f"step {step:3d}  {time.time() - start:5.0f} s  keypoint loss {keypoint_loss:.3f}")
    model.eval()
    with torch.no_grad():
        found = model(images)
    for index, (detections, target) in enumerate(zip(found, targets)):
        if not len(detections["keypoints"]):
            print(f"image {index}: no detection")
            continue
        visible = target["keypoints"][0, :, 2] > 0
        error = (detections["keypoints"][0, :, :2] - target["keypoints"][0, :, :2]).norm(dim=-1)[visible]
        print(f"image {index}: top score {float(detections['scores'][0]):.2f}, "
              f"median keypoint error {float(error.median()):.1f} px")


if __name__ == "__main__":
    main()
