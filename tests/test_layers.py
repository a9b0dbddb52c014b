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
PACKAGES = ["phieat", "assets", "render", "train", "bench", "scripts"]
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
    if "ray" in imports and rel.parts[:2] != ("render", "pool"):
        return "imports ray outside render/pool/"
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


def _assets_import_neither_render_nor_train(rel: Path, imports: frozenset[str]) -> str | None:
    found = sorted(imports & {"render", "train", "bpy", "ray", "torch"})
    if rel.parts[0] == "assets" and found:
        return f"assets/ imports {found}: the asset library sits below render/ and train/"
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
    "assets_import_neither_render_nor_train": _assets_import_neither_render_nor_train,
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
    assert (ROOT / "render" / "pool" / "__init__.py") in sources
    for package in ("phieat", "assets", "render", "train"):
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


def test_assets_import_neither_render_nor_train():
    assert offenders(_assets_import_neither_render_nor_train) == []


def test_phieat_stays_light():
    assert offenders(_phieat_stays_light) == []


def test_rules_are_the_ones_the_layer_tests_check():
    tested = {name[len("test_") :] for name in globals() if name.startswith("test_")}
    assert set(RULES) <= tested


# A scratch tree: for each rule, the files that break it (and only it) and the files it allows.
SCRATCH = {
    "render/blender/scene.py": "import bpy\nimport mathutils\n",
    "render/pool/driver.py": "import ray\nfrom ray.util import queue\n",
    "render/plan.py": "import numpy\nfrom assets.catalog import asset_path\n",
    "train/data.py": "import torch\nfrom phieat import schema\n",
    "phieat/schema.py": "import hashlib\n",
    "assets/catalog.py": "import json\nfrom phieat import schema\n",
    # offenders
    "render/build.py": "from render.blender import session\ndef f():\n    import bpy\n",
    "bench/render_bench.py": "import mathutils.noise\n",
    "render/storage.py": "import ray.util\n",
    "render/writer.py": "from train.data import Loader\n",
    "render/preview.py": "import torch.nn\n",
    "train/eval/cli.py": "from render.verify import verify_dataset\n",
    "phieat/extra.py": "import webdataset\nfrom torch import nn\n",
    "assets/families.py": "from render.spec import Spec\n",
}
EXPECTED = {
    "bpy_only_in_render_blender": ["bench/render_bench.py", "render/build.py"],
    "ray_only_in_render_pool": ["render/storage.py"],
    "render_does_not_import_train": ["render/writer.py"],
    "render_does_not_import_torch": ["render/preview.py"],
    "train_does_not_import_render": ["train/eval/cli.py"],
    "assets_import_neither_render_nor_train": ["assets/families.py"],
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


# ----------------------------------------------------------------------------- size

MAX_MODULE_LINES = 500


def test_no_module_passes_500_lines():
    """A module a reader can hold in mind: past this, split it by responsibility."""
    long = [
        f"{path.relative_to(ROOT).as_posix()}: {n} lines"
        for path in _sources(ROOT)
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


# ----------------------------------------------------------------------------- circles


def _module_name(rel: Path) -> str:
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_targets(name: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names an import statement in module ``name`` may refer to (submodules included)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        here = name.split(".") if is_package else name.split(".")[:-1]
        base = here[: len(here) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    return [stem] + [f"{stem}.{alias.name}" for alias in node.names]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in the file (lazy imports count: a
    function-level import still ties the two modules together). A package and its own
    submodules are not edges."""
    files = {_module_name(p.relative_to(root)): p for p in _sources(root)}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _import_targets(name, path.name == "__init__.py", node):
                while target and target not in files:
                    target = target.rpartition(".")[0]
                related = target.startswith(name + ".") or name.startswith(target + ".")
                if target and target != name and not related:
                    graph[name].add(target)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return sorted(circles)


def test_no_import_circles():
    circles = import_circles(import_graph())
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_circle_check_finds_a_circle(tmp_path: Path):
    tree = {
        "render/__init__.py": "",
        "render/a.py": "from render import b\n",
        "render/b.py": "def f():\n    from .c import g\n",  # lazy and relative still count
        "render/c.py": "import render.a\n",
        "render/d.py": "from render.a import x\nfrom render import d\n",  # no way back; itself
        "train/__init__.py": "from train import e\n",  # a package and its own submodule
        "train/e.py": "import train\n",
    }
    for rel, text in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["render.b"] == {"render.c"}
    assert import_circles(graph) == [["render.a", "render.b", "render.c"]]


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
