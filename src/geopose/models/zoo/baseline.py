"""The official baseline of the Overhead Geopose Challenge (pubgeo/monocular-geocentric-pose,
``UnetVFLOW``), run exactly.

Architecture (segmentation-models-pytorch 0.2.0 at publication, composed here from smp's
encoder and ``UnetDecoder``): a U-Net on ``resnet34`` (decoder channels 256, 128, 64, 32, 16,
batch norm, no attention) with three heads:

- ``xydir_head``: global average pool of the deepest encoder map, flatten, dropout 0.5,
  linear -> 2 values ``(x, y) = (sin a, cos a)``, unnormalised;
- ``height_head`` / ``mag_head``: a 3×3 conv on the decoder output -> AGL (m) / MAG (px);
- the scale (px/m) has no weights: the least-squares fit of MAG on AGL over the whole map,
  ``scale = <height, mag> / (<height, height> + 0.01)``.

Published file: ``model_best.pth``, a bare ``torch.save(model.state_dict())`` (no prefix), which
the authors load strictly.

Input contract, as the authors' test pipeline (``utilities/ml_utils.py: test``, ``main.py``,
README: ``--downsample=2``) feeds the model:

- RGB (gdal band order, no swap), ``x / 255`` (smp's ``preprocess_input`` divides only when the
  tile's max is > 1), then ImageNet mean/std per channel;
- **half resolution**: the tile is shrunk by 2 with ``cv2.resize(..., INTER_NEAREST)`` (for an
  exact factor 2 this keeps the even rows and columns, ``x[..., ::2, ::2]``). Their training
  tiles were shrunk with cv2's default bilinear instead (``utilities/downsample_images.py``),
  so the model has seen 2×2 means, yet it is run on the nearest-neighbour tiles;
- no GSD, no city.

Outputs and post-processing, all mapped back to the input resolution here:

- AGL: clipped at 0 m (``agl[agl < 0] = 0``), then upsampled ×2 with nearest neighbour
  (``cv2.resize INTER_NEAREST``); the clip applies in eval mode only, so fine-tuning sees the
  raw head;
- scale: the half-resolution scale × 2 (the pipeline's ``scale * args.downsample``), px/m;
- MAG: not written by the authors' pipeline; here 2 × the half-resolution MAG, upsampled with
  nearest neighbour (px at full resolution);
- direction: ``unit(xydir)``; their angle is ``arctan2(x, y)`` in (−π, π].
- No TTA and no ensemble in the baseline pipeline.

Differences from their pipeline, all outside the real 2048×2048 tiles: for a non-square tile
their ``cv2.resize(img, (H/2, W/2))`` swaps width and height (cv2's size is (W, H)); here both
sides are halved as meant. Inputs are padded (reflect) to a multiple of 64 so that the
half-resolution map fits the encoder's stride 32; the least-squares scale then also sees the
padding.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import GeoposeDataError
from geopose.models.heads import unit
from geopose.models.zoo.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Container,
    Family,
    PublishedModel,
    count_indices,
    normalise,
    pooled_linear_head,
    register_family,
    ridge_scale,
    state_dict_at,
    strip_prefix,
)
from geopose.schema import Opt
from geopose.types import GeoposeOutput

DECODER_CHANNELS = (256, 128, 64, 32, 16)
RESNETS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
"""smp ResNet encoders: blocks per stage and whether a block has ``conv3`` (bottleneck); the
published baseline is resnet34, the others are the ``--backbone`` choices of the same code."""
_HEAD_KEYS = ("xydir_head.3.weight", "height_head.0.weight", "mag_head.0.weight")


class BaselineModel(PublishedModel):
    """The pubgeo ``UnetVFLOW`` (keys as published) behind geopose's model contract."""

    family: ClassVar[str] = "baseline"
    divisor = 64
    uses_gsd = False
    uses_city = False

    options: ClassVar[dict[str, Opt]] = {
        "encoder": Opt(
            "resnet34",
            "str",
            "smp ResNet encoder (the authors' --backbone)",
            choices=tuple(RESNETS),
        ),
        "downsample": Opt(
            2, "int", "the network reads every n-th row and column (the authors' 2)", min=1
        ),
    }

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        config = self.config
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
        from segmentation_models_pytorch.encoders import get_encoder

        self.downsample = int(config["downsample"])
        self.divisor = 32 * self.downsample
        self.encoder = get_encoder(config["encoder"], in_channels=3, depth=5, weights=None)
        channels = list(self.encoder.out_channels)
        self.decoder = UnetDecoder(
            encoder_channels=channels,
            decoder_channels=DECODER_CHANNELS,
            n_blocks=5,
            use_norm="batchnorm",
            attention_type=None,
            add_center_block=False,
        )
        self.xydir_head = pooled_linear_head(channels[-1], 2)
        self.height_head = nn.Sequential(nn.Conv2d(DECODER_CHANNELS[-1], 1, 3, padding=1))
        self.mag_head = nn.Sequential(nn.Conv2d(DECODER_CHANNELS[-1], 1, 3, padding=1))

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB B×3×H×W in [0, 1] -> the network's input: every ``downsample``-th row and
        column (cv2 INTER_NEAREST for an integer factor), ImageNet-normalised."""
        s = self.downsample
        x = image[..., ::s, ::s] if s > 1 else image
        return normalise(x.contiguous(), IMAGENET_MEAN, IMAGENET_STD)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The original forward on a preprocessed input -> ``(xydir B×2, height B×1×h×w,
        mag B×1×h×w, scale B)`` at the network's resolution."""
        features = self.encoder(x)
        dec = self.decoder(features)
        xydir = self.xydir_head(features[-1])
        height = self.height_head(dec)
        mag = self.mag_head(dec)
        return xydir, height, mag, ridge_scale(mag, height)

    def run(self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor) -> GeoposeOutput:
        xydir, height, mag, scale = self.raw(self.preprocess(image))
        agl = height if self.training else height.clamp_min(0.0)
        s = self.downsample
        if s > 1:
            size = image.shape[-2:]
            agl = F.interpolate(agl, size=size, mode="nearest")
            mag = F.interpolate(mag, size=size, mode="nearest")
        return GeoposeOutput(agl, mag * s, unit(xydir), scale * s)


