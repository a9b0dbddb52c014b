"""Shared pytest setup: markers that skip, with their reason, where the machine lacks something.

* ``gpu``: skipped when no CUDA device is visible.
* ``blender``: skipped when the bpy wheel (the ``render`` extra) is not importable, so a trainer
  machine without Blender runs the rest of the suite instead of erroring in fixtures that start
  Blender (the tests under ``tests/render/blender/`` skip through their own conftest as well).
"""

from __future__ import annotations

import importlib.util

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _bpy_available() -> bool:
    """Whether bpy can be imported, without importing it (that starts Blender)."""
    try:
        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not _cuda_available():
        skips["gpu"] = pytest.mark.skip(
            reason="needs a CUDA device; none is visible on this machine"
        )
    if not _bpy_available():
        skips["blender"] = pytest.mark.skip(
            reason="needs the bpy wheel (render extra), which is not installed"
        )
    if not skips:
        return
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
