"""The segmentation task: overlap-tile prediction against direct convolution of the mirrored
image (numpy's reflect padding), and train / eval / predict through the CLI on ISBI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from canon.tasks.segmentation import predict_full_image, predict_overlap_tile


class ValidConv(nn.Module):
    """A one-layer 'valid-convolution network': 5x5 unpadded conv, tiles 20 -> 16."""

    tile_size, tile_output_size = 20, 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 5)

    def forward(self, x):
        return self.conv(x)


def test_overlap_tile_equals_convolving_the_mirrored_image():
    torch.manual_seed(0)
    model = ValidConv().eval()
    image = torch.rand(1, 37, 29)
    stitched = predict_overlap_tile(model, image)
    mirrored = torch.from_numpy(np.pad(image.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect"))
    expected = F.conv2d(mirrored[None], model.conv.weight, model.conv.bias)[0]
    assert stitched.shape == (3, 37, 29)
    assert torch.allclose(stitched, expected, atol=1e-5)


def test_same_size_tiles_equal_a_pointwise_model_everywhere():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()
    image = torch.rand(3, 70, 50)
    expected = model(image[None])[0]
    assert torch.allclose(predict_overlap_tile(model, image, tile_size=32), expected, atol=1e-6)
    assert torch.allclose(predict_full_image(model, image), expected, atol=1e-6)


@pytest.mark.slow
def test_train_eval_predict_through_the_cli(shared_data, tmp_path):
    isbi = shared_data / "isbi-membrane"
    if not (isbi / "train" / "label" / "0.png").is_file():
        pytest.skip(f"ISBI membrane data not found in {isbi}")
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "canon"]
    data = f"isbi-membrane:{isbi}"
    subprocess.run(cli + ["train", "unet", "--data", data, "--epochs", "1", "--max-steps-per-epoch", "1",
                          "--batch-size", "2", "--input-size", "64,64", "--model-arg", "base_channels=4",
                          "--model-arg", "depth=2", "--model-arg", "tile_size=128",  # overlap-tile evaluation
                          "--out", str(run), "--quiet"], check=True, capture_output=True)
    from canon.engine.checkpoint import load_model

    assert load_model(str(run / "best.safetensors"))[0].tile_size == 128  # the option survives the checkpoint
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test_pixel_accuracy"] <= 1.0 and "test_miou" in metrics
    subprocess.run(cli + ["eval", str(run), "--data", data, "--json"], check=True, capture_output=True)
    result = json.loads((run / "eval.json").read_text())
    assert set(result["per_class"]) == {"cell", "membrane"}
    assert (run / "predictions.png").stat().st_size > 0
    out = subprocess.run(cli + ["predict", str(run / "best.safetensors"), str(isbi / "test" / "image" / "0.png"),
                                "--save-dir", str(tmp_path / "pred")], check=True, capture_output=True, text=True)
    assert "areas" in out.stdout
    from PIL import Image

    with Image.open(tmp_path / "pred" / "0_overlay.png") as overlay:
        assert overlay.size == (512, 512) and overlay.mode == "RGB"


def test_valid_convolution_loss_uses_the_centre_of_the_mask():
    from canon.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    model = ValidConv()
    images, masks = torch.rand(2, 1, 20, 20), torch.randint(0, 3, (2, 20, 20))
    masks[0, 0, 0] = 255  # ignored, and outside the centre anyway
    loss = SegmentationTask().compute_loss(model, (images, masks))
    expected = F.cross_entropy(model(images), masks[:, 2:-2, 2:-2], ignore_index=255)
    assert torch.allclose(loss, expected)


def test_classification_data_for_a_segmentation_model_is_refused_with_the_specs():
    from canon.tasks.segmentation import SegmentationTask

    from canon.engine import RunInfo, TrainConfig

    run = RunInfo(config=TrainConfig(model="unet", data="digits"), device=torch.device("cpu"))
    with pytest.raises(ValueError, match="classification dataset.*isbi-membrane:DIR.*coco-person:DIR"):
        SegmentationTask().build_data(run)


def test_eval_of_test_images_of_different_sizes(tmp_path):
    """COCO's val images differ in size: `canon eval` must not batch them (it once collated 256)."""
    import numpy as np
    from PIL import Image

    from canon.tasks import evaluate_checkpoint, train

    root = tmp_path / "voc"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a": (24, 32), "b": (32, 20), "c": (28, 28)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = Image.fromarray((rng.random((h, w)) > 0.5).astype(np.uint8) * 15, mode="P")
        mask.putpalette([v for i in range(256) for v in (i, i, i)])
        mask.save(root / "SegmentationClass" / f"{name}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(sizes) + "\n")
    run = tmp_path / "run"
    train("unet", data=f"voc-seg:{root}", epochs=1, batch_size=2, max_steps_per_epoch=1, input_size=(16, 16),
          model_kwargs={"base_channels": 4, "depth": 2}, out=str(run), progress=False)
    result = evaluate_checkpoint(str(run), data=f"voc-seg:{root}", batch_size=256, out_dir=str(tmp_path / "eval"))
    assert 0.0 <= result["test_pixel_accuracy"] <= 1.0
    assert (tmp_path / "eval" / "eval.json").is_file()


def test_loss_from_bfloat16_logits_is_computed_in_float32():
    """Under `--amp` a model returns bfloat16 logits; CE + Dice (sums over every pixel) must come out as
    if computed in float32 from those same values, not with bfloat16's 3 significant digits."""
    from canon.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    logits = (torch.randn(2, 3, 64, 64) * 3).to(torch.bfloat16)
    masks = torch.randint(0, 3, (2, 64, 64))

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    task = SegmentationTask(loss="ce+dice")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = task.compute_loss(Fixed(logits), (torch.zeros(2, 1, 64, 64), masks))
    expected = task.compute_loss(Fixed(logits.double()), (torch.zeros(2, 1, 64, 64), masks))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-6, atol=1e-6)
