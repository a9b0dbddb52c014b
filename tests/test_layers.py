"""The layer rules of DESIGN.md, checked on the source text so a violation fails CI.

One test per rule, each listing every file that breaks it; ``test_each_rule_catches_its_violation``
runs the same checker over a scratch tree holding one offending import per rule. The last test
checks that the Blender-marked tests skip, not error, on a machine without bpy.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["phieat", "render", "train", "bench", "scripts"]
PHIEAT_FORBIDDEN = {"bpy", "ray", "torch", "render", "train", "webdataset"}


@functools.cache
def _imports(path: Path) -> frozenset[str]:
    """Top-level names of every absolute import in ``path`` (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return frozenset(names)


# A rule: (relative path, its imports) -> what is wrong, or None.
Rule = Callable[[Path, frozenset[str]], "str | None"]


def _bpy_only_in_render_blender(rel: Path, imports: frozenset[str]) -> str | None:
    found = sorted(imports & {"bpy", "mathutils"})
    if found and rel.parts[:2] != ("render", "blender"):
        return f"imports {found} outside render/blender/"
    return None


def _ray_only_in_render_pool(rel: Path, imports: frozenset[str]) -> str | None:
    if "ray" in imports and rel.as_posix() != "render/pool.py":
        return "imports ray outside render/pool.py"
    return None


def _render_does_not_import_train(rel: Path, imports: frozenset[str]) -> str | None:
    if rel.parts[0] == "render" and "train" in imports:
        return "render/ imports train/"
    return None


def _render_does_not_import_torch(rel: Path, imports: frozenset[str]) -> str | None:
    if rel.parts[0] == "render" and "torch" in imports:
        return "render/ imports torch (render/ must not need it)"
    return None


def _train_does_not_import_render(rel: Path, imports: frozenset[str]) -> str | None:
    if rel.parts[0] == "train" and "render" in imports:
        return "train/ imports render/"
    return None


def _phieat_stays_light(rel: Path, imports: frozenset[str]) -> str | None:
    heavy = sorted(imports & PHIEAT_FORBIDDEN)
    if rel.parts[0] == "phieat" and heavy:
        return f"phieat/ imports {heavy}: it must stay light"
    return None


RULES: dict[str, Rule] = {
    "bpy_only_in_render_blender": _bpy_only_in_render_blender,
    "ray_only_in_render_pool": _ray_only_in_render_pool,
    "render_does_not_import_train": _render_does_not_import_train,
    "render_does_not_import_torch": _render_does_not_import_torch,
    "train_does_not_import_render": _train_does_not_import_render,
    "phieat_stays_light": _phieat_stays_light,
}


def _sources(root: Path) -> list[Path]:
    return [
        path
        for package in PACKAGES
        if (root / package).exists()
        for path in sorted((root / package).rglob("*.py"))
    ]


def offenders(rule: Rule, root: Path = ROOT) -> list[str]:
    """``'<file>: <what is wrong>'`` for every source file under ``root`` that breaks ``rule``."""
    found = []
    for path in _sources(root):
        rel = path.relative_to(root)
        problem = rule(rel, _imports(path))
        if problem:
            found.append(f"{rel.as_posix()}: {problem}")
    return found


def test_sources_found():
    sources = _sources(ROOT)
    assert any(p.parts[-2] == "blender" for p in sources)
    assert (ROOT / "render" / "pool.py") in sources
    for package in ("phieat", "render", "train"):
        assert any(p.relative_to(ROOT).parts[0] == package for p in sources), package


def test_bpy_only_in_render_blender():
    assert offenders(_bpy_only_in_render_blender) == []


def test_ray_only_in_render_pool():
    assert offenders(_ray_only_in_render_pool) == []


def test_render_does_not_import_train():
    assert offenders(_render_does_not_import_train) == []


def test_render_does_not_import_torch():
    assert offenders(_render_does_not_import_torch) == []


def test_train_does_not_import_render():
    assert offenders(_train_does_not_import_render) == []


def test_phieat_stays_light():
    assert offenders(_phieat_stays_light) == []


def test_rules_are_the_ones_the_layer_tests_check():
    tested = {name[len("test_") :] for name in globals() if name.startswith("test_")}
    assert set(RULES) <= tested


# A scratch tree: for each rule, the files that break it (and only it) and the files it allows.
SCRATCH = {
    "render/blender/scene.py": "import bpy\nimport mathutils\n",
    "render/pool.py": "import ray\nfrom ray.util import queue\n",
    "render/plan.py": "import numpy\n",
    "train/data.py": "import torch\nfrom phieat import schema\n",
    "phieat/schema.py": "import hashlib\n",
    # offenders
    "render/build.py": "from render.blender import session\ndef f():\n    import bpy\n",
    "bench/render_bench.py": "import mathutils.noise\n",
    "render/storage.py": "import ray.util\n",
    "render/writer.py": "from train.data import Loader\n",
    "render/preview.py": "import torch.nn\n",
    "train/eval/cli.py": "from render.verify import verify_dataset\n",
    "phieat/extra.py": "import webdataset\nfrom torch import nn\n",
}
EXPECTED = {
    "bpy_only_in_render_blender": ["bench/render_bench.py", "render/build.py"],
    "ray_only_in_render_pool": ["render/storage.py"],
    "render_does_not_import_train": ["render/writer.py"],
    "render_does_not_import_torch": ["render/preview.py"],
    "train_does_not_import_render": ["train/eval/cli.py"],
    "phieat_stays_light": ["phieat/extra.py"],
}


def test_each_rule_catches_its_violation(tmp_path: Path):
    for rel, text in SCRATCH.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert set(EXPECTED) == set(RULES)
    for name, rule in RULES.items():
        flagged = sorted(line.split(":")[0] for line in offenders(rule, tmp_path))
        assert flagged == EXPECTED[name], name
    assert "['torch', 'webdataset']" in offenders(_phieat_stays_light, tmp_path)[0]


# ----------------------------------------------------------------------------- no bpy


def _blender_marked_outside_blender_folder() -> list[str]:
    """Test files outside tests/render/blender/ that use the ``blender`` marker."""
    here = ROOT / "tests"
    blender_dir = here / "render" / "blender"
    return sorted(
        str(path.relative_to(ROOT))
        for path in here.rglob("test_*.py")
        if blender_dir not in path.parents and "mark.blender" in path.read_text(encoding="utf-8")
    )


@pytest.mark.slow
def test_blender_tests_skip_where_bpy_is_missing(tmp_path: Path):
    """Hide bpy (``sys.modules['bpy'] = None``: find_spec gives None, import fails) and collect
    the Blender-marked tests: every one must be skipped with a reason, none may error."""
    files = _blender_marked_outside_blender_folder()
    assert files, "no Blender-marked test outside tests/render/blender/ was found"
    hide = (
        "import sys; sys.modules['bpy'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    )
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-c", hide, "-q", "-m", "blender", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}", "-rs", *files]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "error" not in out.lower().split("short test summary")[-1], out[-4000:]
    report = junit.read_text()
    assert 'errors="0"' in report and 'failures="0"' in report, report[:2000]
    tests = int(report.split('tests="')[1].split('"')[0])
    skipped = int(report.split('skipped="')[1].split('"')[0])
    assert tests > 0 and skipped == tests, (tests, skipped, out[-2000:])
    assert "bpy" in out  # the skip reason names what is missing
