"""Procedural materials baked into MatSynth / ambientCG / Poly Haven sets load back correctly."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from assets import families, texsets
from render.errors import MaterialError

pytestmark = pytest.mark.blender

CASES = [("wood", 4, "matsynth"), ("marble", 8, "ambientcg"), ("terracotta", 4, "polyhaven")]


@pytest.fixture(scope="module")
def baked(tmp_path_factory, session):
    from render.blender.bake import bake_texture_set

    root = tmp_path_factory.mktemp("sets")
    out = {}
    for family, seed, layout in CASES:
        entry = families.material_entry(family, seed)
        folder = root / layout
        maps = bake_texture_set(
            entry, folder, layout, size=48, tile_m=0.15, name=family.replace("-", "_")
        )
        out[layout] = (entry, folder, maps)
    dx_entry = families.material_entry("marble", 8)
    bake_texture_set(
        dx_entry, root / "dx", "ambientcg", size=48, tile_m=0.15, name="marble", directx=True
    )
    out["dx"] = (dx_entry, root / "dx", None)
    metal = families.material_entry("metal-oxidised", 4)
    out["metal"] = (
        metal,
        root / "metal",
        bake_texture_set(
            metal, root / "metal", "polyhaven", size=48, tile_m=0.15, name="rusty_metal"
        ),
    )
    return out


def _render(session, job, entry):
    job["material"] = entry
    job["mesh"]["size_m"] = 0.15
    job["background"] = {"mode": "plain", "color": [0.0, 0.0, 0.0]}
    job["render"].update(resolution=48, samples=8, passes=["mask"])
    view = session.render_view(job)
    image = np.asarray(Image.open(io.BytesIO(view.image))).astype(float)
    mask = np.asarray(Image.open(io.BytesIO(view.mask))) > 250
    return image, mask


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["matsynth", "ambientcg", "polyhaven"])
def test_baked_set_scans_and_renders_like_its_source(session, job, baked, layout):
    entry, folder, maps = baked[layout]
    assert set(maps) == {"basecolor", "roughness", "normal", "metallic"}
    result = texsets.scan_texture_sets(folder, layout="auto", default_size_m=0.15)
    assert result.skipped == []
    (loaded,) = result.entries
    assert loaded["source"] == layout and loaded["category"] == entry["category"]
    assert loaded["physical_size_m"] == pytest.approx(0.15)
    base = np.asarray(Image.open(maps["basecolor"]))
    assert base.shape == (48, 48, 3) and base.std() > 1.0  # the pattern was baked
    img_set, mask = _render(session, job, loaded)
    img_src, mask_src = _render(session, job, entry)
    both = mask & mask_src
    # Same colour (sRGB base colour read back as sRGB), same overall shading.
    assert np.abs(img_set[both].mean(0) - img_src[both].mean(0)).max() < 25


def test_metallic_map_of_oxidised_metal(session, job, baked):
    """Bare-metal patches are metallic (white), rust is not (black); the set renders."""
    entry, folder, maps = baked["metal"]
    metal = np.asarray(Image.open(maps["metallic"]))
    assert metal.max() > 200 and metal.min() < 50
    (loaded,) = texsets.scan_texture_sets(folder).entries
    assert loaded["category"] == "metal" and set(loaded["maps"]) >= {"metallic", "roughness"}
    image, mask = _render(session, job, loaded)
    assert image[mask].std() > 5


@pytest.mark.slow
def test_directx_normals_match_opengl(session, job, baked):
    gl = texsets.scan_texture_sets(baked["ambientcg"][1]).entries[0]
    dx = texsets.scan_texture_sets(baked["dx"][1]).entries[0]
    assert gl["normal_convention"] == "gl" and dx["normal_convention"] == "dx"
    a, _ = _render(session, job, gl)
    b, _ = _render(session, job, dx)
    assert np.abs(a - b).mean() < 1.0
    wrong = dict(dx, normal_convention="gl")  # reading a DX map as GL flips the bumps
    c, _ = _render(session, job, wrong)
    assert np.abs(a - c).mean() > np.abs(a - b).mean()


def test_missing_and_corrupt_maps_raise_material_error(session, job, baked, tmp_path):
    entry, folder, maps = baked["polyhaven"]
    loaded = texsets.scan_texture_sets(folder).entries[0]
    work = tmp_path / "set"
    shutil.copytree(folder, work)
    moved = texsets.scan_texture_sets(work).entries[0]
    # Optional maps missing -> defaults, still renders.
    only_base = dict(moved, maps={"basecolor": moved["maps"]["basecolor"]})
    image, mask = _render(session, job, only_base)
    assert mask.mean() > 0.2
    (work / maps["normal"].relative_to(folder)).unlink()
    with pytest.raises(MaterialError) as err:
        _render(session, job, moved)
    assert err.value.material_id == loaded["id"] and "map 'normal'" in err.value.reason
    assert "does not exist" in err.value.reason
    (work / maps["roughness"].relative_to(folder)).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    broken = dict(moved, maps={k: v for k, v in moved["maps"].items() if k != "normal"})
    with pytest.raises(MaterialError, match="map 'roughness'.*not a readable image"):
        _render(session, job, broken)
    with pytest.raises(MaterialError, match="no 'basecolor' map"):
        _render(session, job, dict(moved, maps={"roughness": moved["maps"]["roughness"]}))
