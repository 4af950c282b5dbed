"""Released checkpoints: the table, the download cache, safe reading, key renames and strict loading.

No internet: a loopback HTTP server (127.0.0.1, a free port, a daemon thread, short timeouts)
serves checkpoint files written the way torchvision writes its own — ``torch.save`` of a plain
state_dict with torchvision's key names, including DenseNet's legacy ``norm.1`` names, which the
test writes from the rule torchvision documents (``_load_state_dict`` in densenet.py), not from
canon's code. References: torchvision's published ``num_params`` and URLs, hashlib's SHA-256,
Pillow's resize, and the tensors of the model the file was written from.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import canon
import canon.data.download
import canon.weights.loading as loading
from canon.weights import (RELEASED, Preprocessing, WeightsError, adapt_state_dict, class_names, download,
                           hash_prefix_of, load_released_weights, load_state_dict_strict, preprocess, read_state_dict,
                           released_weights)


# ----------------------------------------------------------------------------- loopback server
class _Server:
    """Serves ``files`` (name -> bytes); ``truncate`` names are cut off halfway through the body."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.truncate:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # the connection drops mid-body
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, data: bytes, stem: str, suffix: str = ".pth", hashed: bool = True) -> str:
        """Publish ``data`` as ``stem-<sha256[:8]>.pth`` (torchvision's naming); return its URL."""
        name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}{suffix}" if hashed else stem + suffix
        self.files[name] = data
        return f"{self.url}/{name}"


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setattr(canon.data.download, "TIMEOUT_S", 5)
    monkeypatch.setenv("CANON_HOME", str(tmp_path / "home"))
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    s.thread.join(timeout=5)


def _cache_files(tmp_path) -> list[Path]:
    folder = tmp_path / "home" / "weights"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)  # torchvision's files: torch.save of a plain state_dict
    return buffer.getvalue()


# ----------------------------------------------------------------------------- torchvision-format files
def _torchvision_densenet_keys(state: dict) -> dict:
    """canon's (== torchvision's module) names -> the names in torchvision's released DenseNet files.

    The rule torchvision documents: inside ``denselayerN`` the parts were ``norm.1``, ``relu.1``,
    ``conv.1``, ``norm.2``, ``relu.2``, ``conv.2``; the files (ported from LuaTorch in 2017) also
    have no BatchNorm ``num_batches_tracked`` counters.
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if ".denselayer" in key:
            for part in ("norm", "conv"):
                for i in ("1", "2"):
                    key = key.replace(f".{part}{i}.", f".{part}.{i}.")
        out[key] = value.clone()
    return out


# densenet121's layout and key names at a reduced width and depth, so files stay ~100 kB; the
# full-size key mapping is checked separately on the meta device.
SMALL_DENSENET = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    model = canon.create_model("densenet121", **SMALL_DENSENET).eval()
    with torch.no_grad():  # non-trivial running statistics and classifier, so a wrong key shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.classifier.weight.normal_(0, 0.05)
    legacy = _torchvision_densenet_keys(model.state_dict())
    return model, _saved(legacy), legacy


def _use_entry(monkeypatch, model: str, url: str, **changes) -> None:
    """Point the table's default torchvision entry for ``model`` at the loopback URL."""
    table = tuple(dataclasses.replace(w, url=url, **changes) if (w.model == model and w.default) else w
                  for w in RELEASED)
    monkeypatch.setattr(loading, "RELEASED", table)


# ----------------------------------------------------------------------------- the table
def test_every_compatible_model_has_its_publishers_checkpoint():
    # classification and segmentation here; the detectors register theirs with their models
    for name in canon.list_models(task="classification") + canon.list_models(task="segmentation"):
        source = canon.model_info(name).compatible_with
        if source is None:
            continue
        entry = released_weights(name, source)
        assert entry.default and entry.model == name and entry.source == source
        assert re.fullmatch(r"[0-9a-f]{8}", entry.hash_prefix), entry.url
        assert entry.url.startswith(("https://download.pytorch.org/models/", "https://dl.fbaipublicfiles.com/deit/"))
    for w in RELEASED:
        assert canon.model_info(w.model).compatible_with == w.source
        assert w.sha256 is not None or w.hash_prefix is not None
        assert sum(v.default for v in RELEASED if (v.model, v.source) == (w.model, w.source)) == 1


