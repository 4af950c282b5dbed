"""Options as dataclasses: one declaration gives the Python API, the YAML keys and the CLI flags.

The engine's :class:`~canon.engine.config.TrainConfig` and every task's ``Options`` are plain
dataclasses whose fields are declared with :func:`option`::

    @dataclass
    class ClassificationOptions:
        mixup: float = option(0.0, "mixup's Beta(ALPHA, ALPHA) per batch (DeiT: 0.8); 0 = off", metavar="ALPHA")

:func:`add_options` turns such a class into ``argparse`` flags (``mixup`` -> ``--mixup``, the type
from the annotation, the default shown in ``--help``), :func:`options_from_namespace` reads the
parsed values back, and :func:`split_options` sorts one flat mapping (a YAML file, keyword
arguments) into the classes that own each key, naming the valid keys when one is unknown.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Mapping

__all__ = ["option", "add_options", "options_from_namespace", "split_options", "option_fields", "flag_name",
           "add_probe_options", "parse_size", "parse_float_list", "parse_int_list", "parse_key_values", "OptionError"]


class OptionError(ValueError):
    """An option has a value of the wrong kind, or a key belongs to no set of options."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,  # noqa: A002
           choices: tuple | None = None, metavar: str | None = None, parse: Callable[[str], Any] | None = None,
           action: str | None = None, cli: bool = True, default_factory: Callable[[], Any] | None = None):
    """A dataclass field that also describes its command-line flag.

    ``parse`` turns the flag's text into the value (for tuples, mappings...); ``action="append"``
    collects repeated flags; ``cli=False`` keeps the field out of the parser (set in code or YAML).
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse,
                "action": action, "cli": cli}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of an options dataclass that appear on the command line."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _base_type(annotation) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of ``int``, ``float | None``, ``str``, ``bool``..."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *, suppress_defaults: bool = False,
                skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls``. With ``suppress_defaults`` a flag that is not given leaves
    no attribute on the namespace (so given flags can be told from defaults)."""
    hints = typing.get_type_hints(cls)
    for field in option_fields(cls):
        if field.name in skip:
            continue
        meta = field.metadata
        kind, optional = _base_type(hints[field.name])
        default = argparse.SUPPRESS if suppress_defaults else _default_of(field)
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": meta.get("help") or ""}
        if meta.get("action") == "append":
            kwargs.update(action="append", type=meta.get("parse") or str, metavar=meta.get("metavar"))
            kwargs["default"] = argparse.SUPPRESS if suppress_defaults else None
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("parse") or (kind if kind in (int, float, str) else str)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        if not suppress_defaults and "(default" not in kwargs["help"]:
            shown = _default_of(field)
            if meta.get("action") != "append":
                kwargs["help"] += f" (default: {_show(shown)})"
        parser.add_argument(flag_name(field), **kwargs)
        del optional


def add_probe_options(parser: argparse.ArgumentParser, *classes) -> None:
    """Every flag of ``classes``, taking its values as plain text and leaving no defaults: enough to
    tell flags from positional arguments before the real parser (which depends on them) is built."""
    seen = {a for action in parser._actions for a in action.option_strings}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for field in option_fields(cls):
            flag = flag_name(field)
            if flag in seen:
                continue
            seen.add(flag)
            kind, _ = _base_type(hints[field.name])
            if field.metadata.get("action") == "append":
                parser.add_argument(flag, action="append", default=argparse.SUPPRESS)
            elif kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
            else:
                parser.add_argument(flag, default=argparse.SUPPRESS)


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "none"
    return str(value)


def options_from_namespace(cls, namespace: argparse.Namespace | Mapping[str, Any], **overrides):
    """An instance of ``cls`` from the parsed flags (missing attributes keep the field defaults)."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    kwargs.update(overrides)
    return cls(**kwargs)


def split_options(values: Mapping[str, Any], *classes, source: str = "options") -> list[dict[str, Any]]:
    """Sort a flat mapping into one dict per options class; an unknown key names every valid one."""
    out: list[dict[str, Any]] = [{} for _ in classes]
    owners = {}
    for i, cls in enumerate(classes):
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, i)
    unknown = sorted(k for k in values if k not in owners)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(owners), n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise OptionError(f"{source}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(sorted(owners))}")
    for key, value in values.items():
        out[owners[key]][key] = value
    return out


# ----------------------------------------------------------------------------- parsers for flag text
def parse_size(text: str | None) -> tuple[int, int] | None:
    """``"32"`` -> (32, 32); ``"64,48"`` or ``"64x48"`` -> (64, 48)."""
    if text is None or isinstance(text, tuple):
        return text
    if isinstance(text, list):
        return tuple(int(v) for v in text)  # type: ignore[return-value]
    parts = str(text).lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W or a single size, got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W or a single size, got {text!r}")
    return tuple(sizes)  # type: ignore[return-value]


def _number_list(text, kind, what):
    if isinstance(text, (tuple, list)):
        return tuple(kind(v) for v in text)
    try:
        return tuple(kind(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def parse_float_list(text) -> tuple[float, ...]:
    return _number_list(text, float, "numbers such as 0.9,0.98")


def parse_int_list(text) -> tuple[int, ...]:
    return _number_list(text, int, "whole numbers such as 82,123")


def parse_key_values(items) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are Python literals (``ast.literal_eval``), else strings."""
    import ast

    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise OptionError(f"--model-arg expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out
