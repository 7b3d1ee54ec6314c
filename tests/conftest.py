"""Shared test fixtures; the helpers they use live in ``tests/helpers`` (importable as
``helpers.*`` from every test: pytest's default "prepend" import mode puts ``tests/`` on
``sys.path`` for this file), the published models' reference fixtures in
``tests/zoo_fixtures.py``.

The test folders mirror the package (``tests/io`` tests ``geopose.io``, ``tests/models/zoo``
the published families, ...; top level: the cross-cutting tests and geopose's top-level
modules). The test folders have no ``__init__.py``, so every test file's name must be unique.
Minutes-long end-to-end tests are marked ``slow``: ``pytest -m "not slow"`` skips them.

- ``make_fake_dataset``: :func:`helpers.fake_data.make_fake_dataset`, for tests that want
  their own sizes (``make_fake_dataset(tmp_path / "data", n_train=3)``).
- ``fake_dataset``: a ready-made default fake data set in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.fake_data import FakeDataset, make_fake_dataset


@pytest.fixture(name="make_fake_dataset")
def make_fake_dataset_fixture():
    """The :func:`make_fake_dataset` function, for tests that want their own sizes."""
    return make_fake_dataset


@pytest.fixture
def fake_dataset(tmp_path: Path) -> FakeDataset:
    """A default fake data set (4 train + 2 test images, 32 px, JAX and OMA) in ``tmp_path``."""
    return make_fake_dataset(tmp_path / "data")
