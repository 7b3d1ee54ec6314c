"""The config schema and the recipe files: the part of configuration that the models layer
builds on, so it sits below ``geopose.models`` (pure Python and YAML; no torch). The
configuration as a whole (every section, overrides, ``resolve_config``) is
:mod:`geopose.config`, which re-exports every name here.

A section's keys are a table of :class:`Opt` (one key: default, kind, bounds, choices, help); a
nested mapping (``model.agl``, ``loss.scale``) is a :class:`Section` of its own table, and a
mapping whose keys depend on its ``kind`` (``model.direction``) is a :class:`Kinds`: the
chosen entry of a :class:`Registry` declares them. Checking a value fills the defaults,
normalises numbers and raises :class:`~geopose.errors.ConfigError` naming the dotted key, with
a did-you-mean for unknown keys and names.

Registries hold named parts (as timm registers models): a module that defines a part registers
it with ``@REGISTRY.register(name)`` when it is imported, and the package that owns the
registry imports those modules (``geopose.models`` for the pose heads and the models).

A recipe is a YAML file in ``geopose/configs/`` (:data:`CONFIG_DIR`) with a ``model:`` section
and optional ``loss:``, ``data:`` and ``train:`` ones; ``extends: <recipe>`` deep-merges it over
another recipe (:func:`load_recipe`).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import yaml

from geopose.errors import ConfigError, GeoposeDataError

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The built-in recipes, one YAML file each (``geopose/configs/<name>.yaml``)."""


@dataclass(frozen=True)
class Opt:
    """One config key: its default, accepted kind, and constraints.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``range`` ([lo, hi]), ``ints`` (a
    non-empty list of integers), ``mapping`` (a free mapping), ``path`` or ``devices``.
    ``min``/``max`` bound numbers inclusively, ``gt``/``lt`` exclusively; ``choices`` may be a
    :class:`Registry` (its names at the time of the check). A ``required`` key has no default:
    a section without it is refused.
    """

    default: Any
    kind: str
    doc: str
    choices: Iterable[str] = ()
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    gt: float | None = None
    lt: float | None = None
    required: bool = False


@dataclass(frozen=True)
class Section:
    """A nested mapping of options. An ``optional`` one may be ``null``/``false`` (absent: None)
    or ``true`` (every default); ``present`` says whether it is there when not given."""

    opts: Mapping[str, Opt | Section | Kinds]
    doc: str = ""
    optional: bool = False
    present: bool = True


class HasOptions(Protocol):
    """What a :class:`Kinds` registry holds: parts that declare their own options."""

    options: Mapping[str, Opt]


@dataclass(frozen=True)
class Kinds:
    """A nested mapping whose keys depend on its ``kind``: ``kind`` names an entry of
    ``registry`` and the entry's ``options`` (a table of :class:`Opt`, declared next to its
    class) are the section's other keys, with ``common`` ones every kind accepts.

    A resolved section lists every kind's options, those of the other kinds at their defaults,
    so it has one shape whatever the kind and resolves again to itself. Setting an option that
    only other kinds have (to anything but its default) is refused, naming the key and the
    kinds that have it.
    """

    registry: Registry[HasOptions]
    default: str
    doc: str = ""
    common: Mapping[str, Opt] = field(default_factory=dict)

    @property
    def kind(self) -> Opt:
        """The ``kind`` key: one of the registry's names."""
        return Opt(self.default, "str", f"the kind of {self.doc}", choices=self.registry)

    def own(self, kind: str) -> dict[str, Opt]:
        """The keys of a section of this ``kind``: ``kind``, the common ones, the entry's."""
        return {"kind": self.kind, **self.common, **self.registry[kind].options}

    def table(self) -> dict[str, Opt]:
        """Every kind's keys: ``kind``, each entry's in registration order, the common ones.
        A key that two kinds declare must be the same :class:`Opt` (one default whatever the
        kind)."""
        out: dict[str, Opt] = {"kind": self.kind}
        owner: dict[str, str] = {}
        tables = [*self.registry.items(), ("every kind", _Common(self.common))]
        for name, entry in tables:
            for key, opt in entry.options.items():
                if key in owner and out[key] != opt:
                    raise ValueError(
                        f"{self.registry.what}: option {key!r} of {name} differs from the one "
                        f"of {owner[key]}"
                    )
                out.setdefault(key, opt)
                owner.setdefault(key, name)
        return out

    def kinds_with(self, key: str) -> list[str]:
        """The kinds whose options hold ``key``."""
        return [name for name, entry in self.registry.items() if key in entry.options]


