"""The end of a build: busy actors take over the Cycles threads of their node's idle ones
(``RenderPool._grant_tail_threads``, the progress board's grants, ``WatchedSession``), without
Ray or Blender."""

from __future__ import annotations

from collections import deque

import pytest

pytest.importorskip("ray")

from render.pool.driver import RenderPool  # noqa: E402
from render.pool.fleet import Slot  # noqa: E402
from render.progress import ProgressRecords  # noqa: E402
from render.workers import WatchedSession  # noqa: E402


class Board:
    """The progress board's ``grant`` as a recording remote call."""

    def __init__(self) -> None:
        self.records = ProgressRecords()
        self.calls: list[tuple[int, int]] = []
        board = self

        class _Grant:
            @staticmethod
            def remote(serial: int, threads: int) -> None:
                board.calls.append((serial, threads))
                board.records.grant(serial, threads)

        self.grant = _Grant()


def pool(slots: list[Slot], busy: list[Slot], threads: int = 1, gpus: float = 0.0) -> RenderPool:
    """A driver without Ray: only what ``_grant_tail_threads`` reads."""
    p = RenderPool.__new__(RenderPool)
    p.tail_threads, p.gpus, p.threads = True, gpus, threads
    p._granted, p._board, p._slots = {}, Board(), slots
    p._in_flight = {f"ref{i}": (slot, {"name": f"s{i}"}, 0.0) for i, slot in enumerate(busy)}
    return p


def slot(serial: int, node: str = "n1", started: bool = True) -> Slot:
    s = Slot(actor=None, info_ref=None, serial=serial)
    s.info = {"node_id": node, "pid": 1000 + serial} if started else None
    return s


def test_idle_threads_go_to_the_busy_actors_of_the_same_node_only_once_nothing_is_queued():
    a, b, c, d = slot(0), slot(1), slot(2), slot(3, node="n2")
    p = pool([a, b, c, d], busy=[a, d])
    p._grant_tail_threads(deque([{"name": "queued"}]))
    assert p._board.calls == []  # shards still queued: every actor at its own count
    p._grant_tail_threads(deque())
    # a gets b's and c's threads; d has no idle neighbour on n2.
    assert p._board.calls == [(0, 3)]
    assert p._board.records.threads_for(0) == 3 and p._board.records.threads_for(3) == 0
    p._grant_tail_threads(deque())
    assert p._board.calls == [(0, 3)]  # unchanged: nothing sent again


def test_spare_threads_are_split_evenly_and_taken_back():
    a, b, c = slot(0), slot(1), slot(2)
    p = pool([a, b, c], busy=[a, b], threads=2)
    p._grant_tail_threads(deque())
    assert p._board.calls == [(0, 3), (1, 3)]  # c's 2 threads, one each
    # A shard is queued again (a failure put it back): the grants are taken back at once.
    p._grant_tail_threads(deque([{"name": "again"}]))
    assert p._board.calls[2:] == [(0, 0), (1, 0)]
    assert p._board.records.threads == {}


def test_actors_still_starting_give_nothing_and_grants_end_with_the_run():
    a, b = slot(0), slot(1, started=False)
    p = pool([a, b], busy=[a])
    p._grant_tail_threads(deque())
    assert p._board.calls == []  # b holds no session yet: its cores are not idle
    b.info = {"node_id": "n1", "pid": 1001}
    p._grant_tail_threads(deque())
    assert p._board.calls == [(0, 2)]
    p._grant_tail_threads(deque(), end=True)
    assert p._board.calls[-1] == (0, 0) and p._granted == {}


def test_gpu_pools_and_tail_threads_off_never_grant():
    a, b = slot(0), slot(1)
    p = pool([a, b], busy=[a], gpus=1.0)
    p._grant_tail_threads(deque())
    q = pool([a, b], busy=[a])
    q.tail_threads = False
    q._grant_tail_threads(deque())
    assert p._board.calls == [] and q._board.calls == []


class CountingSession:
    def __init__(self) -> None:
        self.threads = 1
        self.rendered: list[int] = []

    def set_threads(self, threads: int) -> None:
        self.threads = threads

    def render_view(self, job: dict) -> dict:
        self.rendered.append(self.threads)
        return {}


def test_a_watched_session_renders_each_view_with_the_granted_threads():
    session = CountingSession()
    grants = iter([0, 2, 2, 0, 3])  # 0: no grant, the session keeps its count
    watched = WatchedSession(session, thread_grant=lambda: next(grants))
    job = {"key": "k", "material": {"id": "m"}, "view": 0}
    for _ in range(5):
        watched.render_view(job)
    assert session.rendered == [1, 2, 2, 2, 3]
