"""What a renderer pool is made of, shared by the build and the Ray pool (``render.pool``).

* ``Pool``: the protocol of a pool (``run`` shard plans, yield a ``ShardOutcome`` each);
* ``blender_session_factory`` / ``SessionFactory``: how a worker opens its Blender session;
* ``WatchedSession``: a session whose views are timed and reported (material timeouts);
* ``should_recycle``: when a worker starts a fresh session (shards done, memory);
* ``sum_cache_stats`` / ``format_cache_stats``: the workers' cache counts, added up;
* ``LocalPool``: shards one after another in this process (``--local``).

The build (``render.build``) drives any ``Pool``; ``render.pool`` builds its actors from these
parts, so neither of the two imports the other at module level.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from render import storage
from render.errors import RenderError
from render.writer import Session, render_shard

logger = logging.getLogger("phieat.render")


SessionFactory = Callable[..., Session]


def blender_session_factory(threads: int = 1, device: str = "CPU", quiet: bool = True) -> Session:
    """Open a real Blender session (imports bpy: call it only inside a worker process)."""
    from render.blender.session import BlenderSession

    return BlenderSession(threads=threads, device=device, quiet=quiet)


@dataclass
class ShardOutcome:
    """What became of one shard task: its sidecar, or the error after the last attempt."""

    name: str
    sidecar: dict | None
    error: str | None = None
    attempts: int = 1
    worker: str = ""


class Pool(Protocol):
    """A renderer pool: ``render.pool.RenderPool`` (Ray) or ``LocalPool`` (this process).

    After ``run``: ``lost_nodes`` maps each node lost during the run to the shards re-queued
    from it, and ``requeued`` lists every shard re-queued on another worker (lost node,
    crashed worker, timeout), once per re-queue.
    """

    lost_nodes: dict[str, list[str]]
    requeued: list[str]

    @property
    def blender_version(self) -> str: ...

    def check_output(self, url: str) -> None: ...

    def run(
        self, shards: list[dict], version_url: str, max_retries: int
    ) -> Iterator[ShardOutcome]: ...

    def close(self) -> None: ...


def should_recycle(shards_done: int, rss_mb: float, after_shards: int, max_rss_mb: float) -> bool:
    """Whether a render session should be replaced: after ``after_shards`` shards or above
    ``max_rss_mb`` resident memory (0 switches either rule off)."""
    return bool(after_shards and shards_done >= after_shards) or bool(
        max_rss_mb and rss_mb > max_rss_mb
    )


class WatchedSession:
    """A session wrapper that enforces ``[build].material_timeout_s`` and reports progress.

    * ``skip``: sample key -> reason. Views of these samples fail at once with
      ``RenderError(reason)`` and are not rendered (a material that timed out on every
      attempt), so ``render_shard`` records the sample in the shard's failures and renders
      the rest of the shard.
    * ``report``: called with ``{"key", "material_id", "view", "state"}`` before
      (``"rendering"``) and after (``"idle"``) every view, so a watcher in another process can
      tell which material a stuck worker is on.
    * ``limit_s``: a view that took longer fails with ``"timeout after N s"`` when it returns
      (this process cannot interrupt Cycles; the Ray pool stops a stuck worker instead).
    * ``thread_grant``: called before every view; a positive answer other than the session's
      thread count is passed to its ``set_threads`` (the pool widens an actor at the end of
      a build while others of its node are idle). Sessions without ``set_threads`` ignore it.

    Everything else (``reset``, ``rss_mb``, ``blender_version``, ...) goes to the session.
    """

    def __init__(
        self,
        session: Session,
        skip: dict[str, str] | None = None,
        report: Callable[[dict], None] | None = None,
        limit_s: float = 0.0,
        thread_grant: Callable[[], int] | None = None,
    ) -> None:
        self.session = session
        self.skip = dict(skip or {})
        self.report = report
        self.limit_s = limit_s
        self.thread_grant = thread_grant

    def __getattr__(self, name: str) -> Any:
        if name == "session":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.session, name)

    def render_view(self, job: dict) -> Any:
        key, material_id = job["key"], str(job["material"]["id"])
        if key in self.skip:
            raise RenderError(material_id, self.skip[key])
        if self.thread_grant is not None:
            wanted = int(self.thread_grant())
            set_threads = getattr(self.session, "set_threads", None)
            if wanted > 0 and set_threads is not None and wanted != self.session.threads:
                set_threads(wanted)
        record = {"key": key, "material_id": material_id, "view": job.get("view")}
        if self.report is not None:
            self.report({**record, "state": "rendering"})
        started = time.monotonic()
        try:
            view = self.session.render_view(job)
        finally:
            if self.report is not None:
                self.report({**record, "state": "idle"})
        took = time.monotonic() - started
        if self.limit_s and took > self.limit_s:
            raise RenderError(
                material_id,
                f"timeout after {self.limit_s:g} s (view {job.get('view')} took {took:.1f} s)",
            )
        return view


def sum_cache_stats(per_actor: list[dict[str, dict]]) -> dict[str, dict[str, float]]:
    """Add up ``cache_stats()`` of several sessions, cache by cache and count by count."""
    total: dict[str, dict[str, float]] = {}
    for stats in per_actor:
        for cache, counts in stats.items():
            into = total.setdefault(cache, {})
            for name, value in counts.items():
                into[name] = round(into.get(name, 0) + value, 1)
    return total


def format_cache_stats(stats: dict[str, dict[str, float]]) -> str:
    """One line: hits / lookups (hit rate) of every cache, e.g. ``meshes 40/50 (80 %)``."""
    parts = []
    for cache, counts in stats.items():
        hits, misses = int(counts.get("hits", 0)), int(counts.get("misses", 0))
        lookups = hits + misses
        rate = f" ({100.0 * hits / lookups:.0f} %)" if lookups else ""
        name = "mesh disk" if cache == "mesh_disk" else cache
        extra = f", {int(counts['writes'])} written" if cache == "mesh_disk" else ""
        if counts.get("evictions"):
            extra += f", {int(counts['evictions'])} evicted"
        parts.append(f"{name} {hits}/{lookups} hits{rate}{extra}")
    return "; ".join(parts)


class LocalPool:
    """Render shards one after another in this process (``--local``; debugging, tiny sets).

    Counts attempts like the Ray pool: an exception other than a material failure costs the
    shard one attempt and a fresh session; after ``shard_attempts`` the shard is reported
    failed. The session is recycled after ``recycle_after_shards`` shards. A view that took
    longer than ``material_timeout_s`` counts as a failed attempt of its material, checked
    when the view returns: unlike the Ray pool, this process cannot stop a render that never
    returns.
    """

    def __init__(
        self,
        session_factory: SessionFactory = blender_session_factory,
        threads: int = 1,
        quiet: bool = True,
        shard_attempts: int = 3,
        recycle_after_shards: int = 0,
        max_rss_mb: float = 0.0,
        material_timeout_s: float = 0.0,
    ) -> None:
        self.factory = session_factory
        self.material_timeout_s = material_timeout_s
        self.threads = threads
        self.quiet = quiet
        self.shard_attempts = shard_attempts
        self.recycle_after_shards = recycle_after_shards
        self.max_rss_mb = max_rss_mb
        self._session: Session | None = None
        self._shards_done = 0
        self.lost_nodes: dict[str, list[str]] = {}
        self.requeued: list[str] = []
        self.on_view: Callable[[int], None] | None = None
        # Cache counts of each session this pool opened, by the order it opened them: a
        # recycled session's counts stay (an id() could be reused by the next session).
        self._cache: dict[int, dict] = {}
        self._sessions_opened = 0

    def _get(self) -> Session:
        if self._session is None:
            self._session = self.factory(threads=self.threads, device="CPU", quiet=self.quiet)
            self._shards_done = 0
            self._sessions_opened += 1
        return self._session

    @property
    def blender_version(self) -> str:
        return self._get().blender_version

    def check_output(self, url: str) -> None:
        storage.url_to_fs(url)

    def run(self, shards: list[dict], version_url: str, max_retries: int) -> Iterator[ShardOutcome]:
        for shard in shards:
            for attempt in range(1, self.shard_attempts + 1):
                try:
                    session = WatchedSession(self._get(), limit_s=self.material_timeout_s)
                    sidecar = render_shard(
                        session, shard, version_url, max_retries=max_retries, on_view=self.on_view
                    )
                except Exception as exc:  # noqa: BLE001 - any crash costs one attempt
                    error = f"{type(exc).__name__}: {exc}"
                    logger.warning("%s attempt %d failed: %s", shard["name"], attempt, error)
                    self._session = None
                    if attempt == self.shard_attempts:
                        yield ShardOutcome(
                            shard["name"], None, error, attempt, f"pid {os.getpid()}"
                        )
                    continue
                self._shards_done += 1
                stats = getattr(self._session, "cache_stats", None)
                if callable(stats):
                    self._cache[self._sessions_opened] = stats()
                yield ShardOutcome(shard["name"], sidecar, None, attempt, f"pid {os.getpid()}")
                rss = self._session.rss_mb() if self._session else 0.0
                if should_recycle(
                    self._shards_done, rss, self.recycle_after_shards, self.max_rss_mb
                ):
                    logger.info(
                        "recycling the local session after %d shards (%.0f MB)",
                        self._shards_done,
                        rss,
                    )
                    self._session = None
                break

    def cache_summary(self) -> str:
        """Cache hit rates of this run's sessions (a recycled one counts with its last shard)."""
        return format_cache_stats(sum_cache_stats(list(self._cache.values())))

    def close(self) -> None:
        self._session = None
