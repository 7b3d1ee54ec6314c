"""The config schema every section follows (``data``, ``train``, ``model``, ``loss``) and the
registries of named parts (pose heads, models).

A section is a table of :class:`Opt` (one key: default, kind, bounds, choices, help); a nested
mapping (``model.agl``, ``loss.scale``) is a :class:`Section` of its own table. Checking a
value fills the defaults, normalises numbers and raises :class:`~geopose.errors.ConfigError`
naming the dotted key, with a did-you-mean for unknown keys and names. Pure Python: no torch.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from geopose.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Opt:
    """One config key: its default, accepted kind, and constraints.

    ``kind`` is ``int``, ``float``, ``bool``, ``str``, ``range`` ([lo, hi]), ``ints`` (a
    non-empty list of integers), ``mapping`` (a free mapping), ``path`` or ``devices``.
    ``min``/``max`` bound numbers inclusively, ``gt``/``lt`` exclusively; ``choices`` may be a
    :class:`Registry` (its names at the time of the check).
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


@dataclass(frozen=True)
class Section:
    """A nested mapping of options. An ``optional`` one may be ``null``/``false`` (absent: None)
    or ``true`` (every default); ``present`` says whether it is there when not given."""

    opts: Mapping[str, Opt | Section]
    doc: str = ""
    optional: bool = False
    present: bool = True


Schema = Mapping[str, "Opt | Section"]


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
    """A table's defaults, nested sections included (an absent optional section is None)."""
    out: dict[str, Any] = {}
    for key, opt in schema.items():
        if isinstance(opt, Section):
            out[key] = defaults_of(opt.opts) if opt.present else None
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
    out = defaults_of(schema)
    for key, v in value.items():
        spec = schema[key]
        name = f"{where}.{key}"
        if isinstance(spec, Section):
            out[key] = check_subsection(name, spec, v)
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


# --- registries -----------------------------------------------------------------------------


class Registry(Mapping[str, T], Generic[T]):
    """Named parts (as timm registers models): ``@REGISTRY.register("name")`` on a class or
    function; ``REGISTRY.lookup(name)`` raises ConfigError with a did-you-mean for unknown names.

    ``what`` is the config key that picks an entry (``model.direction.kind``); ``populate``,
    when given, imports the modules that register more entries, on the first look-up.
    """

    def __init__(self, what: str, populate: Callable[[], Any] | None = None) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        self._populate = populate

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under ``name`` (ValueError when taken)."""

        def add(obj: T) -> T:
            if not name or name in self._entries:
                raise ValueError(f"{self.what} {name!r} is empty or taken")
            self._entries[name] = obj
            return obj

        return add

    def _loaded(self) -> dict[str, T]:
        populate = self._populate
        if populate is not None:
            self._populate = None  # once (and no recursion from the modules it imports)
            try:
                populate()
            except BaseException:
                self._populate = populate
                raise
        return self._entries

    def lookup(self, name: Any) -> T:
        """The entry ``name``; ConfigError naming :attr:`what` (and close names) if none."""
        entries = self._loaded()
        if isinstance(name, str) and name in entries:
            return entries[name]
        hint = did_you_mean(name, entries) if isinstance(name, str) else ""
        raise ConfigError(f"{self.what}: {name!r} is not one of {sorted(entries)}{hint}")

    def __getitem__(self, name: str) -> T:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"
