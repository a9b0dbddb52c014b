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

Elastic pool: a task is handed only to an actor that has started (its ``info`` call
returned), so a replacement actor that no node can host never holds a shard. When an actor
is lost with its node (spot preemption, a dead raylet: the actor is reported dead with its
node, or unreachable before Ray marks the node dead), its shard goes back to the front of
the queue at once, without using up ``shard_attempts`` (at most ``MAX_NODE_LOSSES`` times),
and the next free live actor takes it. A new actor that has not started within
``placement_timeout_s`` is dropped with a warning naming the node it replaced; the pool is
topped up again when the cluster has room (an autoscaler added a node, or ``workers = 0``
and a node joined). Every driver-side ``ray.get`` has a timeout; with no live actor for
``placement_timeout_s`` the remaining shards fail with a message instead of waiting forever.

Progress per view: every actor posts how many views of its shard it has rendered to the
small progress actor (fire and forget, one call per view); the driver asks it about once a
second and never waits for the answer (a zero-timeout ``ray.wait``; a late answer is picked
up on a later poll). Finished shards plus views of shards in flight give images done,
images/s and an ETA (``ViewProgress``): a tqdm bar with ``progress=True``, ``on_view(n)``
for whoever drives the build, and an INFO log line every ``PROGRESS_LOG_S`` and at the end
of a run. Each shard's result also carries its actor's cache counts
(``BlenderSession.cache_stats``); ``cache_stats()`` sums them over the run's actors and
``cache_summary()`` formats them.

Local mode: ``ray.init()`` on this machine's cores. A cluster: ``RAY_ADDRESS`` or
``address=`` (see docs/cluster.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from render import storage
from render.errors import ClusterError
from render.workers import (
    SessionFactory,
    ShardOutcome,
    WatchedSession,
    blender_session_factory,
    format_cache_stats,
    should_recycle,
    sum_cache_stats,
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
    """The latest progress record of every actor (by its serial), read by the driver, and
    how many views of its current shard each actor has rendered."""

    def __init__(self) -> None:
        self.records: dict[int, dict] = {}
        self.done: dict[int, tuple[str, int]] = {}

    def report(self, serial: int, record: dict) -> None:
        self.records[serial] = record

    def read(self) -> dict[int, dict]:
        return self.records

    def view(self, serial: int, shard: str, done: int) -> None:
        self.done[serial] = (shard, done)

    def views(self) -> dict[int, tuple[str, int]]:
        return self.done


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
            "ip": ray.util.get_node_ip_address(),
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

        on_view = None
        if self.board is not None:
            done = [0]

            def on_view(count: int) -> None:
                done[0] += count
                self.board.view.remote(self.serial, shard["name"], done[0])

        session = WatchedSession(self.session, skip=shard.get(TIMED_OUT), report=report)
        sidecar = render_shard(
            session, shard, version_url, max_retries=max_retries, on_view=on_view
        )
        self.shards += 1
        stats = getattr(self.session, "cache_stats", None)
        return {
            "sidecar": sidecar,
            "rss_mb": self.session.rss_mb(),
            "cache": stats() if callable(stats) else {},
        }


RenderWorker = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)


# Bound on every driver-side ``ray.get``: results waited for are ready (or nearly), so a get
# that times out means the cluster lost them; the build goes on instead of hanging.
GET_TIMEOUT_S = 60.0
# How long a new actor may take to be placed and start before the pool drops it (seconds);
# ``PHIEAT_PLACEMENT_TIMEOUT_S`` overrides it (an autoscaler adding a node needs minutes).
DEFAULT_PLACEMENT_TIMEOUT_S = 300.0
# How often the driver compares the pool with the cluster (lost nodes, room for actors).
CHECK_EVERY_S = 1.0
# A shard re-queued this many times for lost nodes without an attempt charged; after that a
# loss counts as a failed attempt (a shard that takes its node down must not loop forever).
MAX_NODE_LOSSES = 5
# How often the driver asks the progress actor for views done, and logs a progress line.
PROGRESS_POLL_S = 1.0
PROGRESS_LOG_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ViewProgress:
    """Images rendered in a run: finished shards count all their planned views, shards in
    flight the views their actors reported. Never goes back (a re-queued shard's views are
    counted again only once it passes what was shown)."""

    def __init__(self, total: int, bar: bool = False) -> None:
        self.total = total
        self.started = time.monotonic()
        self.finished = 0  # images of finished shards (published or failed)
        self.shown = 0
        self.bar = None
        if bar and total:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit="img", desc="views", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, partial: int) -> int:
        """Set the views done in shards still in flight; returns how many images are new."""
        now = min(self.total, self.finished + partial)
        new = max(0, now - self.shown)
        self.shown += new
        if new and self.bar is not None:
            self.bar.update(new)
        return new

    def shard_done(self, images: int, partial: int) -> int:
        self.finished += images
        return self.update(partial)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.shown / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """E.g. ``37/120 images (31 %), 1.92 images/s, ETA 0:43``."""
        rate = self.rate
        eta = _duration((self.total - self.shown) / rate) if rate > 0 else "?"
        percent = 100.0 * self.shown / self.total if self.total else 100.0
        return f"{self.shown}/{self.total} images ({percent:.0f} %), {rate:.2f} images/s, ETA {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _Slot:
    """One actor as the driver sees it; it is given shards only once it has started."""

    def __init__(self, actor: Any, info_ref: Any, serial: int, replaces: str = "") -> None:
        self.actor = actor
        self.info_ref = info_ref
        self.serial = serial
        self.created = time.monotonic()
        # The actor's ``info()`` once it arrived: the actor was placed and holds a session.
        self.info: dict[str, Any] | None = None
        # Node id of the dead worker this actor replaces ("" for a first or recycled actor).
        self.replaces = replaces
        self.shards = 0
        self.warm_ref: Any = None


