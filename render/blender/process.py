"""Process-level helpers of a Blender worker: silence the C-level output, give heap back.

Cycles and Blender's operators print from C straight to the process's stdout/stderr file
descriptors, so ``silenced`` redirects the descriptors themselves (not ``sys.stdout``);
``BlenderSession`` renders and ``bake`` bakes inside it. ``release_heap`` returns freed heap
pages to the OS after the purge between shards, so a long-lived worker's memory does not creep.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Iterator

logger = logging.getLogger("phieat.render")


@contextlib.contextmanager
def silenced(active: bool) -> Iterator[None]:
    """Redirect the process's stdout/stderr file descriptors (Cycles prints from C)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def release_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise; RSS would creep)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("malloc_trim is not available on this libc")
