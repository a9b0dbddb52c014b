"""Nothing wrong leaves a session: images that did not load and renders without content raise."""

from __future__ import annotations

import pytest
from PIL import Image

from render.errors import MaterialError, RenderError

pytestmark = pytest.mark.blender


def _texture_entry(folder, basecolor: str) -> dict:
    return {
        "id": "tex-check",
        "category": "wood",
        "source": "polyhaven",
        "licence": "CC0-1.0",
        "group": "tex-check",
        "split": "train",
        "maps": {"basecolor": basecolor},
        "physical_size_m": 0.2,
    }


def test_texture_that_stops_loading_fails_the_view_instead_of_rendering_magenta(
    session, job, tmp_path
):
    import bpy

    path = tmp_path / "color.png"
    Image.effect_noise((16, 16), 60).convert("RGB").save(path)
    job["material"] = _texture_entry(tmp_path, str(path))
    session.render_view(job)  # loads and caches the material
    path.write_text("no longer an image")
    image = next(i for i in bpy.data.images if i.filepath == str(path))
    image.reload()  # what a purge and lazy reload would do: the decode now fails
    # The changed file is noticed (a new cache key): the map is read again and refused.
    with pytest.raises(MaterialError, match="did not load|not a readable image"):
        session.render_view(job)
    session.reset()


def test_undecodable_texture_map_is_a_material_error(session, job, tmp_path):
    (tmp_path / "color.png").write_text("not a png")
    job["material"] = _texture_entry(tmp_path, str(tmp_path / "color.png"))
    with pytest.raises(MaterialError, match="not a readable image"):
        session.render_view(job)
    session.reset()


def test_hdri_leaving_its_folder_and_undecodable_hdri_are_errors(session, job, tmp_path):
    (tmp_path / "lights").mkdir()
    (tmp_path / "lights" / "sky.hdr").write_text("#?RADIANCE\nnot really\n")
    session.set_base_dirs(lights_dir=tmp_path / "lights")
    job["light"] = dict(job["light"], id="hdri-sky", path="sky.hdr")
    with pytest.raises(RenderError, match="not a readable image"):
        session.render_view(job)
    job["light"] = dict(job["light"], id="hdri-up", path="../sky.hdr")
    with pytest.raises(RenderError, match="leaves the catalog's folder"):
        session.render_view(job)
    session.reset()


def test_zero_light_is_an_all_black_render_error(session, job):
    job["light_strength"] = 1e-9
    job["background"] = {"mode": "hdri"}
    with pytest.raises(RenderError, match="all black"):
        session.render_view(job)
