"""Fixtures for multi-node tests: Ray nodes started on this machine, fake slow sessions.

Worker processes import ``cluster_fakes`` and ``pool_fakes`` by name, so both folders go on
``PYTHONPATH`` before the first node starts (nodes pass their environment to workers).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

POOL_TESTS = Path(__file__).resolve().parent.parent / "pool"
if str(POOL_TESTS) not in sys.path:  # pool_fakes, shared with the pool tests
    sys.path.insert(0, str(POOL_TESTS))

import pool_fakes  # noqa: E402
from cluster_fakes import FAKES_PATH  # noqa: E402

from render.spec import Spec, load_spec  # noqa: E402


@pytest.fixture
def fakes_env(monkeypatch):
    """``PYTHONPATH`` that lets Ray workers (and subprocesses) import the fake sessions."""
    path = os.pathsep.join(filter(None, [FAKES_PATH, os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    return path


@pytest.fixture
def cluster_spec(tmp_path: Path):
    """``cluster_spec(n_materials, **sections) -> Spec``: tiny catalogs, ``file://`` output."""

    def make(n_materials: int = 8, **sections: dict) -> Spec:
        folder = tmp_path / "catalogs"
        pool_fakes.write_catalogs(folder, n_materials=n_materials)
        sections.setdefault("dataset", {}).setdefault("shard_size", 2)
        return load_spec(pool_fakes.write_spec(folder, f"file://{tmp_path}/out", **sections))

    return make
