"""The pool's actors as the driver sees them: an elastic set of ``RenderWorker`` actors.

A task is handed only to an actor that has started (its ``info`` call returned), so a
replacement actor that no node can host never holds a shard. A new actor that has not
started within ``placement_timeout_s`` is dropped with a warning naming the node it
replaced; the set is topped up again when the cluster has room (an autoscaler added a
node, or ``workers = 0`` and a node joined). An actor that died is checked against the
cluster's nodes, so a lost node is told apart from a crashed worker.

``ActorFleet`` is the half of ``RenderPool`` (``render.pool.driver``) that starts, replaces,
drops and kills actors; the driver hands them shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sized
from typing import Any

import ray
import ray.exceptions

from render.dispatch import RecentAssets, tail_threads
from render.errors import ClusterError
from render.pool.actors import ProgressBoard, RenderWorker
from render.pool.connect import first_line

logger = logging.getLogger("phieat.render")

# Bound on every driver-side ``ray.get``: results waited for are ready (or nearly), so a get
# that times out means the cluster lost them; the build goes on instead of hanging.
GET_TIMEOUT_S = 60.0
# How long a new actor may take to be placed and start before the pool drops it (seconds);
# ``PHIEAT_PLACEMENT_TIMEOUT_S`` overrides it (an autoscaler adding a node needs minutes).
DEFAULT_PLACEMENT_TIMEOUT_S = 300.0
# How often the driver compares the pool with the cluster (lost nodes, room for actors).
CHECK_EVERY_S = 1.0


class Slot:
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
        # Mesh, light and material IDs of the shards given to this actor (its caches).
        self.recent = RecentAssets()


class ActorFleet:
    """Start, watch and retire the pool's actors.

    The subclass sets ``factory``, ``threads``, ``gpus``, ``quiet``, ``kernel_cache``,
    ``workers``, ``auto_workers``, ``placement_timeout_s``, ``poll_s``, ``tail_threads``
    and ``_in_flight`` (ref -> (slot, shard, start)), then calls ``_start_actors``.
    """

    def _grant_tail_threads(self, queue: Sized, end: bool = False) -> None:
        """Once nothing is queued, busy actors get the threads of their node's idle ones
        (``render.dispatch.tail_threads``); taken back when a shard is queued again and at
        the end of the run (``end``). Sent to the board only when a grant changes."""
        wanted: dict[int, int] = {}
        if self.tail_threads and not self.gpus and not queue and not end:
            busy = {id(slot) for slot, _, _ in self._in_flight.values()}
            actors = [
                (slot.serial, str(slot.info.get("node_id", "")), id(slot) in busy)
                for slot in self._slots
                if slot.info is not None
            ]
            wanted = tail_threads(actors, self.threads)
        if self._board is not None:
            for serial in sorted(set(self._granted) | set(wanted)):
                if self._granted.get(serial, 0) != wanted.get(serial, 0):
                    self._board.grant.remote(serial, wanted.get(serial, 0))  # in order
        self._granted = wanted if self._board is not None else {}

    def _start_actors(self, workers: int) -> None:
        self._serial = 0
        # Always there: views done feed the progress; stuck views feed material_timeout_s.
        self._board = ProgressBoard.remote()
        # Actor serial -> (progress record seq, driver time it was first seen).
        self._seen: dict[int, tuple[int, float]] = {}
        self._slots: list[Slot] = [self._new_slot() for _ in range(workers)]
        # Of the last run: lost node -> shards re-queued from it.
        self.lost_nodes: dict[str, list[str]] = {}
        # Nodes whose actor died while the node still looked alive: checked again later.
        self._suspects: dict[str, list[str]] = {}
        self._node_names: dict[str, str] = {}
        self._next_check = 0.0
        self._last_probe = time.monotonic()
        self._dropped = 0

    def _fitting_workers(self) -> int:
        """How many actors the cluster's resources hold (alive nodes only)."""
        total = ray.cluster_resources()
        workers = int(total.get("CPU", 0) // self.threads)
        if self.gpus:
            workers = min(workers, int(total.get("GPU", 0) // self.gpus))
        return workers

    def _target(self) -> int:
        return max(1, self._fitting_workers()) if self.auto_workers else self.workers

    def _new_slot(self, replaces: str = "") -> Slot:
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
        return Slot(actor, actor.info.remote(), self._serial, replaces)

    def _retire(self, slot: Slot, replace: bool = True, replaces: str = "") -> None:
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
                            f"render worker {slot.serial} failed to start: {first_line(exc)}"
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
                    logger.warning("worker %d did not start: %s", slot.serial, first_line(exc))
                continue
            if now - slot.created > self.placement_timeout_s:
                self._drop(slot)

    def _drop(self, slot: Slot) -> None:
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

    def _lost_node(self, slot: Slot, exc: BaseException) -> str:
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

    def close(self) -> None:
        for slot in list(self._slots):
            ray.kill(slot.actor, no_restart=True)
        self._slots.clear()
        if self._board is not None:
            ray.kill(self._board, no_restart=True)
            self._board = None
