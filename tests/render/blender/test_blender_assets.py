"""Built-in meshes and lights build in Blender at their real size; user files load."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from assets import lights, meshes
from render.errors import RenderError

pytestmark = pytest.mark.blender


def _extent(mesh) -> np.ndarray:
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    return co.max(0) - co.min(0), (co.max(0) + co.min(0)) / 2


@pytest.mark.slow
def test_every_builtin_mesh_builds_at_its_size(session):
    import bpy

    from render.blender.meshes import build_mesh

    for entry in meshes.builtin_meshes():
        mesh = build_mesh(entry)
        try:
            extent, centre = _extent(mesh)
            assert len(mesh.polygons) >= 6, entry["id"]
            assert extent.max() == pytest.approx(entry["size_m"], rel=1e-3), entry["id"]
            assert np.abs(centre).max() < 1e-3 * entry["size_m"], entry["id"]
            assert extent.min() > 0.02 * entry["size_m"], entry["id"]  # not flat
        finally:
            bpy.data.meshes.remove(mesh)


def test_mesh_files_are_normalised_to_real_size(session, tmp_path):
    import bpy

    from render.blender.meshes import MeshBuildError, build_mesh

    (tmp_path / "tet.obj").write_text(
        "v 0 0 0\nv 10 0 0\nv 0 10 0\nv 0 0 10\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"
    )
    facets = [
        ((0, 0, 0), (5, 0, 0), (0, 5, 0)),
        ((0, 0, 0), (5, 0, 0), (0, 0, 2)),
        ((0, 0, 0), (0, 5, 0), (0, 0, 2)),
    ]
    stl = (
        "solid t\n"
        + "".join(
            "facet normal 0 0 0\nouter loop\n"
            + "".join(f"vertex {x} {y} {z}\n" for x, y, z in f)
            + "endloop\nendfacet\n"
            for f in facets
        )
        + "endsolid t\n"
    )
    (tmp_path / "wedge.stl").write_text(stl)
    ply = "ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
    ply += "element face 2\nproperty list uchar int vertex_indices\nend_header\n"
    ply += "0 0 0\n3 0 0\n3 1 0\n0 1 1\n3 0 1 2\n3 0 2 3\n"
    (tmp_path / "sheet.ply").write_text(ply)
    # A GLB written by Blender's own exporter (a 3 m cube) comes back at 0.4 m.
    import bmesh

    cube = bpy.data.meshes.new("glb-cube")
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=3.0)
    bm.to_mesh(cube)
    bm.free()
    obj = bpy.data.objects.new("glb-cube", cube)
    bpy.context.scene.collection.objects.link(obj)
    for other in bpy.context.scene.objects:
        other.select_set(other == obj)
    bpy.ops.export_scene.gltf(filepath=str(tmp_path / "cube.glb"), use_selection=True)
    bpy.data.objects.remove(obj)
    bpy.data.meshes.remove(cube)
    entries = meshes.scan_mesh_folder(tmp_path, default_size_m=0.4)
    assert {e["params"]["format"] for e in entries} == {"obj", "stl", "ply", "glb"}
    for entry in entries:
        mesh = build_mesh(entry)
        extent, _ = _extent(mesh)
        assert extent.max() == pytest.approx(0.4, rel=1e-3), entry["id"]
        bpy.data.meshes.remove(mesh)
    with pytest.raises(MeshBuildError, match="does not exist"):
        build_mesh({"id": "gone", "kind": "file", "path": str(tmp_path / "gone.obj"), "size_m": 1})


def test_bundled_hdris_resolve_inside_bpy(session):
    from render.blender.lights import resolve_hdri_path

    for entry in lights.bundled_hdris():
        path = resolve_hdri_path(entry["path"])
        assert path.is_file() and path.suffix == ".exr"
        assert "site-packages" in str(path) or "bpy" in str(path)


def _image(view) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(view.image))).astype(float)


@pytest.mark.slow
def test_sky_studio_and_user_hdri_light_the_object(session, job, tmp_path):
    import bpy

    job["render"]["passes"] = ["mask"]
    sky = next(
        e
        for e in lights.builtin_lights()
        if e["kind"] == "sky" and e["params"]["sun_elevation"] > 20
    )
    studio = lights.studio_rigs(1)[0]
    # A user HDRI: write a small float EXR with Blender, then scan its folder.
    img = bpy.data.images.new("user-env", 32, 16, float_buffer=True)
    pixels = np.ones((16, 32, 4), np.float32)
    pixels[8:, :, :3] = [1.5, 1.2, 0.8]  # warm sky half
    img.pixels.foreach_set(pixels.ravel())
    img.filepath_raw = str(tmp_path / "warm_1k.exr")
    img.file_format = "OPEN_EXR"
    img.save()
    bpy.data.images.remove(img)
    user = dict(lights.scan_hdri_folder(tmp_path)[0])
    means = {}
    for entry in (sky, studio, user):
        job["light"] = entry
        view = session.render_view(job)
        mask = np.asarray(Image.open(io.BytesIO(view.mask))) > 200
        means[entry["id"]] = _image(view)[mask].mean(0)
        assert means[entry["id"]].mean() > 15, entry["id"]  # the object is lit
    warm = means[user["id"]]
    assert warm[0] > warm[2]  # the warm environment tints the object
    job["light"] = dict(user, path=str(tmp_path / "missing.exr"), id="hdri-missing")
    with pytest.raises(RenderError, match="missing.exr"):
        session.render_view(job)
