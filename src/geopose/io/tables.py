"""The data set tables: ``metadata.csv``, ``geopose_train.csv``, ``geopose_test.csv``, joined into
one pandas index with absolute paths, city and GSD (m/px)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas costs ~0.2 s to import: keep it off the CLI's start-up path
    import pandas as pd

from geopose.errors import GeoposeDataError

METADATA_CSV = "metadata.csv"
TRAIN_CSV = "geopose_train.csv"
TEST_CSV = "geopose_test.csv"

INDEX_COLUMNS = ["id", "stem", "city", "gsd", "split", "rgb", "agl", "vflow"]


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a csv with string ids and check it has the ``required`` columns."""
    import pandas as pd

    if not path.is_file():
        raise GeoposeDataError(path, "file not found")
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except Exception as exc:
        raise GeoposeDataError(path, f"unreadable csv ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise GeoposeDataError(
            path, f"missing column(s) {', '.join(missing)}; has {list(df.columns)}"
        )
    return df


def read_metadata(data_dir: str | Path) -> pd.DataFrame:
    """``metadata.csv`` (id, city, gsd) with gsd as float metres per pixel, checked positive."""
    import pandas as pd

    path = Path(data_dir) / METADATA_CSV
    df = read_csv(path, ["id", "city", "gsd"])
    gsd = pd.to_numeric(df["gsd"], errors="coerce")
    bad = df.loc[~(gsd > 0), "id"].tolist()
    if bad:
        raise GeoposeDataError(path, f"gsd is missing or not positive for id(s) {bad[:5]}")
    df["gsd"] = gsd.astype(float)
    df["city"] = df["city"].astype(str)
    dup = df.loc[df["id"].duplicated(), "id"].tolist()
    if dup:
        raise GeoposeDataError(path, f"duplicate id(s) {dup[:5]}")
    return df[["id", "city", "gsd"]]


def _stem(rgb_file: str) -> str:
    name = Path(rgb_file).name
    base = name.split(".", 1)[0]
    return base[: -len("_RGB")] if base.endswith("_RGB") else base


def _split_table(data_dir: Path, split: str) -> pd.DataFrame:
    import pandas as pd

    if split == "train":
        df = read_csv(data_dir / TRAIN_CSV, ["id", "agl", "json", "rgb"])
    else:
        df = read_csv(data_dir / TEST_CSV, ["id", "rgb"])
        df["agl"] = None
        df["json"] = None
    folder = data_dir / split
    csv = data_dir / (TRAIN_CSV if split == "train" else TEST_CSV)
    cols = ["id", "rgb", "agl", "json"] if split == "train" else ["id", "rgb"]
    blank = df.loc[df[cols].isna().any(axis=1)]
    if len(blank):
        raise GeoposeDataError(csv, f"empty cell(s) in row(s) for id(s) {blank['id'].tolist()[:5]}")
    out = pd.DataFrame(
        {
            "id": df["id"],
            "stem": df["rgb"].map(_stem),
            "split": split,
            "rgb": [str((folder / f).resolve()) for f in df["rgb"]],
            "agl": [None if pd.isna(f) else str((folder / f).resolve()) for f in df["agl"]],
            "vflow": [None if pd.isna(f) else str((folder / f).resolve()) for f in df["json"]],
        }
    )
    return out


def load_index(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """Join the tables of a data set folder into one index.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``. Columns: ``id``, ``stem``
    (``{CITY}_{ID}``), ``city``, ``gsd`` (m/px), ``split``, and absolute paths ``rgb``, ``agl``,
    ``vflow`` (None for test images). Every id must have a metadata row.
    """
    import pandas as pd

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GeoposeDataError(data_dir, "data folder not found")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    splits = ["train", "test"] if split == "all" else [split]
    if split == "all":
        splits = [
            s for s in splits if (data_dir / (TRAIN_CSV if s == "train" else TEST_CSV)).is_file()
        ]
        if not splits:
            raise GeoposeDataError(data_dir, f"neither {TRAIN_CSV} nor {TEST_CSV} found")
    parts = [_split_table(data_dir, s) for s in splits]
    table = pd.concat(parts, ignore_index=True)
    meta = read_metadata(data_dir)
    index = table.merge(meta, on="id", how="left")
    unknown = index.loc[index["gsd"].isna(), "id"].tolist()
    if unknown:
        raise GeoposeDataError(data_dir / METADATA_CSV, f"no metadata row for id(s) {unknown[:5]}")
    return index[INDEX_COLUMNS].reset_index(drop=True)
