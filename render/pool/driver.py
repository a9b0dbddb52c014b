"""``RenderPool``: the driver that hands shards to the pool's actors and counts attempts.

The driver counts attempts itself: actors are created with ``max_restarts=0`` and no task
retries (Ray's own retry would replay a shard that crashes its actor until the actor is
dead for good). A shard whose actor died, raised or ran past ``shard_timeout_s`` is
re-queued until ``shard_attempts`` is spent; one lost with its node goes back to the front
of the queue without using an attempt (at most ``MAX_NODE_LOSSES`` times); a material stuck
past ``material_timeout_s`` is retried, then left out of its shard (``TIMED_OUT``). Views
done are read from the progress actor about once every ``PROGRESS_POLL_S`` and logged every
``PROGRESS_LOG_S``. A free actor gets the queued shard that shares the most meshes, lights
and materials with the shards it rendered last (``render.dispatch``; ``affinity=False``:
strict queue order). Once nothing is queued, the busy actors of a node render with the
threads of its idle ones (granted on the progress board, taken back when a shard is queued
again; ``tail_threads=False``: never), so the end of a build does not wait on one actor's
last shard at its own thread count. The actors themselves are managed by ``ActorFleet``
(``render.pool.fleet``); see ``render.pool`` for the whole policy.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from render import storage
from render.dispatch import ShardAssets, pick_shard
from render.errors import ClusterError
from render.gpu import DEFAULT_KERNEL_CACHE
from render.pool.actors import TIMED_OUT
from render.pool.connect import ensure_ray
from render.pool.fleet import (
    CHECK_EVERY_S,
    DEFAULT_PLACEMENT_TIMEOUT_S,
    GET_TIMEOUT_S,
    ActorFleet,
    Slot,
)
from render.progress import ViewProgress
from render.workers import (
    SessionFactory,
    ShardOutcome,
    blender_session_factory,
    format_cache_stats,
    should_recycle,
    sum_cache_stats,
)

logger = logging.getLogger("phieat.render")

# A shard re-queued this many times for lost nodes without an attempt charged; after that a
# loss counts as a failed attempt (a shard that takes its node down must not loop forever).
MAX_NODE_LOSSES = 5
# How often the driver asks the progress actor for views done, and logs a progress line.
PROGRESS_POLL_S = 1.0
PROGRESS_LOG_S = 30.0


class RenderPool(ActorFleet):
    """Ray actors rendering shards; see ``render.pool`` for the failure policy."""

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
        affinity: bool = True,
        tail_threads: bool = True,
    ) -> None:
        ensure_ray(address, verbose=not quiet)
        # At the end of a run, busy actors take over the cores of their node's idle ones.
        self.tail_threads = tail_threads
        self._granted: dict[int, int] = {}
        # Cache-affine dispatch (see render.dispatch): which actor renders a shard, never
        # what the shard holds, so the published bytes are the same either way.
        self.affinity = affinity
        self._assets = ShardAssets()
        self._front: set[str] = set()  # re-queued shards: they go first, in queue order
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
        self._start_actors(workers)
        self._in_flight: dict[Any, tuple[Slot, dict, float]] = {}
        self.crashes = 0
        self.recycled = 0
        # Of the last run: every re-queued shard (lost nodes are in ``lost_nodes``).
        self.requeued: list[str] = []
        self._node_losses: dict[str, int] = {}
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
        self._cache, self._views_ref, self._views_done, self._front = {}, None, {}, set()
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
                    shard = self._next_shard(queue, slot)
                    ref = slot.actor.render.remote(shard, version_url, max_retries)
                    self._in_flight[ref] = (slot, shard, time.monotonic())
                    if self.on_submit is not None:
                        self.on_submit(shard["name"], slot.info["pid"])
                self._grant_tail_threads(queue)
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
            self._grant_tail_threads(queue, end=True)
            self.progress.close()
            # Abandoned (driver interrupted): stop the actors, and wait until they are gone so
            # no shard is published behind the back of a build that starts next.
            pending = list(self._in_flight)
            for slot, _, _ in list(self._in_flight.values()):
                self._retire(slot, replace=False)
            self._in_flight.clear()
            if pending:
                ray.wait(pending, num_returns=len(pending), timeout=30)

    def _put_back(self, queue: deque, shard: dict) -> None:
        """Re-queue ``shard`` at the front: the next free actor takes it, affinity or not."""
        self._front.add(shard["name"])
        queue.appendleft(shard)

    def _next_shard(self, queue: deque, slot: Slot) -> dict:
        """Take the shard ``slot`` renders next off ``queue`` (the head without affinity)."""
        if not self.affinity or queue[0]["name"] in self._front:
            self._front.discard(queue[0]["name"])
            return queue.popleft()
        i = pick_shard(queue, slot.recent, self._assets)
        shard = queue[i]
        del queue[i]
        slot.recent.add(self._assets(shard))
        return shard

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
                self._put_back(queue, shard)
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
        self, shard: dict, error: str, queue: deque, attempts: dict[str, int], slot: Slot
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
            self._put_back(queue, shard)
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
            self._put_back(queue, shard)
