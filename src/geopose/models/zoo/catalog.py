"""The published Overhead Geopose Challenge models, as data, and their download into a cache.

Every fact below was read from the winners' public repositories (paths given beside each
block): ``drivendataorg/overhead-geopose-challenge`` (the DrivenData archive of the winning
code, folders ``1st Place``, ``2nd Place``, ``4th Place``), ``BloodAxe/DrivenData-2021-Geopose-
Solution``, ``kbrodt/overhead-geopose-challenge`` and ``pubgeo/monocular-geocentric-pose``.
Nothing is invented: where a fact is not published (file sizes, checksums, single-model
scores) the field is ``None`` and the note says so.

Use::

    from geopose.models.zoo import catalog
    [e.name for e in catalog.list_entries()]          # 'baseline', 'first-v2l-fold5', ...
    catalog.members_of("second")                       # the 9 entries of an ensemble
    path = catalog.fetch("first-v2l-fold5", on_progress=lambda stage, done, total: ...)
    path = catalog.fetch("baseline", local_file="~/Downloads/model_best.pth")

The cache is ``$GEOPOSE_CACHE`` when set, else ``$XDG_CACHE_HOME/geopose/models``, else
``~/.cache/geopose/models``; entry ``NAME`` lives in ``<cache>/NAME/<file>``. Downloads resume
after an interruption (:mod:`geopose.io.download`).

Every file that becomes complete in the cache (downloaded, extracted from an archive, imported
from a hand download) gets a record beside it, ``<file>.record.json``: its SHA-256, size,
source and UTC time. :func:`fetch` and :func:`verified_path` hash a cached file each time they
hand it out and refuse one that no longer matches its record (or the published SHA-256, when
there is one), or that has no record; ``geopose models download NAME --force`` fetches it
anew. :func:`listing` compares sizes only (no hashing).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path, check_output_dir
from geopose.io.download import (
    check_zip,
    download,
    extract_member,
    part_path,
    read_record,
    read_url,
    record_path,
    sha256_file,
    validators_path,
    write_record,
)

if TYPE_CHECKING:
    from geopose.types import ProgressFn

FAMILIES = ("baseline", "first", "second", "fourth")
"""Family names, as the converters in ``geopose.models.zoo`` register them."""

DATAPORT_URL = "https://ieee-dataport.org/open-access/urban-semantic-3d-dataset"
"""IEEE DataPort page (US3D) where the baseline and the winners' weights are archived (login)."""

YANDEX_PUBLIC_API = "https://cloud-api.yandex.net/v1/disk/public/resources/download"
"""Yandex Disk REST API: ``GET ?public_key=<public link>`` answers ``{"href": <direct URL>}``."""

ARCHIVE_DIR = "_archives"
"""Cache sub-folder for downloaded archives (removed once all their members are extracted)."""


@dataclass(frozen=True)
class PublishedEntry:
    """One published weights file (or a set of files that together make one model).

    ``urls[i]`` is downloaded to ``files[i]``; with ``member`` set, ``urls[0]`` is a zip
    archive (cached as ``archive``) and ``files[0]`` is extracted from it. ``needs_browser``
    entries cannot be fetched by a program (a login page): :func:`fetch` explains where to get
    the file and accepts it as ``local_file``. ``authors_score`` is the private-leaderboard R²
    the authors reported for this file alone (None: no single-model score was published).
    """

    name: str
    family: str
    variant: str
    description: str
    authors_score: float | None
    score_note: str
    size_mb: float | None
    urls: tuple[str, ...]
    files: tuple[str, ...]
    licence: str
    source: str
    needs_browser: bool = False
    member: str | None = None
    input_contract: str = ""
    archive: str | None = None
    resolver: str | None = None
    """How to turn ``urls[0]`` into a direct link: None, or ``"yandex-public"``."""
    browser_url: str | None = None
    """Page to download the file from by hand (needs_browser entries, and the fallback)."""
    sha256: tuple[str | None, ...] | None = None
    """Published SHA-256 of each file, when known (none of the authors published any)."""


