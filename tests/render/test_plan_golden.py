"""Every shipped spec plans to the bytes recorded here.

A plan's bytes decide which shards a build re-renders: a change to them (reordered sampling,
a new field, another float format) makes every published dataset stale. Refactors of the
planner must keep these values. When a change of plan is meant (a new catalog entry, a new
spec field), update the table with the printed values and say in the change why every
dataset of the affected specs is rebuilt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from render.plan import dataset_version, load_catalogs, make_plan
from render.spec import load_spec, replace_output

ROOT = Path(__file__).resolve().parents[2]

# spec -> (sha256 of the canonical plan JSON, dataset version at Blender 5.0.1)
GOLDEN = {
    "manifests/demo.toml": (
        "bc045c7dab0bdaf9f3a8217e2d8663fe79ecb590aa2e89d7caf891682d7575a2", "v-d8e67e014bdf"),
    "manifests/eval-tiny.toml": (
        "a763a6adcd0465902d3651eb43108be1f7547e9976d0c353d098426be0970fcd", "v-0a40d81999a0"),
    "manifests/full.toml": (
        "66ace1c8eab4eaf0aef457fff92f42920286db556869d39da29fa165d83a0a9f", "v-408464298c58"),
    "manifests/loop-train-hardneg.toml": (
        "4a4c77906c36606efa67d5318b12dab489b9313abcf68e47a31d05b68d740d85", "v-bf8cf0323edb"),
    "manifests/loop-train.toml": (
        "7b2025996a7984028ba48db2d5a7bbd9f25e6384113385e3a9a6bf79e7ea9409", "v-b08635eeebff"),
    "manifests/loop-val.toml": (
        "dcd1aad2442e118bf8c4bcd4794c7990c028152d3e0c4201bf48db950751803c", "v-424926b89ab7"),
    "manifests/tiny.toml": (
        "2a3b30bee4a7425f7ec58cf65c4466ff62cae68ab45d3bb9573d57f59cef3614", "v-52b6f168c262"),
}  # fmt: skip


def test_every_shipped_spec_is_in_the_table():
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "manifests").glob("*.toml")}
    assert shipped == set(GOLDEN)


@pytest.mark.slow
@pytest.mark.parametrize("spec_path", sorted(GOLDEN))
def test_shipped_spec_plans_to_the_recorded_bytes(spec_path):
    # The output folder is not part of the plan; any path will do, nothing is written.
    spec = replace_output(load_spec(ROOT / spec_path), "/nonexistent/plan-golden")
    plan = make_plan(spec, load_catalogs(spec))
    got = (hashlib.sha256(plan.to_json()).hexdigest(), dataset_version(spec, "5.0.1"))
    assert got == GOLDEN[spec_path], f"{spec_path}: the plan changed; now {got}"
