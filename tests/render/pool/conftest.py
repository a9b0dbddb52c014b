"""Fixtures for the render pool tests: tiny catalogs and specs written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pool_fakes
import pytest

from render.spec import Spec, load_spec


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "catalogs"
    pool_fakes.write_catalogs(folder)
    return folder


@pytest.fixture
def make_spec(catalog_dir: Path, tmp_path: Path):
    """``make_spec(output=None, **sections) -> Spec`` over the tiny catalogs."""

    def make(output: str | None = None, **sections: dict) -> Spec:
        out = output or str(tmp_path / "out")
        return load_spec(pool_fakes.write_spec(catalog_dir, out, **sections))

    return make
