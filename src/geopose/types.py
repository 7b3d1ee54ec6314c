"""The types that cross layers, each with one owner here, and the one-rule helpers on them.

Types:

- :class:`GeoposeOutput`: what every model returns (``forward(image, gsd, city)``), whatever
  its family: heights, magnitudes, pose, and the optional dense flow and facade ramps.
  :meth:`GeoposeOutput.map` and :meth:`GeoposeOutput.combine` are the only ways the layers above
  rebuild one, so no field (``flow``, ``ramp``) is dropped on the way.
- :class:`Sample`: one training image and its targets as numpy (what the data layer reads and
  the transforms move); :class:`Item` and :class:`Batch`: the tensors the data set makes of it
  and the loader stacks (what models, losses and metrics consume).
- :class:`ImagePrediction`: one whole image's prediction as inference hands it to writers.
- :data:`ProgressFn`: the one progress callback of long library calls; only the CLI draws it.

One-rule helpers (each rule exists here only):

- :func:`city_index`: a city code or index -> index into :data:`CITIES`, -1 = unknown.
- :func:`unit_vector` and :func:`direction_known`: directions ``(sin a, cos a)``, where the
  zero vector means "no evidence of the direction" (never a made-up angle).
- :func:`image_to_unit`: uint8 RGB -> float32 in [0, 1] (``x / 255``), numpy or torch.
- :func:`window`: a crop of an array, padded where it leaves the array.
- :func:`item_seed`: the 63-bit seed of one (base seed, stream, position) draw.
- :func:`env_rank`: this process's rank from the launcher's environment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypedDict

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: io and metrics load without it
    import torch

# --- cities -----------------------------------------------------------------------------------

CITIES = ("ARG", "ATL", "JAX", "OMA")
"""The four cities of the competition / US3D data, in the order of city indices and one-hots."""


def city_index(city: str | int | None) -> int:
    """City code (``"JAX"``) or index -> index into :data:`CITIES`; -1 for None, an unknown
    code, an index out of range or anything else (a NaN from a table)."""
    if city is None or isinstance(city, bool):
        return -1
    if isinstance(city, (int, np.integer)):
        return int(city) if 0 <= int(city) < len(CITIES) else -1
    return CITIES.index(city) if isinstance(city, str) and city in CITIES else -1


# --- directions -------------------------------------------------------------------------------

UNIT_EPS = 1e-12
"""Norms below this are not blown up to length 1 by :func:`unit_vector`."""
KNOWN_MIN_NORM = 0.5
"""A normalised direction longer than this is known (:func:`direction_known`)."""


def unit_vector(
    v: torch.Tensor, dim: int = -1, fallback: tuple[float, float] | None = None
) -> torch.Tensor:
    """Direction vectors (2 long along ``dim``) scaled to unit length: ``v / max(|v|, 1e-12)``.

    The rule: a zero vector is "no direction evidence" and stays zero, and a vector that is
    zero up to rounding (length below 1e-12, e.g. views or tiles whose directions cancel) stays
    far shorter than 1, so :func:`direction_known` reads both as unknown; every other vector
    becomes exactly unit. Gradients are finite everywhere. Used wherever a direction is fitted
    or averaged (TTA views, tiles, ensemble members).

    ``fallback`` is for a trained regression head, which must always answer: ``v`` is nudged by
    ``1e-9 · fallback`` first, so a zero vector becomes ``fallback`` (norm always 1).
    """
    import torch.nn.functional as F

    if fallback is not None:
        shape = [1] * v.dim()
        shape[dim] = 2
        v = v + v.new_tensor(fallback).reshape(shape) * 1e-9
    return F.normalize(v, dim=dim, eps=UNIT_EPS)


def direction_known(direction: np.ndarray | torch.Tensor | Sequence[float]) -> bool:
    """Whether one direction ``(sin a, cos a)`` made by :func:`unit_vector` (averaged, fitted)
    holds evidence: its length is above 0.5 (unit vectors are, zero and NaN are not)."""
    if _is_tensor(direction):
        direction = direction.detach().cpu()
    d = np.asarray(direction)
    return bool(np.hypot(float(d[0]), float(d[1])) > KNOWN_MIN_NORM)


def _is_tensor(x: object) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (a tensor means it is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


# --- model output -----------------------------------------------------------------------------


class GeoposeOutput(NamedTuple):
    """Model outputs: AGL B×1×H×W (m), MAG B×1×H×W (px), direction B×2 unit (sin a, cos a)
    or (0, 0) where a ramp/flow fit found no evidence of it, scale B (px/m), the dense flow
    B×2×H×W (px, (dx, dy)) when the model has a flow head, the facade-ramp field B×2×H×W
    (∇AGL, m/px, (d/dcol, d/drow)) when it has a ramp head and the facade logits B×1×H×W
    (the ramp fit's weights, sigmoid) when it has a facade head.

    Field kinds (:data:`FIELD_KINDS`): ``map`` (agl, mag, facade), ``vector_map`` (flow, ramp: two
    channels (column, row) that a rotation of the image also turns), ``vector`` (direction, as
    flow) and ``scalar`` (scale).
    """

    agl: torch.Tensor
    mag: torch.Tensor
    direction: torch.Tensor
    scale: torch.Tensor
    flow: torch.Tensor | None = None
    ramp: torch.Tensor | None = None
    facade: torch.Tensor | None = None

    def map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> GeoposeOutput:
        """``fn(name, tensor)`` applied to every field present; absent ones stay None."""
        pairs = zip(self._fields, self, strict=True)
        return GeoposeOutput(*(None if t is None else fn(name, t) for name, t in pairs))

    @staticmethod
    def combine(
        outputs: Sequence[GeoposeOutput],
        fn: Callable[[str, list[torch.Tensor]], torch.Tensor],
    ) -> GeoposeOutput:
        """One output from several: ``fn(name, [that field of each output])`` per field. An
        optional field is kept when every output has it, else it is None."""
        if not outputs:
            raise ValueError("no outputs to combine")
        fields = {}
        for i, name in enumerate(GeoposeOutput._fields):
            parts = [o[i] for o in outputs]
            fields[name] = None if any(p is None for p in parts) else fn(name, parts)
        return GeoposeOutput(**fields)


FIELD_KINDS: dict[str, str] = {
    "agl": "map",
    "mag": "map",
    "direction": "vector",
    "scale": "scalar",
    "flow": "vector_map",
    "ramp": "vector_map",
    "facade": "map",
}
"""How each :class:`GeoposeOutput` field transforms: a per-pixel ``map`` (B×C×H×W) of
scalars or of ``vector_map`` 2-vectors, an image-level ``vector`` (B×2) or ``scalar`` (B)."""


# --- training samples and batches -------------------------------------------------------------


@dataclass
class Sample:
    """One training image and its targets.

    ``rgb`` H×W×3 uint8; ``agl`` H×W float32 metres (NaN = missing) or None; ``angle`` radians
    [0, 2π); ``scale`` px/m; ``gsd`` m/px.
    """

    rgb: np.ndarray
    agl: np.ndarray | None
    angle: float
    scale: float
    gsd: float

    def replace(self, **changes) -> Sample:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) in pixels."""
        return self.rgb.shape[0], self.rgb.shape[1]


class _Tensors(TypedDict):
    image: torch.Tensor
    agl: torch.Tensor
    mag: torch.Tensor
    direction: torch.Tensor
    scale: torch.Tensor
    gsd: torch.Tensor
    city: torch.Tensor


class Item(_Tensors):
    """One data set item (``geopose.data.to_item``): ``image`` float32 3×H×W in [0, 1];
    ``agl`` float32 1×H×W m (NaN = missing); ``mag`` float32 1×H×W px (= agl·scale);
    ``direction`` float32 (2,) = (sin a, cos a); ``scale`` float32 () px/m; ``gsd`` float32 ()
    m/px; ``city`` int64 () index into :data:`CITIES` (-1 unknown); ``stem`` str."""

    stem: str


class Batch(_Tensors):
    """B items stacked (``geopose.data.collate``): every :class:`Item` tensor with a leading
    batch axis, ``stem`` the list of B stems. What models (``image``, ``gsd``, ``city``),
    losses and metrics (the targets) take."""

    stem: list[str]


# --- whole-image predictions ------------------------------------------------------------------

NO_DIRECTION_ANGLE = 0.0
"""Angle (rad) written for an image without direction evidence; its scale is 0 (zero flow)."""


@dataclass
class ImagePrediction:
    """One image's prediction: AGL H×W float32 m, MAG H×W float32 px, angle rad, scale px/m.

    ``direction_known`` is False when no view, tile or model found evidence of the flow
    direction (e.g. a ramp fit on flat land): the flow is then zero (scale 0, MAG 0) and the
    angle 0 rad is only a label (:data:`NO_DIRECTION_ANGLE`).
    """

    agl: np.ndarray
    mag: np.ndarray
    angle: float
    scale: float
    direction_known: bool = True


# --- images, crops, seeds, ranks --------------------------------------------------------------


def image_to_unit(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """uint8 image values (0-255) -> float32 in [0, 1] as ``x / 255`` (correctly rounded, the
    same numbers in numpy and torch, for training and inference). A floating-point image is
    taken as already in [0, 1] and returned as it is. A torch result is a new tensor (divided
    in place after the conversion), on the input's device."""
    if _is_tensor(image):
        import torch

        if image.is_floating_point():
            return image
        return image.to(torch.float32).div_(255.0)
    arr = np.asarray(image)
    if np.issubdtype(arr.dtype, np.floating):
        return arr
    return np.divide(arr, np.float32(255.0), dtype=np.float32)


def window(arr: np.ndarray, r0: int, c0: int, h: int, w: int, fill) -> np.ndarray:
    """``arr[r0:r0+h, c0:c0+w]`` of an (H, W, ...) array (a memmap is read only there), padded
    with ``fill`` where the window leaves the array; always a new array."""
    rows, cols = arr.shape[:2]
    r1, c1 = max(r0, 0), max(c0, 0)
    r2, c2 = min(r0 + h, rows), min(c0 + w, cols)
    part = np.asarray(arr[r1:r2, c1:c2]) if r2 > r1 and c2 > c1 else None
    if part is not None and part.shape[:2] == (h, w):
        return np.array(part)
    out = np.full((h, w, *arr.shape[2:]), fill, dtype=arr.dtype)
    if part is not None:
        out[r1 - r0 : r2 - r0, c1 - c0 : c2 - c0] = part
    return out


def item_seed(seed: int, stream: int, position: int) -> int:
    """A 63-bit seed from (base seed, stream, position): the data set's item seeds (stream =
    epoch, position in the epoch) and training's model randomness (stream = 10⁶ + rank,
    position = optimizer step). The same triple always gives the same seed."""
    return int(
        np.random.SeedSequence([seed, stream, position])
        .generate_state(2, np.uint32)
        .astype(np.uint64)
        @ np.array([1 << 31, 1], np.uint64)
    )


def env_rank() -> int:
    """This process's global rank as its launcher tells it: ``RANK`` (torchrun, and Lightning
    on clusters), else ``LOCAL_RANK`` (the DDP processes Lightning starts on one node set only
    that), else 0 (a single process)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


ProgressFn = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: a long library call reports ``done`` of ``total`` units
of its current ``stage`` (e.g. ``"predict"`` tiles, ``"write"`` images); ``total`` 0 when unknown.
The library never draws: the CLI turns these calls into rich progress bars."""
