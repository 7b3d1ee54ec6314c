"""2nd place of the Overhead Geopose Challenge: Eugene Khvedchenya ("bloodaxe"),
``GeoposeUNetModel`` (drivendataorg/overhead-geopose-challenge, folder ``2nd Place``).

Published variants (all the same class, the architecture read from the hydra config stored in
each Catalyst checkpoint under ``checkpoint_data.config.model``, never from the file name):

- ``b7_unet``: EfficientNet-B7 (``tf_efficientnet_b7_ns``, timm) features at strides 2..32, a
  U-Net decoder (192, 256, 384, 512) with bilinear upsampling and conv-BN-act blocks, the
  ``SimpleAGLHead`` (AGL and magnitude heads on the stride-2 decoder map, each upsampled by a
  residual deconvolution; the GSD enters the AGL head as a constant channel);
- ``b6_rdtsc_unet`` / ``b7_rdtsc_unet``: EfficientNet-B6 / -B7 features at strides 4..32, a
  U-Net decoder (256, 384, 512) of residual depthwise-separable blocks with residual
  deconvolution ("rdtsc") upsampling, and the ``AGLHead`` (two residual-deconvolution
  upsamplings of the stride-4 map, the GSD concatenated before the AGL convolutions).

All variants share the ``BasicOrientationHead`` (global average pool of the deepest encoder
map -> Linear -> act -> Linear -> an unnormalised (sin a, cos a) vector) and the closed-form
scale ``sum(agl * mag) / (sum(agl^2) + 0.01)`` (px/m) over the whole tile.

Input contract (inside :meth:`SecondPlaceUNet.run`, so callers pass geopose's RGB in [0, 1]):

- the authors read tiles with ``cv2.imread``, i.e. **BGR**, and apply ``A.Normalize`` with the
  ImageNet mean/std (RGB order vectors, ``max_pixel_value=255``) to that BGR array, so the mean
  and std of R are applied to the B channel and vice versa (``preprocess``);
- GSD is a (B, 1) float tensor in m/px;
- outputs: ``OUTPUT_AGL_MASK`` B×1×H×W (m), ``OUTPUT_MAGNITUDE_MASK`` B×1×H×W (px),
  ``OUTPUT_VFLOW_DIRECTION`` B×2 (sin a, cos a, unnormalised), ``OUTPUT_VFLOW_ANGLE`` B×1 in
  [0, 2π), ``OUTPUT_VFLOW_SCALE`` B×1 (px/m); all at the input resolution; the input must be a
  multiple of 32 (geopose pads).
- Their writer stores AGL as ``round(m * 100)`` uint16 cm without clipping (a negative AGL would
  wrap; geopose's predictor clips at 0) and the scale as px/m / 100 = px/cm.

Inference as published (``submit.py``, ``geopose/models/__init__.py``,
``geopose/models/tta/d4.py``, ``geopose/models/tta/geopose_tta.py``, pytorch-toolbelt
``inference/tta.py`` and ``inference/ensembling.py`` at 9e3a4b62), full 2048×2048 tiles, fp32:

- D4 TTA (``tta: d4``): the 8 rotations/transposes of the (square) tile, run one at a time; the
  AGL maps are rotated back and averaged; each direction is normalised, rotated back by the
  matching 2×2 matrix, normalised again and averaged, the angle recomputed from the mean; the
  scales are averaged, where toolbelt's ``d4_labels_deaugment`` stacks
  ``[b1, b2, b3, b4, b5, b7, b7, b8]`` (the 6th view's scale is replaced by the 7th's). The
  magnitude is not part of the TTA output.
- Ensembles (``GeoPoseEnsembler``, an equal-weight mean; directions normalised before averaging,
  the angle recomputed), as in ``configs/inference``:
  - ``fp32_0.8914_b7_fold0_b7_rdtsc_fold1_b6_rdtsc_fold9_bo3_d4.yaml`` (private 0.8914 per the
    README; its header says "0.9202 Private / 0.9183 Public"): 9 checkpoints, the last three
    epochs kept of each run: ``210709_07_54_b7_unet_fold0_train.{195,219,220}``,
    ``210715_01_21_b7_rdtsc_unet_fold1_train.{290,297,300}``,
    ``210714_15_13_b6_rdtsc_unet_fold9_train.{251,260,269}``; ``tta_mode: ensemble`` (D4
    around the 9-model mean).
  - ``fp32_0.8910_b7_fold0_b7_rdtsc_fold1_b6_rdtsc_fold89_bo1_d4.yaml`` (private 0.8910, public
    0.8896): 4 checkpoints, the best of each run: ``210709_07_54_b7_unet_fold0_best``,
    ``210715_01_21_b7_rdtsc_unet_fold1_best``, ``210717_03_07_b6_rdtsc_unet_fold8_best``,
    ``210714_15_13_b6_rdtsc_unet_fold9_best``; ``tta_mode: model`` (D4 inside each model, then
    the mean).
  All weights equal (mean); files from
  ``github.com/BloodAxe/DrivenData-2021-Geopose-Solution/releases/download/1.0/``.

The modules below are geopose's own small equivalents of the pytorch-toolbelt (fork at
9e3a4b62) encoder wrapper, U-Net decoder, blocks and upsampling, with the published state-dict
keys; the encoder is timm's ``tf_efficientnet_b*`` (TF "same" padding, BN eps 1e-3), which on
timm 1.x has exactly the timm 0.4.9 keys and maths.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError, GeoposeDataError
from geopose.models.heads import unit
from geopose.models.zoo.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Container,
    Family,
    PublishedModel,
    normalise,
    register_family,
    ridge_scale,
    state_dict_at,
)
from geopose.schema import Opt
from geopose.types import GeoposeOutput

OUTPUT_AGL_MASK = "OUTPUT_AGL_MASK"
OUTPUT_MAGNITUDE_MASK = "OUTPUT_MAGNITUDE_MASK"
OUTPUT_VFLOW_DIRECTION = "OUTPUT_VFLOW_DIRECTION"
OUTPUT_VFLOW_ANGLE = "OUTPUT_VFLOW_ANGLE"
OUTPUT_VFLOW_SCALE = "OUTPUT_VFLOW_SCALE"

MODEL_TARGET = "GeoposeUNetModel.from_config"
"""The model ``_target_`` (``geopose.models.geopose_unet.GeoposeUNetModel.from_config``)."""

# pytorch-toolbelt encoder class (and its ``B*Encoder`` alias) -> (timm model, drop-path rate
# of the toolbelt wrapper; it only matters when fine-tuning).
_DROP_PATH = (0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2)
ENCODERS: dict[str, tuple[str, float]] = {
    f"{prefix}B{i}Encoder": (f"tf_efficientnet_b{i}", rate)
    for prefix in ("Timm", "")
    for i, rate in enumerate(_DROP_PATH)
}
AGL_HEADS = ("SimpleAGLHead", "AGLHead")
ORIENTATION_HEADS = ("BasicOrientationHead",)
BLOCK_TYPES = ("unet", "residual_unet", "dense_unet")
UPSAMPLES = ("bilinear", "rdtsc")

# toolbelt activation names (parameter-free ones) -> torch modules with the same maths.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "swish_naive": nn.SiLU,
    "mish": nn.Mish,
    "mish_naive": nn.Mish,
    "elu": nn.ELU,
    "celu": nn.CELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,  # slope 0.01 as toolbelt's ABN
    "hard_swish": nn.Hardswish,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "none": nn.Identity,
}
TRANSFORMATIONS = ("identity", "sqrt", "exp")


# --- the architecture spec, read from the hydra section -----------------------------------------


@dataclass(frozen=True)
class _Spec:
    encoder: str
    encoder_activation: str
    layers: tuple[int, ...]
    block_type: str
    upsample: str
    decoder_activation: str
    decoder_channels: tuple[int, ...]
    agl_head: str
    agl: dict
    orientation: dict


def _cls_name(target: Any, what: str) -> str:
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{what}._target_ is {target!r}, not a class path")
    return target.rsplit(".", 1)[-1] if not target.endswith(MODEL_TARGET) else MODEL_TARGET


def _act_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or value.lower() not in ACTIVATIONS:
        raise ConfigError(f"{what} {value!r} is not one of {sorted(ACTIVATIONS)}")
    return value.lower()


def _kwargs(section: Any, what: str, allowed: set[str]) -> dict:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{what} is {type(section).__name__}, not a mapping")
    extra = sorted(set(map(str, section)) - allowed - {"_target_"})
    if extra:
        raise ConfigError(f"{what} has unsupported key(s) {extra} (supported: {sorted(allowed)})")
    return dict(section)


def _int_list(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{what} is {value!r}, not a list of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{what} is {value!r}, not a list of integers")
    return tuple(value)


def parse_spec(model_section: Any) -> _Spec:
    """The hydra ``model`` section -> :class:`_Spec`, or a :class:`ConfigError` naming what was
    found (unknown targets, encoders, decoder blocks, heads or keys)."""
    if not isinstance(model_section, Mapping):
        raise ConfigError(f"model section is {type(model_section).__name__}, not a mapping")
    target = model_section.get("_target_")
    if _cls_name(target, "model") != MODEL_TARGET:
        raise ConfigError(f"model._target_ {target!r} is not ...{MODEL_TARGET}")
    cfg = model_section.get("config")
    if not isinstance(cfg, Mapping):
        raise ConfigError("model.config is missing or not a mapping")
    top_act = cfg.get("activation")

    enc = _kwargs(
        cfg.get("encoder"),
        "model.config.encoder",
        {"pretrained", "layers", "activation", "no_stride", "no_stride_s16", "no_stride_s32"},
    )
    enc_name = _cls_name(enc.get("_target_"), "model.config.encoder")
    if enc_name not in ENCODERS:
        raise ConfigError(
            f"model.config.encoder._target_ {enc.get('_target_')!r}: unknown encoder "
            f"{enc_name!r} (supported: {', '.join(sorted(ENCODERS))})"
        )
    for k in ("no_stride", "no_stride_s16", "no_stride_s32"):
        if enc.get(k):
            raise ConfigError(f"model.config.encoder.{k}=true (dilated encoder) is not supported")
    layers = _int_list(enc.get("layers", [1, 2, 3, 4]), "model.config.encoder.layers")
    if list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] > 4 or len(layers) < 2:
        raise ConfigError(f"model.config.encoder.layers {list(layers)} must be increasing in 0..4")

    dec = _kwargs(
        cfg.get("decoder"),
        "model.config.decoder",
        {"block_type", "upsample", "activation", "channels"},
    )
    block_type = dec.get("block_type", "unet")
    if block_type not in BLOCK_TYPES:
        raise ConfigError(
            f"model.config.decoder.block_type {block_type!r} is not one of {list(BLOCK_TYPES)}"
        )
    upsample = dec.get("upsample", "bilinear")
    if upsample not in UPSAMPLES:
        raise ConfigError(
            f"model.config.decoder.upsample {upsample!r} is not one of {list(UPSAMPLES)}"
        )
    channels = _int_list(dec.get("channels"), "model.config.decoder.channels")
    if len(channels) != len(layers) - 1 or min(channels) < 1:
        raise ConfigError(
            f"model.config.decoder.channels {list(channels)} must be {len(layers) - 1} positive "
            f"integers (one less than the encoder layers {list(layers)})"
        )

    agl_section = cfg.get("agl_head")
    if not agl_section:
        raise ConfigError(
            "model.config.agl_head is empty: a model without AGL head is not supported"
        )
    agl_target = agl_section.get("_target_") if isinstance(agl_section, Mapping) else None
    agl_name = _cls_name(agl_target, "model.config.agl_head")
    if agl_name == "SimpleAGLHead":
        agl = _kwargs(
            agl_section, "model.config.agl_head", {"embedding_size", "dropout_rate", "activation"}
        )
    elif agl_name == "AGLHead":
        agl = _kwargs(
            agl_section,
            "model.config.agl_head",
            {
                "embedding_size",
                "dropout_rate",
                "activation",
                "num_upsample_blocks",
                "agl_activation",
                "agl_transformation",
            },
        )
        if (
            not isinstance(agl.get("num_upsample_blocks", 1), int)
            or agl.get("num_upsample_blocks", 1) < 1
        ):
            raise ConfigError("model.config.agl_head.num_upsample_blocks must be an integer >= 1")
        _act_name(agl.get("agl_activation", "relu"), "model.config.agl_head.agl_activation")
        if agl.get("agl_transformation", "identity") not in TRANSFORMATIONS:
            raise ConfigError(
                f"model.config.agl_head.agl_transformation {agl.get('agl_transformation')!r} is "
                f"not one of {list(TRANSFORMATIONS)}"
            )
    else:
        raise ConfigError(
            f"model.config.agl_head._target_ {agl_target!r}: unknown AGL head (supported: "
            f"{', '.join(AGL_HEADS)})"
        )
    _act_name(agl.get("activation", "relu"), "model.config.agl_head.activation")

    ori_section = cfg.get("orientation_head")
    ori_target = ori_section.get("_target_") if isinstance(ori_section, Mapping) else None
    if _cls_name(ori_target, "model.config.orientation_head") not in ORIENTATION_HEADS:
        raise ConfigError(
            f"model.config.orientation_head._target_ {ori_target!r}: unknown orientation head "
            f"(supported: {', '.join(ORIENTATION_HEADS)})"
        )
    ori = _kwargs(ori_section, "model.config.orientation_head", {"dropout_rate", "activation"})
    _act_name(ori.get("activation", "relu"), "model.config.orientation_head.activation")

    dec_act = dec.get("activation", top_act)
    return _Spec(
        encoder=enc_name,
        encoder_activation=_act_name(
            enc.get("activation", "silu"), "model.config.encoder.activation"
        ),
        layers=layers,
        block_type=block_type,
        upsample=upsample,
        decoder_activation=_act_name(dec_act, "model.config.decoder.activation"),
        decoder_channels=channels,
        agl_head=agl_name,
        agl={k: v for k, v in agl.items() if k != "_target_"},
        orientation={k: v for k, v in ori.items() if k != "_target_"},
    )


# --- building blocks (toolbelt equivalents, published key names) --------------------------------


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _abn(channels: int, act: str) -> nn.Sequential:
    """BatchNorm (eps 1e-5) + activation; keys ``bn.*`` as toolbelt's ``ABN``."""
    return nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(channels)), ("act", _act(act))]))