def identify_encoder(state: dict, path) -> str:
    """The smp ResNet whose blocks the ``encoder.*`` keys hold, else a GeoposeDataError."""
    blocks = tuple(count_indices(state, rf"encoder\.layer{i}\.(\d+)\.") for i in range(1, 5))
    bottleneck = "encoder.layer1.0.conv3.weight" in state
    for name, spec in RESNETS.items():
        if spec == (blocks, bottleneck):
            return name
    raise GeoposeDataError(
        path,
        f"baseline layout, but its encoder is no smp ResNet ({', '.join(RESNETS)}): "
        f"blocks per stage {blocks}",
    )


@register_family
class BaselineFamily(Family):
    """pubgeo's baseline ``model_best.pth``: a bare state dict with xydir/height/mag heads."""

    name: ClassVar[str] = "baseline"
    description: ClassVar[str] = (
        "official baseline (pubgeo UnetVFLOW, smp U-Net resnet34, half resolution)"
    )
    model = BaselineModel

    @classmethod
    def state_of(cls, container: Container) -> dict | None:
        state = state_dict_at(container.obj) if container.kind == "pickle" else None
        if state is not None and all(k.startswith("module.") for k in state):
            state = strip_prefix(state, "module.")
        return state

    @classmethod
    def matches(cls, container: Container) -> bool:
        state = cls.state_of(container)
        return state is not None and all(k in state for k in _HEAD_KEYS)

    @classmethod
    def config_of(cls, container: Container, state: dict) -> dict:
        return {"encoder": identify_encoder(state, container.path)}
