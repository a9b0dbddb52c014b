"""A pool of long-lived Ray actors, each holding one Blender session; one task = one shard.

This is the only module that imports ray. Each ``RenderWorker`` actor imports bpy once,
reserves ``num_cpus = threads_per_worker`` (Cycles renders with exactly that many fixed
threads) and optionally ``num_gpus``; it renders whole shards with
``render.writer.render_shard`` and publishes them itself (rename or upload), so the driver
only moves small sidecars.

The driver (``RenderPool.run``) counts attempts itself: actors are created with
``max_restarts=0`` and no task retries (Ray's own retry would replay a shard that crashes its
actor until the actor is dead for good). When an actor dies (killed, out of memory, Blender
segfault) or a shard exceeds ``shard_timeout_s``, its shard is re-queued on a fresh actor
until ``shard_attempts`` is spent; only that shard is lost. Actors are recycled after
``recycle_after_shards`` shards or when their resident memory passes ``max_worker_rss_mb``.

With ``material_timeout_s``, every actor posts which view it is rendering to a small
progress actor; the driver reads it each poll and stops an actor whose view has run longer
than the limit (measured from when the driver first saw that view, so never early). The
shard goes back to the front of the queue: the material is tried ``max_retries`` more times,
then the shard is rendered without it and the material lands in the shard's failures
(``timeout after N s``). These re-queues do not count against ``shard_attempts``: a stuck
material costs its own sample, not the shard.

GPU actors try OptiX, then CUDA, on the GPU Ray assigned them. Cycles compiles its GPU
kernels on first use (minutes on some cards): every actor warms up under a per-node file
lock with a persistent kernel cache, so a node compiles once and the rest of its actors hit
the cache. The bpy wheel cannot use the GPUs of the machines this project is tested on, so
that path is covered by logic tests with a fake session only.

Local mode: ``ray.init()`` on this machine's cores. A cluster: ``RAY_ADDRESS`` or
``address=`` (see docs/cluster.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from render import storage
from render.build import (
    SessionFactory,
    ShardOutcome,
    WatchedSession,
    blender_session_factory,
    should_recycle,
)
from render.writer import Session, render_shard

logger = logging.getLogger("phieat.render")

GPU_DEVICES = ("OPTIX", "CUDA")
# Shard-dict key (driver -> actor): sample key -> reason, for materials that timed out on
# every attempt; the actor fails their views at once and renders the rest of the shard.
TIMED_OUT = "timed_out"
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


class _ProgressBoard:
    """The latest progress record of every actor (by its serial), read by the driver."""

    def __init__(self) -> None:
        self.records: dict[int, dict] = {}

    def report(self, serial: int, record: dict) -> None:
        self.records[serial] = record

    def read(self) -> dict[int, dict]:
        return self.records


# Restarted (empty) if its node dies; the actors' handles stay valid across restarts.
ProgressBoard = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_ProgressBoard)


class _Worker:
    """The actor body: one Blender session for the actor's whole life."""

    def __init__(
        self,
        factory: SessionFactory,
        threads: int,
        gpus: float,
        quiet: bool,
        kernel_cache: str,
        board: Any = None,
        serial: int = 0,
    ) -> None:
        if gpus:
            os.environ.update(kernel_cache_env(kernel_cache))
        self.kernel_cache = kernel_cache
        self.session, self.device = open_session(factory, threads, gpus, quiet)
        self.shards = 0
        self.board = board
        self.serial = serial
        self.reports = 0

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "blender_version": self.session.blender_version,
            "device": self.device,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def warm(self, job: dict) -> dict[str, Any]:
        started = time.perf_counter()
        state = "cpu"
        if self.device != "CPU":
            state = warm_kernels(
                self.session, self.device, job, self.kernel_cache, self.session.blender_version
            )
        return {
            "state": state,
            "device": self.device,
            "host": socket.gethostname(),
            "seconds": round(time.perf_counter() - started, 1),
        }

    def render(self, shard: dict, version_url: str, max_retries: int) -> dict[str, Any]:
        report = None
        if self.board is not None:

            def report(record: dict) -> None:
                # Fire and forget: calls from one actor reach the board in order.
                self.reports += 1
                self.board.report.remote(
                    self.serial, {**record, "shard": shard["name"], "seq": self.reports}
                )

        session = WatchedSession(self.session, skip=shard.get(TIMED_OUT), report=report)
        sidecar = render_shard(session, shard, version_url, max_retries=max_retries)
        self.shards += 1
        return {"sidecar": sidecar, "rss_mb": self.session.rss_mb()}


