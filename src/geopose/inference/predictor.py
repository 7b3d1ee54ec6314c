"""The predictor: models (an ensemble), TTA and tiling on one device, turning an image into
an :class:`~geopose.types.ImagePrediction` (AGL m, MAG px, angle rad, scale px/m), or a stack
of tiles into raw per-tile outputs (scene prediction, ``geopose.inference.scene``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geopose.geometry import vector_to_angle
from geopose.inference.ensemble import Ensemble
from geopose.inference.runner import ModelRunner
from geopose.inference.tiling import predict_tiled
from geopose.inference.tta import DEFAULT_TTA, choose_tta, predict_tta, tta_views
from geopose.runtime import reuse_freed_memory
from geopose.types import (  # owner of ImagePrediction, NO_DIRECTION_ANGLE, city_index
    NO_DIRECTION_ANGLE,
    GeoposeOutput,
    ImagePrediction,
    direction_known,
    image_to_unit,
)

MIN_TILE = 256
"""Smallest tile (px) the CUDA out-of-memory fallback goes down to."""


@dataclass
class TileOutputs:
    """Raw results of :meth:`Predictor.predict_tiles` for N tiles of h×w px: ``agl`` N×h×w
    float32 m (not clipped), ``direction`` N×2 float64 (unit, or (0, 0): no evidence),
    ``scale`` N float64 px/m."""

    agl: np.ndarray
    direction: np.ndarray
    scale: np.ndarray


# --- the predictor ----------------------------------------------------------------------------


class Predictor:
    """Ensemble + TTA + tiling on one device: ``predict(rgb, gsd, city) -> ImagePrediction``.

    Immutable once built: :meth:`with_tta` gives a predictor with another TTA that shares the
    loaded models.

    Args:
        models: geopose models (``forward(image, gsd, city) -> GeoposeOutput``).
        weights: ensemble weights (default equal).
        tta: ``none``, ``flip``, ``d2`` or ``d4`` (``geopose.inference.tta.TTA_MODES``).
        device: ``cpu``, ``cuda``, ``cuda:1``...; CUDA runs bf16 autocast + channels_last.
        max_batch: most images (TTA views × tiles) per forward call.
        tile_size: images with a side above this (px) are predicted in overlapping tiles;
            0 = never tile (CUDA out-of-memory still falls back to tiles).
        shrink_scale: multiply the scale by the agreement of the TTA views' directions
            (``geopose.inference.average``): better scores, not the physical scale.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        tta: str = DEFAULT_TTA,
        device: str | torch.device = "cpu",
        max_batch: int = 8,
        tile_size: int = 2048,
        amp: bool = True,
        shrink_scale: bool = False,
    ) -> None:
        tta_views(tta)  # check the name early
        self._tta = tta
        self._shrink_scale = bool(shrink_scale)
        self._device = torch.device(device)
        if self._device.type == "cpu":
            reuse_freed_memory()  # freed tensors' memory reused between tiles (geopose.runtime)
        runners = [ModelRunner(m, amp=amp).to_device(self._device) for m in models]
        self._forward = Ensemble(runners, weights)
        self._max_batch = max(1, int(max_batch))
        self._tile_size = int(tile_size)

    @property
    def tta(self) -> str:
        """The TTA mode (``none``, ``flip``, ``d2``, ``d4``)."""
        return self._tta

    @property
    def device(self) -> torch.device:
        """The device the models run on."""
        return self._device

    @property
    def max_batch(self) -> int:
        """Most images (TTA views × tiles) per forward call."""
        return self._max_batch

    @property
    def tile_size(self) -> int:
        """Images with a side above this (px) are predicted in tiles; 0: never."""
        return self._tile_size

    @property
    def shrink_scale(self) -> bool:
        """Whether the scale is multiplied by the TTA views' agreement on the direction."""
        return self._shrink_scale

    @property
    def forward(self) -> Ensemble:
        """The ensemble's forward pass (one view)."""
        return self._forward

    def with_tta(self, tta: str) -> Predictor:
        """This predictor with TTA ``tta``, sharing the loaded models."""
        tta_views(tta)
        other = copy.copy(self)
        other._tta = tta
        return other

    def _predict_batch(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor | None
    ) -> GeoposeOutput:
        return predict_tta(
            self.forward, image, gsd, city, self.tta, self.max_batch, self.shrink_scale
        )

    def _run(self, img: torch.Tensor, gsd: float, city: int, tile: int) -> GeoposeOutput:
        h, w = img.shape[-2:]
        if tile and max(h, w) > tile:
            per_call = max(1, self.max_batch // len(tta_views(self.tta)))
            return predict_tiled(
                self._predict_batch,
                img,
                gsd,
                city,
                tile=tile,
                tiles_per_call=per_call,
                device=self.device,
            )
        x = image_to_unit(img[None].to(self.device))
        g = torch.tensor([gsd], dtype=torch.float32, device=self.device)
        c = torch.tensor([city], dtype=torch.long, device=self.device)
        return self._predict_batch(x, g, c)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, gsd: float, city: int = -1) -> ImagePrediction:
        """Predict one H×W×3 uint8 image with GSD ``gsd`` (m/px) and city index (-1 unknown).

        Negative heights are clipped to 0 m.
        """
        img = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)
        side = max(img.shape[-2:])
        tile = self.tile_size
        while True:
            try:
                out = self._run(img, gsd, city, tile)
                break
            except torch.OutOfMemoryError:
                current = tile if 0 < tile < side else side
                if self.device.type != "cuda" or current <= MIN_TILE:
                    raise
                torch.cuda.empty_cache()
                tile = max(MIN_TILE, current // 2)  # retry in smaller tiles
        agl = out.agl[0, 0].clamp_min(0).cpu().numpy()
        direction = out.direction[0].double().cpu().numpy()
        if not direction_known(direction):  # averaged directions are unit, or 0: no evidence
            # The only D4-invariant flow is zero, and it is the least-squares flow when the
            # direction is unknown: scale 0 (also without shrink_scale), a label for the angle.
            return ImagePrediction(
                agl=agl,
                mag=np.zeros_like(agl),
                angle=NO_DIRECTION_ANGLE,
                scale=0.0,
                direction_known=False,
            )
        return ImagePrediction(
            agl=agl,
            mag=out.mag[0, 0].cpu().numpy(),
            angle=float(vector_to_angle(direction)),
            scale=float(out.scale[0]),
        )

    @torch.inference_mode()
    def predict_tiles(self, tiles: np.ndarray, gsd: float, city: int = -1) -> TileOutputs:
        """Predict a stack of same-sized tiles (N×h×w×3 uint8) with the ensemble and TTA, in
        batches of ``max_batch // views`` tiles (as tiled prediction does), without blending.

        Returns the raw per-tile results: AGL N×h×w float32 metres (not clipped), direction
        N×2 float64 (TTA-averaged unit vector, or (0, 0) when a tile holds no evidence of it)
        and scale N float64 px/m. ``gsd`` m/px, ``city`` index (-1 unknown).
        """
        x = torch.from_numpy(np.require(tiles, requirements=["C"])).permute(0, 3, 1, 2)
        per_call = max(1, self.max_batch // len(tta_views(self.tta)))
        agl, direction, scale = [], [], []
        for i in range(0, x.shape[0], per_call):
            batch = image_to_unit(x[i : i + per_call].to(self.device))
            n = batch.shape[0]
            g = torch.full((n,), float(gsd), dtype=torch.float32, device=self.device)
            c = torch.full((n,), int(city), dtype=torch.long, device=self.device)
            out = self._predict_batch(batch, g, c)
            agl.append(out.agl[:, 0].float().cpu().numpy())
            direction.append(out.direction.double().cpu().numpy())
            scale.append(out.scale.double().cpu().numpy().reshape(n))
        return TileOutputs(np.concatenate(agl), np.concatenate(direction), np.concatenate(scale))

    @classmethod
    def from_checkpoints(
        cls, members: Sequence[tuple[str | Path, float]], tta: str | None = None, **kwargs: Any
    ) -> tuple[Predictor, list[dict]]:
        """Load ``[(model, weight)]`` (``geopose.models.loading.load_models``: geopose
        checkpoints, published files or names) -> (predictor, configs). ``tta`` None: the TTA
        the models were trained for (``geopose.inference.tta.choose_tta``)."""
        from geopose.models.loading import load_models

        loaded = load_models(members)
        mode = choose_tta(tta, None, loaded.configs).mode
        return cls(loaded.models, loaded.weights, tta=mode, **kwargs), list(loaded.configs)
