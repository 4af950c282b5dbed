"""The R-CNN lineage's steps that are not ``canon train`` / ``canon eval``: proposals, SVMs, timing.

R-CNN, SPPnet and Fast R-CNN run on selective-search proposals, which the papers' code computes
once and loads from disk. Their CNN stages train with ``canon train`` (the detection task; the
model's ``proposal_cache`` model-arg points at the folder written here); R-CNN's and SPPnet's second
stage (per-class linear SVMs with hard-negative mining, ridge box regression) fits here on the
training split, and ``canon eval`` scores the result. ::

    # 1. selective search (fast mode, 2,000 boxes, longer side 500) for every train and test image
    python examples/rcnn_lineage.py proposals --data voc-xml:../shared/data/raccoon --cache runs/ss-raccoon

    # 2. the CNN stage, e.g.
    python -m canon train rcnn_alexnet --data voc-xml:../shared/data/raccoon \\
        --model-arg proposal_cache=runs/ss-raccoon --out runs/rcnn-raccoon ...
    # or, without canon train's closing evaluation (R-CNN's evaluation is the slow part), a time budget:
    python examples/rcnn_lineage.py fine-tune rcnn_alexnet --data voc-xml:../shared/data/raccoon \\
        --model-arg proposal_cache=runs/ss-raccoon --minutes 25 --out runs/rcnn-raccoon

    # 3. SVMs + box regressors on the fine-tuned features -> RUN/svm.safetensors, then canon eval it
    python examples/rcnn_lineage.py fit-svms runs/rcnn-raccoon --data voc-xml:../shared/data/raccoon
    python -m canon eval runs/rcnn-raccoon/svm.safetensors --data voc-xml:../shared/data/raccoon

    # 4. seconds per test image, split into the model's stages (proposals, warp, cnn, svm, ...)
    python examples/rcnn_lineage.py timing runs/rcnn-raccoon/svm.safetensors --data ... --images 5

Every command prints one JSON object on stdout (progress on stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(f"[rcnn_lineage] {message}", file=sys.stderr, flush=True)


def proposals(args) -> dict:
    """Selective search for each image of the train and test splits, into the cache folder."""
    from canon.data import build_dataset
    from canon.models.detection.external_proposals import selective_search_proposals

    search = selective_search_proposals(mode=args.mode, max_proposals=args.max_proposals, max_side=args.max_side,
                                        cache_dir=args.cache)
    counts, start = [], time.perf_counter()
    for split in ("train", "test"):
        dataset = build_dataset(args.data, split=split, data_dir=args.data_dir)
        for index in range(len(dataset)):
            image, _ = dataset[index]
            counts.append(len(search(image)))
            if (index + 1) % 20 == 0:
                _log(f"{split}: {index + 1}/{len(dataset)} images, {search.searches} searched, "
                     f"{search.search_seconds:.0f} s")
    return {"images": len(counts), "searched": search.searches, "search_seconds": round(search.search_seconds, 1),
            "seconds_per_image": round(search.search_seconds / max(search.searches, 1), 2),
            "mean_proposals": round(sum(counts) / max(len(counts), 1), 1), "cache": args.cache,
            "wall_seconds": round(time.perf_counter() - start, 1)}


def fine_tune(args) -> dict:
    """The CNN stage with plain SGD for ``--minutes`` (the model's loss dict, horizontal flips), -> RUN/last.safetensors."""
    import ast

    import torch

    from canon.data import build_dataset
    from canon.engine.checkpoint import save_weights
    from canon.registry import create_model

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = build_dataset(args.data, split="train", data_dir=args.data_dir)
    info = dataset.info
    kwargs = {"num_classes": info.num_classes}
    for item in args.model_arg:
        key, _, value = item.partition("=")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    model = create_model(args.model, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    start, steps, seen, losses = time.perf_counter(), 0, 0, []
    budget = args.minutes * 60
    model.train()
    while time.perf_counter() - start < budget:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            images, targets = [], []
            for index in order[first:first + args.batch_size]:
                image, target = dataset[index]
                if torch.rand((), generator=generator) < 0.5:  # a horizontal flip, boxes with it
                    width = image.shape[-1]
                    image = image.flip(-1)
                    boxes = target["boxes"]
                    target = {**target, "boxes": torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                                              boxes[:, 3]], dim=1)}
                images.append(image)
                targets.append({"boxes": target["boxes"], "labels": target["labels"]})
            warm = min(1.0, (steps + 1) / max(args.warmup_steps, 1))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * warm
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            steps, seen = steps + 1, seen + len(images)
            losses.append(float(loss))
            if steps % 10 == 0:
                _log(f"step {steps}: loss {sum(losses[-10:]) / 10:.4f}, {time.perf_counter() - start:.0f} s")
            if time.perf_counter() - start >= budget:
                break
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from canon.tasks.detection import DetectionTask, input_rule

    task = DetectionTask()  # what canon eval / canon predict read: the task's own checkpoint record
    task.info, task.rule = info, input_rule(model)
    extra = {"task": "detection", **task.checkpoint_meta(),
             "fine_tune": {"steps": steps, "images": seen, "seconds": round(seconds, 1), "lr": args.lr,
                           "batch_size": args.batch_size, "final_loss": round(sum(losses[-10:]) / max(len(losses[-10:]), 1), 4)}}
    save_weights(out / "last.safetensors", model, extra=extra)
    return {"checkpoint": str(out / "last.safetensors"), **extra["fine_tune"]}


