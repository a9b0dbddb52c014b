"""Contact sheets of the asset library: view jobs for previews and the grid image.

``material_jobs`` / ``mesh_jobs`` / ``light_jobs`` make ordinary view jobs (the format
``render.blender.session.BlenderSession.render_view`` consumes) that show each entry in a
fixed, neutral setting: materials on a sphere under one HDRI, meshes in grey clay, lights
on a chrome and a diffuse ball. ``contact_sheet`` pastes the rendered tiles into a
labelled grid and writes a PNG atomically. Only ``assets preview`` (the CLI) starts Blender.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PREVIEW_SPHERE = {
    "id": "preview-sphere",
    "kind": "primitive",
    "params": {"shape": "uv_sphere", "detail": 3},
    "size_m": 0.15,
    "group": "preview-sphere",
    "split": "train",
    "licence": "CC0-1.0",
}
PREVIEW_LIGHT = {
    "id": "hdri-interior",
    "kind": "hdri",
    "path": "bpy:studiolights/world/interior.exr",
    "params": {},
    "group": "hdri-interior",
    "split": "train",
    "licence": "CC0-1.0",
}
CLAY = {
    "id": "preview-clay",
    "category": "plaster",
    "source": "procedural",
    "family": "uniform",
    "params": {"base_color": [0.45, 0.45, 0.45], "roughness": 0.55},
    "group": "preview-clay",
    "split": "train",
    "licence": "CC0-1.0",
}
CHROME = dict(
    CLAY,
    id="preview-chrome",
    params={"base_color": [0.9, 0.9, 0.9], "metallic": 1.0, "roughness": 0.02},
)


def _job(
    material: dict,
    mesh: dict,
    light: dict,
    size: int,
    samples: int,
    key: str,
    distance: float = 3.4,
    rotation: float = 60.0,
) -> dict:
    return {
        "key": f"{key}__g0000",
        "view": 0,
        "material": material,
        "mesh": mesh,
        "light": light,
        "light_rotation": rotation,
        "light_strength": 1.0,
        "camera": {"distance": distance, "elevation": 20.0, "azimuth": 0.0, "lens_mm": 50.0},
        "background": {"mode": "plain", "color": [0.18, 0.18, 0.18]},
        "render": {
            "resolution": size,
            "samples": samples,
            "denoise": True,
            "bounces": 4,
            "view_transform": "AgX",
            "image_format": "png",
            "passes": [],
        },
        "seed": 0,
    }


def material_jobs(
    materials: Sequence[dict], size: int = 96, samples: int = 16, light: dict | None = None
) -> list[dict]:
    """One job per material: the material on a 15 cm sphere under an interior HDRI."""
    return [
        _job(m, PREVIEW_SPHERE, light or PREVIEW_LIGHT, size, samples, m["id"]) for m in materials
    ]


def mesh_jobs(meshes: Sequence[dict], size: int = 96, samples: int = 16) -> list[dict]:
    """One job per mesh: grey clay under an interior HDRI."""
    return [_job(CLAY, m, PREVIEW_LIGHT, size, samples, m["id"], distance=2.6) for m in meshes]


def light_jobs(lights: Sequence[dict], size: int = 96, samples: int = 16) -> list[list[dict]]:
    """Two jobs per light (chrome ball, diffuse ball), shown side by side in one cell."""
    out = []
    for light in lights:
        pair = []
        for mat in (CHROME, CLAY):
            job = _job(
                mat, PREVIEW_SPHERE, light, size, samples, mat["id"], distance=3.2, rotation=0.0
            )
            job["background"] = {"mode": "hdri"}
            pair.append(job)
        out.append(pair)
    return out


def contact_sheet(
    tiles: Sequence[tuple[Sequence[bytes], str]], out: str | Path, columns: int = 8, tile: int = 96
) -> Path:
    """Paste tiles (each one or more encoded images side by side + a label) into a grid PNG."""
    if not tiles:
        raise ValueError("contact sheet needs at least one tile")
    per = max(len(images) for images, _ in tiles)
    cell_w = tile * per
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * tile), (24, 24, 24))
    font = ImageFont.load_default()
    for i, (images, label) in enumerate(tiles):
        x0, y0 = (i % columns) * cell_w, (i // columns) * tile
        for j, data in enumerate(images):
            img = Image.open(io.BytesIO(data)).convert("RGB").resize((tile, tile), Image.LANCZOS)
            sheet.paste(img, (x0 + j * tile, y0))
        draw = ImageDraw.Draw(sheet)
        text = label[: max(4, cell_w // 6)]  # the default font is ~6 px per character
        draw.rectangle((x0, y0 + tile - 12, x0 + cell_w, y0 + tile), fill=(0, 0, 0))
        draw.text((x0 + 2, y0 + tile - 12), text, fill=(235, 235, 235), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    sheet.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)
    return out
