"""``phieat-render assets preview`` renders a labelled contact sheet from a catalog."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from assets import catalog as cat
from assets import families
from render.cli import main as render_main

pytestmark = pytest.mark.blender


def preview(argv: list[str]) -> int:
    return render_main(["assets", *argv])


@pytest.mark.slow
def test_preview_writes_a_grid(tmp_path, session, job):
    path = cat.write_catalog(
        tmp_path / "materials.jsonl", families.generate(4, ["wood", "marble", "fabric"])
    )
    out = tmp_path / "sheet.png"
    args = [
        "preview",
        "--catalog",
        str(path),
        "-n",
        "3",
        "--tile",
        "32",
        "--samples",
        "2",
        "--columns",
        "3",
        "-o",
        str(out),
    ]
    assert preview(args) == 0
    sheet = Image.open(out)
    assert sheet.size == (96, 32)
    # Three different materials: the three tiles differ.
    pixels = np.asarray(sheet.convert("RGB")).astype(float)
    means = [pixels[:20, 32 * i : 32 * i + 32].mean() for i in range(3)]
    assert len({round(m) for m in means}) == 3
    # The preview made its own session; the shared one keeps working afterwards.
    assert session.render_view(job).image


@pytest.mark.slow
def test_preview_of_lights_and_meshes(tmp_path, session):
    from assets import lights, meshes

    light_cat = cat.write_catalog(tmp_path / "lights.jsonl", lights.builtin_lights()[:2])
    mesh_cat = cat.write_catalog(tmp_path / "meshes.jsonl", meshes.builtin_meshes()[:2])
    common = ["--tile", "32", "--samples", "2", "--columns", "2"]
    assert (
        preview(
            [
                "preview",
                "--kind",
                "lights",
                "--catalog",
                str(light_cat),
                "-o",
                str(tmp_path / "l.png"),
                *common,
            ]
        )
        == 0
    )
    assert (
        preview(
            [
                "preview",
                "--kind",
                "meshes",
                "--catalog",
                str(mesh_cat),
                "-o",
                str(tmp_path / "m.png"),
                *common,
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "l.png").size == (2 * 64, 32)  # chrome + diffuse ball per light
    assert Image.open(tmp_path / "m.png").size == (64, 32)
