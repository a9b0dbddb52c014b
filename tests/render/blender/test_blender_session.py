"""BlenderSession renders view jobs deterministically, with passes, quietly, and fails loudly."""

from __future__ import annotations

import copy
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from phieat.schema import VIEW_FIELDS
from render.errors import MaterialError, RenderError

pytestmark = pytest.mark.blender


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _background_detail(view) -> float:
    """Mean absolute difference between horizontal neighbours on background pixels."""
    image = _pixels(view.image).astype(float)
    back = _pixels(view.mask) < 8
    both = back[:, 1:] & back[:, :-1]
    return float(np.abs(np.diff(image, axis=1)).mean(-1)[both].mean())


def test_renders_view_with_passes(session, job):
    view = session.render_view(job)
    image = _pixels(view.image)
    assert image.shape == (32, 32, 3)
    mask = _pixels(view.mask)
    assert mask.dtype == np.uint8 and mask.shape == (32, 32)
    assert 0.2 < (mask > 127).mean() < 0.95  # the sphere covers part of the frame
    matid = Image.open(io.BytesIO(view.matid))
    ids = np.asarray(matid)
    assert matid.mode.startswith("I;16") or ids.dtype == np.uint16
    assert set(np.unique(ids)) == {0, 1}
    assert ((ids == 1) == (mask > 127)).mean() > 0.9
    for name, kind in VIEW_FIELDS.items():
        assert isinstance(view.meta[name], kind), name
    assert view.meta["mesh_id"] == "sphere" and view.meta["light_id"] == "hdri-city"
    assert view.meta["seed"] == job["seed"] and view.meta["samples"] == 4
    assert session.blender_version.startswith("5.")
    assert session.rss_mb() > 50


def test_same_seed_same_bytes_other_seed_differs(session, job):
    first = session.render_view(job).image
    again = session.render_view(job).image
    assert first == again
    job["seed"] += 1
    assert session.render_view(job).image != first


def test_rotation_strength_and_backgrounds_change_pixels(session, job):
    base = _pixels(session.render_view(job).image).astype(float)
    job["light_strength"] = 2.0
    brighter = _pixels(session.render_view(job).image).astype(float)
    assert brighter.mean() > base.mean() + 10
    job["light_strength"] = 1.0
    job["light_rotation"] = 210.0
    assert np.abs(_pixels(session.render_view(job).image) - base).mean() > 3
    job["background"] = {"mode": "plain", "color": [0.0, 0.0, 1.0]}
    view = session.render_view(job)
    image = _pixels(view.image)
    corner = image[0, 0]
    assert corner[2] > 200 and corner[0] < 30  # pure blue behind the object
    job["background"] = {"mode": "random"}
    view = session.render_view(job)
    colour = np.asarray(view.meta["background"]["color"])
    assert colour.shape == (3,) and ((0.05 <= colour) & (colour <= 0.9)).all()
    # The recorded colour is what is behind the object (linear, shown through sRGB) ...
    srgb = np.where(colour <= 0.0031308, 12.92 * colour, 1.055 * colour ** (1 / 2.4) - 0.055)
    assert np.abs(_pixels(view.image)[0, 0] - srgb * 255).max() < 12
    # ... and another seed draws another colour.
    job["background"], job["seed"] = {"mode": "random"}, job["seed"] + 1
    assert session.render_view(job).meta["background"]["color"] != colour.tolist()
    # Blur: the HDRI behind the object, smoothed: the background varies less pixel to pixel.
    job["background"] = {"mode": "hdri"}
    sharp = session.render_view(job)
    job["background"] = {"mode": "blur"}
    blurred = session.render_view(job)
    assert _background_detail(blurred) < 0.7 * _background_detail(sharp)


@pytest.mark.parametrize(
    "fmt,signature", [("jpg", b"\xff\xd8"), ("png16", b"\x89PNG"), ("exr", b"v/1\x01")]
)
def test_image_formats(session, job, fmt, signature):
    job["render"]["image_format"] = fmt
    view = session.render_view(job)
    assert view.image.startswith(signature)
    if fmt == "png16":
        assert view.image[24] == 16  # IHDR bit depth (Pillow reads 16-bit RGB as 8-bit)


def test_quiet_hides_blender_output(session, job, capfd, tmp_path):
    # Blender's OBJ importer prints its timing from C++ straight to file descriptor 1.
    obj = tmp_path / "tetra.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    job["mesh"] = {"id": "tetra", "kind": "file", "path": str(obj), "params": {}, "size_m": 0.2}
    session.quiet = False
    try:
        capfd.readouterr()
        session.render_view(job)
        loud = capfd.readouterr()
    finally:
        session.quiet = True
    job["mesh"]["size_m"] = 0.25  # a different cache key: the file is imported again
    view = session.render_view(job)
    quiet = capfd.readouterr()
    assert "tetra.obj" in loud.out + loud.err
    assert quiet.out == "" and quiet.err == ""
    assert view.meta["coverage"] > 0.05


