"""Errors raised by the render half that callers are expected to catch and record.

``MaterialError`` and ``RenderError`` carry the material ID and a human-readable reason so a
failure record in ``failures.jsonl`` says which material broke and what to fix.
``ClusterError`` says why Ray cannot run a build; ``BuildStopped`` is a clean stop on
SIGTERM/SIGINT. ``SpecError`` and ``PlanError`` reject a spec or catalogs that cannot be used
(``render.spec`` and ``render.plan`` re-export them). This module is plain Python: the
planner and shard writer import it without Blender or Ray.
"""

from __future__ import annotations

import signal


class SpecError(ValueError):
    """A dataset spec that cannot be used; the message names the file and key to fix."""


class PlanError(ValueError):
    """Catalogs or a spec that cannot be planned; the message names the file or key."""


class MaterialError(RuntimeError):
    """A material cannot be built: missing or corrupt texture, unknown family, bad params."""

    def __init__(self, material_id: str, reason: str) -> None:
        self.material_id = material_id
        self.reason = reason
        super().__init__(f"material {material_id!r}: {reason}")

    def __reduce__(self):  # keep the two-argument signature picklable across processes
        return (type(self), (self.material_id, self.reason))


class RenderError(RuntimeError):
    """Blender failed to render a view (bad job, device missing, engine error)."""

    def __init__(self, material_id: str, reason: str) -> None:
        self.material_id = material_id
        self.reason = reason
        super().__init__(f"render of material {material_id!r} failed: {reason}")

    def __reduce__(self):
        return (type(self), (self.material_id, self.reason))


class BuildStopped(KeyboardInterrupt):
    """The program got SIGTERM or SIGINT and is stopping cleanly.

    A ``KeyboardInterrupt`` so that every ``finally`` on the way out runs as for Ctrl-C:
    shards in flight are abandoned, the dataset lock is released, published shards stay.
    ``exit_code`` is the shell's convention, 128 + the signal number (143, 130).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"stopped by {self.signal_name}")

    def __reduce__(self):
        return (type(self), (self.signum,))


class ClusterError(RuntimeError):
    """Ray cannot run the build as asked: no connection, no token, no node can host a worker.

    The message names what to change (an option, an environment variable, a node to add).
    """
