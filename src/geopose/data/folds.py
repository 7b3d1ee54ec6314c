"""Cross-validation folds, written once to a csv and chosen by ``fold=``.

Two schemes:

- ``stratified``: K folds with every city in the same proportion in each fold (seed 004's
  location-stratified split; neighbouring tiles of one city land in different folds, which
  flatters validation but matches how the test set overlaps the training set);
- ``city``: whole cities held out (group K-fold by city; with K = number of cities, fold *i*
  is one city), a leak-free estimate on unseen places.

The csv has one row per image: ``stem, city, fold, scheme, folds, seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geopose.errors import ConfigError, GeoposeDataError

FOLD_COLUMNS = ["stem", "city", "fold", "scheme", "folds", "seed"]


def make_folds(
    index: pd.DataFrame, k: int, scheme: str = "stratified", seed: int = 0
) -> pd.DataFrame:
    """Assign each image of ``index`` (columns ``stem``, ``city``) to one of ``k`` folds."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    stems = index["stem"].to_numpy()
    cities = index["city"].astype(str).to_numpy()
    order = np.argsort(stems, kind="stable")  # independent of the index's row order
    stems, cities = stems[order], cities[order]
    fold = np.full(len(stems), -1, dtype=np.int64)
    if scheme == "stratified":
        counts = pd.Series(cities).value_counts()
        if len(stems) < k:
            raise ConfigError(f"data.folds: {k} folds need at least {k} images, have {len(stems)}")
        if counts.min() < k:
            # StratifiedKFold needs k members per city; spread small cities round-robin instead.
            rng = np.random.default_rng(seed)
            for city in counts.index:
                idx = np.flatnonzero(cities == city)
                rng.shuffle(idx)
                offset = int(rng.integers(k))
                fold[idx] = (np.arange(len(idx)) + offset) % k
        else:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            for f, (_, val) in enumerate(splitter.split(stems, cities)):
                fold[val] = f
    elif scheme == "city":
        n_cities = len(set(cities))
        if k > n_cities:
            raise ConfigError(
                f"data.folds: {k} city folds need {k} cities, the data has {n_cities}"
            )
        for f, (_, val) in enumerate(GroupKFold(n_splits=k).split(stems, groups=cities)):
            fold[val] = f
    else:
        raise ConfigError(f"data.fold_scheme: {scheme!r} is not one of ['stratified', 'city']")
    return pd.DataFrame(
        {"stem": stems, "city": cities, "fold": fold, "scheme": scheme, "folds": k, "seed": seed}
    )[FOLD_COLUMNS]


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds csv, checking its columns (GeoposeDataError naming the file)."""
    from geopose.io.tables import read_csv

    path = Path(path)
    df = read_csv(path, FOLD_COLUMNS) if path.is_file() else None
    if df is None:
        raise GeoposeDataError(path, "file not found")
    df["stem"] = df["stem"].astype(str)
    if not pd.api.types.is_integer_dtype(df["fold"]):
        raise GeoposeDataError(path, "column 'fold' must hold integers")
    return df


def load_or_make_folds(
    path: str | Path,
    index: pd.DataFrame,
    k: int,
    scheme: str = "stratified",
    seed: int = 0,
    write: bool = True,
) -> pd.DataFrame:
    """The folds of ``index``: read from ``path`` if it exists (checked to match ``k``,
    ``scheme``, ``seed`` and to cover every image), else made (deterministically) and, with
    ``write``, written there once. Only rank 0 of a distributed run writes: another rank that
    wrote into the run folder before rank 0 prepared it would make rank 0 refuse the folder."""
    from geopose.io import write_text_atomic

    path = Path(path)
    if not path.exists():
        folds = make_folds(index, k, scheme, seed)
        if write:
            write_text_atomic(path, folds.to_csv(index=False))
        return folds
    folds = read_folds(path)
    got = (str(folds["scheme"].iloc[0]), int(folds["folds"].iloc[0]), int(folds["seed"].iloc[0]))
    if len(folds) and got != (scheme, k, seed):
        raise GeoposeDataError(
            path,
            f"holds scheme={got[0]} folds={got[1]} seed={got[2]}, the config asks for "
            f"scheme={scheme} folds={k} seed={seed}; use another data.folds_csv or delete it",
        )
    missing = sorted(set(index["stem"]) - set(folds["stem"]))
    if missing:
        raise GeoposeDataError(
            path, f"has no fold for {len(missing)} image(s), e.g. {missing[:3]}; delete it to redo"
        )
    return folds


def split_stems(folds: pd.DataFrame, fold: int | None) -> tuple[list[str], list[str]]:
    """(training stems, validation stems) for validation fold ``fold`` (None: all train)."""
    stems = folds["stem"].astype(str)
    if fold is None:
        return sorted(stems), []
    val = folds["fold"] == fold
    return sorted(stems[~val]), sorted(stems[val])
