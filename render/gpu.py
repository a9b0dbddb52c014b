"""Opening a worker's Blender session on a GPU, and compiling Cycles' GPU kernels once.

``open_session`` tries OptiX, then CUDA, and fails loudly (never a silent CPU fallback);
``kernel_cache_env`` keeps the CUDA and OptiX kernel caches in a persistent folder;
``warm_kernels`` renders one tiny view under a per-node file lock so a node compiles the
kernels once and its other workers hit the cache. Plain Python: the Ray actors of
``render.pool`` call these inside their worker processes, and tests drive them with a fake
session.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from render.workers import SessionFactory
from render.writer import Session

logger = logging.getLogger("phieat.render")

GPU_DEVICES = ("OPTIX", "CUDA")
# Persistent per-node folder for compiled Cycles GPU kernels (a mounted volume on clusters).
DEFAULT_KERNEL_CACHE = Path(
    os.environ.get("PHIEAT_KERNEL_CACHE", Path.home() / ".cache" / "phieat" / "cycles-kernels")
)


def open_session(
    factory: SessionFactory,
    threads: int,
    gpus: float,
    quiet: bool,
    devices: tuple[str, ...] = GPU_DEVICES,
) -> tuple[Session, str]:
    """Open a session on the CPU, or on the GPU trying ``devices`` in order (OptiX -> CUDA).

    Returns ``(session, device)``. Raises ``RuntimeError`` listing every device's error when
    none works, so a GPU build never falls back to the CPU silently.
    """
    if not gpus:
        return factory(threads=threads, device="CPU", quiet=quiet), "CPU"
    errors = []
    for device in devices:
        try:
            session = factory(threads=threads, device=device, quiet=quiet)
        except Exception as exc:  # noqa: BLE001 - try the next backend, report all at the end
            errors.append(f"{device}: {exc}")
            logger.warning("GPU backend %s unavailable: %s", device, exc)
            continue
        return session, device
    raise RuntimeError(
        "no GPU backend works on this worker (" + "; ".join(errors) + "); check the NVIDIA "
        "driver and CUDA_VISIBLE_DEVICES, or run with --gpus-per-worker 0"
    )


def kernel_cache_env(cache_dir: str | Path) -> dict[str, str]:
    """Environment that keeps the CUDA and OptiX kernel caches in ``cache_dir`` (persistent)."""
    cache = Path(cache_dir)
    return {
        "CUDA_CACHE_PATH": str(cache / "cuda"),
        "CUDA_CACHE_MAXSIZE": str(4 << 30),
        "OPTIX_CACHE_PATH": str(cache / "optix"),
        "OPTIX_CACHE_MAXSIZE": str(4 << 30),
    }


def warm_kernels(
    session: Session, device: str, job: dict, cache_dir: str | Path, version: str
) -> str:
    """Render one tiny view under a per-node lock so Cycles compiles GPU kernels only once.

    Returns ``"compiled"`` (this actor did the compilation) or ``"cached"`` (another actor on
    this node already had; the marker file says so).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / f"warm-{version}-{device}.done"
    with open(cache / ".warm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists():
                return "cached"
            tiny = dict(job)
            tiny["render"] = {**job["render"], "resolution": 16, "samples": 1, "denoise": False}
            started = time.perf_counter()
            session.render_view(tiny)
            session.reset()
            marker.write_text(f"{time.time()}\n")
            logger.warning(
                "compiled Cycles %s kernels once on %s in %.0f s (cache %s)",
                device,
                socket.gethostname(),
                time.perf_counter() - started,
                cache,
            )
            return "compiled"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
