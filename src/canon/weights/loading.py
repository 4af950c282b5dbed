"""Fetching, reading and fitting released checkpoints: safe by construction, strict by default.

- :func:`download` puts a file in the cache (``$CANON_HOME/weights`` or ``~/.cache/canon/weights``)
  through :func:`canon.data.download.download_file`: written under a temporary name, renamed only
  once its SHA-256 (or the hash prefix in its torchvision-style name) matches, so an interrupted
  or corrupt transfer never leaves a file that looks complete. A second call finds the file and
  downloads nothing (the cached file's hash is checked again; a damaged copy is fetched anew).
- :func:`read_state_dict` reads ``.safetensors`` with safetensors and anything else with
  ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
- :func:`adapt_state_dict` applies the key renames a publisher's old files need (DenseNet's
  ``norm.1``, ViT's ``mlp.linear_1``); other families register theirs with
  :func:`register_state_dict_adapter` (the detection models add torchvision's v1 names there).
- :func:`load_state_dict_strict` loads with ``strict=True`` after saying exactly what does not
  fit (missing, unexpected and mis-shaped keys). Two differences are accepted and reported:
  a different number of classes (the classifier keys are dropped and keep their fresh
  initialisation) and an optional auxiliary head the model was built without (its keys dropped).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from canon.data.core import DataError
from canon.data.download import download_file, sha256_of_file
from canon.weights.released import RELEASED, VOC_CLASSES, Preprocessing, ReleasedWeights, hash_prefix_of

__all__ = ["WeightsError", "LoadReport", "weights_home", "released_weights", "list_released", "download",
           "read_state_dict", "register_state_dict_adapter", "adapt_state_dict", "load_state_dict_strict",
           "load_released_weights", "class_names", "SOURCES"]

SOURCES = ("torchvision", "timm")

StateDict = dict[str, torch.Tensor]


class WeightsError(ValueError):
    """A checkpoint could not be found, fetched, trusted, read or fitted to the model."""


# ----------------------------------------------------------------------------- the table
def released_weights(name: str, source: str = "torchvision", tag: str | None = None) -> ReleasedWeights:
    """The released checkpoint of model ``name`` from ``source``: its default, or the one ``tag`` names."""
    if source not in SOURCES:
        raise WeightsError(f"weights source must be one of {SOURCES}, a file path or an https:// URL; "
                           f"got {source!r}")
    candidates = [w for w in RELEASED if w.model == name and w.source == source]
    if not candidates:
        others = sorted({w.source for w in RELEASED if w.model == name})
        hint = (f"; {name} has released weights from: {', '.join(others)}" if others else
                f"; {name} has no released weights in canon's table (only torchvision- and "
                f"timm-compatible models do)")
        raise WeightsError(f"no {source} weights for {name}{hint}")
    if tag is None:
        return next(w for w in candidates if w.default)
    for w in candidates:
        if w.tag == tag:
            return w
    raise WeightsError(f"{name}: no {source} weights tagged {tag!r}; "
                       f"available: {', '.join(w.tag for w in candidates)}")


def list_released(source: str | None = None) -> list[ReleasedWeights]:
    """Every entry of the table (of one ``source``), in table order."""
    return [w for w in RELEASED if source is None or w.source == source]


def class_names(categories: str) -> list[str]:
    """The class names of a category set: ``"imagenet-1k"`` (1,000) or ``"voc"`` (21), in class-index order.

    ImageNet's are shipped as ``canon/data/imagenet_classes.txt``, one per line, transcribed from
    torchvision's ``torchvision/models/_meta.py`` (``_IMAGENET_CATEGORIES``, the names its
    weights' ``meta["categories"]`` carry; it disambiguates the two "crane"s as "crane bird" (134)
    and "crane" (517), and the two "maillot"s as "maillot" and "maillot tank suit").
    """
    if categories == "imagenet-1k":
        path = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"
        names = path.read_text(encoding="utf-8").splitlines()
        if len(names) != 1000:
            raise WeightsError(f"{path}: expected 1000 class names, found {len(names)}; the file is damaged")
        return names
    if categories == "voc":
        return list(VOC_CLASSES)
    raise WeightsError(f"unknown category set {categories!r}; known: 'imagenet-1k', 'voc'")


# ----------------------------------------------------------------------------- download
def weights_home() -> Path:
    """``$CANON_HOME/weights`` when ``CANON_HOME`` is set, else ``~/.cache/canon/weights``."""
    root = os.environ.get("CANON_HOME")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "canon"
    return base / "weights"


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not re.match(r"^https?://[^/]+/.+", url):
        raise WeightsError(f"expected an http:// or https:// URL naming a file, got {url!r}")


def _cache_name(url: str) -> str:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    if hash_prefix_of(name):
        return name  # torchvision-style names are unique by construction
    # generic names (e.g. "model.safetensors") get the URL's digest so two sources never collide
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _hash_checker(sha256: str | None, hash_prefix: str | None) -> Callable[[Path], str | None]:
    def verify(path: Path) -> str | None:
        actual = sha256_of_file(path)
        if sha256 is not None and actual != sha256.lower():
            return f"SHA-256 {actual}, expected {sha256.lower()}"
        if hash_prefix is not None and not actual.startswith(hash_prefix.lower()):
            return f"SHA-256 {actual}, expected one starting with {hash_prefix.lower()}"
        return None

    return verify


def download(url: str, sha256: str | None = None, hash_prefix: str | None = None,
             cache_dir: str | os.PathLike | None = None, progress: bool = True, *,
             check_hash: bool = True) -> Path:
    """The cached file for ``url``, downloaded first if it is not in the cache.

    Args:
        url: ``http(s)://.../NAME``; the file is cached as ``NAME`` (generic names get a prefix).
        sha256: the full hex digest the file must have. hash_prefix: or the first 8+ hex digits
            of it (torchvision's file names carry one: ``resnet50-11ad3fa6.pth``).
        cache_dir: default :func:`weights_home`. progress: a tqdm bar on stderr.
        check_hash: with neither hash known, the file is refused unless this is ``False``.

    Raises:
        WeightsError: no hash to check against, the transfer failed or was cut short, or the
            bytes do not match (the message names the URL, the expected and the actual hash).
            Nothing is left in the cache in any of these cases.
    """
    _check_url(url)
    if check_hash and sha256 is None and hash_prefix is None:
        raise WeightsError(f"{url}: no SHA-256 is known for this file, so its content cannot be checked; "
                           f"pass sha256=... (or hash_prefix=...), or check_hash=False to trust it as is")
    for value, what, lengths in ((sha256, "sha256", (64,)), (hash_prefix, "hash_prefix", range(8, 65))):
        if value is not None and (not re.fullmatch(r"[0-9a-fA-F]+", value) or len(value) not in lengths):
            raise WeightsError(f"{what} must be {'64' if what == 'sha256' else '8 to 64'} hex digits, got {value!r}")
    verify = _hash_checker(sha256, hash_prefix) if check_hash else (lambda path: None)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else weights_home()
    dest = folder / _cache_name(url)
    if dest.is_file():
        if verify(dest) is None:
            return dest
        dest.unlink()  # a damaged cached copy is fetched again
    try:
        return download_file([url], dest, verify, progress=progress,
                             hint="Check the network and the URL, or download the file yourself and pass "
                                  "its path as the weights")
    except DataError as exc:
        raise WeightsError(str(exc)) from None


# ----------------------------------------------------------------------------- reading
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> tuple[StateDict, dict]:
    """Tensors of a checkpoint file, and its metadata (safetensors only; ``{}`` otherwise).

    ``.safetensors`` files are read with safetensors. Every other file goes through
    ``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only: a
    pickled class instance or function is refused, never run. A file holding
    ``{"model": state_dict, ...}`` (DeiT's, a training checkpoint) is unwrapped at ``key`` or,
    with ``key=None``, at the first of ``state_dict``, ``model``, ``model_state_dict``, ``module``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    metadata: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path}: refused to load: the file holds Python objects other than tensors "
                               f"and plain containers, and canon reads .pth files with "
                               f"torch.load(weights_only=True) only ({first})") from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable PyTorch file ({type(exc).__name__}: {exc}); "
                               f"was it truncated?") from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = [key] if key is not None else [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
        if not keys or keys[0] not in obj:
            raise WeightsError(f"{path}: expected a state_dict (names -> tensors) or one wrapped under "
                               f"{key or ' / '.join(_WRAPPER_KEYS)!r}; found a dict with keys "
                               f"{sorted(map(str, obj))[:8]}")
        obj = obj[keys[0]]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: expected a non-empty state_dict (names -> tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} entries are not tensors, e.g. {bad[:3]}")
    return dict(obj), metadata


# ----------------------------------------------------------------------------- key adapters
@dataclass(frozen=True)
class _Adapter:
    pattern: str  # fnmatch pattern over canon model names
    description: str
    rename: Callable[[str], str]


_ADAPTERS: list[_Adapter] = []


def register_state_dict_adapter(pattern: str, rename: Callable[[str], str], description: str) -> None:
    """Rename keys of checkpoints loaded into models whose name matches ``pattern`` (fnmatch).

    ``rename(key) -> key`` must leave canon's own key names unchanged, so a checkpoint already in
    canon's layout passes through. The detection models register torchvision's v1 names here.
    """
    _ADAPTERS.append(_Adapter(pattern, description, rename))


# DenseNet: torchvision's released files predate the rule that module names hold no ".", and name
# a dense layer's parts "norm.1", "relu.1", "conv.1", "norm.2", ... (torchvision's _load_state_dict
# renames them on load; canon's names are norm1, conv1, norm2, conv2 as in torchvision's modules).
_DENSENET_LEGACY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
register_state_dict_adapter("densenet*", lambda key: _DENSENET_LEGACY.sub(r"\1\2.", key),
                            "DenseNet legacy names: denselayerN.norm.1 -> denselayerN.norm1")

# ViT: the released files predate torchvision's MLP refactor (vision#6053) and name the encoder
# MLP's linear layers mlp.linear_1 / mlp.linear_2, now mlp.0 / mlp.3 (MLPBlock._load_from_state_dict).
_VIT_LEGACY = re.compile(r"(encoder_layer_\d+\.mlp)\.linear_([12])\.")
register_state_dict_adapter("vit_*", lambda key: _VIT_LEGACY.sub(
    lambda m: f"{m.group(1)}.{3 * (int(m.group(2)) - 1)}.", key),
    "ViT legacy names: mlp.linear_1 -> mlp.0, mlp.linear_2 -> mlp.3")


def adapt_state_dict(name: str, state: StateDict) -> tuple[StateDict, list[str]]:
    """``state`` with the registered renames for model ``name`` applied, and a note per adapter that acted."""
    notes = []
    for adapter in _ADAPTERS:
        if not fnmatch.fnmatch(name, adapter.pattern):
            continue
        renamed = {adapter.rename(k): v for k, v in state.items()}
        if len(renamed) != len(state):
            raise WeightsError(f"{name}: the rename '{adapter.description}' maps two keys to one name")
        changed = sum(1 for k in state if adapter.rename(k) != k)
        if changed:
            notes.append(f"renamed {changed} keys ({adapter.description})")
        state = renamed
    return state, notes


# ----------------------------------------------------------------------------- fitting
# Heads that a model may be built without, and a checkpoint may still carry.
OPTIONAL_HEADS = {"googlenet": ("aux1.", "aux2."), "fcn_resnet*": ("aux_classifier.",),
                  "deeplabv3_resnet*": ("aux_classifier.",), "deeplabv2_*": ("aux_classifier.",)}


@dataclass
class LoadReport:
    """What :func:`load_state_dict_strict` changed on the way in."""

    dropped_classifier: list[str] = field(default_factory=list)  # num_classes differs
    dropped_optional: list[str] = field(default_factory=list)  # auxiliary heads the model lacks
    filled: list[str] = field(default_factory=list)  # BN num_batches_tracked absent from old files
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"dropped_classifier": self.dropped_classifier, "dropped_optional": self.dropped_optional,
                "filled": len(self.filled), "notes": self.notes}


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state_dict_strict(model: nn.Module, state: StateDict, *, name: str | None = None) -> LoadReport:
    """Load ``state`` into ``model`` with ``strict=True``, after checking every key and shape.

    Accepted and reported (in the returned :class:`LoadReport`, and as a ``UserWarning`` for the
    classifier): the classifier of a checkpoint with a different number of classes — keys whose
    shapes differ from the model's only in the first dimension, all ``C_file`` versus
    ``C_model`` — is dropped and keeps the model's initialisation; keys of an auxiliary head the
    model was built without (``OPTIONAL_HEADS``) are dropped; BatchNorm ``num_batches_tracked``
    counters that pre-0.4.1 files lack are set to 0, as torch's BatchNorm does itself.
    Anything else that does not fit raises :class:`WeightsError` listing the missing, unexpected
    and mis-shaped keys; the model is not modified in that case.
    """
    name = name or getattr(model, "canon_name", type(model).__name__)
    own = model.state_dict()
    state = dict(state)
    report = LoadReport()

    optional = [p for pattern, prefixes in OPTIONAL_HEADS.items() if fnmatch.fnmatch(name, pattern)
                for p in prefixes]
    for prefix in optional:
        if not any(k.startswith(prefix) for k in own):
            dropped = [k for k in state if k.startswith(prefix)]
            for k in dropped:
                del state[k]
            if dropped:
                report.dropped_optional += dropped
                report.notes.append(f"dropped {len(dropped)} keys of {prefix.rstrip('.')} "
                                    f"(the model was built without it)")

    for k in own:
        module_prefix = k[:-len("num_batches_tracked")]
        if k.endswith(".num_batches_tracked") and k not in state and module_prefix + "running_mean" in state:
            state[k] = torch.zeros((), dtype=torch.long)
            report.filled.append(k)
    if report.filled:
        report.notes.append(f"set {len(report.filled)} BatchNorm num_batches_tracked counters to 0 "
                            f"(absent from the file)")

    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    head = _classifier_change(mismatched, state, own)
    if head is not None:
        from_classes, to_classes = head
        for k in mismatched:
            del state[k]
        report.dropped_classifier = mismatched
        message = (f"{name}: the checkpoint has {from_classes} classes and the model {to_classes}; kept every "
                   f"weight but the classifier ({_listing(mismatched)}), which stays freshly initialised")
        report.notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        mismatched = []

    missing = [k for k in own if k not in state and k not in report.dropped_classifier]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            parts.append(f"{len(mismatched)} keys of another shape: {_listing(shapes, 4)}")
        raise WeightsError(f"the checkpoint does not fit {name}: " + "; ".join(parts) +
                           ". Is it a checkpoint of this model, built with the same arguments?")

    for k in report.dropped_classifier:
        state[k] = own[k]  # the model's own fresh classifier, so strict loading sees every key
    model.load_state_dict(state, strict=True)
    return report


