"""GPU device choice (OptiX -> CUDA) and the once-per-node kernel warm-up, with a fake session.

The bpy wheel cannot drive the GPUs of the test machines, so these tests cover the logic
only; the render path itself is the CPU one tested elsewhere.
"""

from __future__ import annotations

import pool_fakes
import pytest

from render.plan import load_catalogs, make_plan
from render.pool import kernel_cache_env, open_session, warm_kernels


def _factory(working: set[str], tried: list[str]):
    def factory(threads: int = 1, device: str = "CPU", quiet: bool = True):
        tried.append(device)
        if device not in working:
            raise RuntimeError(f"device {device!r} requested but no such GPU is visible")
        return pool_fakes.FakeSession(threads=threads, device=device)

    return factory


def test_cpu_workers_never_touch_gpu_backends():
    tried: list[str] = []
    session, device = open_session(_factory({"CPU"}, tried), threads=3, gpus=0, quiet=True)
    assert device == "CPU" and tried == ["CPU"] and session.threads == 3


def test_optix_is_preferred_then_cuda():
    tried: list[str] = []
    _, device = open_session(_factory({"OPTIX", "CUDA"}, tried), 2, gpus=1, quiet=True)
    assert device == "OPTIX" and tried == ["OPTIX"]
    tried.clear()
    _, device = open_session(_factory({"CUDA"}, tried), 2, gpus=1, quiet=True)
    assert device == "CUDA" and tried == ["OPTIX", "CUDA"]


def test_no_gpu_backend_is_an_error_not_a_silent_cpu_fallback():
    tried: list[str] = []
    with pytest.raises(RuntimeError, match=r"OPTIX: .*; CUDA: .*--gpus-per-worker 0"):
        open_session(_factory({"CPU"}, tried), 2, gpus=0.5, quiet=True)
    assert tried == ["OPTIX", "CUDA"]


def test_kernels_compile_once_per_node_then_hit_the_cache(make_spec, tmp_path):
    spec = make_spec()
    job = make_plan(spec, load_catalogs(spec)).shards[0].samples[0]["views"][0]
    first, second = pool_fakes.FakeSession(), pool_fakes.FakeSession()
    assert warm_kernels(first, "OPTIX", job, tmp_path / "cache", "5.0.1") == "compiled"
    assert warm_kernels(second, "OPTIX", job, tmp_path / "cache", "5.0.1") == "cached"
    assert len(first.calls) == 1 and second.calls == []
    assert warm_kernels(second, "CUDA", job, tmp_path / "cache", "5.0.1") == "compiled"
    env = kernel_cache_env(tmp_path / "cache")
    assert env["OPTIX_CACHE_PATH"].startswith(str(tmp_path)) and env["CUDA_CACHE_PATH"].endswith(
        "cuda"
    )
