"""Progress of a pool run, per view: the ray-free bookkeeping behind ``render.pool``.

``ProgressRecords`` is the body of the pool's small progress actor: the latest record of
every worker (which view it is rendering, for material timeouts), how many views of its
current shard each has rendered, and the Cycles threads the driver lets each use for now
(more than its own at the end of a build, when other actors of its node sit idle).
``ViewProgress`` turns finished shards plus views of shards in flight into images done,
images/s and an ETA (a tqdm bar, and the log line the pool prints).
"""

from __future__ import annotations

import sys
import time


class ProgressRecords:
    """The latest progress record of every actor (by its serial), read by the driver, and
    how many views of its current shard each actor has rendered."""

    def __init__(self) -> None:
        self.records: dict[int, dict] = {}
        self.done: dict[int, tuple[str, int]] = {}
        self.threads: dict[int, int] = {}

    def report(self, serial: int, record: dict) -> None:
        self.records[serial] = record

    def read(self) -> dict[int, dict]:
        return self.records

    def view(self, serial: int, shard: str, done: int) -> None:
        self.done[serial] = (shard, done)

    def views(self) -> dict[int, tuple[str, int]]:
        return self.done

    def grant(self, serial: int, threads: int) -> None:
        """Let actor ``serial`` render with ``threads`` Cycles threads (0: its own count)."""
        if threads > 0:
            self.threads[serial] = int(threads)
        else:
            self.threads.pop(serial, None)

    def threads_for(self, serial: int) -> int:
        """The threads granted to actor ``serial``; 0 when it should use its own count."""
        return self.threads.get(serial, 0)


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
