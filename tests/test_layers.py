"""The layer rules of DESIGN.md, checked on the source text so a violation fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["phieat", "render", "train", "bench", "scripts"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).exists() else []


ALL_SOURCES = [p for pkg in PACKAGES for p in _sources(pkg)]


def test_sources_found():
    assert any(p.parts[-2] == "blender" for p in ALL_SOURCES)
    assert _sources("phieat") and _sources("render") and _sources("train")


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_rules(path: Path):
    rel = path.relative_to(ROOT)
    imports = _imports(path)
    top = rel.parts[0]
    if "bpy" in imports or "mathutils" in imports:
        assert rel.parts[:2] == ("render", "blender"), f"{rel} imports bpy outside render/blender/"
    if "ray" in imports:
        assert rel.as_posix() == "render/pool.py", f"{rel} imports ray outside render/pool.py"
    if top == "render":
        assert "train" not in imports, f"{rel} imports train/"
        assert "torch" not in imports, f"{rel} imports torch (render/ must not need it)"
    if top == "train":
        assert "render" not in imports, f"{rel} imports render/"
    if top == "phieat":
        heavy = imports & {"bpy", "ray", "torch", "render", "train", "webdataset"}
        assert not heavy, f"{rel} imports {sorted(heavy)}: phieat/ must stay light"


def test_checker_sees_violations(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("import bpy\nfrom train.data import x\nimport ray.util\n")
    assert {"bpy", "train", "ray"} <= _imports(bad)
