"""Which models a command runs, decided once: model specs -> weighted members -> loaded models.

A model ``spec`` is, in this order:

- a file: a geopose (Lightning) checkpoint, or a published challenge checkpoint of any known
  family (``geopose.models.zoo``), recognised by content whatever its name;
- the name of a published model (``geopose models`` lists them) already in the cache
  (``geopose models download NAME``);
- the name of a published ensemble (``geopose.models.zoo.catalog.ENSEMBLES``): its members,
  with the authors' weights and the TTA they used.

An ensemble YAML spec lists members; paths are relative to the spec file::

    members:
      - checkpoint: runs/b7/best.ckpt
        weight: 2
      - checkpoints: [runs/v2l/epoch=40.ckpt, runs/v2l/epoch=45.ckpt]   # one weight each
        weight: 1
      - runs/r34/last.ckpt                                            # weight 1
      - model: second-b7-unet-fold0-best              # a published model (downloaded), or a file

:func:`resolve_models` turns what a command was given into :class:`ModelSpecs` (checking
every member can be loaded, before anything is written); :func:`load_models` loads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from geopose.errors import ConfigError, GeoposeDataError

Member = tuple[str | Path, float]
"""A model (file path or published model name) and its ensemble weight."""


def resolve_spec(spec: str | Path) -> Path:
    """A model file path or a cached published model's name -> the file to read.

    Raises :class:`GeoposeDataError` for a name that is not downloaded yet (saying how) or a
    path that does not exist.
    """
    from geopose.models.zoo import cache, catalog

    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec)
    if name in catalog.CATALOG:
        cached = cache.verified_path(name)  # its hash checked against the download record
        if cached is None:
            raise GeoposeDataError(
                name,
                f"published model not in the cache ({cache.cache_dir()}): run "
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
    specs: Sequence[Member],
) -> tuple[list[Member], str | None]:
    """Expand published ensemble names into their weighted members.

    Returns ``(members, tta)``: ``tta`` is the TTA the authors used with the (first) published
    ensemble named, or None when no ensemble was named.
    """
    from geopose.models.zoo import catalog

    out: list[Member] = []
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


def _weight(entry: dict, spec: Path) -> float:
    w = entry.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise GeoposeDataError(spec, f"member weight must be a positive number, got {w!r}")
    return float(w)


def read_ensemble_spec(path: str | Path) -> list[Member]:
    """Read an ensemble YAML spec (module doc) -> [(file path or published name, weight)],
    checking every file exists."""
    from geopose.models.zoo import catalog

    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "ensemble spec not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GeoposeDataError(path, f"not valid YAML ({exc})") from exc
    entries = doc.get("members") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise GeoposeDataError(path, "expected a non-empty 'members:' list")
    out: list[Member] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"checkpoint": entry}
        if not isinstance(entry, dict):
            raise GeoposeDataError(path, f"a member must be a path or a mapping, got {entry!r}")
        unknown = set(entry) - {"checkpoint", "checkpoints", "model", "weight"}
        if unknown:
            raise GeoposeDataError(path, f"unknown member key(s) {sorted(unknown)}")
        ckpts = entry.get("checkpoints") or [entry.get("checkpoint") or entry.get("model")]
        if not isinstance(ckpts, list) or not all(isinstance(c, str) for c in ckpts):
            raise GeoposeDataError(
                path, f"member needs 'checkpoint: PATH' or 'checkpoints: [..]': {entry!r}"
            )
        w = _weight(entry, path)
        for c in ckpts:
            p = Path(c) if Path(c).is_absolute() else path.parent / c
            if p.is_file():
                out.append((p, w))
            elif c in catalog.CATALOG:
                out.append((c, w))
            else:
                raise GeoposeDataError(p, f"model listed in {path} not found")
    return out


@dataclass(frozen=True)
class ModelSpecs:
    """The models of a run, resolved: weighted ``members`` (published ensembles expanded) and
    the TTA the authors used with the first published ensemble named (None: none named)."""

    members: tuple[Member, ...]
    authors_tta: str | None = None


def resolve_models(
    models: Sequence[str | Path | Member] = (), ensemble: str | Path | None = None
) -> ModelSpecs:
    """What a command was given -> :class:`ModelSpecs`.

    ``models`` (weight 1 unless given as ``(spec, weight)``) have their published ensemble
    names expanded (:func:`expand_specs`); the ``ensemble`` YAML spec's members follow
    (:func:`read_ensemble_spec`). Every member must be a file or a downloaded published model
    (:func:`resolve_spec`): a missing one raises :class:`GeoposeDataError` saying how to get
    it; no model at all raises :class:`ConfigError`.
    """
    specs = [m if isinstance(m, tuple) else (m, 1.0) for m in models]
    members, authors_tta = expand_specs(specs)
    if ensemble is not None:
        members += read_ensemble_spec(ensemble)
    if not members:
        raise ConfigError(
            "give at least one model (a checkpoint, a published model name or file), or "
            "--ensemble spec.yaml"
        )
    for spec, _ in members:
        resolve_spec(spec)  # a missing file or an undownloaded name stops here, with its fix
    return ModelSpecs(tuple(members), authors_tta)


@dataclass(frozen=True)
class LoadedModels:
    """Loaded members, in order: ``models`` (eval mode), their ``weights`` and ``configs``
    (the training recipe of a geopose checkpoint, ``{"name", "model"}`` of a published one)."""

    models: tuple[nn.Module, ...]
    weights: tuple[float, ...]
    configs: tuple[dict, ...]


def load_models(members: Sequence[Member]) -> LoadedModels:
    """Load every member with :func:`load_model`."""
    loaded = [(load_model(spec), float(w)) for spec, w in members]
    return LoadedModels(
        tuple(m for (m, _), _ in loaded),
        tuple(w for _, w in loaded),
        tuple(c for (_, c), _ in loaded),
    )