def _program_signal_handlers() -> dict[int, Any]:
    """SIGTERM/SIGINT handlers the program installed itself (Python callables), if any."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if callable(handler) and handler is not signal.default_int_handler:
            handlers[sig] = handler
    return handlers


_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def _token_notice_filter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def ensure_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    num_gpus: int | None = None,
) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray on this machine.

    ``num_cpus`` / ``num_gpus`` (local Ray only) default to what the machine has. A local
    Ray keeps Ray's default, token authentication on (unless ``RAY_AUTH_MODE`` says
    otherwise); only Ray's notice about it is left out. ``ray.init`` replaces the SIGTERM
    handler with its own; a handler the program installed before (the CLI's clean stop) is
    put back.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    handlers = _program_signal_handlers()
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            mode = os.environ.get("RAY_AUTH_MODE", "unset")
            raise ClusterError(
                f"cannot connect to the Ray cluster at {address} ({_first_line(exc)}); with "
                f"RAY_AUTH_MODE {mode}: a cluster with token authentication needs "
                "RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token "
                "(docs/cluster.md, Authentication); else check the address and that the head runs"
            ) from None
    else:
        # The notice that a new local Ray keeps Ray's default (token authentication on, the
        # token in ~/.ray/auth_token) says nothing a one-machine build needs to act on.
        token_log = logging.getLogger(_TOKEN_LOGGER)
        token_log.addFilter(_token_notice_filter)
        try:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        finally:
            token_log.removeFilter(_token_notice_filter)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def shutdown_ray() -> None:
    """Disconnect from (or stop the local) Ray."""
    if ray.is_initialized():
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


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
        placement_timeout_s: float | None = None,
        progress: bool = False,
    ) -> None:
        ensure_ray(address, verbose=not quiet)
        self.progress_bar = progress
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
        if placement_timeout_s is None:
            placement_timeout_s = float(
                os.environ.get("PHIEAT_PLACEMENT_TIMEOUT_S", DEFAULT_PLACEMENT_TIMEOUT_S)
            )
        self.placement_timeout_s = placement_timeout_s
        # workers = 0: as many actors as the cluster fits, now and as nodes come and go.
        self.auto_workers = workers <= 0
        if workers <= 0:
            workers = self._fitting_workers()
            if gpus_per_worker and workers < 1:
                raise ClusterError(
                    f"--gpus-per-worker {gpus_per_worker} asked for, but the Ray cluster "
                    f"has {ray.cluster_resources().get('GPU', 0)} GPUs"
                )
            workers = max(1, workers)
        self.workers = workers
        total = ray.cluster_resources()
        if total.get("CPU", 0) < threads_per_worker or (
            gpus_per_worker and total.get("GPU", 0) < gpus_per_worker
        ):
            raise ClusterError(
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
        # Always there: views done feed the progress; stuck views feed material_timeout_s.
        self._board = ProgressBoard.remote()
        # Actor serial -> (progress record seq, driver time it was first seen).
        self._seen: dict[int, tuple[int, float]] = {}
        self._slots: list[_Slot] = [self._new_slot() for _ in range(workers)]
        self._in_flight: dict[Any, tuple[_Slot, dict, float]] = {}
        self.crashes = 0
        self.recycled = 0
        # Of the last run: lost node -> shards re-queued from it; every re-queued shard.
        self.lost_nodes: dict[str, list[str]] = {}
        self.requeued: list[str] = []
        # Nodes whose actor died while the node still looked alive: checked again later.
        self._suspects: dict[str, list[str]] = {}
        self._node_names: dict[str, str] = {}
        self._node_losses: dict[str, int] = {}
        self._next_check = 0.0
        self._last_probe = time.monotonic()
        self._dropped = 0
        # Called with (shard name, actor pid) when a shard is handed to an actor (monitoring).
        self.on_submit: Callable[[str, int], None] | None = None
        # Called with the number of images newly rendered (per view, about once a second).
        self.on_view: Callable[[int], None] | None = None
        self.progress: ViewProgress | None = None
        # Actor serial -> its session's cache counts after its latest shard.
        self._cache: dict[int, dict] = {}
        self._views_ref: Any = None
        self._views_done: dict[int, tuple[str, int]] = {}
        self._next_views = 0.0
        self._next_log = 0.0

    # -- actors

    def _fitting_workers(self) -> int:
        """How many actors the cluster's resources hold (alive nodes only)."""
        total = ray.cluster_resources()
        workers = int(total.get("CPU", 0) // self.threads)
        if self.gpus:
            workers = min(workers, int(total.get("GPU", 0) // self.gpus))
        return workers

    def _target(self) -> int:
        return max(1, self._fitting_workers()) if self.auto_workers else self.workers

    def _new_slot(self, replaces: str = "") -> _Slot:
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
        return _Slot(actor, actor.info.remote(), self._serial, replaces)

    def _retire(self, slot: _Slot, replace: bool = True, replaces: str = "") -> None:
        ray.kill(slot.actor, no_restart=True)
        self._seen.pop(slot.serial, None)
        if slot in self._slots:
            i = self._slots.index(slot)
            if replace:
                self._slots[i] = self._new_slot(replaces)
            else:
                self._slots.pop(i)

    def _poll_starting(self) -> None:
        """Note actors that have started; drop those not started within the placement limit."""
        starting = [slot for slot in self._slots if slot.info is None]
        if not starting:
            return
        ready, _ = ray.wait([s.info_ref for s in starting], num_returns=len(starting), timeout=0)
        now = time.monotonic()
        for slot in starting:
            if slot.info_ref in ready:
                try:
                    slot.info = ray.get(slot.info_ref, timeout=GET_TIMEOUT_S)
                except ray.exceptions.RayActorError as exc:
                    if getattr(exc, "actor_init_failed", False):
                        raise ClusterError(
                            f"render worker {slot.serial} failed to start: {_first_line(exc)}"
                        ) from None
                    # Lost with its node before it started: topped up later.
                    self._slots.remove(slot)
                    logger.warning(
                        "worker %d was lost before it started (%s)",
                        slot.serial,
                        type(exc).__name__,
                    )
                except ray.exceptions.RayError as exc:
                    self._slots.remove(slot)
                    ray.kill(slot.actor, no_restart=True)
                    logger.warning("worker %d did not start: %s", slot.serial, _first_line(exc))
                continue
            if now - slot.created > self.placement_timeout_s:
                self._drop(slot)

    def _drop(self, slot: _Slot) -> None:
        """Give up on an actor that no node could host in time: the pool shrinks."""
        self._slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)
        self._dropped += 1
        live = sum(1 for s in self._slots if s.info is not None)
        what = ""
        if slot.replaces:
            name = self._node_names.get(slot.replaces, slot.replaces[:8])
            lost = name in self.lost_nodes or slot.replaces in self._dead_nodes({slot.replaces})
            what = f" (replacing a worker {'of lost node' if lost else 'that died on node'} {name})"
        # A repeated probe for room (see _top_up) is no news: only the first drop warns.
        log = logger.warning if self._dropped == 1 or slot.replaces else logger.info
        log(
            "worker %d%s could not be placed within %.0f s: the pool shrinks to %d live "
            "worker(s); it grows again when the cluster has room",
            slot.serial,
            what,
            self.placement_timeout_s,
            live,
        )

    def _top_up(self, now: float, force: bool = False) -> None:
        """Start actors up to the target where the cluster has room (or ``force``: all).

        Without room, one actor is started every ``placement_timeout_s`` anyway: its pending
        request is what tells an autoscaler to add a node.
        """
        missing = self._target() - len(self._slots)
        if missing <= 0:
            return
        starting = sum(1 for s in self._slots if s.info is None)
        if force:
            count = missing
        else:
            free = ray.available_resources()
            room = int(free.get("CPU", 0) // self.threads)
            if self.gpus:
                room = min(room, int(free.get("GPU", 0) // self.gpus))
            count = min(missing, max(0, room - starting))
            if not count and not starting and now - self._last_probe >= self.placement_timeout_s:
                count = 1
        if not count:
            return
        self._last_probe = now
        logger.info("starting %d more worker(s) for a pool of %d", count, self._target())
        self._slots += [self._new_slot() for _ in range(count)]

    def _lost_node(self, slot: _Slot, exc: BaseException) -> str:
        """A description of the slot's node if the actor died with it, else ``""``."""
        info = slot.info or {}
        node = info.get("node_id", "")
        if not node:
            return ""
        name = self._node_names[node] = f"{node[:8]} ({info.get('ip') or info.get('host')})"
        # Unavailable (not dead): the actor's node stopped answering, e.g. its raylet died
        # and Ray has not marked the node dead yet (that takes 15-40 s).
        gone = (
            isinstance(exc, ray.exceptions.ActorUnavailableError)
            or bool(getattr(exc, "preempted", False))
            or "node has died" in str(exc)
        )
        if not gone:
            gone = node in self._dead_nodes({node})
        if not gone:
            self._suspects.setdefault(node, [])
            return ""
        return name

    def _dead_nodes(self, nodes: set[str]) -> set[str]:
        try:
            alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        except ray.exceptions.RayError:
            return set()
        return {node for node in nodes if alive.get(node) is False}

    def _check_suspects(self) -> None:
        """List nodes marked dead after their actors' deaths were already handled."""
        if not self._suspects:
            return
        for node in self._dead_nodes(set(self._suspects)):
            shards = self._suspects.pop(node)
            name = self._node_names.get(node, node[:8])
            self.lost_nodes.setdefault(name, []).extend(shards)
            logger.warning(
                "node %s was lost (its workers had died before; re-queued: %s)",
                name,
                ", ".join(shards) or "none",
            )

    @property
    def blender_version(self) -> str:
        return self._first_info()["blender_version"]

    def _first_info(self) -> dict[str, Any]:
        """The info of a started actor, waiting at most ``placement_timeout_s`` for one."""
        deadline = time.monotonic() + self.placement_timeout_s
        while True:
            self._poll_starting()
            for slot in self._slots:
                if slot.info is not None:
                    return slot.info
            now = time.monotonic()
            if now > deadline:
                total = ray.cluster_resources()
                raise ClusterError(
                    f"no render worker started within {self.placement_timeout_s:.0f} s: the Ray "
                    f"cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs "
                    f"and one worker needs {self.threads} CPUs and {self.gpus:g} GPUs; check "
                    "`ray status`"
                )
            self._top_up(now)
            refs = [slot.info_ref for slot in self._slots]
            if refs:
                ray.wait(refs, num_returns=1, timeout=self.poll_s)
            else:
                time.sleep(self.poll_s)

    def worker_info(self) -> list[dict[str, Any]]:
        """The info of every started actor (pid, host, node, device, ...)."""
        self._poll_starting()
        return [slot.info for slot in self._slots if slot.info is not None]

    def in_flight(self) -> dict[str, int]:
        """Shard name -> pid of the actor rendering it (for tests and status)."""
        return {shard["name"]: slot.info["pid"] for slot, shard, _ in self._in_flight.values()}

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
        self.lost_nodes, self.requeued, self._node_losses, self._suspects = {}, [], {}, {}
        self.progress = ViewProgress(
            sum(len(s["views"]) for shard in shards for s in shard["samples"]),
            bar=self.progress_bar,
        )
        self._cache, self._views_ref, self._views_done = {}, None, {}
        self._next_log = time.monotonic() + PROGRESS_LOG_S
        # A new run starts at full size (actors retired when a previous run was abandoned).
        self._top_up(time.monotonic(), force=True)
        starved_since: float | None = None
        try:
            while queue or self._in_flight:
                now = time.monotonic()
                self._poll_starting()
                if now >= self._next_check:
                    self._next_check = now + CHECK_EVERY_S
                    self._check_suspects()
                    self._top_up(now)
                busy = {id(slot) for slot, _, _ in self._in_flight.values()}
                for slot in list(self._slots):
                    if not queue:
                        break
                    if slot.info is None or id(slot) in busy:
                        continue
                    if self.gpus and slot.warm_ref is None and first_job is not None:
                        # Queued before the shard on the same actor (actor tasks run in order):
                        # the node's first actor compiles, the others wait on its lock.
                        slot.warm_ref = slot.actor.warm.remote(first_job)
                    shard = queue.popleft()
                    ref = slot.actor.render.remote(shard, version_url, max_retries)
                    self._in_flight[ref] = (slot, shard, time.monotonic())
                    if self.on_submit is not None:
                        self.on_submit(shard["name"], slot.info["pid"])
                waiting = list(self._in_flight) + [
                    s.info_ref for s in self._slots if s.info is None
                ]
                ready = []
                if waiting:
                    ready, _ = ray.wait(waiting, num_returns=1, timeout=self.poll_s)
                else:
                    time.sleep(self.poll_s)
                for ref in ready:
                    if ref in self._in_flight:
                        yield from self._collect(ref, queue, attempts)
                if self.shard_timeout_s:
                    yield from self._expire(queue, attempts)
                if self.material_timeout_s:
                    self._expire_materials(queue, timeouts, max_retries)
                self._poll_views()
                if not queue or any(slot.info is not None for slot in self._slots):
                    starved_since = None
                elif starved_since is None:
                    starved_since = time.monotonic()
                elif time.monotonic() - starved_since > self.placement_timeout_s:
                    yield from self._starved(queue, attempts)
            self._check_suspects()
            if self.progress.total:
                logger.info("rendered %s", self.progress.line())
            if self._cache:
                logger.info("caches: %s", self.cache_summary())
        finally:
            self.progress.close()
            # Abandoned (driver interrupted): stop the actors, and wait until they are gone so
            # no shard is published behind the back of a build that starts next.
            pending = list(self._in_flight)
            for slot, _, _ in list(self._in_flight.values()):
                self._retire(slot, replace=False)
            self._in_flight.clear()
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=30)

    # -- progress

    def _partial_views(self) -> int:
        """Views reported by the actors of the shards in flight (latest read)."""
        done = self._views_done or {}
        total = 0
        for slot, shard, _ in self._in_flight.values():
            record = done.get(slot.serial)
            if record is not None and record[0] == shard["name"]:
                total += int(record[1])
        return total

    def _advance(self, new: int) -> None:
        if new and self.on_view is not None:
            self.on_view(new)
        now = time.monotonic()
        if now >= self._next_log and self.progress is not None:
            self._next_log = now + PROGRESS_LOG_S
            logger.info("rendered %s", self.progress.line())

    def _shard_finished(self, shard: dict) -> None:
        if self.progress is None:
            return
        images = sum(len(s["views"]) for s in shard["samples"])
        self._advance(self.progress.shard_done(images, self._partial_views()))

    def _poll_views(self) -> None:
        """Pick up the progress actor's view counts when they have arrived (never waits),
        and ask again about once every ``PROGRESS_POLL_S``."""
        if self._views_ref is not None:
            ready, _ = ray.wait([self._views_ref], num_returns=1, timeout=0)
            if not ready:
                return
            ref, self._views_ref = self._views_ref, None
            try:
                self._views_done = ray.get(ref, timeout=GET_TIMEOUT_S)
            except ray.exceptions.RayError as exc:  # a restarting board: progress waits
                logger.info("cannot read worker progress (%s): trying again", exc)
            else:
                self._advance(self.progress.update(self._partial_views()))
        now = time.monotonic()
        if now >= self._next_views and self._in_flight:
            self._next_views = now + PROGRESS_POLL_S
            self._views_ref = self._board.views.remote()

    def cache_stats(self) -> dict[str, dict[str, float]]:
        """The cache counts of the last run's actors, summed (see ``BlenderSession.cache_stats``;
        an actor recycled during the run counts with its last shard)."""
        return sum_cache_stats(list(self._cache.values()))

    def cache_summary(self) -> str:
        return format_cache_stats(self.cache_stats())

    def _starved(self, queue: deque, attempts: dict[str, int]) -> Iterator[ShardOutcome]:
        """No actor has been alive for ``placement_timeout_s``: fail what is left."""
        lost = f" after losing node(s) {', '.join(self.lost_nodes)}" if self.lost_nodes else ""
        error = (
            f"no render worker could run on the Ray cluster for {self.placement_timeout_s:.0f} "
            f"s{lost}: add nodes and build again"
        )
        logger.error("%s; %d shard(s) left unrendered", error, len(queue))
        while queue:
            shard = queue.popleft()
            name = shard["name"]
            self._shard_finished(shard)
            yield ShardOutcome(name, None, error, attempts.get(name, 0) + 1, "")

    def _collect(self, ref: Any, queue: deque, attempts: dict[str, int]) -> Iterator[ShardOutcome]:
        slot, shard, _ = self._in_flight.pop(ref)
        name = shard["name"]
        try:
            out = ray.get(ref, timeout=GET_TIMEOUT_S)
        except ray.exceptions.RayTaskError as exc:
            # render_shard raised (not a material failure): the actor lives but may be unwell.
            error = f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause else str(exc)
            self._retire(slot)
            yield from self._failed(shard, error, queue, attempts, slot)
            return
        except ray.exceptions.RayError as exc:
            lost = self._lost_node(slot, exc)
            node = (slot.info or {}).get("node_id", "")
            losses = self._node_losses[name] = self._node_losses.get(name, 0) + 1
            if lost and losses <= MAX_NODE_LOSSES:
                # Not the shard's fault: back to the front of the queue, no attempt used.
                self._retire(slot, replaces=node)
                self.lost_nodes.setdefault(lost, []).append(name)
                self.requeued.append(name)
                queue.appendleft(shard)
                logger.warning(
                    "node %s lost with worker %d: re-queueing %s on a live worker",
                    lost,
                    slot.serial,
                    name,
                )
                return
            self.crashes += 1
            if node in self._suspects:  # listed as the node's if the node turns out lost
                self._suspects[node].append(name)
            logger.warning(
                "worker %d died while rendering %s (%s)", slot.serial, name, type(exc).__name__
            )
            self._retire(slot, replaces=node)
            yield from self._failed(
                shard, f"worker died ({type(exc).__name__})", queue, attempts, slot
            )
            return
        slot.shards += 1
        self._cache[slot.serial] = out.get("cache") or {}
        self._shard_finished(shard)
        if slot.warm_ref is not None and slot.shards == 1:
            try:
                warm = ray.get(slot.warm_ref, timeout=GET_TIMEOUT_S)
            except ray.exceptions.RayError as exc:  # the shard rendered: only the log is lost
                warm = {"state": "unknown"}
                logger.info("worker %d: no kernel warm-up report (%s)", slot.serial, exc)
            if warm["state"] == "compiled":
                logger.warning(
                    "worker %d compiled Cycles %s kernels on %s in %.0f s (cached for the node)",
                    slot.serial,
                    warm["device"],
                    warm["host"],
                    warm["seconds"],
                )
            elif warm["state"] == "cached":
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
        if attempts[name] >= self.shard_attempts:
            self._shard_finished(shard)
        if attempts[name] < self.shard_attempts:
            logger.warning(
                "re-queueing %s (attempt %d of %d failed: %s)",
                name,
                attempts[name],
                self.shard_attempts,
                error,
            )
            self.requeued.append(name)
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