@dataclass(frozen=True)
class PublishedEnsemble:
    """An ensemble as the authors submitted it: members (entry name, weight), TTA, score."""

    name: str
    members: tuple[tuple[str, float], ...]
    tta: str
    authors_score: float | None
    note: str


# --- the official baseline ---------------------------------------------------------------------
# pubgeo/monocular-geocentric-pose: README.md ("Pre-trained models for both versions are
# provided", "model weights are archived on DataPort"), utilities/ml_utils.py (torch.save of
# model.state_dict() as model_best.pth; smp get_preprocessing_fn(backbone, "imagenet"); test
# with --downsample=2), main.py (--backbone default resnet34); LICENSE.txt (Apache 2.0).

_BASELINE = PublishedEntry(
    name="baseline",
    family="baseline",
    variant="resnet34 UNet (CVPR EarthVision 2021 baseline)",
    description="Official baseline of the challenge (pubgeo): smp UNet on resnet34 with "
    "xydir / height / mag / scale heads; the DrivenData benchmark model.",
    authors_score=None,
    score_note="no private-leaderboard score published for the weights file",
    size_mb=None,
    urls=(),
    files=("model_best.pth",),
    licence="Apache-2.0 (code); the weights are under the DataPort terms",
    source="https://github.com/pubgeo/monocular-geocentric-pose",
    needs_browser=True,
    input_contract="RGB downsampled ×2 (1024²), smp ImageNet mean/std (x/255); no GSD or city "
    "input; AGL in m (a plain state_dict)",
    browser_url=DATAPORT_URL,
)

# --- 1st place, selim_sef ----------------------------------------------------------------------
# drivendataorg/overhead-geopose-challenge, "1st Place/": Dockerfile (the two wget URLs and
# file names), test.sh (both files in one run), utilities/inference.py (TimmUnet
# ("tf_efficientnetv2_l_in21k"); checkpoint["state_dict"] with "module." prefixes;
# predict_tta; Dataset: (x/255 - 0.5) * 2, test.sh --downsample=1), utilities/tta.py
# (identity + h-flip + v-flip + hv-flip, mean over views then over models), train.sh (folds 5
# and 6), dist_train_tune.sh (crop 1792),
# LICENSE (MIT, Selim Seferbekov); top README.md (private 0.902459, public 0.902184).

_FIRST_CONTRACT = (
    "RGB at full 2048² resolution, (x/255 − 0.5)·2; no GSD or city input; AGL in m "
    "(dict with state_dict, epoch, metrics; keys prefixed module.)"
)


def _first(fold: int, url: str) -> PublishedEntry:
    fname = f"folds_TimmUnet_tf_efficientnetv2_l_in21k_{fold}_r2"
    return PublishedEntry(
        name=f"first-v2l-fold{fold}",
        family="first",
        variant="TimmUnet tf_efficientnetv2_l_in21k",
        description=f"1st place (selim_sef): EfficientNetV2-L UNet, fold {fold}, fine-tuned "
        "with crop 1792 and the R² loss.",
        authors_score=None,
        score_note="no single-model score published; the 2-model mean with 4-flip TTA ('first' "
        "ensemble) scored 0.902459 private",
        size_mb=None,
        urls=(url,),
        files=(fname,),
        licence="MIT (Selim Seferbekov)",
        source="https://github.com/drivendataorg/overhead-geopose-challenge/tree/main/1st%20Place",
        input_contract=_FIRST_CONTRACT,
        browser_url=DATAPORT_URL,
    )


_FIRSTS = [
    _first(
        5,
        "https://www.dropbox.com/s/0uplf7b5d502ul2/"
        "folds_TimmUnet_tf_efficientnetv2_l_in21k_5_r2?dl=0",
    ),
    _first(
        6,
        "https://www.dropbox.com/s/54dhmlbdip23fif/"
        "folds_TimmUnet_tf_efficientnetv2_l_in21k_6_r2?dl=0",
    ),
]

