"""The `canon` command. Thin: it parses arguments, then calls the library.

Progress goes to stderr, results to stdout; a user error is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


def _parse_model_args(items: list[str] | None) -> dict:
    """``k=v`` pairs; values are Python literals (``ast.literal_eval``), else plain strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--model-arg expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise UserError(f"--input-size expects H,W or a single size, got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"--input-size expects H,W or a single size, got {text!r}")
    return tuple(sizes)


# ------------------------------------------------------------------------------------ commands
def cmd_list(args) -> int:
    import canon
    from canon.engine.summary import count_parameters

    names = canon.list_models(task=args.task, pattern=args.pattern)
    rows = []
    for name in names:
        info = canon.model_info(name)
        params = count_parameters(_build_on_meta(name))
        rows.append({"name": name, "task": info.task, "params": params, "input_size": list(info.input_size),
                     "compatible_with": info.compatible_with, "paper": info.paper})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<34} {'task':<15} {'params':>13}  {'input':<12} {'layout':<12}")
    for r in rows:
        print(f"{r['name']:<34} {r['task']:<15} {r['params']:>13,}  {'x'.join(map(str, r['input_size'])):<12} "
              f"{r['compatible_with'] or '-':<12}")
    print(f"{len(rows)} models")
    return 0


def _build_on_meta(name: str):
    """Build a model on the meta device: shapes and counts without allocating or initialising."""
    import torch

    import canon

    with torch.device("meta"):
        return canon.create_model(name)


def cmd_info(args) -> int:
    import canon
    from canon.engine.summary import summarize

    info = canon.model_info(args.model)
    kwargs = _parse_model_args(args.model_arg)
    model = canon.create_model(args.model, **kwargs)
    c = kwargs.get("in_chans", info.input_size[0])
    size = _parse_size(args.input_size) or tuple(info.input_size[1:])
    summary = summarize(model, (1, c, *size), name=args.model)
    if args.json:
        print(json.dumps({"name": args.model, "task": info.task, "paper": info.paper,
                          "compatible_with": info.compatible_with, "params": summary.params,
                          "macs": summary.macs, "input_shape": summary.input_shape,
                          "output_shape": summary.output_shape,
                          "layers": [vars(r) for r in summary.layers]}, indent=2))
        return 0
    print(f"{args.model}  ({info.task})")
    print(f"paper:        {info.paper}")
    print(f"layout:       {info.compatible_with or 'canon'}")
    print(f"parameters:   {summary.params:,} ({summary.trainable_params:,} trainable)")
    print(f"multiply-adds:{summary.macs:>16,}  ({summary.macs / 1e9:.3f} G) at input {list(summary.input_shape)}")
    print(f"output:       {list(summary.output_shape)}")
    print()
    print(summary.table())
    return 0


def cmd_train(args) -> int:
    from canon.engine.trainer import TrainConfig, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = TrainConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, scheduler=args.scheduler, warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay, momentum=args.momentum, label_smoothing=args.label_smoothing, loss=args.loss,
        seed=args.seed, out=args.out or f"runs/{args.model}-{args.data.split(':')[0]}", resume=args.resume,
        augment=args.augment, input_size=_parse_size(args.input_size),
        model_kwargs=_parse_model_args(args.model_arg), teacher=args.teacher, distillation=args.distillation,
        distillation_alpha=args.distillation_alpha, distillation_tau=args.distillation_tau,
        mixup=args.mixup, cutmix=args.cutmix,
        class_weights=args.class_weights,
        balanced_sampler=args.balanced_sampler, train_subset=args.train_subset, eval_every=args.eval_every,
        max_steps_per_epoch=args.max_steps_per_epoch,
        channels_last=args.channels_last, amp=args.amp,
        progress=not args.quiet,
    )
    if args.config:
        config = _apply_config_file(config, args.config)
    metrics = train(config)
    print(json.dumps(metrics, indent=2))
    return 0


