"""Test-time augmentation over the D4 group, batched; the TTA names and the choice of a
run's TTA (:func:`choose_tta`) live here, and only here.

Each view transforms the image (``geopose.geometry.D4`` element ``(k, transpose)``: transpose
first if asked, then ``k`` quarter turns counter-clockwise as displayed), runs the model, and
transforms the prediction back: the AGL/MAG maps by the inverse image transform, the direction
vector by the inverse angle rule of CONVENTIONS.md, and the two-channel vector maps of models
that have them (flow, ramps) by both. The views are then averaged
(:func:`geopose.inference.average.average_outputs`). Because the view set is a group, the ``d4``
prediction is exactly equivariant to the eight D4 transforms of the input.

The torch counterparts of ``geopose.geometry``'s D4 helpers live here, and only here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from geopose.errors import ConfigError
from geopose.geometry import D4, angle_to_vector, d4_angle, d4_angle_inverse
from geopose.inference.average import average_outputs
from geopose.types import FIELD_KINDS, GeoposeOutput

View = tuple[int, bool]
"""A D4 element ``(k, transpose)`` as in :data:`geopose.geometry.D4`."""

FLIPLR: View = (3, True)
"""Mirror left-right (columns reversed) as a D4 element."""
FLIPUD: View = (1, True)
"""Mirror up-down (rows reversed) as a D4 element."""

TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), FLIPLR),
    "d2": ((0, False), (2, False), FLIPLR, FLIPUD),
    "d4": tuple(D4),
}
"""View sets by name: identity; + left-right mirror; the four flips/half-turn; all eight."""

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], GeoposeOutput]
"""``forward(image B×3×H×W in [0, 1], gsd B m/px, city B long | None) -> output``."""


def tta_views(tta: str) -> tuple[View, ...]:
    """The D4 elements of a TTA mode (``none``, ``flip``, ``d2``, ``d4``)."""
    try:
        return TTA_VIEWS[tta]
    except KeyError:
        raise ValueError(f"unknown TTA mode {tta!r}; use one of {', '.join(TTA_VIEWS)}") from None


TTA_MODES = tuple(TTA_VIEWS)
"""The TTA names, fewest views first: ``none``, ``flip``, ``d2``, ``d4``."""
DEFAULT_TTA = "d4"
"""The TTA of models trained with D4 augmentation (and of published models)."""


def check_tta(tta: str | None) -> None:
    """:class:`~geopose.errors.ConfigError` unless ``tta`` is None or one of :data:`TTA_MODES`."""
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")


@dataclass(frozen=True)
class TtaChoice:
    """The TTA of a run and, when the TTA asked for gives the models views they never trained
    on, one line saying so (else None)."""

    mode: str
    warning: str | None = None


def choose_tta(
    asked: str | None, authors_tta: str | None = None, configs: Sequence[dict] = ()
) -> TtaChoice:
    """The TTA of a run: ``asked`` when given (:func:`check_tta`), else the authors' of a
    published ensemble, else the one the models' training ``configs`` suit
    (:func:`learned_tta`). An ``asked`` TTA that turns or mirrors models trained without D4
    augmentation comes with a warning: their direction is learned in the images' own
    orientation, and the turned views average it away."""
    check_tta(asked)
    learned = learned_tta(configs)
    mode = asked or authors_tta or learned
    warning = None
    if asked is not None and learned == "none" and len(TTA_VIEWS[asked]) > 1:
        warning = (
            f"--tta {asked}: the model was trained without D4 turns or mirrors (data.d4: "
            "false), so its direction is learned in the images' own orientation and the "
            f"turned views average it away; --tta none suits it"
        )
    return TtaChoice(mode, warning)


def learned_tta(configs: Sequence[dict]) -> str:
    """The TTA that suits models by their training configs: ``d4``, or ``none`` when one was
    trained without D4 augmentation (``data.d4: false``, as ``cpu_small``): it has learned the
    direction in the images' own orientation only, and its turned and mirrored views would
    average the direction away (``cpu_small``: T96 score 0.58 with ``none``, 0.42 with ``d4``;
    BENCHMARKS.md). Configs without a ``data`` section (published models) count as ``d4``."""
    from geopose.transforms import draws_d4

    trained = [c["data"] for c in configs if isinstance(c, dict) and c.get("data")]
    return "d4" if all(draws_d4(d) for d in trained) else "none"


# --- torch D4 on the last two (row, column) axes ------------------------------------------


def d4_tensor(x: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """Torch :func:`geopose.geometry.d4_image` on the last two axes (rows, columns)."""
    out = x.transpose(-2, -1) if transpose else x
    return torch.rot90(out, k, dims=(-2, -1))


def d4_tensor_inverse(x: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """Undo :func:`d4_tensor`."""
    out = torch.rot90(x, -k, dims=(-2, -1))
    return out.transpose(-2, -1) if transpose else out


@cache
def _direction_matrix(k: int, transpose: bool, inverse: bool) -> np.ndarray:
    """2×2 matrix acting on ``(sin a, cos a)`` column vectors, derived from the angle rules.

    The angle rules (``a -> ±a + c``) are orthogonal maps of the unit vector, so the matrix's
    columns are the images of ``e_x`` (angle π/2) and ``e_y`` (angle 0); its entries are 0/±1.
    """
    rule = d4_angle_inverse if inverse else d4_angle
    cols = [angle_to_vector(rule(a, k, transpose)) for a in (math.pi / 2, 0.0)]
    return np.rint(np.stack(cols, axis=1))


def d4_direction(direction: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """Direction vectors (…×2, ``(sin a, cos a)``) after the D4 element (same as d4_angle)."""
    m = torch.as_tensor(_direction_matrix(k, transpose, False), dtype=direction.dtype)
    return direction @ m.to(direction.device).T


def d4_direction_inverse(direction: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """Undo :func:`d4_direction` (same as d4_angle_inverse)."""
    m = torch.as_tensor(_direction_matrix(k, transpose, True), dtype=direction.dtype)
    return direction @ m.to(direction.device).T


def d4_field(field: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """A B×2×H×W vector map (channels (column, row) components, as flow and ramps) after the
    D4 element: pixels moved by :func:`d4_tensor`, each vector turned by :func:`d4_direction`."""
    turned = d4_direction(field.movedim(1, -1), k, transpose).movedim(-1, 1)
    return d4_tensor(turned, k, transpose)


def d4_field_inverse(field: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
    """Undo :func:`d4_field`."""
    turned = d4_direction_inverse(field.movedim(1, -1), k, transpose).movedim(-1, 1)
    return d4_tensor_inverse(turned, k, transpose)


def view_shape(shape: tuple[int, int], view: View) -> tuple[int, int]:
    """(H, W) of an H×W image after the view (odd turns xor transpose swap the axes)."""
    k, t = view
    return (shape[1], shape[0]) if (k % 2 == 1) != t else shape


# --- batched TTA ----------------------------------------------------------------------------


def _invert(out: GeoposeOutput, view: View) -> GeoposeOutput:
    """A view's output in the input image's frame, every field by its kind (float32)."""
    k, t = view
    undo = {
        "map": d4_tensor_inverse,
        "vector_map": d4_field_inverse,
        "vector": d4_direction_inverse,
        "scalar": lambda x, k, t: x,
    }
    return out.map(lambda name, x: undo[FIELD_KINDS[name]](x.float(), k, t))


def run_batched(
    forward: Forward,
    image: torch.Tensor,
    gsd: torch.Tensor,
    city: torch.Tensor | None,
    max_batch: int,
) -> GeoposeOutput:
    """``forward`` over a batch in chunks of at most ``max_batch`` images, outputs concatenated."""
    n = image.shape[0]
    step = max(1, int(max_batch))
    parts = [
        forward(
            image[i : i + step], gsd[i : i + step], None if city is None else city[i : i + step]
        )
        for i in range(0, n, step)
    ]
    if len(parts) == 1:
        return parts[0]
    return GeoposeOutput.combine(parts, lambda _, xs: torch.cat(xs))


def predict_tta(
    forward: Forward,
    image: torch.Tensor,
    gsd: torch.Tensor,
    city: torch.Tensor | None = None,
    tta: str | Sequence[View] = "d4",
    max_batch: int = 8,
    shrink_scale: bool = False,
) -> GeoposeOutput:
    """Predict a batch with test-time augmentation.

    Args:
        forward: the model (or ensemble) ``forward(image, gsd, city) -> output``.
        image: B×3×H×W float in [0, 1].
        gsd: B ground sample distances (m/px); ``city``: B long indices or None.
        tta: a mode name (``none``, ``flip``, ``d2``, ``d4``) or a list of D4 elements.
        max_batch: most images (views × inputs) per forward call.
        shrink_scale: scale × the length of the views' mean unit direction
            (``average_outputs``): the mean flow when the views disagree on the direction.

    Returns:
        The averaged output: ``agl``/``mag`` B×1×H×W (m, px), ``direction`` B×2 unit
        ``(sin a, cos a)`` (or zero: no evidence), ``scale`` B (px/m), and the ``flow`` /
        ``ramp`` maps B×2×H×W of models that have them.
    """
    views = tta_views(tta) if isinstance(tta, str) else tuple(tta)
    b = image.shape[0]
    per_view: dict[View, GeoposeOutput] = {}
    # Views of one shape go through the model together (all eight for a square image).
    groups: dict[tuple[int, int], list[View]] = {}
    for v in views:
        groups.setdefault(view_shape(tuple(image.shape[-2:]), v), []).append(v)
    for group in groups.values():
        batch = torch.cat([d4_tensor(image, *v) for v in group])
        reps = len(group)
        out = run_batched(
            forward, batch, gsd.repeat(reps), None if city is None else city.repeat(reps), max_batch
        )
        for i, v in enumerate(group):
            per_view[v] = out.map(lambda _, x, i=i: x[i * b : (i + 1) * b])
    inverted = [_invert(per_view[v], v) for v in views]
    return average_outputs(inverted, shrink_scale=shrink_scale)