# --- 2nd place, bloodaxe -----------------------------------------------------------------------
# drivendataorg/overhead-geopose-challenge, "2nd Place/": README.md (the two ensembles: 0.8914
# private / 0.8900 public with D4 TTA, 0.8910 private / 0.8896 public with D4 TTA),
# configs/inference/fp32_0.8914_b7_fold0_b7_rdtsc_fold1_b6_rdtsc_fold9_bo3_d4.yaml (9 URLs,
# tta d4, tta_mode ensemble), configs/inference/fp32_0.8910_b7_fold0_b7_rdtsc_fold1_b6_rdtsc_
# fold89_bo1_d4.yaml (4 URLs, tta d4, tta_mode model), submit.py (GeoPoseEnsembler: plain mean),
# geopose/models/__init__.py (checkpoint["model_state_dict"], architecture from
# checkpoint["checkpoint_data"]["config"]["model"]), geopose/dataset.py (A.Normalize ImageNet
# mean/std, GSD input), LICENSE (MIT, Eugene Khvedchenya). Same URLs in the author's
# BloodAxe/DrivenData-2021-Geopose-Solution configs/inference/.

_SECOND_RELEASE = (
    "https://github.com/BloodAxe/DrivenData-2021-Geopose-Solution/releases/download/1.0/"
)

_SECOND_CONTRACT = (
    "RGB at full 2048² resolution, (x/255 − ImageNet mean)/std, plus GSD (m/px) as an input; "
    "AGL in m (dict with model_state_dict and the training config)"
)

_SECOND_VARIANTS = {
    "b7_unet": "EfficientNet-B7 encoder (timm), UNet decoder",
    "b7_rdtsc_unet": "EfficientNet-B7 encoder (timm), residual UNet decoder, rdtsc upsampling",
    "b6_rdtsc_unet": "EfficientNet-B6 encoder (timm), residual UNet decoder, rdtsc upsampling",
}


def _second(run: str, arch: str, fold: int, tag: str) -> PublishedEntry:
    """``tag``: ``best`` (``{run}_{arch}_fold{n}_best.pth``) or an epoch (``..._train.{e}.pth``)."""
    fname = f"{run}_{arch}_fold{fold}_{'best' if tag == 'best' else f'train.{tag}'}.pth"
    which = "best checkpoint" if tag == "best" else f"checkpoint of epoch {tag}"
    in_ens = "'second-lite' (0.8910 private)" if tag == "best" else "'second' (0.8914 private)"
    return PublishedEntry(
        name=f"second-{arch.replace('_', '-')}-fold{fold}-{'best' if tag == 'best' else 'e' + tag}",
        family="second",
        variant=arch,
        description=f"2nd place (bloodaxe): {_SECOND_VARIANTS[arch]}; fold {fold} of 10, {which}.",
        authors_score=None,
        score_note=f"no single-model score published; member of the ensemble {in_ens}",
        size_mb=None,
        urls=(_SECOND_RELEASE + fname,),
        files=(fname,),
        licence="MIT (Eugene Khvedchenya)",
        source="https://github.com/BloodAxe/DrivenData-2021-Geopose-Solution",
        input_contract=_SECOND_CONTRACT,
        browser_url=DATAPORT_URL,
    )


_SECONDS = [
    _second("210709_07_54", "b7_unet", 0, "best"),
    _second("210715_01_21", "b7_rdtsc_unet", 1, "best"),
    _second("210717_03_07", "b6_rdtsc_unet", 8, "best"),
    _second("210714_15_13", "b6_rdtsc_unet", 9, "best"),
    _second("210709_07_54", "b7_unet", 0, "195"),
    _second("210709_07_54", "b7_unet", 0, "219"),
    _second("210709_07_54", "b7_unet", 0, "220"),
    _second("210715_01_21", "b7_rdtsc_unet", 1, "290"),
    _second("210715_01_21", "b7_rdtsc_unet", 1, "297"),
    _second("210715_01_21", "b7_rdtsc_unet", 1, "300"),
    _second("210714_15_13", "b6_rdtsc_unet", 9, "251"),
    _second("210714_15_13", "b6_rdtsc_unet", 9, "260"),
    _second("210714_15_13", "b6_rdtsc_unet", 9, "269"),
]