def _apply_config_file(config, path: str):
    import dataclasses

    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file {p}")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {p}: not valid YAML ({e})") from None
    valid = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise UserError(f"--config {p}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    if values.get("input_size") is not None:
        values["input_size"] = tuple(values["input_size"])
    return dataclasses.replace(config, **values)


def cmd_eval(args) -> int:
    from canon.engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, data_dir=args.data_dir,
                                 out_dir=args.out, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if isinstance(value, float):
                print(f"{key:<20} {value:.4f}")
        print(f"wrote {result['eval_json']}")
    return 0


def cmd_predict(args) -> int:
    from canon.engine.evaluate import predict_images

    results = predict_images(args.checkpoint, args.inputs, topk=args.topk, save_dir=args.save_dir)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(r["input"])
            for entry in r.get("top", []):
                print(f"  {entry['probability']:.4f}  {entry['class']}")
            for key in ("overlay", "areas"):
                if key in r:
                    print(f"  {key}: {r[key]}")
    return 0


def cmd_demo(args) -> int:
    from canon.engine.trainer import TrainConfig, train

    out = args.out or "runs/demo-lenet5-digits"
    print("canon demo: training lenet5 on scikit-learn's digits (1,797 real 8x8 scans, upscaled to 32x32)",
          file=sys.stderr)
    import torch

    # LeNet-5 on 32x32 is too small to split across threads: one thread is as fast on an idle
    # machine and many times faster on a busy one, where threads wait for each other.
    torch.set_num_threads(1)
    started = time.perf_counter()
    config = TrainConfig(model="lenet5", data="digits", epochs=12, batch_size=32, lr=0.05, optimizer="sgd",
                         scheduler="cosine", weight_decay=5e-4, seed=0, out=out, progress=not args.quiet)
    metrics = train(config)
    seconds = time.perf_counter() - started
    print(f"lenet5 on digits: test accuracy {metrics['test_accuracy']:.4f} "
          f"after {metrics['epochs']} epochs in {seconds:.1f} s (run folder: {out})")
    return 0


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from canon.engine.optim import OPTIMIZERS, SCHEDULERS
    from canon.registry import TASKS

    parser = argparse.ArgumentParser(prog="canon", description="The classic deep-learning canon, verified.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--pattern", help="shell-style wildcard, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="parameters, multiply-adds and a per-layer table")
    p.add_argument("model")
    p.add_argument("--input-size", help="H,W (default: the model's)")
    p.add_argument("--model-arg", action="append", metavar="K=V")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model on a dataset")
    p.add_argument("model")
    p.add_argument("--data", default="digits", help="digits | mnist | fashion-mnist | cifar10 | imagefolder:PATH | ...")
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="cosine")
    p.add_argument("--warmup-epochs", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--loss", help="task-specific loss: segmentation ce | dice | ce+dice (default ce)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--augment", choices=("default", "none"), default="default")
    p.add_argument("--input-size", help="H,W (default: the data's size if the model takes it)")
    p.add_argument("--model-arg", action="append", metavar="K=V", help="model option, e.g. small_input=True")
    p.add_argument("--teacher", metavar="RUN_DIR", help="distil from a trained canon model (DeiT distillation)")
    p.add_argument("--distillation", choices=["hard", "soft"], default="hard",
                   help="with --teacher: learn the teacher's argmax (DeiT's hard, default) or its softened "
                        "distribution (soft, temperature --distillation-tau)")
    p.add_argument("--distillation-alpha", type=float, default=None,
                   help="weight of the teacher's term (default 0.5 hard, 0.1 soft, as in DeiT)")
    p.add_argument("--distillation-tau", type=float, default=3.0, help="soft distillation's temperature (default 3)")
    p.add_argument("--class-weights", choices=("inverse", "effective"), help="weight the loss by class frequency")
    p.add_argument("--balanced-sampler", action="store_true", help="over/under-sample to balance classes")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup with λ ~ Beta(ALPHA, ALPHA) per batch (DeiT: 0.8; default 0 = off)")
    p.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA",
                   help="CutMix with λ ~ Beta(ALPHA, ALPHA) (DeiT: 1.0); with --mixup, one of the two per batch")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="train on N training images, a fixed draw that keeps each class's share (the same for "
                        "every --seed); the test set stays whole")
    p.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS",
                   help="evaluate on the test set every EPOCHS epochs and after the last (default 1)")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap batches per epoch (quick checks)")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC memory order for weights and batches (MobileNet v2 trained ~1.7x faster on CPU)")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for training steps (weights, optimizer state, evaluation and checkpoints "
                        "stay float32); fast on CPUs with AVX512-BF16 or AMX, slow on others")
    p.add_argument("--config", help="YAML file of TrainConfig fields (overrides the flags)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 suits small models)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch log")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or run folder on a dataset's test split")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="where eval.json and figures go (default: the run folder)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify (or segment) images with a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("inputs", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--save-dir", help="where overlays go (segmentation)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="train lenet5 on the bundled digits and print the test accuracy")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from canon.data import DataError
    from canon.engine.checkpoint import CheckpointError
    from canon.engine.trainer import TrainingDiverged

    try:
        return args.func(args)
    except (UserError, DataError, CheckpointError) as e:
        print(f"canon {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # unknown model name: the registry's message lists close names
        print(f"canon {args.command}: error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as e:
        # Bad model arguments or input shapes: the library's messages say expected vs actual.
        if os.environ.get("CANON_DEBUG"):
            raise
        print(f"canon {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"canon {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"canon {args.command}: interrupted; rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
