"""The published Overhead Geopose Challenge models, as data: every weights file
(:data:`CATALOG`) and every ensemble the authors submitted (:data:`ENSEMBLES`).

Every fact below was read from the winners' public repositories (paths given beside each
block): ``drivendataorg/overhead-geopose-challenge`` (the DrivenData archive of the winning
code, folders ``1st Place``, ``2nd Place``, ``4th Place``), ``BloodAxe/DrivenData-2021-Geopose-
Solution``, ``kbrodt/overhead-geopose-challenge`` and ``pubgeo/monocular-geocentric-pose``.
Nothing is invented: where a fact is not published (file sizes, checksums, single-model
scores) the field is ``None`` and the note says so. Their download into a cache:
:mod:`geopose.models.zoo.cache`.

Use::

    from geopose.models.zoo import catalog
    [e.name for e in catalog.list_entries()]          # 'baseline', 'first-v2l-fold5', ...
    catalog.members_of("second")                       # the 9 entries of an ensemble
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from geopose.errors import GeoposeDataError

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


# --- looking up ------------------------------------------------------------------------------


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


__all__ = [
    "ARCHIVE_DIR",
    "CATALOG",
    "DATAPORT_URL",
    "ENSEMBLES",
    "FAMILIES",
    "PublishedEnsemble",
    "PublishedEntry",
    "get_entry",
    "list_entries",
    "members_of",
]