# --- 4th place, kbrodt -------------------------------------------------------------------------
# drivendataorg/overhead-geopose-challenge, "4th Place/": README.md (0.8731 R², the Yandex Disk
# link, "extract via `unzip models.zip -d chkps_dist`"), dist_test.sh / test.sh (the three
# --model-pt paths, --use-cities t t t, TTA=1 i.e. no TTA), overhead-geopose-challenge/
# utilities/ml_utils.py (torch.jit.trace'd models saved with save_jit; input (image, city
# one-hot over ARG/ATL/JAX/OMA as B×4×1×1, GSD as B×1×1×1); smp get_preprocessing_fn(
# "senet154", "imagenet"); plain mean over models), LICENSE (MIT, Kirill Brodt). Same link in
# kbrodt/overhead-geopose-challenge README.md.

_FOURTH_LINK = "https://disk.yandex.com/d/YKBkCPWV1jaYrg"

_FOURTH_CONTRACT = (
    "RGB at full 2048² resolution, (x/255 − ImageNet mean)/std; city one-hot (ARG, ATL, JAX, "
    "OMA) B×4×1×1 and GSD B×1×1×1 as inputs; AGL in m (TorchScript, traced)"
)


def _fourth(name: str, encoder: str, member: str, what: str) -> PublishedEntry:
    return PublishedEntry(
        name=name,
        family="fourth",
        variant=encoder,
        description=f"4th place (kbrodt): smp UNet on {encoder} with city and GSD in the "
        f"bottleneck; {what}.",
        authors_score=None,
        score_note="no single-model score published (the README projects ~0.86 for one "
        "model); the 3-model mean ('fourth' ensemble) scored 0.8731",
        size_mb=None,
        urls=(_FOURTH_LINK,),
        files=(Path(member).name,),
        licence="MIT (Kirill Brodt)",
        source="https://github.com/kbrodt/overhead-geopose-challenge",
        member=member,
        input_contract=_FOURTH_CONTRACT,
        archive="models.zip",
        resolver="yandex-public",
        browser_url=_FOURTH_LINK,
    )


_FOURTHS = [
    _fourth(
        "fourth-senet154",
        "senet154",
        "senet154/2_city_finetune/model_best_957.pt",
        "city fine-tune, epoch 957",
    ),
    _fourth(
        "fourth-effb6",
        "efficientnet-b6",
        "efficientnet-b6/1_aug_ft_unet/model_best_483.pt",
        "fine-tuned without augmentation, epoch 483",
    ),
    _fourth(
        "fourth-effb7",
        "efficientnet-b7",
        "efficientnet-b7/2_aug_ft_unet/model_best_525.pt",
        "fine-tuned without augmentation, epoch 525",
    ),
]

CATALOG: dict[str, PublishedEntry] = {
    e.name: e for e in [_BASELINE, *_FIRSTS, *_SECONDS, *_FOURTHS]
}
"""Every published weights file, by entry name (in listing order)."""


def _mean(names: Iterable[str]) -> tuple[tuple[str, float], ...]:
    names = list(names)
    return tuple((n, 1.0 / len(names)) for n in names)


ENSEMBLES: dict[str, PublishedEnsemble] = {
    "first": PublishedEnsemble(
        name="first",
        members=_mean(e.name for e in _FIRSTS),
        tta="d2",
        authors_score=0.902459,
        note="1st place submission (public 0.902184): mean of the two folds, each over "
        "identity, h-flip, v-flip and hv-flip (1st Place/utilities/tta.py).",
    ),
    "second": PublishedEnsemble(
        name="second",
        members=_mean(e.name for e in _SECONDS[4:]),
        tta="d4",
        authors_score=0.891393,
        note="2nd place final submission (public 0.889955; README: 0.8914 / 0.8900): top-3 "
        "checkpoints of folds 0 "
        "(b7_unet), 1 (b7_rdtsc_unet) and 9 (b6_rdtsc_unet), mean of 9 models, D4 TTA over the "
        "ensemble (config ..._bo3_d4.yaml; the model documentation says 12 models, the config "
        "lists 9).",
    ),
    "second-lite": PublishedEnsemble(
        name="second-lite",
        members=_mean(e.name for e in _SECONDS[:4]),
        tta="d4",
        authors_score=0.8910,
        note="2nd place, one best checkpoint per fold (public 0.8896): folds 0, 1, 8, 9, mean "
        "of 4 models, D4 TTA per model (config ..._fold89_bo1_d4.yaml; its README line says "
        "'2 models', the config lists 4).",
    ),
    "fourth": PublishedEnsemble(
        name="fourth",
        members=_mean(e.name for e in _FOURTHS),
        tta="none",
        authors_score=0.873057,
        note="4th place submission (public 0.872775; README: 0.8731): mean of AGL, scale and "
        "direction of the three models, no TTA (dist_test.sh TTA=1).",
    ),
}
"""The ensembles the authors submitted, with their private-leaderboard R²."""


