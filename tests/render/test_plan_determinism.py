"""The plan does not depend on Python's string hashing: two interpreters with different
``PYTHONHASHSEED`` values plan the shipped specs (hard negatives and material-selection scenes
included) to the same bytes, the same shard plan hashes and the same dataset version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# regular samples; hard-negative groups; material-selection scenes
SPECS = ["manifests/tiny.toml", "manifests/loop-train-hardneg.toml", "manifests/eval-tiny.toml"]

CHILD = """
import hashlib, json, sys
from render.plan import dataset_version, load_catalogs, make_plan
from render.spec import load_spec, replace_output

out = {}
for path in sys.argv[2:]:
    spec = replace_output(load_spec(path), sys.argv[1])
    plan = make_plan(spec, load_catalogs(spec))
    out[path] = {
        "sha256": hashlib.sha256(plan.to_json()).hexdigest(),
        "plan_hashes": [shard.plan_hash for shard in plan.shards],
        "version": dataset_version(spec, "5.0.1"),
        "samples": sum(len(shard.samples) for shard in plan.shards),
    }
print(json.dumps(out))
"""


def _plan_in_subprocess(hash_seed: str, output: Path) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(output), *SPECS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_plan_is_the_same_under_any_pythonhashseed(tmp_path):
    first = _plan_in_subprocess("0", tmp_path / "out")
    second = _plan_in_subprocess("4242", tmp_path / "out")
    assert set(first) == set(SPECS)
    for spec in SPECS:
        assert first[spec]["samples"] > 0, spec
        assert first[spec] == second[spec], spec
    # and the same as this process (whatever its own hash seed is)
    from render.plan import load_catalogs, make_plan
    from render.spec import load_spec, replace_output

    spec = replace_output(load_spec(ROOT / SPECS[1]), str(tmp_path / "out"))
    here = hashlib.sha256(make_plan(spec, load_catalogs(spec)).to_json()).hexdigest()
    assert here == first[SPECS[1]]["sha256"]
