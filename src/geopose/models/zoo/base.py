"""What every published family shares: the model contract, reading published files, strict
weight loading and the family registry.

A published model is a :class:`PublishedModel`: the family's exact original network (its
state-dict keys are the published ones, less a ``module.`` prefix) wrapped so that it keeps
geopose's model contract::

    forward(image B×3×H×W RGB in [0, 1], gsd B (m/px), city B long (-1 unknown)) -> GeoposeOutput

with AGL B×1×H×W (m), MAG B×1×H×W (px), direction B×2 unit ``(sin a, cos a)`` and scale B
(px/m), all at the input's resolution. The family's own input contract (channel order,
normalisation, working resolution, where GSD and city enter, how the scale is formed, output
clipping) lives inside the wrapper, so callers never pass family-specific flags.

A family is a :class:`Family` subclass registered with :func:`register_family`; it recognises its
files by content (:meth:`Family.matches`), builds the model from a file
(:meth:`Family.from_container`) and rebuilds it from the JSON-able ``config`` it stores
(:meth:`Family.build`, used by fine-tuned geopose checkpoints). The keys of that config are the
model's ``options`` (a table of :class:`~geopose.schema.Opt`, declared next to the model class),
checked by :func:`geopose.schema.check_section` as every other section is.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError, GeoposeDataError
from geopose.io.checkpoint import is_torchscript, load_torch_file, read_torchscript_state
from geopose.models.registry import MODELS
from geopose.schema import Opt, check_section, did_you_mean
from geopose.types import GeoposeOutput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITY_ORDER = ("ARG", "ATL", "JAX", "OMA")
"""City one-hot order of the published models (the same as ``geopose.types.CITIES``)."""


# --- reading a published file ------------------------------------------------------------------


@dataclass
class Container:
    """A published file as read: ``kind`` is ``"pickle"`` (``obj`` is what ``torch.load``
    returned) or ``"torchscript"`` (``obj`` is the archive's ``state_dict()``)."""

    path: Path
    kind: str
    obj: Any

    def describe(self) -> str:
        """A short account of what the file holds, for error messages."""
        obj = self.obj
        if self.kind == "torchscript":
            return f"a TorchScript archive with {len(obj)} tensors ({_key_sample(obj)})"
        if isinstance(obj, Mapping):
            tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
            if tensors and tensors == len(obj):
                return f"a state dict of {len(obj)} tensors ({_key_sample(obj)})"
            return f"a dict with keys {sorted(map(str, obj))[:8]}"
        return f"a pickled {type(obj).__name__}"


def _key_sample(state: Mapping) -> str:
    keys = list(state)
    return ", ".join(map(str, keys[:3])) + (", ..." if len(keys) > 3 else "")


def read_container(path: str | Path) -> Container:
    """Read a checkpoint file of any published format -> :class:`Container`, as data.

    TorchScript archives: checked, then their ``state_dict()`` (``geopose.io.checkpoint.
    read_torchscript_state``); pickled files: ``geopose.io.checkpoint.load_torch_file`` (tensors,
    plain types and the allow-listed numpy scalars only). Raises :class:`GeoposeDataError`
    naming the file for anything unreadable or refused.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "no such checkpoint file")
    if is_torchscript(path):
        return Container(path, "torchscript", read_torchscript_state(path))
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        with zipfile.ZipFile(path) as zf:
            members = [n for n in zf.namelist() if not n.endswith("/")]
        raise GeoposeDataError(
            path,
            f"a zip archive of {len(members)} file(s) ({', '.join(members[:3])}"
            f"{', ...' if len(members) > 3 else ''}), not a checkpoint: extract the model file "
            "(or use `geopose models download NAME`)",
        )
    return Container(path, "pickle", load_torch_file(path))


def _is_torch_zip(path: Path) -> bool:
    """True for a ``torch.save`` zip (one top folder holding ``data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def state_dict_at(obj: Any, *keys: str) -> dict[str, torch.Tensor] | None:
    """``obj[k1][k2]...`` when that is a dict of tensors with string keys, else None."""
    for k in keys:
        if not isinstance(obj, Mapping) or k not in obj:
            return None
        obj = obj[k]
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    return dict(obj)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys without ``prefix`` (every key must carry it)."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path | None
) -> None:
    """Load ``state`` into ``module``: every key used, every shape equal, else one
    :class:`GeoposeDataError` line naming the file and the first differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s) ({', '.join(extra[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:2])})")
    if problems:
        what = type(module).__name__
        raise GeoposeDataError(path, f"weights do not fit {what}: " + ", ".join(problems))
    module.load_state_dict(dict(state), strict=True)


# --- the model contract ------------------------------------------------------------------------


class PublishedModel(nn.Module):
    """Base of every published family's model: pads to ``divisor``, runs :meth:`run`, crops.

    Subclasses set ``family`` and ``options`` (the keys of their config), build the original
    network in ``__init__(config)`` after ``super().__init__(config)`` has checked the config
    and filled its defaults (:attr:`config`), and implement :meth:`run` (input already padded
    to a multiple of ``divisor``). ``config`` is JSON-able and fully describes the architecture
    (it is what a fine-tuned geopose checkpoint stores).
    """

    family: ClassVar[str] = ""
    options: ClassVar[dict[str, Opt]] = {}
    divisor: int = 32
    uses_gsd: bool = False
    uses_city: bool = False

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = {"family": self.family, **self.resolve(config)}

    @classmethod
    def resolve(cls, config: Mapping[str, Any]) -> dict:
        """The family's config (a ``model:`` section, ``family:`` optional) checked against
        :attr:`options`, defaults filled, without ``family``; ConfigError naming the key."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"model: expected a mapping, got {config!r}")
        cfg = dict(config)
        family = cfg.pop("family", cls.family)
        if family != cls.family:
            raise ConfigError(f"model.family: {family!r}, but this is the {cls.family!r} model")
        return check_section("model", cls.options, cfg)

    def run(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor
    ) -> GeoposeOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(
        self,
        image: torch.Tensor,
        gsd: torch.Tensor | float | None = None,
        city: torch.Tensor | None = None,
    ) -> GeoposeOutput:
        """Image B×3×H×W RGB in [0, 1], GSD B (m/px), city B (long, -1 unknown)."""
        b, _, h, w = image.shape
        if gsd is None:
            if self.uses_gsd:
                raise ValueError(f"the {self.family} model uses the GSD (m/px): pass gsd=")
            gsd = 1.0
        gsd = torch.as_tensor(gsd, dtype=image.dtype, device=image.device).reshape(-1)
        gsd = gsd.expand(b)
        if city is None:
            city = torch.full((b,), -1, dtype=torch.long, device=image.device)
        city = city.reshape(-1).long().expand(b)
        x = pad_to(image, self.divisor)
        out = self.run(x, gsd, city)
        if x.shape[-2:] == (h, w):
            return out
        return out._replace(agl=out.agl[..., :h, :w], mag=out.mag[..., :h, :w])


def pad_to(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad B×C×H×W at the bottom/right to multiples of ``divisor`` (reflect, else replicate)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def normalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    """``(image - mean) / std`` per channel, B×3×H×W."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
    return (image - m) / s


def ridge_scale(mag: torch.Tensor, height: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Scale (px/m) B: per image ``Σ h·m / (Σ h² + eps)`` over B×1×H×W maps, in fp32: the
    least-squares scale head of the baseline, the 1st and the 2nd place (eps 0.01)."""
    h = height.flatten(1).float()
    m = mag.flatten(1).float()
    return (h * m).sum(1) / ((h * h).sum(1) + eps)


def pooled_linear_head(in_channels: int, out: int) -> nn.Sequential:
    """Global average pool, flatten, dropout 0.5, linear (keys ``3.weight``, ``3.bias``): the
    image-level head of the baseline, the 1st and the 4th place."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.5), nn.Linear(in_channels, out)
    )


def count_indices(state: Mapping[str, Any], pattern: str) -> int:
    """Distinct values of ``pattern``'s first group over the keys (e.g. blocks of a stage)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


# --- the registry ------------------------------------------------------------------------------


class Family:
    """A published model family: how to recognise, convert and rebuild its files.

    A subclass sets ``name``, ``description`` and ``model`` (its :class:`PublishedModel`) and
    implements :meth:`state_of`, :meth:`matches` and, when the file decides the architecture,
    :meth:`config_of`; :meth:`from_container`, :meth:`resolve` and :meth:`build` are then the
    same for all, and :attr:`options` are the model's.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    model: ClassVar[type[PublishedModel]]
    options: ClassVar[dict[str, Opt]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" in vars(cls):
            cls.options = cls.model.options  # one table: the model's, next to its class

    @classmethod
    def state_of(cls, container: Container) -> dict[str, torch.Tensor] | None:
        """The weights in ``container`` keyed as the model's state dict (prefix removed), or
        None when the file has no such place."""
        raise NotImplementedError

    @classmethod
    def matches(cls, container: Container) -> bool:
        """True when ``container`` holds this family's published layout."""
        raise NotImplementedError

    @classmethod
    def config_of(cls, container: Container, state: dict[str, torch.Tensor]) -> dict:
        """The architecture ``config`` the file describes (default: the family's default)."""
        return {}

    @classmethod
    def from_container(cls, container: Container) -> PublishedModel:
        """Build the model the file describes and load its weights strictly (one-line
        :class:`GeoposeDataError` naming the file otherwise)."""
        state = cls.state_of(container)
        if state is None:
            raise GeoposeDataError(
                container.path, f"no {cls.name} state dict: found {container.describe()}"
            )
        try:
            model = cls.build(cls.config_of(container, state))
        except ConfigError as exc:
            raise GeoposeDataError(container.path, str(exc)) from exc
        load_strict(model, state, container.path)
        return model

    @classmethod
    def resolve(cls, config: Mapping[str, Any]) -> dict:
        """The config checked against :attr:`options`, defaults filled
        (:meth:`PublishedModel.resolve`)."""
        return cls.model.resolve(config)

    @classmethod
    def build(cls, config: dict) -> PublishedModel:
        """Rebuild the (untrained) model from its stored ``config``."""
        return cls.model(config)


class _Families(Mapping[str, type[Family]]):
    """The published families by name, in registration order: the :class:`Family` entries of
    :data:`geopose.models.registry.MODELS`, the registry ``create_model`` builds from."""

    def _entries(self) -> dict[str, type[Family]]:
        return {k: v for k, v in MODELS.items() if isinstance(v, type) and issubclass(v, Family)}

    def __getitem__(self, name: str) -> type[Family]:
        return self._entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


FAMILIES: Mapping[str, type[Family]] = _Families()


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register a :class:`Family` under ``cls.name`` in
    :data:`~geopose.models.registry.MODELS` (so in :data:`FAMILIES` too)."""
    return MODELS.register(cls.name)(cls)


def family_of(container: Container) -> type[Family] | None:
    """The registered family whose layout ``container`` holds, or None."""
    for fam in FAMILIES.values():
        if fam.matches(container):
            return fam
    return None


def build_published(config: dict) -> PublishedModel:
    """Rebuild a published-family model from its stored config (``{"family": name, ...}``)."""
    name = config.get("family")
    if name not in FAMILIES:
        hint = did_you_mean(name, FAMILIES) if isinstance(name, str) else ""
        raise ConfigError(f"model.family {name!r} is not one of {sorted(FAMILIES)}{hint}")
    return FAMILIES[name].build({k: v for k, v in config.items() if k != "family"})