# --- the cache -----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The model cache: ``$GEOPOSE_CACHE``, else ``$XDG_CACHE_HOME/geopose/models``, else
    ``~/.cache/geopose/models`` (not created here)."""
    env = os.environ.get("GEOPOSE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec ignores relative paths
        return Path(xdg) / "geopose" / "models"
    return Path.home() / ".cache" / "geopose" / "models"


def list_entries() -> list[PublishedEntry]:
    """All catalog entries, in listing order."""
    return list(CATALOG.values())


def get_entry(name: str) -> PublishedEntry:
    """The entry called ``name``, or a one-line error listing the names."""
    try:
        return CATALOG[name]
    except KeyError:
        hint = ""
        if name in ENSEMBLES:
            hint = f" ({name!r} is an ensemble of: {', '.join(members_of(name))})"
        raise GeoposeDataError(
            None, f"unknown published model {name!r}{hint}; known: {', '.join(CATALOG)}"
        ) from None


def members_of(name: str) -> list[str]:
    """Entry names behind ``name``: ``[name]`` for an entry, the members for an ensemble."""
    if name in CATALOG:
        return [name]
    if name in ENSEMBLES:
        return [m for m, _ in ENSEMBLES[name].members]
    raise GeoposeDataError(
        None,
        f"unknown published model or ensemble {name!r}; known: {', '.join([*CATALOG, *ENSEMBLES])}",
    )


def _entry_paths(entry: PublishedEntry) -> list[Path]:
    folder = cache_dir() / entry.name
    return [folder / f for f in entry.files]


def _archive_path(entry: PublishedEntry) -> Path:
    return cache_dir() / ARCHIVE_DIR / (entry.archive or f"{entry.name}.zip")


def _published_sha256(entry: PublishedEntry, index: int) -> str | None:
    return entry.sha256[index].lower() if entry.sha256 and entry.sha256[index] else None


def cached_path(name: str) -> Path | None:
    """Path of the cached model file of ``name`` (its first file), or None if not all there.

    Not verified: use :func:`verified_path` for a file that is about to be read."""
    paths = _entry_paths(get_entry(name))
    return paths[0] if paths and all(p.is_file() for p in paths) else None


def _redo_hint(entry: PublishedEntry) -> str:
    if entry.needs_browser:
        return f"import it again with `geopose models download {entry.name} --force --file PATH`"
    return f"re-download it with `geopose models download {entry.name} --force`"


def _verify(entry: PublishedEntry, path: Path, published: str | None = None) -> Path:
    """Hash the cached ``path`` and compare it with its record (size too) and with the
    ``published`` SHA-256 when known; a one-line :class:`GeoposeDataError` naming the file
    otherwise."""
    record = read_record(path)
    if record is None:
        raise GeoposeDataError(
            path, f"has no download record (its origin is unknown): {_redo_hint(entry)}"
        )
    size = path.stat().st_size
    if size != record["size"]:
        raise GeoposeDataError(
            path,
            f"changed since it was downloaded ({record['size']} bytes recorded, {size} now): "
            + _redo_hint(entry),
        )
    now = sha256_file(path)
    if now != record["sha256"].lower():
        raise GeoposeDataError(
            path,
            f"changed since it was downloaded (sha256 {record['sha256']} recorded, {now} now): "
            + _redo_hint(entry),
        )
    if published is not None and now != published:
        raise GeoposeDataError(
            path, f"sha256 {now}, not the published {published}: {_redo_hint(entry)}"
        )
    return path


def verified_path(name: str) -> Path | None:
    """:func:`cached_path`, each of the entry's files checked first: its SHA-256 and size must
    match its download record (and the published SHA-256, when there is one). None when not
    cached; a one-line :class:`GeoposeDataError` naming the file and ``--force`` when a file
    changed or has no record."""
    entry = get_entry(name)
    paths = _entry_paths(entry)
    if not paths or not all(p.is_file() for p in paths):
        return None
    for i, path in enumerate(paths):
        _verify(entry, path, _published_sha256(entry, i))
    return paths[0]


def cache_state(name: str) -> str | None:
    """How entry ``name`` is cached, cheaply (sizes only, no hashing): None (not cached),
    ``"ok"`` (sizes match the records), ``"changed"`` (a size differs from its record) or
    ``"unrecorded"`` (a file has no download record)."""
    paths = _entry_paths(get_entry(name))
    if not paths or not all(p.is_file() for p in paths):
        return None
    for path in paths:
        record = read_record(path)
        if record is None:
            return "unrecorded"
        if record["size"] != path.stat().st_size:
            return "changed"
    return "ok"


def cached_bytes(name: str) -> int | None:
    """Size of entry ``name``'s files, bytes: each file's size on disk, or, for a file not in
    the cache, the size its download record holds; None when a file has neither (the authors
    published no sizes). Nothing is hashed."""
    total = 0
    for path in _entry_paths(get_entry(name)):
        if path.is_file():
            total += path.stat().st_size
            continue
        record = read_record(path)
        if record is None:
            return None
        total += record["size"]
    return total


def remove_cached(name: str) -> list[Path]:
    """Delete entry ``name``'s cached files, their records and part files (and, for an entry
    extracted from an archive, the downloaded archive); returns the files deleted."""
    entry = get_entry(name)
    targets = _entry_paths(entry)
    if entry.member is not None:
        targets.append(_archive_path(entry))
    removed = []
    for target in targets:
        for f in (target, record_path(target), part_path(target), validators_path(target)):
            if f.is_file() or f.is_symlink():
                try:
                    f.unlink()
                except OSError as exc:
                    raise GeoposeDataError(f, f"cannot be deleted ({exc.strerror})") from None
                removed.append(f)
    return removed


def listing() -> dict:
    """The whole catalog as JSON-ready data (``geopose models --json`` prints it): ``cache``
    (:func:`cache_dir`), ``models`` (every entry's fields, plus ``cached``: its cached file or
    None, ``cache_state``: :func:`cache_state`, and ``cached_bytes``: :func:`cached_bytes`)
    and ``ensembles`` (every published ensemble's fields). Nothing is hashed."""

    def entry(e: PublishedEntry) -> dict:
        cached = cached_path(e.name)
        return {
            **asdict(e),
            "cached": str(cached) if cached is not None else None,
            "cache_state": cache_state(e.name),
            "cached_bytes": cached_bytes(e.name),
        }

    return {
        "cache": str(cache_dir()),
        "models": [entry(e) for e in list_entries()],
        "ensembles": [asdict(e) for e in ENSEMBLES.values()],
    }


# --- fetching ------------------------------------------------------------------------------------


def direct_url(url: str) -> str:
    """A shared-link URL that downloads the file itself: Dropbox ``dl=0`` -> ``dl=1``."""
    parts = urlsplit(url)
    if parts.hostname in ("www.dropbox.com", "dropbox.com"):
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dl"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("dl", "1")])))
    return url


def _browser_hint(entry: PublishedEntry) -> str:
    what = entry.archive if entry.member else entry.files[0]
    page = entry.browser_url or entry.source
    return (
        f"download {what} from {page} in a browser, then run "
        f"`geopose models download {entry.name} --file PATH`"
    )


def _resolve(entry: PublishedEntry, url: str, timeout: float) -> str:
    """The direct download URL of ``url`` for this entry."""
    if entry.resolver is None:
        return direct_url(url)
    if entry.resolver == "yandex-public":
        api = f"{YANDEX_PUBLIC_API}?{urlencode({'public_key': url})}"
        try:
            answer = json.loads(read_url(api, timeout=timeout))
            href = answer["href"]
            if not isinstance(href, str) or not href.startswith(("http://", "https://")):
                raise ValueError(href)
        except GeoposeDataError as exc:
            raise GeoposeDataError(
                url, f"Yandex Disk gave no download link ({exc}); {_browser_hint(entry)}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise GeoposeDataError(
                url, f"unexpected answer from the Yandex Disk API; {_browser_hint(entry)}"
            ) from None
        return href
    raise ValueError(f"unknown resolver {entry.resolver!r}")


@contextlib.contextmanager
def _undo_new_folders(folder: Path) -> Iterator[None]:
    """On failure, remove the (empty) folders up to ``folder`` that did not exist before."""
    new = []
    p = folder
    while not p.exists() and p.parent != p:
        new.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in new:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _check_family(entry: PublishedEntry, file: Path, source: Path, what: str = "") -> None:
    """Raise a one-line :class:`GeoposeDataError` naming ``source`` (``what``: e.g. the
    archive member) unless ``file`` holds a model of ``entry``'s family."""
    from geopose.models.zoo import family_of, read_container

    try:
        container = read_container(file)
    except GeoposeDataError as exc:
        raise GeoposeDataError(source, f"{what}{exc.problem}; nothing was cached") from None
    fam = family_of(container)
    if fam is not None and fam.name == entry.family:
        return
    held = f"a {fam.name} model, {container.describe()}" if fam else container.describe()
    raise GeoposeDataError(
        source,
        f"{what}not a {entry.family} model for {entry.name}: it holds {held}; nothing was cached",
    )


def _place(
    entry: PublishedEntry,
    index: int,
    source: Path,
    fill: Callable[[Path], object],
    what: str = "",
    **info: object,
) -> Path:
    """Write entry file ``index`` atomically: ``fill(tmp)`` writes a temporary file beside it,
    which must hold the entry's family (and match the published SHA-256 when known); then its
    record is written and it is renamed into place. Nothing is left in the cache on failure."""
    dst = _entry_paths(entry)[index]
    published = _published_sha256(entry, index)
    with _undo_new_folders(dst.parent), atomic_path(dst) as tmp:
        fill(tmp)
        _check_family(entry, tmp, source, what)
        digest = sha256_file(tmp)
        if published is not None and digest != published:
            raise GeoposeDataError(
                source, f"{what}sha256 {digest}, not the published {published}; nothing was cached"
            )
        write_record(dst, source=tmp, sha256=digest, expected_sha256=published, **info)
    return dst


def _import_local(entry: PublishedEntry, local_file: Path) -> Path:
    """Copy (or extract from a zip) a file the user downloaded by hand into the cache, once
    it is read and found to hold the entry's family."""
    local_file = Path(local_file).expanduser()
    paths = _entry_paths(entry)
    if local_file.is_dir():
        sources = [local_file / f for f in entry.files]
        missing = [s.name for s in sources if not s.is_file()]
        if missing:
            raise GeoposeDataError(local_file, f"folder lacks {', '.join(missing)}")
    elif not local_file.is_file():
        raise GeoposeDataError(local_file, "no such file")
    elif len(paths) > 1:
        raise GeoposeDataError(
            local_file, f"{entry.name} has {len(paths)} files: pass the folder that holds them"
        )
    else:
        sources = [local_file]
    for i, (src, dst) in enumerate(zip(sources, paths, strict=True)):
        member = entry.member or dst.name
        source = str(src.resolve())
        if zipfile.is_zipfile(src) and _zip_has(src, member):  # the archive (e.g. models.zip)
            _place(
                entry,
                i,
                src,
                lambda tmp, src=src, member=member: extract_member(src, member, tmp),
                f"member {member!r}: ",
                imported_from=source,
                member=member,
            )
        else:
            _place(
                entry,
                i,
                src,
                lambda tmp, src=src: shutil.copyfile(src, tmp),
                imported_from=source,
            )
    return paths[0]


def _zip_has(path: Path, member: str) -> bool:
    """True when the zip ``path`` holds ``member`` (by path tail), itself or in a nested zip;
    a one-line :class:`GeoposeDataError` when a member's name is unsafe
    (:func:`geopose.io.download.unsafe_member`).

    A PyTorch checkpoint is a zip too (``archive/data.pkl``), so it never matches a member name.
    """
    tail = "/" + member.strip("/")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            check_zip(zf, path)  # an archive with an unsafe member is refused
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == member or n.endswith(tail) or n.lower().endswith(".zip") for n in names)


