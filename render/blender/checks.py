"""Checks that keep a broken view from being published.

Two moments: before Cycles starts, ``check_images`` refuses a scene whose texture maps or
HDRI hold no pixels (Blender would draw them magenta and carry on); after the render,
``image_problem`` says why a linear image must not be published (NaN, all black, one flat
colour). ``BlenderSession.render_view`` runs both and raises ``MaterialError`` /
``RenderError``, which the shard writer records in ``failures.jsonl`` with the reason.
"""

from __future__ import annotations

import bpy
import numpy as np

from render.blender import lights
from render.errors import MaterialError, RenderError

# The image check before a view is encoded (linear values): a render whose brightest value
# stays under BLACK_LEVEL (about half an 8-bit sRGB step) is black, one whose every channel
# varies by at most FLAT_SPREAD over the image (after clipping to 0..1) is one flat colour.
BLACK_LEVEL = 1.5e-4
FLAT_SPREAD = 1e-3


def image_problem(rgb: np.ndarray) -> str | None:
    """Why a linear (H, W, 3) render must not be published, or ``None`` if it looks like one.

    Cheap (a few passes over the pixels): NaN or infinite values, an all-black image (a light
    of zero strength, an exposure gone wrong) and an image of one flat colour (a camera
    inside the object, an overexposed frame) are failures, never samples.
    """
    finite = np.isfinite(rgb)
    if not finite.all():
        bad = int((~finite).any(axis=-1).sum())
        return f"the render has NaN or infinite values in {bad} of {rgb.shape[0] * rgb.shape[1]} pixels"
    if float(rgb.max(initial=0.0)) <= BLACK_LEVEL:
        return "the render is all black"
    clipped = np.clip(rgb, 0.0, 1.0)
    spread = float((clipped.max(axis=(0, 1)) - clipped.min(axis=(0, 1))).max())
    if spread <= FLAT_SPREAD:
        colour = ", ".join(f"{c:.3f}" for c in clipped.reshape(-1, 3)[0])
        return f"the render is one flat colour (linear {colour}): no object is visible"
    return None


def check_images(scene: bpy.types.Scene, material_id: str) -> None:
    """Refuse to render when an image the scene uses holds no pixels: Blender would draw
    a missing or undecodable texture map or HDRI in magenta and carry on."""
    for obj in scene.objects:
        for slot in obj.material_slots:
            mat = slot.material
            if mat is None or mat.node_tree is None:
                continue
            for path in _unloaded_images(mat.node_tree):
                raise MaterialError(
                    material_id,
                    f"texture {path} of material {mat.name!r} did not load "
                    "(missing or undecodable file)",
                )
    world = scene.world
    if world is not None and world.node_tree is not None:
        for path in _unloaded_images(world.node_tree):
            raise RenderError(
                material_id, f"HDRI {path} did not load (missing or undecodable file)"
            )


def _unloaded_images(tree: bpy.types.NodeTree, seen: set | None = None) -> list[str]:
    """File paths of the images in ``tree`` (and its node groups) that hold no pixels."""
    seen = set() if seen is None else seen
    out = []
    for node in tree.nodes:
        group = getattr(node, "node_tree", None)
        if node.type == "GROUP" and group is not None and group.name not in seen:
            seen.add(group.name)
            out.extend(_unloaded_images(group, seen))
        image = getattr(node, "image", None)
        if image is not None and image.source == "FILE" and not lights.image_loaded(image):
            out.append(image.filepath or image.name)
    return out