def fit_svms(args) -> dict:
    """R-CNN's second stage on the training split of a fine-tuned R-CNN / SPPnet checkpoint."""
    import torch

    from canon.data import build_dataset
    from canon.engine.checkpoint import load_model, save_weights
    from canon.models.detection.rcnn import fit_svms_and_box_regressors

    torch.manual_seed(args.seed)
    model, meta = load_model(args.checkpoint)
    dataset = build_dataset(args.data, split="train", data_dir=args.data_dir)
    start = time.perf_counter()
    stats = fit_svms_and_box_regressors(model, dataset, negatives_per_image=args.negatives_per_image,
                                        regression_samples_per_image=args.regression_samples_per_image,
                                        mining_rounds=args.mining_rounds, seed=args.seed, report=_log)
    seconds = time.perf_counter() - start
    source = Path(meta["path"])
    out = Path(args.out) if args.out else source.parent / "svm.safetensors"
    extra = dict(meta.get("extra", {}))
    extra["second_stage"] = {"from": str(source), "seconds": round(seconds, 1), **{k: v for k, v in stats.items()
                                                                                   if k != "classes"}}
    save_weights(out, model, extra=extra)
    return {"checkpoint": str(out), "seconds": round(seconds, 1), "stats": stats}


def timing(args) -> dict:
    """Seconds per image of each stage over the first ``--images`` test images (batch 1, eval mode)."""
    import torch

    from canon.data import build_dataset
    from canon.engine.checkpoint import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    dataset = build_dataset(args.data, split="test", data_dir=args.data_dir)
    if args.no_cache and hasattr(model, "proposal_method"):  # time the selective search itself
        model.proposal_method.cache_dir = None
        model.proposal_method._memo.clear()
    model.times.reset()
    start = time.perf_counter()
    with torch.no_grad():
        for index in range(min(args.images, len(dataset))):
            model([dataset[index][0]])
    wall = (time.perf_counter() - start) / max(min(args.images, len(dataset)), 1)
    per_image = {k: round(v, 3) for k, v in model.times.per_image().items()} if hasattr(model, "times") else {}
    return {"checkpoint": args.checkpoint, "images": min(args.images, len(dataset)), "seconds_per_image": round(wall, 3),
            "stages": per_image, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proposals", help="selective search for every image into a cache folder")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache", required=True)
    p.add_argument("--mode", default="fast", choices=("single", "fast", "quality"))
    p.add_argument("--max-proposals", type=int, default=2000)
    p.add_argument("--max-side", type=int, default=500)
    p.set_defaults(run=proposals)
    p = sub.add_parser("fine-tune", help="the CNN stage for a time budget (no closing evaluation)")
    p.add_argument("model")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=fine_tune)
    p = sub.add_parser("fit-svms", help="SVMs with hard-negative mining and ridge box regressors")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="weights file to write (default CHECKPOINT_DIR/svm.safetensors)")
    p.add_argument("--negatives-per-image", type=int, default=200)
    p.add_argument("--regression-samples-per-image", type=int, default=32)
    p.add_argument("--mining-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=fit_svms)
    p = sub.add_parser("timing", help="seconds per test image, split by stage")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-cache", action="store_true", help="run selective search instead of reading the cache")
    p.set_defaults(run=timing)
    args = parser.parse_args(argv)
    print(json.dumps(args.run(args), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
