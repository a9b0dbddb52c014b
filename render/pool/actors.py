"""The Ray actors of the pool: ``RenderWorker`` (one Blender session for the actor's whole
life, rendering and publishing whole shards) and ``ProgressBoard`` (the small actor every
worker posts its progress to, read by the driver).

A worker reserves ``num_cpus = threads_per_worker`` (Cycles renders with exactly that many
fixed threads) and optionally ``num_gpus``; it renders with ``render.writer.render_shard``
and publishes the shard itself (rename or upload), so the driver only moves small
sidecars. Between views it asks the board how many Cycles threads it may use
(``ThreadGrant``): at the end of a build, the driver gives it the threads of its node's
idle actors. Actors are created by ``render.pool.fleet``; their plain parts (GPU session and
kernel warm-up, the progress records) are in ``render.gpu`` and ``render.progress``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import ray
import ray.exceptions

from render.gpu import kernel_cache_env, open_session, warm_kernels
from render.progress import ProgressRecords
from render.workers import SessionFactory, WatchedSession
from render.writer import render_shard

# Shard-dict key (driver -> actor): sample key -> reason, for materials that timed out on
# every attempt; the actor fails their views at once and renders the rest of the shard.
TIMED_OUT = "timed_out"

# How often a worker asks the progress board how many Cycles threads it may use (never
# waiting for the answer: it renders on with the count it has).
GRANT_POLL_S = 0.5


class ThreadGrant:
    """The Cycles threads the driver lets this actor use now: its own count, or more at the
    end of a build while other actors of its node sit idle (``RenderPool`` grants them on
    the progress board). Asking never blocks a render: the answer is picked up when it has
    arrived, and a board that cannot answer leaves the actor at its own count."""

    def __init__(self, board: Any, serial: int, own: int) -> None:
        self.board = board
        self.serial = serial
        self.own = own
        self.current = own
        self._ref: Any = None
        self._next = 0.0

    def __call__(self) -> int:
        if self._ref is not None:
            ready, _ = ray.wait([self._ref], num_returns=1, timeout=0)
            if ready:
                ref, self._ref = self._ref, None
                try:
                    self.current = int(ray.get(ref)) or self.own
                except ray.exceptions.RayError:
                    self.current = self.own
        now = time.monotonic()
        if self._ref is None and now >= self._next:
            self._next = now + GRANT_POLL_S
            self._ref = self.board.threads_for.remote(self.serial)
        return self.current


# Restarted (empty) if its node dies; the actors' handles stay valid across restarts.
ProgressBoard = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(ProgressRecords)


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
        self.threads = threads
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

        grant = None
        if self.board is not None and self.device == "CPU":
            grant = ThreadGrant(self.board, self.serial, self.threads)
        session = WatchedSession(
            self.session, skip=shard.get(TIMED_OUT), report=report, thread_grant=grant
        )
        try:
            sidecar = render_shard(
                session, shard, version_url, max_retries=max_retries, on_view=on_view
            )
        finally:
            set_threads = getattr(self.session, "set_threads", None)
            if set_threads is not None and self.session.threads != self.threads:
                set_threads(self.threads)  # the next shard starts at the actor's own count
        self.shards += 1
        stats = getattr(self.session, "cache_stats", None)
        return {
            "sidecar": sidecar,
            "rss_mb": self.session.rss_mb(),
            "cache": stats() if callable(stats) else {},
        }


RenderWorker = ray.remote(max_restarts=0, max_task_retries=0)(_Worker)
