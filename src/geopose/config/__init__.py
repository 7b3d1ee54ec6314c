"""Configuration: every section's table, recipes, ``key=value`` overrides, ``resolve_config``
and config files, in one place.

>>> from geopose.config import resolve_config, save_config
>>> cfg = resolve_config("cpu_small", ["train.lr=3e-4", "model.direction.hidden=64"])
>>> save_config(cfg, "run/config.yaml")

A config has four sections, each a table of :class:`Opt` (default, kind, bounds, choices,
help): ``model:`` and ``loss:`` (:data:`MODEL`, :data:`LOSS`), ``data:`` and ``train:``
(:data:`DATA`, :data:`TRAIN`); :data:`SECTIONS` maps each name to its table. Precedence:
defaults < recipe < overrides. An unknown key or a bad value raises
:class:`~geopose.errors.ConfigError` naming the dotted key, with a did-you-mean.

Where each piece lives, so that every import goes down the layers:

- :mod:`geopose.schema`, below the models: the schema primitives (:class:`Opt`,
  :class:`Section`, :class:`Kinds`, :class:`Registry`, :func:`check_section`,
  :func:`defaults_of`, :func:`did_you_mean`) and the recipe files (:func:`load_recipe` with
  ``extends``, :func:`list_recipes`, :func:`deep_merge`, :data:`CONFIG_DIR`). The models
  build on them: a model section is checked when the model is built, and ``create_model``
  takes recipe names.
- :mod:`geopose.models`: each part declares the keys it reads next to its class (``options``:
  the encoder, decoder, dense heads, each pose-head kind, each published family), and its
  registries are filled by the modules that define the parts, at import.
- this package, above the models: the ``data:``/``train:`` tables (:mod:`.sections`), the
  gathering of every section, overrides and :func:`resolve_config` (:mod:`.resolve`), config
  files (:mod:`.files`); it re-exports the names above, so configuration is read from here.
"""

from geopose.config.files import load_config, save_config
from geopose.config.resolve import (
    apply_override,
    check_config,
    check_run_section,
    parse_override,
    resolve_config,
)
from geopose.config.sections import AUG_LEVELS, DATA, RUN_SECTIONS, SECTIONS, TRAIN, defaults
from geopose.models.losses import LOSS, LOSS_DEFAULTS, resolve_loss_config
from geopose.models.model import MODEL, MODEL_DEFAULTS, resolve_model_config
from geopose.schema import (
    CONFIG_DIR,
    Kinds,
    Opt,
    Registry,
    Section,
    check_section,
    check_value,
    deep_merge,
    defaults_of,
    did_you_mean,
    list_recipes,
    load_recipe,
)

__all__ = [
    "AUG_LEVELS",
    "CONFIG_DIR",
    "DATA",
    "LOSS",
    "LOSS_DEFAULTS",
    "MODEL",
    "MODEL_DEFAULTS",
    "RUN_SECTIONS",
    "SECTIONS",
    "TRAIN",
    "Kinds",
    "Opt",
    "Registry",
    "Section",
    "apply_override",
    "check_config",
    "check_run_section",
    "check_section",
    "check_value",
    "deep_merge",
    "defaults",
    "defaults_of",
    "did_you_mean",
    "list_recipes",
    "load_config",
    "load_recipe",
    "parse_override",
    "resolve_config",
    "resolve_loss_config",
    "resolve_model_config",
    "save_config",
]