def _classifier_change(mismatched: list[str], state: StateDict, own: StateDict) -> tuple[int, int] | None:
    """``(C_file, C_model)`` if every mis-shaped key differs only in its first dimension, the same way."""
    if not mismatched:
        return None
    pairs = set()
    for k in mismatched:
        a, b = tuple(state[k].shape), tuple(own[k].shape)
        if len(a) != len(b) or not a or a[1:] != b[1:]:
            return None
        pairs.add((a[0], b[0]))
    return pairs.pop() if len(pairs) == 1 else None


# ----------------------------------------------------------------------------- one call
def _parse_source(source: str) -> tuple[str, str | None]:
    kind, _, tag = source.partition(":")
    return kind, tag or None


def load_released_weights(name: str, source: str = "torchvision", *, sha256: str | None = None,
                          check_hash: bool = True, cache_dir: str | os.PathLike | None = None,
                          progress: bool = True) -> tuple[StateDict, dict]:
    """The state_dict of a checkpoint for model ``name``, in canon's key names, and what is known about it.

    Args:
        name: a canon model name (it selects the table entry and the key renames).
        source: ``"torchvision"`` or ``"timm"`` (the publisher's default checkpoint for ``name``),
            ``"torchvision:IMAGENET1K_V1"`` (a tagged one), an ``https://`` URL, or a local file.
        sha256: for a URL, the digest the file must have (otherwise the hash prefix in its name,
            if it has one, or ``check_hash=False``).
        check_hash, cache_dir, progress: as in :func:`download`.

    Returns:
        ``(state_dict, meta)``; ``meta`` holds ``model``, ``source``, ``tag``, ``url``, ``path``,
        ``sha256`` (of the file read), ``preprocessing`` (a dict, ``None`` when unknown),
        ``categories``, ``num_classes``, ``num_params``, ``metrics``, ``origin``, ``notes`` and
        ``model_kwargs`` (arguments the model must be built with for these weights).
        A local file or URL whose hash matches a table entry for ``name`` gets that entry's facts.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise WeightsError(f"weights must be 'torchvision', 'timm', a path or an https:// URL, got {source!r}")
    source = os.fspath(source)
    kind, tag = _parse_source(source)
    entry: ReleasedWeights | None = None
    if kind in SOURCES:
        entry = released_weights(name, kind, tag)
        path = download(entry.url, sha256=entry.sha256, hash_prefix=entry.hash_prefix, cache_dir=cache_dir,
                        progress=progress, check_hash=check_hash)
        url = entry.url
    elif re.match(r"^https?://", source):
        path = download(source, sha256=sha256, hash_prefix=None if sha256 else hash_prefix_of(source),
                        cache_dir=cache_dir, progress=progress, check_hash=check_hash)
        url = source
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path} (weights= takes 'torchvision', 'timm', "
                               f"a file path or an https:// URL)")
        url = None
    digest = sha256_of_file(Path(path))
    if entry is None:  # a file we were handed: is it one the table knows?
        entry = next((w for w in RELEASED if w.model == name and w.hash_prefix and digest.startswith(w.hash_prefix)),
                     None)
    state, file_meta = read_state_dict(path, key=entry.state_dict_key if entry else None)
    state, notes = adapt_state_dict(name, state)
    meta = {
        "model": name, "source": entry.source if entry else ("url" if url else "file"),
        "tag": entry.tag if entry else None, "url": url or (entry.url if entry else None), "path": str(path),
        "sha256": digest, "preprocessing": entry.preprocessing.to_dict() if entry else None,
        "categories": entry.categories if entry else None, "num_classes": entry.num_classes if entry else None,
        "num_params": entry.num_params if entry else None, "metrics": dict(entry.metrics) if entry else {},
        "origin": entry.origin if entry else None, "notes": ([entry.notes] if entry and entry.notes else []) + notes,
        "model_kwargs": dict(entry.model_kwargs) if entry else {},
    }
    if entry is None and file_meta.get("format", "").startswith("canon-checkpoint") and file_meta.get("model") != name:
        raise WeightsError(f"{path} was saved from model {file_meta.get('model')!r}, not {name!r}")
    return state, meta


def preprocessing_of(meta: dict) -> Preprocessing | None:
    """The :class:`Preprocessing` recorded in a ``meta`` dict (or ``model.canon_preprocessing``)."""
    p = meta.get("preprocessing", meta) if meta else None
    if not p or "resize" not in p:
        return None
    return Preprocessing(resize=p["resize"], crop=p["crop"], interpolation=p["interpolation"],
                         mean=tuple(p["mean"]), std=tuple(p["std"]))
