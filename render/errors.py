"""Errors raised by the render half that callers are expected to catch and record.

Both carry the material ID and a human-readable reason so a failure record in
``failures.jsonl`` says which material broke and what to fix. This module is plain Python:
the planner and shard writer import it without Blender.
"""

from __future__ import annotations


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
