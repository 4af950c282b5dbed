"""The `canon` command. Thin: it parses arguments, then calls the library.

Progress goes to stderr, results to stdout; a user error is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit code 2."""


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
    from canon.engine.options import parse_key_values, parse_size
    from canon.engine.summary import summarize

    info = canon.model_info(args.model)
    kwargs = parse_key_values(args.model_arg)
    model = canon.create_model(args.model, **kwargs)
    try:
        size = parse_size(args.input_size)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--input-size {e}") from None
    input_shape = None
    if len(info.input_size) == 3:  # an image model: (1, C, H, W)
        c = kwargs.get("in_chans", info.input_size[0])
        input_shape = (1, c, *(size or info.input_size[1:]))
    summary = summarize(model, input_shape, name=args.model)
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
    print(f"multiply-adds:{summary.macs:>16,}  ({summary.macs / 1e9:.3f} G) at input {summary.input_shape}")
    print(f"output:       {list(summary.output_shape)}")
    print()
    print(summary.table())
    return 0


# ------------------------------------------------------------------------------------ canon train
TRAIN_USAGE = "canon train MODEL [--data SPEC] [engine options] [task options]"


def _train_parser(task_cls=None, *, suppress_defaults: bool = False, all_tasks: bool = False) -> argparse.ArgumentParser:
    """``canon train``'s flags: the engine's (TrainConfig) and the model's task's (its Options)."""
    from canon.engine.config import TrainConfig
    from canon.engine.options import add_options

    epilog = None
    if all_tasks:
        epilog = "task options (added for the model's task; `canon train MODEL --help` shows them with the "\
                 "engine's):\n" + _all_task_options_help()
    parser = argparse.ArgumentParser(
        prog="canon train", usage=TRAIN_USAGE, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a registered model. Flags override the keys of a --config YAML file, which override "
                    "the defaults. --batch-size is the batch of one optimizer step over all processes "
                    "(torchrun) and accumulated micro-batches.")
    parser.add_argument("model", nargs="?", help="registered model name (canon list)")
    parser.add_argument("--config", help="YAML file of option keys (engine and task options, flat)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch log (= --no-progress)")
    add_options(parser.add_argument_group("engine options"), TrainConfig, suppress_defaults=suppress_defaults)
    if task_cls is not None:
        group = parser.add_argument_group(f"{task_cls.name} options")
        add_options(group, task_cls.Options, suppress_defaults=suppress_defaults)
    return parser


def _all_task_options_help() -> str:
    from canon.engine.options import add_options
    from canon.tasks import all_task_classes

    parts = []
    for name, cls in all_task_classes().items():
        helper = argparse.ArgumentParser(prog=name, add_help=False, usage=argparse.SUPPRESS)
        add_options(helper.add_argument_group(f"{name} options"), cls.Options)
        parts.append(helper.format_help().strip("\n"))
    return "\n\n".join(parts)


def _read_config_file(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file {p}")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {p}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {p}: expected a mapping of option keys, found {type(values).__name__}")
    values.pop("task", None)  # written into run folders' config.yaml; the model decides the task
    return values


def train_from_argv(argv: list[str]):
    """Parse ``canon train`` arguments into (TrainConfig, task); explicit flags win over --config keys."""
    from canon.engine.config import TrainConfig
    from canon.engine.options import OptionError, split_options
    from canon.registry import model_info
    from canon.tasks import all_task_classes, task_class

    if any(a in ("-h", "--help") for a in argv):
        model = next((a for a in argv if not a.startswith("-")), None)
        cls = task_class(model_info(model).task) if model else None
        _train_parser(cls, all_tasks=cls is None).print_help()
        raise SystemExit(0)
    # Pass 1: every flag any task knows, without defaults, to find the model (and so the task).
    from canon.engine.options import add_probe_options, flag_name, option_fields

    tasks = all_task_classes()
    probe = argparse.ArgumentParser(prog="canon train", usage=TRAIN_USAGE, add_help=False)
    probe.add_argument("model", nargs="?")
    probe.add_argument("--config")
    probe.add_argument("--quiet", action="store_true")
    add_probe_options(probe, TrainConfig, *(cls.Options for cls in tasks.values()))
    known_task_flags: dict[str, list[str]] = {}
    for name, cls in tasks.items():
        for f in option_fields(cls.Options):
            known_task_flags.setdefault(flag_name(f), []).append(name)
    first, _ = probe.parse_known_args(argv)
    file_values = _read_config_file(first.config) if first.config else {}
    model = first.model or file_values.get("model")
    if not model:
        raise UserError("name a model: canon train MODEL ... (or a model: key in --config)")
    cls = task_class(model_info(model).task)
    # Pass 2: the engine's and this task's flags; what the user typed is told apart from defaults.
    parser = _train_parser(cls, suppress_defaults=True)
    own_flags = {a for action in parser._actions for a in action.option_strings}
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in own_flags and "--" + flag.removeprefix("--no-") not in own_flags:
            owners = known_task_flags.get(flag)
            if owners:
                raise UserError(f"{flag} is an option of the {' and '.join(owners)} task; {model} is a "
                                f"{cls.name} model (`canon train {model} --help` lists its options)")
    given = vars(parser.parse_args(argv))  # argparse reports a bad value itself (one line, exit code 2)
    quiet = given.pop("quiet", False)
    given.pop("config", None)
    given.pop("model", None)
    values = {**file_values, **given, "model": model}
    if quiet:
        values["progress"] = False
    try:
        engine_values, task_values = split_options(values, TrainConfig, cls.Options,
                                                   source=f"--config {first.config}" if first.config else "options")
    except OptionError as e:
        raise UserError(str(e)) from None
    config = TrainConfig(**engine_values)
    if not config.out:
        from canon.engine.trainer import default_run_dir

        config.out = default_run_dir(config)
    return config, cls(**task_values)