def test_parameter_counts_equal_torchvision_published_num_params():
    # torchvision's meta["num_params"]: googlenet counted without its auxiliary heads (torchvision
    # deletes them after loading), the segmentation models with their auxiliary FCN head.
    checked = set()
    for w in RELEASED:
        if w.num_params is None or w.model in checked or canon.model_info(w.model).task == "detection":
            continue
        checked.add(w.model)
        kwargs = ({"aux_logits": False} if w.model == "googlenet" else
                  {"aux_loss": True} if w.categories == "voc" else {})
        with torch.device("meta"):
            model = canon.create_model(w.model, **kwargs)
        assert sum(p.numel() for p in model.parameters()) == w.num_params, w.model
    assert len(checked) == 29


def test_lookup_errors_name_what_exists():
    with pytest.raises(WeightsError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        released_weights("resnet50", "torchvision", "IMAGENET1K_V3")
    with pytest.raises(WeightsError, match="only torchvision- and timm-compatible"):
        released_weights("lenet5", "torchvision")
    with pytest.raises(WeightsError, match="from: torchvision"):
        released_weights("resnet50", "timm")
    assert released_weights("resnet50").tag == "IMAGENET1K_V2"
    assert released_weights("resnet50").preprocessing == Preprocessing(resize=232, crop=224)


def test_hash_prefix_follows_torch_hub_naming():
    assert hash_prefix_of("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth") == "7be5be79"
    assert hash_prefix_of("resnet50-11ad3fa6.pth") == "11ad3fa6"
    assert hash_prefix_of("model-best.pth") is None and hash_prefix_of("model.safetensors") is None


def test_imagenet_class_names():
    names = class_names("imagenet-1k")
    assert len(names) == 1000 and len(set(names)) == 1000
    # ILSVRC-2012 class indices, as torchvision's _IMAGENET_CATEGORIES orders them
    assert (names[0], names[1], names[207], names[281], names[409], names[817], names[954], names[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "analog clock", "sports car", "banana", "toilet tissue")
    assert names[134] == "crane bird" and names[517] == "crane"  # torchvision's disambiguation
    assert class_names("voc")[15] == "person" and len(class_names("voc")) == 21


# ----------------------------------------------------------------------------- download and cache
def test_torchvision_densenet_end_to_end_and_cache_hit(server, densenet, monkeypatch, tmp_path):
    model, data, _ = densenet
    url = server.add(data, "densenet121")
    _use_entry(monkeypatch, "densenet121", url)
    loaded = canon.create_model("densenet121", weights="torchvision", **SMALL_DENSENET).eval()
    assert server.requests == [url.rsplit("/", 1)[1]]
    assert [p.name for p in _cache_files(tmp_path)] == [url.rsplit("/", 1)[1]]
    # every tensor where the legacy name says it belongs (running statistics included)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.canon_preprocessing == {"resize": 256, "crop": 224, "interpolation": "bilinear",
                                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                          "categories": "imagenet-1k"}
    meta = loaded.canon_weights
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["tag"] == "IMAGENET1K_V1"
    assert any("denselayerN.norm.1" in n for n in meta["notes"])
    assert any("num_batches_tracked" in n for n in meta["notes"])

    state, meta = load_released_weights("densenet121", "torchvision")  # second call: from the cache
    assert len(server.requests) == 1 and meta["path"] == str(_cache_files(tmp_path)[0])
    assert torch.equal(state["classifier.weight"], model.classifier.weight)


def test_full_size_densenet121_legacy_names_map_onto_canon_keys():
    with torch.device("meta"):
        model = canon.create_model("densenet121")
    own = model.state_dict()
    legacy = _torchvision_densenet_keys(own)
    assert any(".denselayer1.norm.1.weight" in k for k in legacy)
    adapted, notes = adapt_state_dict("densenet121", legacy)
    assert set(adapted) == {k for k in own if not k.endswith("num_batches_tracked")} and notes


def test_tampered_file_is_refused_and_not_cached(server, densenet, monkeypatch, tmp_path):
    _, data, _ = densenet
    url = server.add(data, "densenet121")
    name = url.rsplit("/", 1)[1]
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    server.files[name] = bytes(tampered)
    _use_entry(monkeypatch, "densenet121", url)
    actual = hashlib.sha256(tampered).hexdigest()
    with pytest.raises(WeightsError) as info:
        canon.create_model("densenet121", weights="torchvision", **SMALL_DENSENET)
    message = str(info.value)
    assert url in message and actual in message and f"starting with {name[-12:-4]}" in message
    assert _cache_files(tmp_path) == []  # no file, no leftover .part


def test_wrong_full_sha256_is_refused(server, tmp_path):
    url = server.add(_saved({"w": torch.ones(3)}), "plain", hashed=False)
    with pytest.raises(WeightsError, match="expected " + "0" * 64):
        download(url, sha256="0" * 64)
    assert _cache_files(tmp_path) == []


def test_interrupted_transfer_leaves_nothing(server, densenet, monkeypatch, tmp_path):
    _, data, _ = densenet
    url = server.add(data, "densenet121")
    server.truncate.add(url.rsplit("/", 1)[1])
    with pytest.raises(WeightsError, match=r"transfer interrupted: received [\d,]+ of [\d,]+ bytes"):
        download(url, hash_prefix=hash_prefix_of(url), progress=False)
    assert _cache_files(tmp_path) == []
    # the same failure with the hash check off: the short body is still not accepted
    with pytest.raises(WeightsError, match="transfer interrupted"):
        download(url, check_hash=False, progress=False)
    assert _cache_files(tmp_path) == []


def test_a_file_without_a_known_hash_needs_check_hash_false(server, tmp_path):
    url = server.add(_saved({"w": torch.ones(3)}), "weights", hashed=False)
    with pytest.raises(WeightsError, match="check_hash=False"):
        download(url)
    assert server.requests == []
    path = download(url, check_hash=False, progress=False)
    assert torch.equal(read_state_dict(path)[0]["w"], torch.ones(3))
    with pytest.raises(WeightsError, match="http:// or https://"):
        download("ftp://example.org/x.pth")


def test_url_source_uses_the_hash_in_its_name(server, densenet, tmp_path):
    model, data, _ = densenet
    url = server.add(data, "my_densenet")
    state, meta = load_released_weights("densenet121", url, progress=False)
    assert meta["source"] == "url" and meta["preprocessing"] is None  # not one of torchvision's files
    fresh = canon.create_model("densenet121", **SMALL_DENSENET)
    load_state_dict_strict(fresh, state)
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)


