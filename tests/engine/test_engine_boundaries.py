"""What the engine promises beyond the loop: it imports no task, it runs where --device says, it
writes TensorBoard scalars when asked, and `import canon` reaches every subpackage."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import canon
from canon.engine import resolve_device

SRC = Path(canon.__file__).parent

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_engine_imports_no_task_and_no_cli():
    for path in sorted((SRC / "engine").glob("*.py")):
        bad = {n for n in _imports(path) if n.startswith(("canon.tasks", "canon.cli"))}
        assert not bad, f"{path.name} imports {bad}: the engine must not know any task"


def test_tasks_import_the_engine_not_the_cli():
    for path in sorted((SRC / "tasks").glob("*.py")):
        assert not {n for n in _imports(path) if n.startswith("canon.cli")}, path.name


def test_import_canon_reaches_every_subpackage_like_torchvision():
    code = ("import canon; canon.ops.nms; canon.losses.sigmoid_focal_loss; canon.metrics.ssim; canon.layers.MultiHeadAttention; "
            "canon.data.build_dataset; canon.tasks.train; canon.engine.Trainer; canon.train; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    with pytest.raises(AttributeError, match="canon has no attribute 'nope'"):
        canon.nope  # noqa: B018


def test_device_auto_cpu_and_a_missing_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: torch sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_train_eval_predict_run_on_the_chosen_device(tmp_path, device):
    from PIL import Image

    from canon.tasks import evaluate_checkpoint, predict_images, train

    seen = set()
    original = torch.nn.Conv2d.forward

    def spy(self, x):
        seen.add((x.device.type, self.weight.device.type))
        return original(self, x)

    torch.nn.Conv2d.forward = spy
    try:
        metrics = train("lenet5", data="digits", epochs=1, max_steps_per_epoch=3, batch_size=16, device=device,
                        out=str(tmp_path / "run"), progress=False)
        result = evaluate_checkpoint(str(tmp_path / "run"), data="digits", device=device)
        Image.new("L", (8, 8), 128).save(tmp_path / "digit.png")
        prediction = predict_images(str(tmp_path / "run"), [str(tmp_path / "digit.png")], device=device)
    finally:
        torch.nn.Conv2d.forward = original
    assert seen == {(device, device)}
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert len(prediction[0]["top"]) == 5


def test_tensorboard_gets_step_and_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from canon.tasks import train

    train("lenet5", data="digits", epochs=2, max_steps_per_epoch=3, batch_size=16, tensorboard=True,
          out=str(tmp_path / "run"), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"step/lr", "epoch/train_loss", "epoch/test_accuracy"} <= tags
    assert [e.step for e in events.Scalars("step/lr")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("epoch/test_accuracy")] == [1, 2]
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    last_accuracy = float(history[-1].split(",")[history[0].split(",").index("test_accuracy")])
    assert events.Scalars("epoch/test_accuracy")[-1].value == pytest.approx(last_accuracy, rel=1e-6)
