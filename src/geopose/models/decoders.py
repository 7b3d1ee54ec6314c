"""UNet decoders over encoder feature pyramids.

Both decoders start from the deepest encoder map and, one block per ×2 step, upsample, join the
encoder map of the same stride (skip connection) and convolve, until ``output_stride`` (4 or 2)
is reached. ``kind="unet"`` upsamples by nearest neighbour as in segmentation_models_pytorch's
UNet; ``kind="residual_deconv"`` upsamples with a transposed convolution plus a bilinear
shortcut and refines with a residual block (the 2nd place's "residual deconvolutions").
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError
from geopose.schema import Opt


class ConvBnAct(nn.Sequential):
    """3×3 (or k×k) convolution, batch norm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UnetBlock(nn.Module):
    """Nearest ×2 upsampling, concatenation with the skip map, two ConvBnAct."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_ch + skip_ch, out_ch)
        self.conv2 = ConvBnAct(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class ResidualDeconvBlock(nn.Module):
    """Transposed-conv ×2 upsampling with a bilinear+1×1 shortcut, skip concat, residual block."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.conv1 = ConvBnAct(out_ch + skip_ch, out_ch)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.deconv(x) + self.shortcut(up)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.conv1(x)
        return self.act(x + self.conv2(x))


BLOCKS = {"unet": UnetBlock, "residual_deconv": ResidualDeconvBlock}


class UnetDecoder(nn.Module):
    """UNet decoder from the encoder's deepest stride down to ``output_stride``.

    Args:
        encoder_channels: channels of the encoder maps, shallowest first.
        encoder_reductions: their strides (px of input per px of map), shallowest first.
        channels: output channels of each block, deepest first; the first
            ``log2(encoder stride / output_stride)`` entries are used.
        output_stride: stride of the decoder's output map (4 or 2 for the geopose heads).
        kind: ``"unet"`` or ``"residual_deconv"``.

    :attr:`options`: the keys of a ``model.decoder`` section.
    """

    options: ClassVar[dict[str, Opt]] = {
        "kind": Opt("unet", "str", "decoder block", choices=tuple(BLOCKS)),
        "channels": Opt([256, 128, 64, 32], "ints", "block channels, deepest first", min=1),
        "output_stride": Opt(4, "int", "stride of the decoder map (a power of 2)", min=1),
    }

    def __init__(
        self,
        encoder_channels: list[int],
        encoder_reductions: list[int],
        channels: list[int],
        output_stride: int = 4,
        kind: str = "unet",
    ) -> None:
        super().__init__()
        if kind not in BLOCKS:
            raise ConfigError(f"unknown decoder kind {kind!r}; choose one of {sorted(BLOCKS)}")
        deepest = encoder_reductions[-1]
        if output_stride < 1 or deepest % output_stride or output_stride & (output_stride - 1):
            raise ConfigError(
                f"decoder output_stride {output_stride}: need a power of 2 ≤ {deepest}"
            )
        n_blocks = int(round(math.log2(deepest // output_stride)))
        if len(channels) < n_blocks:
            raise ConfigError(
                f"decoder channels {channels} too short: {n_blocks} blocks go from stride "
                f"{deepest} to {output_stride}"
            )
        by_stride = dict(zip(encoder_reductions, range(len(encoder_reductions)), strict=True))
        block_cls = BLOCKS[kind]
        self.kind = kind
        self.output_stride = output_stride
        self.skip_index: list[int] = []  # -1 = no skip at that stride
        blocks = []
        in_ch = encoder_channels[-1]
        stride = deepest
        for out_ch in channels[:n_blocks]:
            stride //= 2
            idx = by_stride.get(stride, -1)
            self.skip_index.append(idx)
            blocks.append(block_cls(in_ch, encoder_channels[idx] if idx >= 0 else 0, out_ch))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_ch if n_blocks else encoder_channels[-1]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Encoder maps (shallowest first) -> B×out_channels×H/s×W/s, s = output_stride."""
        x = feats[-1]
        for block, idx in zip(self.blocks, self.skip_index, strict=True):
            x = block(x, feats[idx] if idx >= 0 else None)
        return x