@dataclass(frozen=True)
class _Common:
    options: Mapping[str, Opt]


Schema = Mapping[str, "Opt | Section | Kinds"]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"; did you mean a, b?"`` for the known words close to ``word`` (by spelling, or
    holding it: ``dense`` -> ``dense_attention``), else ``""``."""
    word, known = str(word), [str(k) for k in known]
    close = difflib.get_close_matches(word, known, n=3)
    if len(word) >= 3:
        close += [k for k in known if word in k and k not in close]
    close = close[:3]
    return f"; did you mean {', '.join(close)}?" if close else ""


def defaults_of(schema: Schema) -> dict[str, Any]:
    """A table's defaults, nested sections included (an absent optional section is None; a
    :class:`Kinds` section lists every kind's options)."""
    out: dict[str, Any] = {}
    for key, opt in schema.items():
        if isinstance(opt, Section):
            out[key] = defaults_of(opt.opts) if opt.present else None
        elif isinstance(opt, Kinds):
            out[key] = defaults_of(opt.table())
        else:
            out[key] = copy.deepcopy(opt.default)
    return out


# --- values ---------------------------------------------------------------------------------


def _as_number(key: str, value: Any, kind: str) -> float | int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value) if kind == "float" else int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _check_bounds(key: str, value: float, opt: Opt) -> None:
    if opt.min is not None and value < opt.min:
        raise ConfigError(f"{key}: {value!r} is below the minimum {opt.min}")
    if opt.max is not None and value > opt.max:
        raise ConfigError(f"{key}: {value!r} is above the maximum {opt.max}")
    if opt.gt is not None and not value > opt.gt:
        raise ConfigError(f"{key}: {value!r} must be > {opt.gt}")
    if opt.lt is not None and not value < opt.lt:
        raise ConfigError(f"{key}: {value!r} must be < {opt.lt}")


def check_value(key: str, value: Any, opt: Opt) -> Any:
    """Check and normalise one value against its :class:`Opt`; returns the clean value."""
    if value is None:
        if opt.nullable:
            return None
        raise ConfigError(f"{key}: may not be null")
    kind = opt.kind
    if kind in ("int", "float"):
        value = _as_number(key, value, kind)
        _check_bounds(key, value, opt)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        choices = list(opt.choices)
        if choices and value not in choices:
            hint = did_you_mean(value, choices)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}{hint}")
    elif kind == "path":
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        value = str(value)
    elif kind == "range":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{key}: expected [lo, hi], got {value!r}")
        lo, hi = (_as_number(key, v, "float") for v in value)
        for v in (lo, hi):
            _check_bounds(key, v, opt)
        if lo > hi:
            raise ConfigError(f"{key}: lo {lo} is above hi {hi}")
        value = [lo, hi]
    elif kind == "ints":
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{key}: expected a non-empty list of integers, got {value!r}")
        value = [_as_number(key, v, "int") for v in value]
        for v in value:
            _check_bounds(key, v, opt)
    elif kind == "mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value = copy.deepcopy(dict(value))
    elif kind == "devices" and value != "auto":
        value = _as_number(key, value, "int")
        if value < 1:
            raise ConfigError(f"{key}: expected 'auto' or a count >= 1, got {value!r}")
    return value


def unknown_keys(where: str, keys: Iterable[str], known: Iterable[str]) -> ConfigError:
    """The error for keys a section does not have: did-you-mean, else the known keys."""
    keys, known = sorted(map(str, keys)), sorted(map(str, known))
    hint = did_you_mean(keys[0], known) if len(keys) == 1 else ""
    return ConfigError(f"{where}: unknown key(s) {keys}{hint or f'; known: {known}'}")


