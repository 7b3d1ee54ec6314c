"""Configs on disk: a resolved config written as YAML next to a run, and read back."""

from __future__ import annotations

from pathlib import Path

import yaml

from geopose.errors import GeoposeDataError
from geopose.io import write_text_atomic


def save_config(cfg: dict, path: str | Path, overwrite: bool = True) -> Path:
    """Write a config as YAML, atomically."""
    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
    return write_text_atomic(path, text, overwrite)


def load_config(path: str | Path) -> dict:
    """Read a config YAML written by :func:`save_config` (GeoposeDataError if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "config file not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GeoposeDataError(path, f"not a readable YAML config ({exc})") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise GeoposeDataError(path, "not a geopose config (no 'model:' mapping)")
    return cfg
