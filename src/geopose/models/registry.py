"""MODELS: every model ``create_model`` builds, by the name a ``model:`` section gives in
``family:`` (none: ``geopose``).

An entry is a class with ``options`` (the keys of its ``model:`` section, a table of
:class:`~geopose.schema.Opt`), ``resolve(config) -> dict`` (the section checked against them,
defaults filled; :class:`~geopose.errors.ConfigError` naming the dotted key otherwise) and
``build(config) -> nn.Module``. :class:`~geopose.models.GeoposeModel` registers itself as
``geopose`` in ``geopose/models/model.py``, each published family under its name in its
``geopose/models/zoo`` module; ``geopose/models/__init__.py`` imports both, so the registry is
complete whenever ``geopose.models`` is imported.
"""

from __future__ import annotations

from typing import Any

from geopose.schema import Registry

GEOPOSE = "geopose"
"""The :data:`MODELS` name of :class:`~geopose.models.GeoposeModel` (a section without
``family:``)."""

MODELS: Registry[Any] = Registry("model.family")
"""Model builders by name: ``MODELS.lookup(name).build(config)`` -> nn.Module."""
