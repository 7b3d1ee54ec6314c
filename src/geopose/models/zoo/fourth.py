"""4th place of the Overhead Geopose Challenge (kbrodt, drivendataorg/overhead-geopose-challenge,
``4th Place``), run exactly.

Architecture (``utilities/unet_vflow.py: UnetVFLOW(encoder, use_city=True)``, segmentation-models-
pytorch 0.2.0 at publication, composed here from smp's encoder and ``UnetDecoder``): a U-Net on
``senet154``, ``efficientnet-b6`` or ``efficientnet-b7`` (decoder channels 256, 128, 64, 32, 16,
batch norm, no attention) where the city one-hot (ARG, ATL, JAX, OMA) and the GSD (m/px) are
appended as 5 constant channels to the deepest encoder map, which both the decoder (its first
block has 5 more input channels) and the pooled head see. Heads:

- ``scale_xydir_head``: global average pool of that map, flatten, dropout 0.5, linear -> 3 rows
  ``[scale (px/m), x, y]`` with ``(x, y) = (sin a, cos a)`` unnormalised;
- ``height_head``: one 3×3 conv on the decoder output -> AGL (m);
- ``mag = scale * height`` (px): no head of its own.

Published files (``chkps_dist/senet154/2_city_finetune/model_best_957.pt``,
``efficientnet-b6/1_aug_ft_unet/model_best_483.pt``, ``efficientnet-b7/2_aug_ft_unet/
model_best_525.pt``): TorchScript archives (a trace of the model inside apex's
DistributedDataParallel); their ``state_dict()`` keys are ``module.`` + the eager keys. The
backbone is recognised from the keys: ``encoder.layer0.conv1`` -> senet154, ``encoder._conv_stem``
-> EfficientNet, whose variant follows from its stem width and number of ``_blocks``.

Input contract, as the authors' test pipeline feeds the model (``utilities/test.py``,
``test.sh``):

- RGB, ``x / 255`` (smp's ``preprocess_input`` divides only when the tile's max is > 1), then
  ImageNet mean/std per channel (``get_preprocessing_fn("senet154", "imagenet")``);
- full resolution: trained on 512×512 crops, run on the whole 2048×2048 tile; inputs are padded
  (reflect) to a multiple of 32;
- GSD: the raw metadata value in m/px, as a B×1×1×1 map; city: the one-hot B×4×1×1 in the order
  ARG, ATL, JAX, OMA (``geopose.types.CITIES``), from the metadata's city;
- no log-AGL (``--to-log`` is off in the published ``test.sh``).

Outputs and post-processing here:

- AGL: clipped to [0, 200] m, [0, 100] m for ARG (their ``MAX_HEIGTS``, city taken from the file
  name), in eval mode only so that fine-tuning sees the raw head;
- MAG: ``scale * AGL`` (px), the clipped AGL in eval mode, i.e. what the submitted AGL and scale
  imply; in train mode this is the original's ``mag`` exactly;
- scale: the head's value, px/m at full resolution, not clipped;
- direction: ``unit(xydir)``; their angle is ``arctan2(x, y)`` in (−π, π].

The authors' submission (``test.sh``) averages the three published models (raw xydir, AGL before
the clip, scale) without TTA (``TTA=1``; their code also offers flip and rot90 TTA for
``--tta`` 2, 3, 4, 8). Here each file is one model; ensembling is the caller's business.

Unknown city (``-1``): the model was only ever trained and run with a one-hot city; an all-zero
one-hot is an input it never saw. So for such a sample the encoder runs once and the decoder and
heads run once per city, and xydir, height and scale are the mean of the four (the same
averaging the authors apply across their models); MAG is that scale times that height, and the
clip is 200 m (the 100 m of ARG needs the city). This costs three more decoder passes for those
samples only.

Differences from their code, outside the square tiles they use: the original expands the
city/GSD maps to ``(size, size)`` of the deepest map and fails on non-square inputs; here they
fill the map's own height and width.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import GeoposeDataError
from geopose.models.heads import unit
from geopose.models.zoo.base import (
    CITY_ORDER,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Container,
    Family,
    PublishedModel,
    count_indices,
    normalise,
    pooled_linear_head,
    register_family,
    state_dict_at,
    strip_prefix,
)
from geopose.schema import Opt
from geopose.types import GeoposeOutput

DECODER_CHANNELS = (256, 128, 64, 32, 16)
N_EXTRA = len(CITY_ORDER) + 1
"""Channels appended to the deepest encoder map: the city one-hot and the GSD."""
MAX_AGL = 200.0
MAX_AGL_CITY = {"ARG": 100.0}
"""AGL clip (m) of the authors' test pipeline, per city; MAX_AGL for the others and unknown."""
EFFICIENTNETS = {
    (32, 16): "efficientnet-b0",
    (32, 23): "efficientnet-b1",
    (40, 26): "efficientnet-b3",
    (48, 32): "efficientnet-b4",
    (48, 39): "efficientnet-b5",
    (56, 45): "efficientnet-b6",
    (64, 55): "efficientnet-b7",
}
"""smp EfficientNet encoders by (stem width, number of MBConv blocks); b1 and b2 share both and
are told apart by the width of the last stage (320 vs 352)."""
ENCODERS = ("senet154", *(f"efficientnet-b{i}" for i in range(8)))
SENET154_BLOCKS = (3, 8, 36, 3)
_HEAD_KEYS = ("scale_xydir_head.3.weight", "height_head.weight")


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis for an input of ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_as_published(encoder: nn.Module) -> None:
    """Give every static-"SAME" conv of an smp EfficientNet encoder the padding that
    efficientnet-pytorch 0.6.3 (the version the published models ran on) gives it.

    0.6.3 computes each block's fixed padding from the network's nominal image size (528 for b6,
    600 for b7) for every block; newer versions (and smp's copy) from the block's own feature
    size. Both agree except for stride-2 convs whose nominal input size is odd (b6: the 5×5
    entering stride 32; b7: the 3×3 entering stride 16), where the 0.6.3 padding is one pixel
    more on the bottom/right than on the top/left.
    """
    size = getattr(getattr(encoder, "_global_params", None), "image_size", None)
    if size is None:
        return
    h, w = (size, size) if isinstance(size, int) else size
    for module in encoder.modules():
        if not hasattr(module, "static_padding") or not isinstance(module, nn.Conv2d):
            continue
        (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
        top, bottom = tf_same_padding(h, kh, sh, dh)
        left, right = tf_same_padding(w, kw, sw, dw)
        if top or bottom or left or right:
            module.static_padding = nn.ZeroPad2d((left, right, top, bottom))
        else:
            module.static_padding = nn.Identity()


def city_onehot(city: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """City index B (0..3, no -1) -> one-hot B×4 in :data:`CITY_ORDER`."""
    return F.one_hot(city.long(), len(CITY_ORDER)).to(dtype)


def _as_column(v: torch.Tensor, batch: int, width: int) -> torch.Tensor:
    """B, B×k or B×k×1×1 -> B×k."""
    return v.reshape(batch, -1)[:, :width] if v.dim() > 1 else v.reshape(batch, 1)


class FourthModel(PublishedModel):
    """kbrodt's ``UnetVFLOW(use_city=True)`` (keys as published, less ``module.``) behind
    geopose's model contract."""

    family: ClassVar[str] = "fourth"
    divisor = 32
    uses_gsd = True
    uses_city = True

    options: ClassVar[dict[str, Opt]] = {
        "encoder": Opt("senet154", "str", "smp encoder of the published files", choices=ENCODERS),
    }

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        config = self.config
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder(config["encoder"], in_channels=3, depth=5, weights=None)
        pad_as_published(self.encoder)
        channels = list(self.encoder.out_channels)
        channels[-1] += N_EXTRA
        self.decoder = UnetDecoder(
            encoder_channels=channels,
            decoder_channels=DECODER_CHANNELS,
            n_blocks=5,
            use_norm="batchnorm",
            attention_type=None,
            add_center_block=False,
        )
        self.height_head = nn.Conv2d(DECODER_CHANNELS[-1], 1, 3, padding=1)
        self.scale_xydir_head = pooled_linear_head(channels[-1], 3)
        limits = [MAX_AGL_CITY.get(c, MAX_AGL) for c in CITY_ORDER] + [MAX_AGL]
        self.register_buffer("agl_max", torch.tensor(limits), persistent=False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB B×3×H×W in [0, 1] -> the network's input (ImageNet-normalised RGB)."""
        return normalise(image, IMAGENET_MEAN, IMAGENET_STD)

    def decode(
        self, features: list[torch.Tensor], onehot: torch.Tensor, gsd: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Encoder features, city one-hot B×4, GSD B (m/px) -> ``(xydir B×2, height B×1×H×W,
        mag B×1×H×W, scale B)``, the original's outputs."""
        deep = features[-1]
        b, _, h, w = deep.shape
        extra = torch.cat([onehot.to(deep.dtype), gsd.to(deep.dtype).reshape(b, 1)], dim=1)
        deep = torch.cat([deep, extra[:, :, None, None].expand(-1, -1, h, w)], dim=1)
        features = [*features[:-1], deep]
        scale, xydir = torch.split(self.scale_xydir_head(deep), (1, 2), dim=1)
        height = self.height_head(self.decoder(features))
        mag = scale[:, :, None, None] * height
        return xydir, height, mag, scale.squeeze(1)

    def raw(
        self, x: torch.Tensor, onehot: torch.Tensor, gsd: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The original forward ``model((x, city, gsd))`` on a preprocessed input; ``onehot``
        B×4 (or B×4×1×1), ``gsd`` B (or B×1×1×1) m/px."""
        b = x.shape[0]
        onehot = _as_column(onehot, b, len(CITY_ORDER))
        return self.decode(self.encoder(x), onehot, _as_column(gsd, b, 1))

    def _city_mean(self, features: list[torch.Tensor], gsd: torch.Tensor) -> tuple:
        """The four cities' outputs averaged (xydir, height, scale; mag = scale × height)."""
        b = features[-1].shape[0]
        outs = []
        for c in range(len(CITY_ORDER)):
            city = torch.full((b,), c, dtype=torch.long, device=gsd.device)
            outs.append(self.decode(features, city_onehot(city, gsd.dtype), gsd))
        xydir, height, _, scale = (torch.stack(t).mean(0) for t in zip(*outs, strict=True))
        return xydir, height, scale[:, None, None, None] * height, scale

    def pose(self, x: torch.Tensor, city: torch.Tensor, gsd: torch.Tensor) -> tuple:
        """:meth:`raw` with city indices B (long, -1 unknown: the mean over the four cities)."""
        features = self.encoder(x)
        known = city >= 0
        if bool(known.all()):
            return self.decode(features, city_onehot(city, x.dtype), gsd)
        if not bool(known.any()):
            return self._city_mean(features, gsd)
        k, u = known.nonzero().squeeze(1), (~known).nonzero().squeeze(1)
        a = self.decode([f[k] for f in features], city_onehot(city[k], x.dtype), gsd[k])
        b = self._city_mean([f[u] for f in features], gsd[u])
        back = torch.argsort(torch.cat([k, u]))
        return tuple(torch.cat([ta, tb])[back] for ta, tb in zip(a, b, strict=True))

    def run(self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor) -> GeoposeOutput:
        xydir, height, _, scale = self.pose(self.preprocess(image), city, gsd)
        agl = height
        if not self.training:
            limit = self.agl_max.to(height.dtype)[city.clamp(-1, len(CITY_ORDER) - 1)]
            agl = torch.minimum(height.clamp_min(0.0), limit[:, None, None, None])
        mag = scale[:, None, None, None] * agl
        return GeoposeOutput(agl, mag, unit(xydir), scale)


def identify_encoder(state: dict, path) -> str:
    """The smp encoder the ``encoder.*`` keys belong to (senet154 or an EfficientNet)."""
    if "encoder.layer0.conv1.weight" in state:
        blocks = tuple(count_indices(state, rf"encoder\.layer{i}\.(\d+)\.") for i in range(1, 5))
        stem = tuple(state["encoder.layer0.conv1.weight"].shape)
        if blocks == SENET154_BLOCKS and stem == (64, 3, 3, 3):
            return "senet154"
        problem = f"an SE-Net encoder other than senet154 (blocks {blocks}, stem {stem})"
    elif "encoder._conv_stem.weight" in state:
        stem = int(state["encoder._conv_stem.weight"].shape[0])
        n = count_indices(state, r"encoder\._blocks\.(\d+)\.")
        name = EFFICIENTNETS.get((stem, n))
        if (stem, n) == (32, 23):
            last = state.get(f"encoder._blocks.{n - 1}._project_conv.weight")
            name = "efficientnet-b2" if last is not None and last.shape[0] == 352 else name
        if name is not None:
            return name
        problem = f"an EfficientNet of no known size (stem width {stem}, {n} blocks)"
    else:
        problem = "an encoder that is neither senet154 nor an EfficientNet"
    raise GeoposeDataError(path, f"4th place layout, but {problem}")


@register_family
class FourthFamily(Family):
    """kbrodt's TorchScript archives: ``module.`` + smp U-Net keys, ``scale_xydir_head`` and a
    conv ``height_head``."""

    name: ClassVar[str] = "fourth"
    description: ClassVar[str] = (
        "4th place (kbrodt, smp U-Net senet154 / efficientnet-b6 / -b7, city and GSD in the "
        "bottleneck)"
    )
    model = FourthModel

    @classmethod
    def state_of(cls, container: Container) -> dict | None:
        state = state_dict_at(container.obj) if container.kind == "pickle" else container.obj
        if not state:
            return None
        if all(isinstance(k, str) and k.startswith("module.") for k in state):
            state = strip_prefix(state, "module.")
        return dict(state)

    @classmethod
    def matches(cls, container: Container) -> bool:
        state = cls.state_of(container)
        return state is not None and all(k in state for k in _HEAD_KEYS)

    @classmethod
    def config_of(cls, container: Container, state: dict) -> dict:
        return {"encoder": identify_encoder(state, container.path)}
