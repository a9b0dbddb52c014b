"""Mutation check of the loss, meta-architecture and schema code against the fast tests.

Runs ``mutmut`` (3.x, not a project dependency: ``pip install mutmut==3.8.1``) on a scratch
copy of the repository, so the working tree is never mutated, then prints killed / total per
module and the surviving mutants with their diffs::

    python bench/mutation_check.py --scratch /tmp/phieat-mut            # full run (~40 min, 2 cores)
    python bench/mutation_check.py --scratch /tmp/phieat-mut --report   # results of a run
    python bench/mutation_check.py --scratch /tmp/phieat-mut --recheck  # survivors vs today's tests

Mutated: ``train/losses/*`` (not ``invariance.py``, the 2-rank check harness),
``train/meta_arch.py`` and ``phieat/schema.py``. Tests: the fast unit layers
(``tests/test_schema.py``, ``tests/train/test_losses.py``, ``tests/train/test_schedules.py``
and the unit tests of ``tests/train/test_training_behaviours.py``; the ones that run
``train.train.main`` are left out for time). ``--recheck`` copies the current tests into the
scratch copy and runs every survivor again, in one process per module (the mutant is chosen
per call by ``MUTANT_UNDER_TEST``), so new tests are scored in minutes instead of a full run.
Not part of CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["phieat", "train", "render", "bench", "manifests", "scripts", "tests", "pyproject.toml"]
TESTS = [
    "tests/test_schema.py",
    "tests/train/test_losses.py",
    "tests/train/test_schedules.py",
    "tests/train/test_training_behaviours.py",
]
SKIP_TESTS = "not resume and not frozen and not clipping"  # the ones that run train.main
CONFIG = f"""
[tool.mutmut]
source_paths = ["train", "phieat"]
only_mutate = ["train/losses/*", "train/meta_arch.py", "phieat/schema.py"]
do_not_mutate = ["train/losses/invariance.py"]
also_copy = ["render", "bench", "manifests", "scripts"]
pytest_add_cli_args_test_selection = {json.dumps(TESTS)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-k", "{SKIP_TESTS}"]
process_isolation = "forkserver"
use_git_change_detection = false
"""
# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded to what the report counts.
STATUS = {0: "survived", 33: "no tests", 5: "no tests", None: "not checked"}


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".egg-info")}


def prepare(scratch: Path) -> None:
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, scratch / name, ignore=_ignore)
        else:
            shutil.copy2(src, scratch / name)
    with (scratch / "pyproject.toml").open("a", encoding="utf-8") as handle:
        handle.write(CONFIG)


def run(scratch: Path, children: int, timeout_s: int) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children)]
    try:
        return subprocess.run(mutmut, cwd=scratch, env=env, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped after {timeout_s} s; the report counts what was checked", file=sys.stderr)
        return 124


def _module_of(name: str) -> str:
    """``train.losses.gram.xǁGramLossǁforward__mutmut_46`` -> ``train.losses.gram``."""
    match = re.match(r"(.+?)\.x[_\u01c1]", name)
    return match.group(1) if match else name.rsplit(".", 1)[0]


def results(scratch: Path) -> dict[str, str]:
    """Mutant name -> status, from the ``.meta`` files mutmut writes beside each mutated file."""
    out = {}
    for meta in sorted((scratch / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        for key, code in data.get("exit_code_by_key", {}).items():
            out[key] = STATUS.get(code, "killed" if code in (1, 3) else f"other ({code})")
    return out


def _recheck_file(scratch: Path) -> Path:
    return scratch / "recheck.json"


def report(scratch: Path) -> None:
    status = results(scratch)
    rechecked = {}
    if _recheck_file(scratch).exists():
        rechecked = json.loads(_recheck_file(scratch).read_text(encoding="utf-8"))
    for name, killed in rechecked.items():
        if killed and status.get(name) == "survived":
            status[name] = "killed (recheck)"
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, state in status.items():
        by_module[_module_of(name)][state] += 1
    print(f"{'module':34s} {'killed':>7s} {'total':>6s}  (survived, no tests, not checked)")
    for module, counts in sorted(by_module.items()):
        killed = counts["killed"] + counts["killed (recheck)"]
        total = sum(counts.values())
        print(
            f"{module:34s} {killed:7d} {total:6d}  ({counts['survived']}, {counts['no tests']}, "
            f"{counts['not checked']})"
        )
    survivors = sorted(n for n, s in status.items() if s == "survived")
    print(f"\n{len(survivors)} surviving mutants:")
    for name in survivors:
        print(" ", name)


# Per module, the fast tests that can see its mutants (the recheck runs each survivor on them).
RECHECK_TESTS = {
    "phieat.schema": ["tests/test_schema.py"],
    "train.meta_arch": [
        "tests/train/test_training_behaviours.py",
        "tests/train/test_schedules.py",
        "tests/train/test_losses.py::test_ibot_update_center_momentum_against_hand_computation",
    ],
}
LOSS_TESTS = [
    "tests/train/test_losses.py",
    "tests/train/test_training_behaviours.py::test_objective_is_the_weighted_sum_of_the_five_terms",
]


def recheck(scratch: Path) -> None:
    """Run each survivor against the tests as they are now (copied into the scratch copy)."""
    mutants = scratch / "mutants"
    shutil.rmtree(mutants / "tests")
    shutil.copytree(ROOT / "tests", mutants / "tests", ignore=_ignore)
    survivors = sorted(n for n, s in results(scratch).items() if s == "survived")
    by_module: dict[str, list[str]] = collections.defaultdict(list)
    for name in survivors:
        by_module[_module_of(name)].append(name)
    verdicts: dict[str, bool] = {}
    for module, names in sorted(by_module.items()):
        out = scratch / f"recheck-{module}.json"
        tests = RECHECK_TESTS.get(module, LOSS_TESTS)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out), *names]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(mutants),
            "RECHECK_TESTS": json.dumps(tests),
        }
        subprocess.run(cmd, cwd=mutants, env=env, check=False)
        verdicts.update(json.loads(out.read_text(encoding="utf-8")))
        print(f"{module}: {sum(verdicts[n] for n in names)} of {len(names)} survivors now killed")
    _recheck_file(scratch).write_text(json.dumps(verdicts, indent=1), encoding="utf-8")


class _Failures:
    """pytest plugin: the node ids of the tests that failed."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)


def worker(out: Path, names: list[str]) -> None:
    """In the mutants folder: run the fast tests once per mutant, in this process. Tests that
    fail without any mutant (a test newer than the mutated copy of a fixed defect) are left out."""
    import pytest

    tests = json.loads(os.environ["RECHECK_TESTS"])
    args = [*tests, "-q", "-p", "no:cacheprovider", "-k", SKIP_TESTS, "--tb=no", "--no-header"]
    os.environ["MUTANT_UNDER_TEST"] = ""
    baseline = _Failures()
    pytest.main(args, plugins=[baseline])
    deselect = [f"--deselect={node}" for node in baseline.failed]
    if baseline.failed:
        print("left out, failing without a mutant:", baseline.failed, file=sys.stderr)
    verdicts = {}
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        code = pytest.main([*args, "-x", *deselect])
        verdicts[name] = code in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERNAL_ERROR)
    out.write_text(json.dumps(verdicts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/phieat-mutation"))
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--timeout-s", type=int, default=2400)
    parser.add_argument("--report", action="store_true", help="print the results of a run")
    parser.add_argument("--recheck", action="store_true", help="rerun survivors, current tests")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.names)
        return
    if args.recheck:
        recheck(args.scratch)
    elif not args.report:
        prepare(args.scratch)
        run(args.scratch, args.children, args.timeout_s)
    report(args.scratch)


if __name__ == "__main__":
    main()
