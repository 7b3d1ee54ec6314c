"""One way to load any model geopose can run: ``load_model(NAME | FILE)``.

``spec`` is, in this order:

- a file: a geopose (Lightning) checkpoint, or a published challenge checkpoint of any known
  family (``geopose.models.zoo``), recognised by content whatever its name;
- the name of a published model (``geopose models`` lists them) already in the cache
  (``geopose models download NAME``).

Published ensembles (``geopose.models.zoo.catalog.ENSEMBLES``) expand to their members with
:func:`expand_specs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from geopose.errors import GeoposeDataError


def resolve_spec(spec: str | Path) -> Path:
    """A model file path or a cached published model's name -> the file to read.

    Raises :class:`GeoposeDataError` for a name that is not downloaded yet (saying how) or a
    path that does not exist.
    """
    from geopose.models.zoo import catalog

    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    if name in catalog.CATALOG:
        cached = catalog.verified_path(name)  # its hash checked against the download record
        if cached is None:
            raise GeoposeDataError(
                name,
                f"published model not in the cache ({catalog.cache_dir()}): run "
                f"`geopose models download {name}` first",
            )
        return cached
    if path.exists():
        raise GeoposeDataError(path, "not a file")
    known = ", ".join(sorted(catalog.CATALOG)[:4])
    raise GeoposeDataError(
        spec,
        f"no such model file, nor a published model name (e.g. {known}; `geopose models` "
        "lists them)",
    )


def expand_specs(
    specs: Sequence[tuple[str | Path, float]],
) -> tuple[list[tuple[str | Path, float]], str | None]:
    """Expand published ensemble names into their weighted members.

    Returns ``(members, tta)``: ``tta`` is the TTA the authors used with the (first) published
    ensemble named, or None when no ensemble was named.
    """
    from geopose.models.zoo import catalog

    out: list[tuple[str | Path, float]] = []
    tta = None
    for spec, weight in specs:
        ens = catalog.ENSEMBLES.get(str(spec)) if not Path(spec).exists() else None
        if ens is None:
            out.append((spec, weight))
            continue
        tta = tta or ens.tta
        out += [(name, weight * float(w)) for name, w in ens.members]
    return out, tta


def is_geopose_checkpoint(obj: Any) -> bool:
    """True for what ``torch.load`` returns on a geopose (Lightning) checkpoint."""
    if not isinstance(obj, dict):
        return False
    config = (obj.get("hyper_parameters") or {}).get("config")
    return isinstance(config, dict) and isinstance(config.get("model"), dict)


def load_model(spec: str | Path) -> tuple[nn.Module, dict]:
    """Any model geopose runs (module doc) -> ``(model.eval(), config)``.

    ``config`` is the recipe of a geopose checkpoint, or ``{"name": ..., "model": {"family":
    ..., ...}}`` for a published model (what fine-tuning stores). The model keeps the contract
    ``forward(image B×3×H×W [0, 1], gsd B m/px, city B long) -> GeoposeOutput``.
    """
    from geopose.models.model import load_checkpoint
    from geopose.models.zoo import convert_container, read_container

    path = resolve_spec(spec)
    container = read_container(path)
    if container.kind == "pickle" and is_geopose_checkpoint(container.obj):
        return load_checkpoint(path, ckpt=container.obj)
    model = convert_container(container)
    return model, {"name": str(spec), "model": dict(model.config)}