def _drop_spent_archive(entry: PublishedEntry, archive: Path) -> None:
    """Delete a downloaded archive once every entry extracted from it is cached."""
    sharing = [e for e in CATALOG.values() if e.member and e.urls == entry.urls]
    if all(cached_path(e.name) is not None for e in sharing):
        archive.unlink(missing_ok=True)
        record_path(archive).unlink(missing_ok=True)


def fetch(
    name: str,
    on_progress: ProgressFn | None = None,
    local_file: str | Path | None = None,
    *,
    timeout: float = 60,
) -> Path:
    """Make entry ``name`` available in the cache and return the path of its model file.

    A cached entry is returned once verified (:func:`verified_path`). Otherwise its files are
    downloaded (resumably, see :func:`geopose.io.download.download`; ``on_progress(name,
    done_bytes, total_bytes)`` per file, stage ``name``), or extracted from the entry's
    archive, which is downloaded once into ``<cache>/_archives`` and deleted when every entry
    it holds is cached; an extracted file must hold the entry's family. ``local_file`` (a file
    downloaded by hand: the model file, the archive holding it, or a folder of the entry's
    files) is read, checked to hold the entry's family and copied into the cache instead; it
    is the only way for ``needs_browser`` entries, whose error says where to get the file.
    Every file written gets a download record (SHA-256, size, source, time). Errors are
    one-line :class:`GeoposeDataError`; call :func:`remove_cached` first to fetch anew.
    """
    entry = get_entry(name)
    if local_file is not None:
        check_output_dir(cache_dir())
        return _import_local(entry, Path(local_file))
    found = verified_path(name)
    if found is not None:
        return found
    check_output_dir(cache_dir())  # a cache that cannot be written: one line, exit code 2
    if entry.needs_browser or not entry.urls:
        raise GeoposeDataError(
            None,
            f"{entry.name}: the weights are on a page that needs a browser and a login; "
            + _browser_hint(entry),
        )
    paths = _entry_paths(entry)
    if entry.member is not None:
        archive = _archive_path(entry)
        if archive.is_file():
            _verify(entry, archive)
        else:
            url = _resolve(entry, entry.urls[0], timeout)
            download(
                url,
                archive,
                on_progress=on_progress,
                stage=name,
                timeout=timeout,
                accept_html=False,
                record=True,
            )
        archive_record = read_record(archive) or {}
        try:
            _place(
                entry,
                0,
                archive,
                lambda tmp: extract_member(archive, entry.member, tmp),
                f"member {entry.member!r}: ",
                url=entry.urls[0],
                member=entry.member,
                archive_sha256=archive_record.get("sha256"),
            )
        except GeoposeDataError as exc:
            raise GeoposeDataError(
                None,
                f"{exc}; `geopose models download {name} --force` downloads it again, or "
                + _browser_hint(entry),
            ) from None
        _drop_spent_archive(entry, archive)
        return paths[0]
    for i, (url, path) in enumerate(zip(entry.urls, paths, strict=True)):
        if path.is_file():
            _verify(entry, path, _published_sha256(entry, i))
            continue
        download(
            _resolve(entry, url, timeout),
            path,
            sha256=_published_sha256(entry, i),
            on_progress=on_progress,
            stage=name,
            timeout=timeout,
            accept_html=False,
            record=True,
        )
    return paths[0]


__all__ = [
    "CATALOG",
    "DATAPORT_URL",
    "ENSEMBLES",
    "FAMILIES",
    "PublishedEnsemble",
    "PublishedEntry",
    "cache_dir",
    "cache_state",
    "cached_bytes",
    "cached_path",
    "direct_url",
    "fetch",
    "get_entry",
    "list_entries",
    "listing",
    "members_of",
    "remove_cached",
    "verified_path",
]
