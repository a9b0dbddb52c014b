"""A fake session that spends a set time on every view, so a build lasts long enough to lose
or gain a node half-way. Importable by Ray workers (the tests put this folder and the pool
tests' folder on ``PYTHONPATH`` before any node starts)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

from pool_fakes import FakeSession

HERE = Path(__file__).resolve().parent
# What Ray workers and subprocesses need on PYTHONPATH to import the fakes by name.
FAKES_PATH = os.pathsep.join([str(HERE), str(HERE.parent / "pool")])


class SlowSession(FakeSession):
    def __init__(
        self, threads: int = 1, device: str = "CPU", quiet: bool = True, view_s: float = 0.3
    ) -> None:
        super().__init__(threads=threads, device=device, quiet=quiet)
        self.view_s = view_s

    def render_view(self, job: dict):
        time.sleep(self.view_s)
        return super().render_view(job)


def slow_factory(view_s: float) -> functools.partial:
    """A session factory (picklable by reference) whose views take ``view_s`` seconds."""
    return functools.partial(SlowSession, view_s=view_s)