# ----------------------------------------------------------------------------- reading safely
class _Payload:
    ran: list = []

    def __reduce__(self):
        return (_Payload.ran.append, ("unpickled and ran",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "extra": _Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_state_dict(path)
    assert _Payload.ran == []  # the object's code never ran
    (tmp_path / "short.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="truncated"):
        read_state_dict(tmp_path / "short.pth")


def test_wrapped_state_dicts_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.save({"model": {"a": torch.ones(2)}, "epoch": 3}, tmp_path / "deit_style.pth")
    assert list(read_state_dict(tmp_path / "deit_style.pth")[0]) == ["a"]
    save_file({"a": torch.ones(2)}, str(tmp_path / "w.safetensors"), metadata={"format": "x"})
    state, meta = read_state_dict(tmp_path / "w.safetensors")
    assert torch.equal(state["a"], torch.ones(2)) and meta == {"format": "x"}
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------- fitting
def test_num_classes_change_keeps_all_but_the_classifier(densenet, tmp_path):
    model, _, legacy = densenet
    torch.save(legacy, tmp_path / "densenet121.pth")
    with pytest.warns(UserWarning, match="1000 classes and the model 10"):
        tuned = canon.create_model("densenet121", weights=str(tmp_path / "densenet121.pth"), num_classes=10,
                                   **SMALL_DENSENET)
    assert tuned.canon_weights["load"]["dropped_classifier"] == ["classifier.weight", "classifier.bias"]
    assert tuned.classifier.weight.shape == (10, model.num_features)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    for key, value in kept.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(tuned.state_dict()[key], value), key


def test_misfit_lists_missing_unexpected_and_shapes():
    model = canon.create_model("resnet18")
    state = dict(model.state_dict())
    del state["layer1.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    before = model.conv1.weight.clone()
    with pytest.raises(WeightsError) as info:
        load_state_dict_strict(model, state)
    message = str(info.value)
    assert "missing 1 keys: layer1.0.conv1.weight" in message and "unexpected 1 keys: layer9.weight" in message
    assert "conv1.weight (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message
    assert torch.equal(model.conv1.weight, before)  # nothing was loaded


def test_vit_legacy_mlp_names_are_renamed(tmp_path):
    torch.manual_seed(1)
    model = canon.create_model("vit_tiny_patch4_28").eval()
    with torch.no_grad():
        model.heads.head.weight.normal_()  # torchvision zero-initialises the head
    # torchvision's files before vision#6053: encoder_layer_N.mlp.linear_1 / linear_2 (now mlp.0 / mlp.3)
    legacy = {k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2."): v
              for k, v in model.state_dict().items()}
    assert any(".mlp.linear_1." in k for k in legacy)
    torch.save(legacy, tmp_path / "vit.pth")
    loaded = canon.create_model("vit_tiny_patch4_28", weights=tmp_path / "vit.pth").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_auxiliary_head_in_the_file_is_dropped_when_the_model_has_none(tmp_path):
    with_aux = canon.create_model("deeplabv3_resnet18", aux_loss=True)
    torch.save(with_aux.state_dict(), tmp_path / "seg.pth")
    plain = canon.create_model("deeplabv3_resnet18", weights=tmp_path / "seg.pth")
    assert plain.canon_weights["load"]["dropped_optional"]
    assert all(k.startswith("aux_classifier.") for k in plain.canon_weights["load"]["dropped_optional"])
    assert torch.equal(plain.classifier[4].weight, with_aux.classifier[4].weight)


def test_canon_checkpoint_of_another_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, str(tmp_path / "x.safetensors"),
              metadata={"format": "canon-checkpoint-1", "model": "lenet5"})
    with pytest.raises(WeightsError, match="saved from model 'lenet5'"):
        load_released_weights("resnet18", str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        canon.create_model("resnet18", weights="no/such/file.pth")


# ----------------------------------------------------------------------------- preprocessing
def test_preprocess_matches_pillow_resize_and_torchvision_crop():
    from PIL import Image

    rng = np.random.default_rng(0)
    # a smooth image (no aliasing), 300 x 400, so the two resamplers agree closely
    yy, xx = np.mgrid[0:300, 0:400]
    rgb = np.stack([127 + 100 * np.sin(xx / 23.0 + c) * np.cos(yy / 31.0) for c in range(3)], -1)
    rgb = np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    p = Preprocessing(resize=256, crop=224)
    out = preprocess(image, p)
    assert out.shape == (3, 224, 224)
    # reference: Pillow resizes the shorter side to 256 (300x400 -> 256x341), centre crop at
    # round((256-224)/2)=16, round((341-224)/2)=58 (torchvision's rule), then (x - mean) / std
    ref = np.asarray(image.resize((341, 256), Image.BILINEAR), dtype=np.float64) / 255
    ref = ref[16:240, 58:282]
    ref = (ref - np.array(p.mean)) / np.array(p.std)
    diff = np.abs(out.permute(1, 2, 0).numpy() - ref) * np.array(p.std) * 255  # in grey levels
    assert diff.mean() < 0.5 and diff.max() < 3, (diff.mean(), diff.max())
    with pytest.raises(TypeError, match="recorded none"):
        preprocess(image, None)


def test_canon_predict_with_released_weights_applies_their_preprocessing_and_names(server, densenet, monkeypatch,
                                                                                    tmp_path, capsys):
    """`canon predict MODEL --weights torchvision IMAGE`: the publisher's resize/crop/normalisation and
    the 1,000 ImageNet names, checked against running the model on canon.weights.preprocess by hand."""
    import json

    from PIL import Image

    from canon import cli
    from canon.weights import class_names, preprocess

    model, data, _ = densenet
    url = server.add(data, "densenet121")
    _use_entry(monkeypatch, "densenet121", url, model_kwargs=SMALL_DENSENET)
    rng = np.random.default_rng(0)
    image_path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(image_path)
    assert cli.main(["predict", "densenet121", "--weights", "torchvision", str(image_path), "--topk", "3",
                     "--device", "cpu", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    entry = next(w for w in loading.RELEASED if w.model == "densenet121" and w.default)
    x = preprocess(Image.open(image_path), entry.preprocessing)
    assert tuple(x.shape) == (3, 224, 224)
    with torch.no_grad():
        probabilities = model(x[None]).softmax(1)[0]
    expected = probabilities.topk(3)
    names = class_names("imagenet-1k")
    assert [t["class"] for t in top] == [names[i] for i in expected.indices.tolist()]
    assert [t["probability"] for t in top] == pytest.approx(expected.values.tolist(), abs=2e-3)  # Pillow vs tensors
    assert cli.main(["predict", "densenet121", str(image_path)]) == 2  # a name without --weights
    assert "give --weights" in capsys.readouterr().err