RenderWorker = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)


class _Slot:
    """One actor as the driver sees it."""

    def __init__(self, actor: Any, info_ref: Any, serial: int) -> None:
        self.actor = actor
        self.info_ref = info_ref
        self.serial = serial
        self.shards = 0
        self.warm_ref: Any = None


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    num_gpus: int | None = None,
) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray on this machine.

    ``num_cpus`` / ``num_gpus`` (local Ray only) default to what the machine has.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)


def shutdown_ray() -> None:
    """Disconnect from (or stop the local) Ray."""
    if ray.is_initialized():
        ray.shutdown()


class RenderPool:
    """Ray actors rendering shards; see the module docstring for the failure policy."""

    def __init__(
        self,
        session_factory: SessionFactory = blender_session_factory,
        workers: int = 0,
        threads_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
        shard_attempts: int = 3,
        recycle_after_shards: int = 50,
        max_worker_rss_mb: float = 0.0,
        shard_timeout_s: float = 0.0,
        material_timeout_s: float = 0.0,
        quiet: bool = True,
        address: str | None = None,
        kernel_cache: str | Path = DEFAULT_KERNEL_CACHE,
        poll_s: float = 0.5,
    ) -> None:
        ensure_ray(address, verbose=not quiet)
        self.factory = session_factory
        self.threads = threads_per_worker
        self.gpus = gpus_per_worker
        self.shard_attempts = shard_attempts
        self.recycle_after_shards = recycle_after_shards
        self.max_rss_mb = max_worker_rss_mb
        self.shard_timeout_s = shard_timeout_s
        self.material_timeout_s = material_timeout_s
        self.quiet = quiet
        self.kernel_cache = str(kernel_cache)
        self.poll_s = poll_s
        if workers <= 0:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            workers = max(1, cpus // threads_per_worker)
            if gpus_per_worker:
                workers = min(
                    workers, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker)
                )
                if workers < 1:
                    raise RuntimeError(
                        f"--gpus-per-worker {gpus_per_worker} asked for, but the Ray cluster "
                        f"has {ray.cluster_resources().get('GPU', 0)} GPUs"
                    )
        self.workers = workers
        total = ray.cluster_resources()
        if total.get("CPU", 0) < threads_per_worker or (
            gpus_per_worker and total.get("GPU", 0) < gpus_per_worker
        ):
            raise RuntimeError(
                f"one worker needs {threads_per_worker} CPUs and {gpus_per_worker:g} GPUs but the "
                f"Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs in "
                "all: lower --threads-per-worker / --gpus-per-worker or add nodes"
            )
        if total.get("CPU", 0) < workers * threads_per_worker:
            logger.warning(
                "%d workers x %d threads need %d CPUs; the Ray cluster has %g: the rest wait "
                "for an autoscaler to add nodes",
                workers,
                threads_per_worker,
                workers * threads_per_worker,
                total.get("CPU", 0),
            )
        self._serial = 0
        self._board = ProgressBoard.remote() if material_timeout_s else None
        # Actor serial -> (progress record seq, driver time it was first seen).
        self._seen: dict[int, tuple[int, float]] = {}
        self._slots: list[_Slot] = [self._new_slot() for _ in range(workers)]
        self._in_flight: dict[Any, tuple[_Slot, dict, float]] = {}
        self.crashes = 0
        self.recycled = 0
        # Called with (shard name, actor pid) when a shard is handed to an actor (monitoring).
        self.on_submit: Callable[[str, int], None] | None = None

    # -- actors

    def _new_slot(self) -> _Slot:
        self._serial += 1
        actor = RenderWorker.options(
            num_cpus=self.threads,
            num_gpus=self.gpus,
            name=None,
        ).remote(
            self.factory,
            self.threads,
            self.gpus,
            self.quiet,
            self.kernel_cache,
            self._board,
            self._serial,
        )
        return _Slot(actor, actor.info.remote(), self._serial)

    def _retire(self, slot: _Slot, replace: bool = True) -> None:
        ray.kill(slot.actor, no_restart=True)
        self._seen.pop(slot.serial, None)
        if slot in self._slots:
            i = self._slots.index(slot)
            if replace:
                self._slots[i] = self._new_slot()
            else:
                self._slots.pop(i)

    @property
    def blender_version(self) -> str:
        return ray.get(self._slots[0].info_ref)["blender_version"]

    def worker_info(self) -> list[dict[str, Any]]:
        return ray.get([slot.info_ref for slot in self._slots])

    def in_flight(self) -> dict[str, int]:
        """Shard name -> pid of the actor rendering it (for tests and status)."""
        return {
            shard["name"]: ray.get(slot.info_ref)["pid"]
            for slot, shard, _ in self._in_flight.values()
        }

    def check_output(self, url: str) -> None:
        if storage.is_process_local(url):
            raise storage.StorageError(
                f"{url} lives in this process's memory, which Ray workers cannot write to: use "
                "a folder, file:// or an object store URL, or build with --local"
            )

    # -- scheduling

    def run(
        self,
        shards: list[dict],
        version_url: str,
        max_retries: int,
    ) -> Iterator[ShardOutcome]:
        """Render ``shards``; yields one outcome per shard as shards finish."""
        queue = deque(shards)
        attempts: dict[str, int] = {}
        timeouts: dict[tuple[str, str], int] = {}
        first_job = shards[0]["samples"][0]["views"][0] if shards and shards[0]["samples"] else None
        try:
            while queue or self._in_flight:
                busy = {id(slot) for slot, _, _ in self._in_flight.values()}
                for slot in list(self._slots):
                    if not queue:
                        break
                    if id(slot) in busy:
                        continue
                    if self.gpus and slot.warm_ref is None and first_job is not None:
                        # Queued before the shard on the same actor (actor tasks run in order):
                        # the node's first actor compiles, the others wait on its lock.
                        slot.warm_ref = slot.actor.warm.remote(first_job)
                    shard = queue.popleft()
                    ref = slot.actor.render.remote(shard, version_url, max_retries)
                    self._in_flight[ref] = (slot, shard, time.monotonic())
                    if self.on_submit is not None:
                        self.on_submit(shard["name"], ray.get(slot.info_ref)["pid"])
                ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    yield from self._collect(ref, queue, attempts)
                if self.shard_timeout_s:
                    yield from self._expire(queue, attempts)
                if self.material_timeout_s:
                    self._expire_materials(queue, timeouts, max_retries)
        finally:
            # Abandoned (driver interrupted): stop the actors, and wait until they are gone so
            # no shard is published behind the back of a build that starts next.
            pending = list(self._in_flight)
            for slot, _, _ in list(self._in_flight.values()):
                self._retire(slot)
            self._in_flight.clear()
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=30)

    def _collect(self, ref: Any, queue: deque, attempts: dict[str, int]) -> Iterator[ShardOutcome]:
        slot, shard, _ = self._in_flight.pop(ref)
        name = shard["name"]
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # render_shard raised (not a material failure): the actor lives but may be unwell.
            error = f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause else str(exc)
            self._retire(slot)
            yield from self._failed(shard, error, queue, attempts, slot)
            return
        except ray.exceptions.RayError as exc:
            self.crashes += 1
            logger.warning(
                "worker %d died while rendering %s (%s)", slot.serial, name, type(exc).__name__
            )
            self._retire(slot)
            yield from self._failed(
                shard, f"worker died ({type(exc).__name__})", queue, attempts, slot
            )
            return
        slot.shards += 1
        if slot.warm_ref is not None and slot.shards == 1:
            warm = ray.get(slot.warm_ref)
            if warm["state"] == "compiled":
                logger.warning(
                    "worker %d compiled Cycles %s kernels on %s in %.0f s (cached for the node)",
                    slot.serial,
                    warm["device"],
                    warm["host"],
                    warm["seconds"],
                )
            else:
                logger.info(
                    "worker %d: %s kernels from the node cache", slot.serial, warm["device"]
                )
        yield ShardOutcome(
            name, out["sidecar"], None, attempts.get(name, 0) + 1, f"worker {slot.serial}"
        )
        if should_recycle(slot.shards, out["rss_mb"], self.recycle_after_shards, self.max_rss_mb):
            logger.info(
                "recycling worker %d after %d shards (%.0f MB resident)",
                slot.serial,
                slot.shards,
                out["rss_mb"],
            )
            self.recycled += 1
            self._retire(slot)

    def _failed(
        self, shard: dict, error: str, queue: deque, attempts: dict[str, int], slot: _Slot
    ) -> Iterator[ShardOutcome]:
        name = shard["name"]
        attempts[name] = attempts.get(name, 0) + 1
        if attempts[name] < self.shard_attempts:
            logger.warning(
                "re-queueing %s (attempt %d of %d failed: %s)",
                name,
                attempts[name],
                self.shard_attempts,
                error,
            )
            queue.appendleft(shard)
            return
        yield ShardOutcome(name, None, error, attempts[name], f"worker {slot.serial}")

    def _expire(self, queue: deque, attempts: dict[str, int]) -> Iterator[ShardOutcome]:
        now = time.monotonic()
        for ref, (slot, shard, since) in list(self._in_flight.items()):
            if now - since > self.shard_timeout_s:
                del self._in_flight[ref]
                logger.warning(
                    "%s exceeded %.0f s on worker %d: killing it",
                    shard["name"],
                    self.shard_timeout_s,
                    slot.serial,
                )
                self._retire(slot)
                error = f"timeout after {self.shard_timeout_s:.0f} s"
                yield from self._failed(shard, error, queue, attempts, slot)

    def _expire_materials(
        self, queue: deque, timeouts: dict[tuple[str, str], int], max_retries: int
    ) -> None:
        """Stop actors stuck on one view longer than ``material_timeout_s``; re-queue their
        shards, leaving out a material once it has timed out ``max_retries + 1`` times."""
        try:
            progress = ray.get(self._board.read.remote(), timeout=60)
        except ray.exceptions.RayError as exc:  # a restarting board must not stop the build
            logger.warning("cannot read worker progress (%s): trying again", exc)
            return
        now = time.monotonic()
        limit = self.material_timeout_s
        for ref, (slot, shard, _) in list(self._in_flight.items()):
            record = progress.get(slot.serial)
            if record is None or record.get("shard") != shard["name"]:
                continue
            seen = self._seen.get(slot.serial)
            if seen is None or seen[0] != record["seq"]:
                self._seen[slot.serial] = (record["seq"], now)
                continue
            if record["state"] != "rendering" or now - seen[1] <= limit:
                continue
            del self._in_flight[ref]
            self._retire(slot)
            key = record["key"]
            count = timeouts[(shard["name"], key)] = timeouts.get((shard["name"], key), 0) + 1
            if count > max_retries:
                reason = f"timeout after {limit:g} s (view {record['view']}; {count} attempts)"
                shard = {**shard, TIMED_OUT: {**shard.get(TIMED_OUT, {}), key: reason}}
                logger.warning(
                    "%s: %s exceeded %g s %d times: rendering the shard without it",
                    shard["name"],
                    key,
                    limit,
                    count,
                )
            else:
                logger.warning(
                    "%s: %s exceeded %g s on view %s (worker %d stopped): re-queueing the "
                    "shard, material attempt %d of %d",
                    shard["name"],
                    key,
                    limit,
                    record["view"],
                    slot.serial,
                    count,
                    max_retries + 1,
                )
            queue.appendleft(shard)

    def close(self) -> None:
        for slot in list(self._slots):
            ray.kill(slot.actor, no_restart=True)
        self._slots.clear()
        if self._board is not None:
            ray.kill(self._board, no_restart=True)
            self._board = None
