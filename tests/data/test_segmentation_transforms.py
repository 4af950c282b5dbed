"""Paired transforms keep image and mask aligned; warps checked against torch's own rot90/flip."""
from __future__ import annotations

import pytest
import torch

from canon.data import segmentation_transforms as ST
from canon.data.segmentation import SegmentationInfo


def _blocks(size=64, block=16, classes=4) -> tuple[torch.Tensor, torch.Tensor]:
    """A piecewise-constant image whose value is its mask's class, so alignment is visible."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((ys // block + 2 * (xs // block)) % classes).long()
    return mask.float()[None], mask


def test_rotation_grid_by_90_degrees_equals_rot90():
    image, mask = _blocks(33, 5)
    image = image + torch.rand_like(image) * 0.1  # not symmetric
    rotated, rotated_mask = ST.warp(image, mask, ST.rotation_grid(90.0, 33, 33))
    # The grid samples src = R^T dst: at +90 degrees that is torch.rot90 with k=1 over (H, W).
    assert torch.allclose(rotated, torch.rot90(image, k=1, dims=(1, 2)), atol=1e-4)
    assert torch.equal(rotated_mask, torch.rot90(mask, k=1, dims=(0, 1)))


def test_elastic_field_has_the_papers_coarse_gaussian_std():
    gen = torch.Generator().manual_seed(0)
    fields = torch.stack([ST.elastic_displacement(9, 9, sigma=10.0, generator=gen) for _ in range(400)])
    # align_corners=True: the 3x3 lattice points are sampled exactly at rows/cols 0, 4, 8
    lattice_px = fields[:, ::4, ::4, 0] * (9 - 1) / 2  # back to pixels
    assert lattice_px.std().item() == pytest.approx(10.0, rel=0.08)
    assert lattice_px.mean().abs().item() < 1.0


@pytest.mark.parametrize("in_chans", [1, 3])
def test_training_pipeline_keeps_image_and_mask_aligned(in_chans):
    torch.manual_seed(0)
    image, mask = _blocks(96, 16, classes=2)  # a checkerboard: blends stay within the two classes
    image = image.expand(in_chans, -1, -1).clone()
    info = SegmentationInfo(name="blocks", num_classes=4, in_chans=in_chans, image_size=(96, 96),
                            class_names=list("abcd"), mean=(0.0,) * in_chans, std=(1.0,) * in_chans)
    tf = ST.default_transforms(info, (48, 48), train=True)
    for _ in range(5):
        out_image, out_mask = tf(image, mask)
        assert out_image.shape == (in_chans, 48, 48) and out_mask.shape == (48, 48)
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3}
        # Bilinear (image) and nearest (mask) may disagree only on block edges: every pixel's
        # rounded image value must be one of the mask's classes in its 3x3 neighbourhood.
        neighbours = torch.nn.functional.unfold(out_mask[None, None].float(), 3, padding=1)[0]  # (9, 48*48)
        value = out_image[0].round().flatten()
        assert (neighbours == value).any(0).all()
        assert (value == out_mask.flatten()).float().mean() > 0.85


def test_eval_pipeline_only_normalises():
    image, mask = _blocks(40, 10)
    info = SegmentationInfo(name="blocks", num_classes=4, in_chans=1, image_size=(40, 40),
                            class_names=list("abcd"), mean=(0.5,), std=(2.0,))
    out_image, out_mask = ST.default_transforms(info, (16, 16), train=False)(image, mask)
    assert torch.equal(out_mask, mask)
    assert torch.allclose(out_image, (image - 0.5) / 2.0)


def test_random_crop_pads_small_images_with_the_ignore_index():
    image, mask = _blocks(10, 5)
    out_image, out_mask = ST.random_crop(image, mask, (16, 16), ignore_index=255)
    assert out_image.shape == (1, 16, 16) and (out_mask == 255).sum() == 16 * 16 - 100


def test_mismatched_pair_is_rejected():
    with pytest.raises(ValueError, match=r"\(1, 8, 8\) and \(7, 8\)"):
        ST.PairedTransform(mean=(0.0,), std=(1.0,))(torch.zeros(1, 8, 8), torch.zeros(7, 8, dtype=torch.long))