def check_section(where: str, schema: Schema, value: Any) -> dict[str, Any]:
    """Check a mapping (keys and values, nested sections too) against its table and fill the
    defaults; ``where`` is its dotted name (``model.direction``). Returns a new dict."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    unknown = [k for k in value if k not in schema]
    if unknown:
        raise unknown_keys(where, unknown, schema)
    missing = [k for k, o in schema.items() if isinstance(o, Opt) and o.required and k not in value]
    if missing:
        raise ConfigError(f"{where}: needs {missing[0]!r} ({schema[missing[0]].doc})")
    out = defaults_of(schema)
    for key, v in value.items():
        spec = schema[key]
        name = f"{where}.{key}"
        if isinstance(spec, Section):
            out[key] = check_subsection(name, spec, v)
        elif isinstance(spec, Kinds):
            out[key] = check_kinds(name, spec, v)
        else:
            out[key] = check_value(name, v, spec)
    return out


def check_subsection(where: str, spec: Section, value: Any) -> dict[str, Any] | None:
    """A nested section's value -> its checked dict, or None for an optional one turned off."""
    if spec.optional:
        if value is None or value is False:
            return None
        if value is True:
            value = {}
    elif value is None:
        raise ConfigError(f"{where}: may not be null")
    if not isinstance(value, Mapping):
        what = "a mapping or null" if spec.optional else "a mapping"
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return check_section(where, spec.opts, value)


def check_kinds(where: str, spec: Kinds, value: Any) -> dict[str, Any]:
    """A :class:`Kinds` section's value -> its checked dict: the keys of the chosen kind are
    checked and filled, every other kind's hold their defaults."""
    if value is None:
        raise ConfigError(f"{where}: may not be null")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    kind = check_value(f"{where}.kind", value.get("kind", spec.default), spec.kind)
    own, table = spec.own(kind), spec.table()
    unknown = [k for k in value if k not in table]
    if unknown:
        raise unknown_keys(where, unknown, own)
    out = defaults_of(table)
    for key, v in value.items():
        name = f"{where}.{key}"
        clean = check_value(name, v, table[key])
        if key not in own and clean != table[key].default:
            others = ", ".join(spec.kinds_with(key))
            raise ConfigError(
                f"{name}: an option of kind {others}, not of {kind!r}; {where} of kind "
                f"{kind!r} has {sorted(own)}"
            )
        out[key] = clean
    out["kind"] = kind
    return out


# --- registries -----------------------------------------------------------------------------


class Registry(Mapping[str, T], Generic[T]):
    """Named parts (as timm registers models): ``@REGISTRY.register("name")`` on a class or
    function; ``REGISTRY.lookup(name)`` raises ConfigError with a did-you-mean for unknown names.

    ``what`` is the config key that picks an entry (``model.direction.kind``). Entries are
    added when the module defining them is imported; the package owning the registry imports
    those modules, so a registry is complete once its package is.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (ValueError when taken)."""

        def add(obj: T) -> T:
            if not name or name in self._entries:
                raise ValueError(f"{self.what} {name!r} is empty or taken")
            self._entries[name] = obj
            return obj

        return add

    def lookup(self, name: Any) -> T:
        """The entry ``name``; ConfigError naming :attr:`what` (and close names) if none."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        hint = did_you_mean(name, self._entries) if isinstance(name, str) else ""
        raise ConfigError(f"{self.what}: {name!r} is not one of {sorted(self._entries)}{hint}")

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"


# --- recipes ---------------------------------------------------------------------------------


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated recursively by ``update`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``geopose/configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _recipe_path(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
        path = Path(s)
        if not path.is_file():
            raise GeoposeDataError(path, "no such recipe file")
        return path
    path = CONFIG_DIR / f"{s}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {s!r}; built-in recipes: {', '.join(list_recipes())}")
    return path


def load_recipe(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict:
    """A recipe by name (``baseline``, ``cpu_small``, ...) or YAML path -> the whole recipe dict
    (``model``, ``loss`` and optional ``data``/``train``), with ``extends:`` resolved."""
    path = _recipe_path(name_or_path)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GeoposeDataError(path, f"not a readable YAML recipe ({exc})") from exc
    if not isinstance(recipe, dict):
        raise GeoposeDataError(path, "a recipe must be a YAML mapping with a 'model:' section")
    parent = recipe.pop("extends", None)
    if parent is not None:
        if str(parent) in _seen:
            raise GeoposeDataError(path, f"recipe 'extends' loop through {parent!r}")
        recipe = deep_merge(load_recipe(parent, (*_seen, str(name_or_path))), recipe)
    if not isinstance(recipe.get("model"), dict):
        raise GeoposeDataError(path, "recipe has no 'model:' mapping")
    recipe.setdefault("name", path.stem)
    return recipe