class EfficientNetEncoder(nn.Module):
    """timm ``tf_efficientnet_b*`` feature extractor (``encoder.*`` keys) returning the maps of
    ``layers`` (strides 2, 4, 8, 16, 32 for 0..4)."""

    def __init__(self, timm_name: str, layers, activation: str, drop_path_rate: float) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model(
            timm_name,
            pretrained=False,
            features_only=True,
            act_layer=ACTIVATIONS[activation],
            drop_path_rate=drop_path_rate,
        )
        self.layers = list(layers)
        all_channels = self.encoder.feature_info.channels()
        self.channels = [all_channels[i] for i in self.layers]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.encoder(x)
        return [feats[i] for i in self.layers]


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class UnetBlock(nn.Module):
    """conv3×3-BN-act twice."""

    def __init__(self, cin: int, cout: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.abn1 = _abn(cout, act)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.abn2 = _abn(cout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.abn2(self.conv2(self.abn1(self.conv1(x))))


class ResidualUnetBlock(nn.Module):
    """1×1 shortcut + (separable conv-BN-act, conv-BN-act, separable conv-BN-act)."""

    def __init__(self, cin: int, cout: int, act: str) -> None:
        super().__init__()
        self.identity = nn.Conv2d(cin, cout, 1)
        self.conv1 = DepthwiseSeparableConv(cin, cout)
        self.abn1 = _abn(cout, act)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.abn2 = _abn(cout, act)
        self.conv3 = DepthwiseSeparableConv(cout, cout)
        self.abn3 = _abn(cout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.abn1(self.conv1(x))
        y = self.abn2(self.conv2(y))
        y = self.abn3(self.conv3(y))
        return y + self.identity(x)


class DenseUnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, act: str) -> None:
        super().__init__()
        self.conv1 = ResidualUnetBlock(cin, cout, act)
        self.conv2 = ResidualUnetBlock(cin + cout, cout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.cat([x, self.conv1(x)], dim=1))


_BLOCKS = {"unet": UnetBlock, "residual_unet": ResidualUnetBlock, "dense_unet": DenseUnetBlock}


def _up2(x: torch.Tensor) -> torch.Tensor:
    """×2 bilinear with aligned corners (``nn.UpsamplingBilinear2d``)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class BilinearUpsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up2(x)


class ResidualDeconvUpsample(nn.Module):
    """×2 upsampling to C/4 channels: a stride-2 transposed conv plus the bilinear upsample
    averaged over groups of 4 consecutive channels (toolbelt's
    ``ResidualDeconvolutionUpsample2d``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ConfigError(
                f"residual deconvolution needs channels divisible by 4, got {channels}"
            )
        self.out_channels = channels // 4
        self.conv = nn.ConvTranspose2d(
            channels, channels // 4, 3, stride=2, padding=1, output_padding=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = _up2(x)
        n, c, h, w = up.shape
        residual = up.reshape(n, c // 4, 4, h, w).mean(2)
        return self.conv(x) + residual


class UNetDecoder(nn.Module):
    """Coarse-to-fine: upsample, concatenate the next finer encoder map, block. Returns the
    outputs fine-to-coarse (channels = ``channels``)."""

    def __init__(
        self, encoder_channels: list[int], channels, block_type: str, upsample: str, act: str
    ) -> None:
        super().__init__()
        blocks, ups = [], []
        cin = encoder_channels[-1]
        for i in reversed(range(len(encoder_channels) - 1)):
            if upsample == "rdtsc":
                up = ResidualDeconvUpsample(cin)
                cup = up.out_channels
            else:
                up, cup = BilinearUpsample(), cin
            ups.append(up)
            blocks.append(_BLOCKS[block_type](encoder_channels[i] + cup, channels[i], act))
            cin = channels[i]
        self.blocks = nn.ModuleList(blocks)
        self.upsamples = nn.ModuleList(ups)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = feats[-1]
        outs = []
        for i, (up, block) in enumerate(zip(self.upsamples, self.blocks, strict=True)):
            x = block(torch.cat([up(x), feats[len(feats) - i - 2]], dim=1))
            outs.append(x)
        return outs[::-1]


def _gsd_plane(gsd: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return gsd.reshape(-1, 1, 1, 1).to(x.dtype).expand(-1, 1, x.shape[2], x.shape[3])


class _RegressionHead(nn.Module):
    """1×1 conv + residual deconvolution (×2), conv-act, [GSD channel], conv-act, conv-ReLU."""

    def __init__(self, cin: int, embedding: int, act: str, with_gsd: bool) -> None:
        super().__init__()
        c4 = (cin // 4) * 4
        self.up = nn.Sequential(nn.Conv2d(cin, c4, 1), ResidualDeconvUpsample(c4))
        self.conv1 = nn.Conv2d(cin // 4, embedding, 3, padding=1)
        self.act1 = _act(act)
        self.conv2 = nn.Conv2d(embedding + int(with_gsd), embedding, 3, padding=1)
        self.act2 = _act(act)
        self.conv3 = nn.Conv2d(embedding, 1, 3, padding=1)
        self.with_gsd = with_gsd

    def forward(self, x: torch.Tensor, gsd: torch.Tensor | None = None) -> torch.Tensor:
        x = self.act1(self.conv1(self.up(x)))
        if self.with_gsd:
            x = torch.cat([x, _gsd_plane(gsd, x)], dim=1)
        return F.relu(self.conv3(self.act2(self.conv2(x))))


class SimpleAGLHead(nn.Module):
    """AGL (with GSD) and magnitude regression heads on the finest decoder map."""

    def __init__(self, decoder_channels, embedding_size=64, dropout_rate=0.0, activation="relu"):
        super().__init__()
        cin = decoder_channels[0]
        self.dropout = nn.Dropout2d(dropout_rate)
        self.height = _RegressionHead(cin, embedding_size, activation.lower(), with_gsd=True)
        self.magnitude = _RegressionHead(cin, embedding_size, activation.lower(), with_gsd=False)

    def forward(self, size, dec, gsd) -> dict[str, torch.Tensor]:
        x = self.dropout(dec[0])
        height = self.height(x, gsd)
        mag = self.magnitude(x)
        scale = ridge_scale(mag, height)[:, None]
        if height.shape[-2:] != tuple(size):
            height = F.interpolate(height, size=size, mode="bilinear", align_corners=True)
            mag = F.interpolate(mag, size=size, mode="bilinear", align_corners=True)
        return {OUTPUT_AGL_MASK: height, OUTPUT_MAGNITUDE_MASK: mag, OUTPUT_VFLOW_SCALE: scale}


class _Transformation(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "sqrt":
            return x.sqrt()
        if self.name == "exp":
            return x.exp()
        return x


class AGLHead(nn.Module):
    """``num_upsample_blocks`` × (1×1 conv, residual deconvolution ×2, conv-BN-act) of the finest
    decoder map, then AGL (with a GSD channel) and magnitude conv heads."""

    def __init__(
        self,
        decoder_channels,
        embedding_size=64,  # unused, as in the original
        dropout_rate=0.0,  # the original defines it but never applies it
        activation="relu",
        num_upsample_blocks=1,
        agl_activation="relu",
        agl_transformation="identity",
    ):
        super().__init__()
        activation, agl_activation = activation.lower(), agl_activation.lower()
        cin = decoder_channels[0]
        self.dropout = nn.Dropout2d(dropout_rate)
        layers: list[nn.Module] = []
        for _ in range(num_upsample_blocks):
            c2 = (cin // 2) * 2
            cup = c2 // 4
            layers += [
                nn.Conv2d(cin, c2, 1),
                ResidualDeconvUpsample(c2),
                nn.Conv2d(cup, cup, 3, padding=1, bias=False),
                nn.BatchNorm2d(cup),
                _act(activation),
            ]
            cin = cup
        self.upsample = nn.Sequential(*layers)

        def head(extra: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin + extra, cin, 3, padding=1),
                _act(activation),
                nn.Conv2d(cin, 1, 3, padding=1),
                _act(agl_activation),
                _Transformation(agl_transformation),
            )

        self.height = head(1)
        self.magnitude = head(0)

    def forward(self, size, dec, gsd) -> dict[str, torch.Tensor]:
        x = self.upsample(dec[0])
        height = self.height(torch.cat([x, _gsd_plane(gsd, x)], dim=1))
        mag = self.magnitude(x)
        scale = ridge_scale(mag, height)[:, None]
        return {OUTPUT_AGL_MASK: height, OUTPUT_MAGNITUDE_MASK: mag, OUTPUT_VFLOW_SCALE: scale}


class BasicOrientationHead(nn.Module):
    """Global average pool of the deepest encoder map -> MLP -> (sin a, cos a), unnormalised."""

    def __init__(self, encoder_channels, dropout_rate=0.0, activation="relu"):
        super().__init__()
        c = encoder_channels[-1]
        self.orientation = nn.Sequential(
            nn.Dropout(dropout_rate), nn.Linear(c, c), _act(activation.lower()), nn.Linear(c, 2)
        )

    def forward(self, enc) -> dict[str, torch.Tensor]:
        direction = self.orientation(enc[-1].mean((2, 3)))
        return {OUTPUT_VFLOW_DIRECTION: direction, OUTPUT_VFLOW_ANGLE: vector_to_angle(direction)}


def vector_to_angle(direction: torch.Tensor) -> torch.Tensor:
    """(sin a, cos a) B×2 -> a B×1 in [0, 2π)."""
    angle = torch.atan2(direction[:, 0:1], direction[:, 1:2])
    return torch.where(angle < 0, angle + 2 * math.pi, angle)


# --- the published model -----------------------------------------------------------------------


class SecondPlaceUNet(PublishedModel):
    """bloodaxe's ``GeoposeUNetModel`` built from its hydra ``model`` section.

    ``config = {"model": <checkpoint_data.config.model>}`` (JSON-able; ``pretrained`` is
    ignored: nothing is downloaded). State-dict keys (``encoder.encoder.*``, ``decoder.*``,
    ``agl_head.*``, ``orientation_head.*``) are the published ones. :meth:`raw` is the original
    forward (BGR ImageNet-normalised input, GSD B×1) returning the ``OUTPUT_*`` dict.
    """

    family: ClassVar[str] = "second"
    divisor: int = 32
    uses_gsd: bool = True
    uses_city: bool = False

    options: ClassVar[dict[str, Opt]] = {
        "model": Opt(
            None,
            "mapping",
            "the hydra model section of the checkpoint (checkpoint_data.config.model)",
            required=True,
        ),
    }

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        self.config["model"] = _plain(self.config["model"])
        self.spec = spec = parse_spec(self.config["model"])
        timm_name, drop_path = ENCODERS[spec.encoder]
        self.encoder = EfficientNetEncoder(
            timm_name, spec.layers, spec.encoder_activation, drop_path
        )
        self.decoder = UNetDecoder(
            self.encoder.channels,
            spec.decoder_channels,
            spec.block_type,
            spec.upsample,
            spec.decoder_activation,
        )
        if spec.agl_head == "SimpleAGLHead":
            self.agl_head: nn.Module = SimpleAGLHead(spec.decoder_channels, **spec.agl)
        else:
            self.agl_head = AGLHead(spec.decoder_channels, **spec.agl)
        self.orientation_head = BasicOrientationHead(self.encoder.channels, **spec.orientation)

    @staticmethod
    def preprocess(image: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the authors' input: BGR with the ImageNet (RGB-order) mean/std."""
        return normalise(image.flip(1), IMAGENET_MEAN, IMAGENET_STD)

    def raw(self, image: torch.Tensor, gsd: torch.Tensor) -> dict[str, torch.Tensor]:
        """The original forward: image B×3×H×W (BGR, normalised), GSD B×1 (m/px)."""
        enc = self.encoder(image)
        dec = self.decoder(enc)
        out = self.orientation_head(enc)
        out.update(self.agl_head(image.shape[-2:], dec, gsd))
        return out

    def run(self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor) -> GeoposeOutput:
        out = self.raw(self.preprocess(image), gsd.reshape(-1, 1))
        return GeoposeOutput(
            agl=out[OUTPUT_AGL_MASK],
            mag=out[OUTPUT_MAGNITUDE_MASK],
            direction=unit(out[OUTPUT_VFLOW_DIRECTION]),
            scale=out[OUTPUT_VFLOW_SCALE].reshape(-1),
        )


def _plain(obj: Any) -> Any:
    """Mappings/sequences (e.g. OmegaConf containers) -> plain JSON-able dicts/lists."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if not isinstance(obj, str) and hasattr(obj, "__iter__") and hasattr(obj, "__len__"):
        return [_plain(v) for v in obj]
    return obj


def _model_section(obj: Any) -> Any:
    try:
        return obj["checkpoint_data"]["config"]["model"]
    except (KeyError, TypeError, IndexError):
        return None


@register_family
class SecondPlace(Family):
    """bloodaxe's Catalyst checkpoints: ``model_state_dict`` and the hydra config whose
    ``checkpoint_data.config.model`` gives the architecture."""

    name: ClassVar[str] = "second"
    description: ClassVar[str] = (
        "2nd place (bloodaxe): GeoposeUNetModel on EfficientNet-B6/B7, Catalyst checkpoints "
        "(b7_unet, b7_rdtsc_unet, b6_rdtsc_unet)"
    )
    model = SecondPlaceUNet

    @classmethod
    def state_of(cls, container: Container) -> dict[str, torch.Tensor] | None:
        if container.kind != "pickle":
            return None
        return state_dict_at(container.obj, "model_state_dict")

    @classmethod
    def matches(cls, container: Container) -> bool:
        if container.kind != "pickle" or not isinstance(container.obj, Mapping):
            return False
        return isinstance(_model_section(container.obj), Mapping) and (
            cls.state_of(container) is not None
        )

    @classmethod
    def config_of(cls, container: Container, state: dict) -> dict:
        section = _plain(_model_section(container.obj))
        try:
            parse_spec(section)
        except ConfigError as exc:
            raise GeoposeDataError(container.path, f"checkpoint_data.config: {exc}") from exc
        return {"model": section}
