"""Geopose heads' parts: dense AGL / MAG / flow / ramp maps, the pooled MLP and the pose fits.

Units: AGL in metres, MAG and flow in pixels, direction a unit vector ``(sin a, cos a)`` =
(dx, dy) in (column, row) axes, scale in pixels per metre, GSD in metres per pixel.

How GSD enters (the ``gsd`` option of the AGL head):

- ``"concat"``: ``log(gsd / gsd_ref)`` is appended as one constant channel to the head's input,
  so the head can learn how metres per visual unit change with the ground sample distance.
- ``"multiply"``: the head predicts height in *ground pixels* (what the image shows: a facade or
  a shadow N pixels long) and the output is multiplied by ``gsd / gsd_ref``: metres = pixels ×
  m/px. This makes AGL follow a resize exactly (CONVENTIONS.md: resizing by f changes gsd to
  gsd/f and leaves heights in metres unchanged).
- ``"both"``: concat and multiply. ``"none"``: GSD is not used.

The scale head's ``"divide"`` is the same idea for px/m: it predicts ``tan(off-nadir)`` (no
unit) and divides by the GSD, since scale = tan(off-nadir) / gsd.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError
from geopose.schema import Opt
from geopose.types import CITIES, unit_vector

N_CITIES = len(CITIES)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU}
OUT_ACTIVATIONS = {
    "none": lambda x: x,
    "relu": F.relu,
    "softplus": F.softplus,
    "abs": torch.abs,
}
AGL_GSD_MODES = ("none", "concat", "multiply", "both")
SCALE_GSD_MODES = ("none", "concat", "divide", "both")

GSD_REF = 0.3
"""GSD (m/px) at which the ``log(gsd / gsd_ref)`` cue is 0 and ``multiply`` is the identity."""
MIN_SLOPE, MAX_SLOPE = 0.3, 3.0
"""The slopes |∇AGL| (m/px) a facade ramp may have: flatter is ground or roof, steeper a roof
edge's jump (:func:`ramp_target`, :func:`ramp_pose`)."""
RAMP_ITERATIONS, RAMP_HUBER = 5, 0.3
"""The ramp fit's IRLS iterations and Huber threshold (:func:`ramp_pose`)."""

ACTIVATION = Opt("relu", "str", "hidden activation", choices=tuple(ACTIVATIONS))
CITY = Opt(False, "bool", "city one-hot as an input cue")
GSD_REF_OPT = Opt(GSD_REF, "float", "GSD (m/px) where the log(gsd / gsd_ref) cue is 0", gt=0)


def city_one_hot(city: torch.Tensor | None, batch: int, ref: torch.Tensor) -> torch.Tensor:
    """City index B (long, -1 = unknown) or None -> one-hot B×N_CITIES (zeros if unknown)."""
    ids = torch.arange(N_CITIES, device=ref.device)
    if city is None:
        return ref.new_zeros(batch, N_CITIES)
    return (city.reshape(-1, 1).long() == ids.reshape(1, -1)).to(ref.dtype)


def gsd_feature(gsd: torch.Tensor, gsd_ref: float) -> torch.Tensor:
    """GSD (m/px) B -> ``log(gsd / gsd_ref)`` B×1, a centred, scale-free cue."""
    return torch.log(gsd.reshape(-1, 1) / gsd_ref)