def cmd_train(args) -> int:
    from canon.engine.trainer import Trainer

    config, task = train_from_argv(args.train_argv)
    metrics = Trainer(config, task).fit()
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(json.dumps(metrics, indent=2))
    return 0


def cmd_eval(args) -> int:
    from canon.tasks import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, data=args.data, data_dir=args.data_dir,
                                 out_dir=args.out, batch_size=args.batch_size, device=args.device, weights=args.weights)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            if isinstance(value, float):
                print(f"{key:<20} {value:.4f}")
        print(f"wrote {result['eval_json']}")
    return 0


def cmd_predict(args) -> int:
    from canon.tasks import predict_images

    results = predict_images(args.checkpoint, args.inputs, topk=args.topk, save_dir=args.save_dir,
                             device=args.device, weights=args.weights)
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


def cmd_export(args) -> int:
    import canon
    from canon.engine.options import parse_size
    from canon.tasks import load_for_inference

    if args.format != "onnx":
        raise UserError(f"--format {args.format}: only onnx is supported")
    path = Path(args.target)
    if not path.exists() and "/" not in args.target and not path.suffix and args.weights is None:
        canon.model_info(args.target)  # a typo gets the closest names
        model, name = canon.create_model(args.target), args.target  # an untrained model: the graph alone
        default_out = Path(f"{args.target}.onnx")
    else:
        model, meta = load_for_inference(args.target, args.weights)
        name = meta["model"]
        default_out = (Path(meta["path"]).parent / f"{name}.onnx") if args.weights is None else Path(f"{name}.onnx")
    input_shape = None
    try:
        size = parse_size(args.input_size)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--input-size {e}") from None
    if size is not None:
        info = canon.model_info(name)
        input_shape = (1, model.canon_kwargs.get("in_chans", info.input_size[0]), *size)
    result = canon.export_onnx(model.eval(), args.out or default_out, input_shape=input_shape, opset=args.opset,
                               dynamic_batch=args.dynamic_batch, check=args.check)
    report = result.to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {result.path} (opset {result.opset}, input {list(result.input_shape)}, "
              f"{'dynamic' if result.dynamic_batch else 'fixed'} batch)")
        if result.max_abs_diff is not None:
            agreement = "" if result.argmax_agreement is None else f", argmax agreement {result.argmax_agreement:.4f}"
            print(f"onnxruntime vs PyTorch: max |difference| {result.max_abs_diff:.2e}{agreement}")
    return 0


def cmd_bench(args) -> int:
    from canon import bench

    def show(rows, infos):
        if not args.json:
            print(bench.format_table(rows, infos), flush=True)

    rows, infos = bench.run(args, on_result=show)
    if args.json:
        print(json.dumps({"rows": rows, "runs": infos}, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    from canon.tasks import task_class

    demo = task_class(args.task).demo
    if demo is None:
        raise UserError(f"the {args.task} task has no demo yet")
    return demo(out=args.out, quiet=args.quiet)


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from canon.engine.config import DEVICES
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

    p = sub.add_parser("train", help="train a model on a dataset (canon train MODEL --help: its options)",
                       add_help=False)
    p.add_argument("train_argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or run folder on a dataset's test split")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="where eval.json and figures go (default: the run folder)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--weights", help="evaluate a registered model with released weights (torchvision, timm, a file, "
                                     "a URL) instead of a run folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify (or segment) images with a checkpoint")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("inputs", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--save-dir", help="where overlays go (segmentation)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--weights", help="predict with a registered model and released weights (torchvision, timm, a "
                                     "file, a URL): canon predict resnet50 --weights torchvision cat.jpg")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a run's model (or a registered model) as ONNX and check it in onnxruntime")
    p.add_argument("target", metavar="RUN_OR_MODEL", help="a run folder, a checkpoint, or a registered model name")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--out", help="the .onnx file (default: MODEL.onnx in the run folder, or here)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch's)")
    p.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare onnxruntime with PyTorch on real inputs (default: on)")
    p.add_argument("--input-size", help="H,W (default: the run's or the model's)")
    p.add_argument("--weights", help="with a model name: released weights to export (torchvision, timm, a file, a URL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    from canon import bench as bench_module

    p = sub.add_parser("bench", help="images/s and GFLOP/s beside the matmul rate and onnxruntime, in one run")
    bench_module.add_arguments(p)
    p.set_defaults(func=cmd_bench)

    from canon.tasks import all_task_classes

    tasks = all_task_classes()
    p = sub.add_parser("demo", help="a demo that needs no download: classification (default) trains lenet5 on "
                                    "the bundled digits and prints the test accuracy")
    p.add_argument("task", nargs="?", default="classification",
                   choices=[name for name, cls in tasks.items() if cls.demo is not None])
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    # subcommands of the tasks themselves (canon sample, canon translate, ...)
    for cls in tasks.values():
        for command in cls.cli_commands():
            p = sub.add_parser(command.name, help=command.help)
            command.add_arguments(p)
            p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":  # its flags depend on the model's task: parsed by train_from_argv
        args = argparse.Namespace(command="train", func=cmd_train, train_argv=argv[1:])
    else:
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