def test_bad_inputs_raise_named_errors(session, job):
    job["material"]["family"] = "no-such-family"
    with pytest.raises(MaterialError) as err:
        session.render_view(job)
    assert err.value.material_id == "test-red-plastic" and "no-such-family" in err.value.reason
    job["material"]["family"] = "uniform"
    job["mesh"] = {"id": "bad", "kind": "teapot", "params": {}, "size_m": 0.3}
    with pytest.raises(RenderError, match="teapot"):
        session.render_view(job)
    job.pop("seed")
    with pytest.raises(RenderError, match="seed"):
        session.render_view(job)


def test_reset_keeps_rendering(session, job):
    before = session.render_view(job).image
    session.reset()
    assert session.render_view(job).image == before


@pytest.mark.slow
def test_memory_stays_flat_across_shards(session, job):
    """Datablocks do not pile up: after reset() only the output image is left (no orphans)."""
    import bpy

    from assets import families, lights, meshes

    fams = sorted(families.FAMILIES)
    mesh_list, light_list = meshes.builtin_meshes(), lights.builtin_lights()
    job["render"].update(resolution=32, samples=2, passes=["mask"])
    rss = []
    session.reset(keep_caches=False)
    for i in range(4):  # within a shard, each distinct material is built once and kept
        job["material"] = families.material_entry(fams[i], i)
        session.render_view(job)
        session.render_view(job)
        assert len(bpy.data.materials) == i + 1
    for shard in range(3):
        for i in range(8):
            k = shard * 8 + i
            job["material"] = families.material_entry(fams[k % len(fams)], k)
            job["mesh"] = mesh_list[(5 * k) % len(mesh_list)]
            job["light"] = light_list[k % len(light_list)]
            session.render_view(job)
        session.reset()  # between shards: only what the caches keep stays
        stats = session.cache_stats()
        assert len(bpy.data.materials) == stats["materials"]["items"]
        assert len(bpy.data.meshes) == stats["meshes"]["items"]
        assert len(bpy.data.lights) == 0
        rss.append(session.rss_mb())
    session.reset(keep_caches=False)
    assert len(bpy.data.materials) == 0 and len(bpy.data.meshes) == 0
    assert len(bpy.data.lights) == 0 and len(bpy.data.images) <= 1
    assert rss[-1] < rss[0] + 60, rss


def test_pixels_do_not_depend_on_what_rendered_before(session, job):
    """A long-lived session gives the same bytes for a job whatever it rendered before."""
    from assets import families, lights, meshes

    job["material"] = families.material_entry("leather", 4)
    first = session.render_view(job).image
    other = dict(job)
    for k, (fam, mesh, light) in enumerate(
        [("wood", 3, 5), ("car-paint", 10, 20), ("fabric", 40, 30)]
    ):
        other = dict(
            job,
            material=families.material_entry(fam, k),
            mesh=meshes.builtin_meshes()[mesh],
            light=lights.builtin_lights()[light],
        )
        session.render_view(other)
    assert session.render_view(job).image == first


@pytest.mark.slow
def test_same_job_same_bytes_in_a_fresh_process(session, job, fresh_process_digests):
    fresh = fresh_process_digests([job], timeout=120)
    here = hashlib.sha256(session.render_view(job).image).hexdigest()
    assert fresh == [here]  # other process, other thread count


@pytest.mark.slow
def test_views_after_other_materials_meshes_and_scenes_match_fresh_renders(
    session, job, fresh_process_digests
):
    """Cached materials and meshes give the bytes of a session that renders the job first:
    a material reused on another mesh, a mesh reused with another material, a scene with a
    reused material, a material with the same ID but other parameters, a plain view after
    the scene."""

    from assets import families

    fabric = families.material_entry("fabric", 2)
    cube = dict(job["mesh"], id="cube", params={"shape": "cube"}, size_m=0.25, group="cube")
    forest = dict(job["light"], id="hdri-forest", path="bpy:studiolights/world/forest.exr")
    first = copy.deepcopy(job)
    second = dict(copy.deepcopy(job), material=fabric, mesh=cube, seed=11)
    swapped = dict(copy.deepcopy(job), mesh=cube, light=forest, seed=12)  # red on the cube
    scene = copy.deepcopy(second)
    scene["scene"] = {
        "location": [0.1, 0.0, 0.0],
        "rotation_z": 15.0,
        "scale": 0.8,
        "objects": [
            {
                "material": copy.deepcopy(job["material"]),
                "mesh": copy.deepcopy(job["mesh"]),
                "location": [-0.3, 0.0, 0.0],
                "rotation_z": 0.0,
                "scale": 1.0,
            }
        ],
    }
    scene["camera"] = dict(scene["camera"], distance=1.5)
    recoloured = copy.deepcopy(first)  # same material ID, other parameters: another material
    recoloured["material"]["params"]["base_color"] = [0.1, 0.7, 0.2]
    jobs = [first, second, swapped, scene, recoloured, dict(copy.deepcopy(second), seed=13), first]
    session.reset()
    here = [hashlib.sha256(session.render_view(j).image).hexdigest() for j in jobs]
    fresh = fresh_process_digests(jobs)
    assert here == fresh
    assert here[0] == here[-1] and len(set(here[:6])) == 6