def _cue_maps(x: torch.Tensor, cues: list[torch.Tensor]) -> torch.Tensor:
    """Append B×k vectors as constant maps to B×C×h×w features."""
    if not cues:
        return x
    vec = torch.cat(cues, dim=1)
    maps = vec[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
    return torch.cat([x, maps], dim=1)


class DenseHead(nn.Module):
    """Decoder map (stride s) -> full-resolution map: (bilinear ×2, 3×3 conv, act) × log2(s), 1×1;
    with ``upsample="output"``: 3×3 conv, act, 1×1 at stride s, then the output bilinear ×s
    (cheaper: the convolutions run on s² times fewer pixels). ``depth`` > 1 adds depth - 1 more
    3×3 convolutions (dilated by ``dilation``) before the 1×1, for more context.

    The output is ``out_activation(raw) * out_scale`` (``out_scale`` in the target's unit, so raw
    values stay O(1)), times ``gsd / gsd_ref`` with ``gsd="multiply"``. The keyword options are
    those of a ``model.agl``/``mag``/``flow``/``ramp``/``facade`` section: :attr:`options`
    (every dense head's) and :attr:`gsd_options` (the AGL head's GSD input).
    """

    options: ClassVar[dict[str, Opt]] = {
        "channels": Opt(64, "int", "channels of the upsampling convolutions", min=1),
        "activation": ACTIVATION,
        "out_activation": Opt(
            "none", "str", "applied to the raw output", choices=tuple(OUT_ACTIVATIONS)
        ),
        "out_scale": Opt(10.0, "float", "output unit: raw O(1) values times this"),
        "city": CITY,
        "upsample": Opt(
            "features",
            "str",
            "features: convolve at every ×2 step; output: at the decoder's stride, then "
            "upsample the output (cheaper)",
            choices=("features", "output"),
        ),
        "depth": Opt(1, "int", "1 + extra 3×3 convolutions at the head's last resolution", min=1),
        "dilation": Opt(1, "int", "dilation of the convolutions after the first", min=1),
    }
    gsd_options: ClassVar[dict[str, Opt]] = {
        "gsd": Opt("concat", "str", "how the GSD enters", choices=AGL_GSD_MODES),
        "gsd_ref": GSD_REF_OPT,
    }

    def __init__(
        self,
        in_channels: int,
        input_stride: int,
        out_channels: int,
        *,
        channels: int,
        activation: str,
        out_activation: str,
        out_scale: float,
        city: bool,
        gsd: str = "none",
        gsd_ref: float = GSD_REF,
        upsample: str = "features",
        depth: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.gsd, self.out_activation = gsd, out_activation
        act = ACTIVATIONS[activation]
        self.gsd_ref, self.city, self.out_scale = float(gsd_ref), bool(city), float(out_scale)
        n_up = int(round(math.log2(input_stride)))
        if 2**n_up != input_stride:
            raise ConfigError(f"head input stride {input_stride} is not a power of 2")
        in_ch = in_channels + (self.gsd in ("concat", "both")) + N_CITIES * self.city
        layers: list[nn.Module] = []
        if upsample not in ("features", "output"):
            raise ConfigError(f"head upsample {upsample!r}: features | output")
        by_features = upsample == "features"
        for _ in range(n_up if by_features else min(n_up, 1)):
            if by_features:
                layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            layers += [nn.Conv2d(in_ch, channels, 3, padding=1), act()]
            in_ch = channels
        for _ in range(depth - 1):  # more context at the last resolution
            layers += [nn.Conv2d(in_ch, channels, 3, padding=dilation, dilation=dilation), act()]
            in_ch = channels
        layers.append(nn.Conv2d(in_ch, out_channels, 1))
        self.body = nn.Sequential(*layers)  # its last layer is the output convolution
        self.upsample_output = 1 if by_features else input_stride

    def forward(
        self, x: torch.Tensor, gsd: torch.Tensor | None = None, city: torch.Tensor | None = None
    ) -> torch.Tensor:
        cues = []
        if self.gsd in ("concat", "both"):
            cues.append(gsd_feature(gsd, self.gsd_ref).to(x.dtype))
        if self.city:
            cues.append(city_one_hot(city, x.shape[0], x))
        y = self.body(_cue_maps(x, cues))
        if self.upsample_output > 1:
            y = F.interpolate(
                y, scale_factor=float(self.upsample_output), mode="bilinear", align_corners=False
            )
        y = OUT_ACTIVATIONS[self.out_activation](y) * self.out_scale
        if self.gsd in ("multiply", "both"):
            y = y * (gsd.reshape(-1, 1, 1, 1).to(y.dtype) / self.gsd_ref)
        return y

    @property
    def uses_gsd(self) -> bool:
        """True when the output depends on the GSD."""
        return self.gsd != "none"


class PooledMLP(nn.Module):
    """Global average pool of the deepest encoder map (+ GSD/city cues, + ``extra`` values per
    image) -> MLP -> ``out`` values. :attr:`options`: its keyword options, as a pose head's
    section gives them."""

    options: ClassVar[dict[str, Opt]] = {
        "hidden": Opt(256, "int", "hidden width of the pooled MLP", min=1),
        "activation": ACTIVATION,
        "dropout": Opt(0.0, "float", "dropout before the MLP's last layer", min=0, max=1),
        "gsd": Opt(False, "bool", "log(gsd / gsd_ref) as an input cue"),
        "city": CITY,
        "gsd_ref": GSD_REF_OPT,
    }

    def __init__(
        self,
        in_channels: int,
        out: int,
        *,
        hidden: int,
        activation: str,
        dropout: float,
        gsd: bool,
        gsd_ref: float,
        city: bool,
        extra: int = 0,
    ) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.gsd, self.gsd_ref, self.city = bool(gsd), float(gsd_ref), bool(city)
        self.extra = int(extra)
        in_ch = in_channels + self.gsd + N_CITIES * self.city + self.extra
        self.mlp = nn.Sequential(
            nn.Linear(in_ch, hidden), act(), nn.Dropout(dropout), nn.Linear(hidden, out)
        )

    def forward(
        self,
        feat: torch.Tensor,
        gsd: torch.Tensor | None = None,
        city: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``feat`` B×C×h×w, ``gsd`` B (m/px), ``city`` B (long, -1 unknown), ``extra``
        B×``extra`` (when the MLP was built with extra inputs) -> B×``out``."""
        v = [feat.mean(dim=(2, 3))]
        if self.gsd:
            v.append(gsd_feature(gsd, self.gsd_ref).to(feat.dtype))
        if self.city:
            v.append(city_one_hot(city, feat.shape[0], feat))
        if self.extra:
            v.append(extra.to(feat.dtype))
        return self.mlp(torch.cat(v, dim=1))


def unit(v: torch.Tensor) -> torch.Tensor:
    """B×2 vectors of a regression head, which must always answer: unit length, a zero vector
    becomes (0, 1) (``geopose.types.unit_vector`` with its fallback)."""
    return unit_vector(v, dim=1, fallback=(0.0, 1.0))


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|∇x| of B×1×H×W maps by Sobel filters (units of x per pixel), same size."""
    k = x.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    kernel = torch.stack([k, k.t()]).unsqueeze(1)  # 2×1×3×3: d/dcol, d/drow
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    return torch.sqrt((g * g).sum(dim=1, keepdim=True) + 1e-12)


def flow_pose(
    flow: torch.Tensor, agl: torch.Tensor, detach_agl: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direction, scale and MAG from a dense flow map by least squares against AGL.

    The model ``flow_i ≈ agl_i · v`` with ``v = scale · (sin a, cos a)`` gives
    ``v = Σ agl·flow / Σ agl²`` (pixels near the ground weigh little, tall ones most). Returns
    direction B×2 (unit; zero when ``v = 0``, e.g. no heights: no evidence of a direction),
    scale B (px/m, = |v|) and MAG B×1×H×W (px, flow projected on the direction). Inconsistent
    flow directions shrink |v|, i.e. the scale: the expected flow.
    """
    flow, agl = flow.float(), agl.float()  # sums over all pixels: float32 even under AMP
    a = agl.detach() if detach_agl else agl
    num = (flow * a).sum(dim=(2, 3))  # B×2
    den = (a * a).sum(dim=(2, 3)) + 1e-6  # B×1
    v = num / den
    direction = unit_vector(v, dim=1)  # zero: no evidence, zero flow
    scale = torch.sqrt((v * v).sum(dim=1) + 1e-12)
    mag = (flow * direction[:, :, None, None]).sum(dim=1, keepdim=True)
    return direction, scale, mag


def lstsq_scale(mag: torch.Tensor, agl: torch.Tensor, detach_agl: bool = True) -> torch.Tensor:
    """Scale (px/m) B as the least-squares ratio ``Σ mag·agl / Σ agl²`` of each image."""
    mag, agl = mag.float(), agl.float()
    a = agl.detach() if detach_agl else agl
    return (mag * a).sum(dim=(1, 2, 3)) / ((a * a).sum(dim=(1, 2, 3)) + 1e-6)


def agl_gradient(agl: torch.Tensor) -> torch.Tensor:
    """∇AGL of B×1×H×W maps by central differences (one-sided at the borders) -> B×2×H×W
    ``(d/dcol, d/drow)`` in metres per pixel. NaN heights make their neighbours' gradient NaN."""
    a = agl.float()
    gx = torch.zeros_like(a)
    gy = torch.zeros_like(a)
    if a.shape[3] > 1:
        gx[..., 1:-1] = (a[..., 2:] - a[..., :-2]) / 2.0
        gx[..., 0] = a[..., 1] - a[..., 0]
        gx[..., -1] = a[..., -1] - a[..., -2]
    if a.shape[2] > 1:
        gy[..., 1:-1, :] = (a[..., 2:, :] - a[..., :-2, :]) / 2.0
        gy[..., 0, :] = a[..., 1, :] - a[..., 0, :]
        gy[..., -1, :] = a[..., -1, :] - a[..., -2, :]
    return torch.cat([gx, gy], dim=1)


def ramp_target(agl: torch.Tensor, max_slope: float = MAX_SLOPE) -> torch.Tensor:
    """The facade-ramp field a ramp head learns: ∇AGL (m/px, B×2×H×W) where its magnitude is at
    most ``max_slope`` m/px, 0 where it is steeper (a height jump at a roof edge is not a ramp),
    NaN where the height is unknown."""
    g = agl_gradient(agl if agl.dim() == 4 else agl.unsqueeze(1))
    steep = torch.sqrt((g * g).sum(dim=1, keepdim=True)) > max_slope
    return torch.where(steep, torch.zeros_like(g), g)


def facade_mask(
    agl: torch.Tensor,
    flow: torch.Tensor,
    tol: float = RAMP_HUBER,
    min_slope: float = MIN_SLOPE,
    max_slope: float = MAX_SLOPE,
) -> torch.Tensor:
    """The true facades a facade head learns: 1 where the slope of the true AGL (m/px) lies in
    ``[min_slope, max_slope]`` and obeys the facade equation ``∇z · v = -1`` of
    :func:`ramp_pose` under the true pose ``flow`` = scale·(sin a, cos a) (B×2, px/m) to within
    ``tol``, else 0; NaN where the height or the pose is unknown. Tree crowns, pitched roofs and
    blurred edges are sloped but are not facades.
    """
    g = agl_gradient(agl if agl.dim() == 4 else agl.unsqueeze(1))
    norm = torch.sqrt((g * g).sum(dim=1, keepdim=True))
    v = flow.float().reshape(-1, 2, 1, 1)
    residual = (g * v).sum(dim=1, keepdim=True) + 1.0
    facade = (norm >= min_slope) & (norm <= max_slope) & (residual.abs() <= tol)
    known = torch.isfinite(norm) & torch.isfinite(v).all(dim=1, keepdim=True)
    return torch.where(known, facade.to(g.dtype), torch.full_like(norm, float("nan")))


RAMP_FIT: dict[str, Opt] = {
    "iterations": Opt(RAMP_ITERATIONS, "int", "IRLS iterations of the ramp fit", min=1),
    "huber": Opt(RAMP_HUBER, "float", "Huber threshold of the fit's residual", gt=0),
    "min_slope": Opt(MIN_SLOPE, "float", "flattest facade slope, m/px", min=0),
    "max_slope": Opt(MAX_SLOPE, "float", "steepest facade slope, m/px", gt=0),
    "facade_power": Opt(1.0, "float", "a pixel's weight: facade probability ** this", gt=0),
}
"""The keyword options of :func:`ramp_pose` that a recipe sets (keys of ``model.ramp``)."""


def ramp_pose(
    ramp: torch.Tensor,
    iterations: int = RAMP_ITERATIONS,
    huber: float = RAMP_HUBER,
    min_slope: float = MIN_SLOPE,
    max_slope: float = MAX_SLOPE,
    weights: torch.Tensor | None = None,
    facade_power: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direction and scale read off the facade ramps of the height field.

    A ground point ``p`` at height ``z`` is seen at ``p - z · v`` with ``v = scale · (sin a,
    cos a)`` (px/m), so on a facade the height field ``z(q)`` satisfies ``∇z · v = -1`` whatever
    the wall's orientation: every facade pixel is one linear equation in ``v``, and two walls of
    different orientations fix it. ``v`` is the robust (Huber, ``huber`` in the residual's unit,
    iteratively reweighted) least-squares solution over the pixels whose slope ``|∇z|`` (m/px)
    lies in ``[min_slope, max_slope]``; flat ground and roofs (∇z = 0) carry no weight.
    ``weights`` B×1×H×W in [0, 1] (a facade head's probabilities) scale each pixel's weight: the
    sloped pixels that are not facades (crowns, pitched roofs) are what biases the fit;
    ``facade_power`` > 1 sharpens them (``weights ** facade_power``), trusting the surest more.

    ``ramp`` B×2×H×W (m/px, (d/dcol, d/drow)) -> direction B×2 (unit), scale B (px/m, ``|v|``).
    No ramps at all (an untrained model, flat land, water, cloud) gives ``v = 0``: scale 0, the
    least-squares guess when nothing is known, and direction (0, 0), "unknown" (not a made-up
    angle; ``geopose.inference.Predictor`` writes zero flow for it).
    Differentiable (the weights are held fixed within each solve).
    """
    g = ramp.float().flatten(2)  # B×2×N
    norm = torch.sqrt((g * g).sum(dim=1) + 1e-12)  # B×N
    base = ((norm >= min_slope) & (norm <= max_slope)).to(g.dtype)
    if weights is not None:
        base = base * weights.float().flatten(1) ** facade_power
    w = base
    gx, gy = g[:, 0], g[:, 1]
    v = g.new_zeros(g.shape[0], 2)
    for _ in range(max(1, int(iterations))):
        # Normal equations (Σ w g gᵀ + ridge) v = -Σ w g, solved in closed form (2×2).
        axx, axy, ayy = (w * gx * gx).sum(1), (w * gx * gy).sum(1), (w * gy * gy).sum(1)
        bx, by = -(w * gx).sum(1), -(w * gy).sum(1)
        ridge = 1e-4 * (axx + ayy + 1.0)
        axx, ayy = axx + ridge, ayy + ridge
        det = axx * ayy - axy * axy
        v = torch.stack([ayy * bx - axy * by, axx * by - axy * bx], dim=1) / det[:, None]
        r = gx * v[:, :1] + gy * v[:, 1:] + 1.0
        w = base / torch.clamp(r.detach().abs() / huber, min=1.0)
    direction = unit_vector(v, dim=1)  # zero: no evidence, zero flow
    scale = torch.sqrt((v * v).sum(dim=1) + 1e-12)
    return direction, scale
