"""``deploy/submit.sh`` (``ray job submit``) against a head started from this install, as
docs/cluster.md tells a user to do: the build runs as a Ray job with real Blender renders
(one material pair, 32 px, 2 samples) and its dataset verifies.

Needs the ``cluster`` extra (``ray[default]``: the head's job server); skipped without it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from render.verify import verify_dataset

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.blender]

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _job_server_missing() -> str:
    """Why this install cannot run Ray's job server ("" when it can)."""
    try:
        import ray._private.utils as ray_utils
    except ImportError:
        return "ray is not installed"
    check = getattr(ray_utils, "get_dashboard_dependency_error", None)
    if check is not None:
        error = check()
    else:
        error = None if importlib.util.find_spec("aiohttp") else "aiohttp is missing"
    if error:
        return (
            f"the Ray job server needs ray[default] ({error}): install the cluster extra, "
            "pip install -e '.[render,cluster]' (make setup does)"
        )
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _our_processes(marker: str) -> list[int]:
    """Pids whose command line names this test's own Ray temp folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def head(monkeypatch):
    """A Ray head with the job server, started from this install; yields its job address."""
    missing = _job_server_missing()
    if missing:
        pytest.skip(missing)
    # Unix socket paths must stay short: not under pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="phieat-ray-", dir="/tmp")
    dashboard = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Token authentication, as deploy/ sets it up: the token is this user's ~/.ray/auth_token
    # (ray start creates it when missing), read by the head, the job's driver and submit.sh.
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    monkeypatch.setenv("PATH", env["PATH"])
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={_free_port()}",
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # answering (even "unauthorised"): the job server is up
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Ray head did not come up within 120 s"
            time.sleep(0.5)
        yield address
    finally:
        # This head is thrown away: stop its processes (found by its own temp folder) at once.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        for pid in _our_processes(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_sh_runs_a_build_as_a_ray_job(head, cluster_spec, tmp_path):
    cluster_spec(n_materials=2)  # one shard, 2 samples x 2 views of 32 px
    spec_path = tmp_path / "catalogs" / "spec.toml"
    output = tmp_path / "job-out"
    # As cron runs it: a bare PATH (submit.sh finds the checkout's .venv), the token file.
    env = {"HOME": os.environ["HOME"], "RAY_ADDRESS": head, "PATH": "/usr/bin:/bin"}
    if not (REPO / ".venv" / "bin" / "ray").exists():
        env["PATH"] = os.pathsep.join([str(BIN), env["PATH"]])
    job = subprocess.run(
        [str(REPO / "deploy" / "submit.sh"), str(spec_path), str(output), "--workers", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "succeeded" in job.stdout.lower(), job.stdout[-4000:]
    assert "complete: true" in job.stdout
    report = verify_dataset(str(output))
    assert report.ok and report.samples == 2 and report.images == 4, report.summary()
