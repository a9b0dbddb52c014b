"""SIGTERM to a running build (what cron, systemd and Kubernetes send), then the same command
resumes it. The build runs as its own program on a local Ray with two workers whose fake
sessions take 0.3 s per view (no Blender), so it is stopped half-way for sure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from render import storage
from render.verify import iter_tar_samples, verify_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# phieat-render with every worker's Blender session replaced by the slow fake.
PROGRAM = """\
import sys

import cluster_fakes
import render.build

render.build.blender_session_factory = cluster_fakes.slow_factory(0.3)
from render.cli import main

raise SystemExit(main(sys.argv[1:]))
"""


def test_sigterm_stops_cleanly_and_the_same_command_resumes(cluster_spec, fakes_env, tmp_path):
    cluster_spec(n_materials=16)  # 8 shards of 2 samples x 2 views, 1.2 s each
    spec_path = tmp_path / "catalogs" / "spec.toml"
    program = tmp_path / "phieat_render.py"
    program.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ["build", str(spec_path), "--workers", "2", "--no-progress"]
    out = tmp_path / "out"

    build = subprocess.Popen(
        [sys.executable, str(program), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("v-*/shard-*.json")):
        assert build.poll() is None, build.communicate()
        assert time.monotonic() < deadline, "no shard was published within 120 s"
        time.sleep(0.05)
    build.send_signal(signal.SIGTERM)
    _, stderr = build.communicate(timeout=120)

    assert build.returncode == 128 + signal.SIGTERM, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM: published shards are kept"), stderr
    assert last.endswith(f"resume with the same command: phieat-render {' '.join(args)}")
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr
    [version] = out.glob("v-*")
    assert not (version / "build.lock").exists()
    published = sorted(p.name for p in version.glob("shard-*.json"))
    assert 1 <= len(published) < 8
    assert not list(version.glob("*.tmp*")) and not list(version.glob("*.part"))

    resumed = subprocess.run(
        [sys.executable, str(program), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{8 - len(published)} rendered, {len(published)} already published" in resumed.stdout
    report = verify_dataset(str(out))
    assert report.ok and report.samples == 16, report.summary()
    index = storage.read_json(storage.join(str(version), "index.json"))
    keys = Counter(
        key
        for shard in index["shards"]
        for key, _ in iter_tar_samples(storage.join(str(version), shard["name"]))
    )
    assert len(keys) == 16 and set(keys.values()) == {1}
