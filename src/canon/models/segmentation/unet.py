"""U-Net: a contracting path that captures context and a symmetric expanding path for localisation.

O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597.

Follows the paper:
* contracting path: repeated two 3x3 convolutions, each followed by ReLU, then 2x2 max pooling
  with stride 2; channels double at each downsampling (64, 128, 256, 512, 1024 at ``depth=4``);
* expanding path: a 2x2 up-convolution that halves the channels, concatenation with the
  correspondingly cropped feature map of the contracting path, two 3x3 convolutions with ReLU;
  a final 1x1 convolution to ``num_classes``;
* ``unet_paper``: unpadded ("valid") convolutions, so a 572x572 tile gives a 388x388 map; large
  images are predicted tile by tile with the overlap-tile strategy (``tile_size = 572``,
  ``tile_output_size = 388``; see :func:`canon.engine.segmentation.predict_overlap_tile`);
* weights drawn from a Gaussian with std sqrt(2/N), N the incoming nodes of a neuron (He init).

Deviates, and why:
* ``unet`` pads its convolutions (output size = input size, no crop), which is how U-Net is used
  almost everywhere since; it has batch normalisation after each convolution by default (not in
  the 2015 paper, which predates wide BN use) for stable training from scratch with small batches;
* ``upsampling="bilinear"`` replaces the learned up-convolution by bilinear upsampling followed by a
  1x1 convolution that halves the channels (a common lighter variant);
* the paper's dropout at the end of the contracting path and its border-weight map are left out
  (the weight map is a loss choice; class weights are available through the engine).

Not torchvision/timm-layout compatible (neither library has a U-Net).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from canon.models._validate import check_image_input
from canon.registry import register_model

__all__ = ["UNet", "unet", "unet_paper", "valid_unet_output_size"]

PAPER = "U-Net: Convolutional Networks for Biomedical Image Segmentation (Ronneberger et al., 2015, arXiv:1505.04597)"
UPSAMPLING = ("transpose", "bilinear")


def valid_unet_output_size(size: int, depth: int) -> int | None:
    """Output side of a valid-convolution U-Net for an input side ``size``, or None when some
    max-pooling would see an odd side (the tile is then not usable). 572 -> 388 at depth 4."""
    for _ in range(depth):
        size -= 4  # two 3x3 valid convolutions
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4  # bottom double convolution
    for _ in range(depth):
        size = size * 2 - 4  # up-convolution, then two 3x3 valid convolutions
    return size if size > 0 else None


class DoubleConv(nn.Sequential):
    """(conv3x3 -> [BN] -> ReLU) x 2; ``padding=0`` shrinks each side by 4 pixels in total."""

    def __init__(self, in_chs: int, out_chs: int, padding: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (in_chs, out_chs):
            layers.append(nn.Conv2d(c_in, out_chs, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_chs))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Upsample by 2 halving the channels, crop-and-concatenate the skip, then a DoubleConv."""

    def __init__(self, in_chs: int, out_chs: int, padding: int, batch_norm: bool, upsampling: str):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose2d(in_chs, out_chs, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_chs, out_chs, kernel_size=1))
        self.conv = DoubleConv(2 * out_chs, out_chs, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, out, 2h, 2w)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        skip = skip[..., dh // 2:dh // 2 + x.shape[-2], dw // 2:dw // 2 + x.shape[-1]]  # centre crop
        return self.conv(torch.cat([skip, x], dim=1))  # (N, out, 2h, 2w)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; the widest map has ``base_channels * 2**depth`` channels.

    Args:
        in_chans, num_classes: input channels and output classes (logits per pixel).
        base_channels: channels after the first block (64 in the paper).
        depth: number of 2x2 poolings (4 in the paper).
        padding: True for same-size output; False for the paper's valid convolutions.
        upsampling: "transpose" (the paper's 2x2 up-convolution) or "bilinear".
        batch_norm: BN after each convolution.
        tile_size: input tile for overlap-tile prediction; required to be a valid tile for
            ``padding=False`` (572 for the paper); for a padded net, None predicts whole images.
    """

    def __init__(self, *, in_chans: int = 3, num_classes: int = 2, base_channels: int = 64, depth: int = 4,
                 padding: bool = True, upsampling: str = "transpose", batch_norm: bool = True,
                 tile_size: int | None = None):
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {upsampling!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be a positive int, got {base_channels!r}")
        self.in_chans, self.num_classes, self.depth, self.padding = in_chans, num_classes, depth, padding
        pad = 1 if padding else 0
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_chans if i == 0 else widths[i - 1], widths[i], pad, batch_norm) for i in range(depth)])
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = DoubleConv(widths[depth - 1], widths[depth], pad, batch_norm)
        self.decoder = nn.ModuleList(
            [UpBlock(widths[i + 1], widths[i], pad, batch_norm, upsampling) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        if padding:
            if tile_size is not None:
                if tile_size % 2 ** depth:
                    raise ValueError(f"tile_size must be a multiple of 2**depth = {2 ** depth}, got {tile_size}")
                self.tile_size = tile_size
        else:
            tile_size = 572 if tile_size is None else tile_size
            out = valid_unet_output_size(tile_size, depth)
            if out is None:
                raise ValueError(f"tile_size {tile_size} is not a valid input for a valid-convolution U-Net of "
                                 f"depth {depth} (every pooled side must be even)")
            self.tile_size, self.tile_output_size = tile_size, out
        self._model_name = "unet" if padding else "unet_paper"
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # std sqrt(2/N)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int | None:
        """Output side for an input side ``size`` (same for padded nets when divisible)."""
        if self.padding:
            return size if size % 2 ** self.depth == 0 else None
        return valid_unet_output_size(size, self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            check_image_input(x, in_chans=self.in_chans, min_size=2 ** self.depth, model_name=self._model_name,
                              multiple_of=2 ** self.depth)
        else:
            check_image_input(x, in_chans=self.in_chans, min_size=1, model_name=self._model_name)
            for side in x.shape[-2:]:
                if valid_unet_output_size(side, self.depth) is None:
                    raise ValueError(f"{self._model_name}: input side {side} is not valid for valid convolutions at "
                                     f"depth {self.depth} (e.g. {self.tile_size} -> {self.tile_output_size}); "
                                     f"got shape {tuple(x.shape)}")
        skips = []
        for block in self.encoder:
            x = block(x)  # (N, base*2^i, h, w)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)  # (N, base*2^depth, h/2^depth, w/2^depth)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = block(x, skip)
        return self.head(x)  # (N, num_classes, H', W')


@register_model(UNet, task="segmentation", paper=PAPER, input_size=(3, 256, 256), num_classes=2)
def unet(**kwargs) -> UNet:
    return UNet(**{"padding": True, **kwargs})


@register_model(UNet, task="segmentation", paper=PAPER, input_size=(1, 572, 572), num_classes=2)
def unet_paper(**kwargs) -> UNet:
    return UNet(**{"in_chans": 1, "padding": False, "batch_norm": False, "base_channels": 64, "depth": 4,
                   "upsampling": "transpose", **kwargs})
