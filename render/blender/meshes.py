"""Build Blender mesh datablocks from mesh catalog entries (``manifests/meshes.jsonl``).

Every mesh is built at its real-world size: the catalog's ``size_m`` is the largest side of
the bounding box in metres, and one scene unit is ``assets.units.UNIT_M`` metres, so
a texture with a known physical size maps onto it at a believable scale. The mesh is
centred on its bounding-box centre; ``bounding_radius`` gives the radius the camera
distance of a view job is measured in.
"""

from __future__ import annotations

import math
from pathlib import Path

import bmesh
import bpy
import numpy as np
from mathutils import Matrix, Vector

from assets.catalog import asset_path
from assets.units import UNIT_M


class MeshBuildError(ValueError):
    """A mesh entry cannot be built (unknown kind/shape, unreadable file, empty geometry)."""


# ----------------------------------------------------------------------------- primitives


def _primitive(bm: bmesh.types.BMesh, shape: str, params: dict) -> None:
    detail = int(params.get("detail", 2))
    if shape == "uv_sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=16 * detail, v_segments=8 * detail, radius=1.0)
    elif shape == "ico_sphere":
        bmesh.ops.create_icosphere(bm, subdivisions=max(1, detail + 1), radius=1.0)
    elif shape == "cube":
        bmesh.ops.create_cube(bm, size=2.0)
    elif shape == "cylinder":
        bmesh.ops.create_cone(
            bm, cap_ends=True, segments=16 * detail, radius1=1.0, radius2=1.0, depth=2.0
        )
    elif shape == "cone":
        bmesh.ops.create_cone(
            bm, cap_ends=True, segments=16 * detail, radius1=1.0, radius2=0.0, depth=2.0
        )
    elif shape == "torus":
        _torus(bm, float(params.get("minor", 0.35)), 24 * detail, 12 * detail)
    elif shape == "monkey":
        bmesh.ops.create_monkey(bm)
    else:
        raise MeshBuildError(f"unknown primitive shape {shape!r}")


def _torus(bm: bmesh.types.BMesh, minor: float, major_seg: int, minor_seg: int) -> None:
    rings = []
    for i in range(major_seg):
        a = 2 * math.pi * i / major_seg
        ring = []
        for j in range(minor_seg):
            b = 2 * math.pi * j / minor_seg
            r = 1.0 + minor * math.cos(b)
            ring.append(bm.verts.new((r * math.cos(a), r * math.sin(a), minor * math.sin(b))))
        rings.append(ring)
    for i in range(major_seg):
        for j in range(minor_seg):
            i2, j2 = (i + 1) % major_seg, (j + 1) % minor_seg
            bm.faces.new((rings[i][j], rings[i2][j], rings[i2][j2], rings[i][j2]))


# ----------------------------------------------------------------------------- grids


def _grid_surface(bm: bmesh.types.BMesh, points: np.ndarray, wrap_u: bool, cap: bool) -> None:
    """Faces over an (nv, nu, 3) grid of points; ``wrap_u`` closes the u direction."""
    nv, nu, _ = points.shape
    verts = [[bm.verts.new(tuple(points[i, j])) for j in range(nu)] for i in range(nv)]
    last_u = nu if wrap_u else nu - 1
    for i in range(nv - 1):
        for j in range(last_u):
            j2 = (j + 1) % nu
            bm.faces.new((verts[i][j], verts[i][j2], verts[i + 1][j2], verts[i + 1][j]))
    if cap and wrap_u:
        for row in (verts[0], verts[-1]):
            try:
                bm.faces.new(row if row is verts[-1] else list(reversed(row)))
            except ValueError:
                continue
    bmesh.ops.remove_doubles(bm, verts=bm.verts, dist=1e-6)


def _superquadric(bm: bmesh.types.BMesh, params: dict) -> None:
    e1, e2 = float(params["e1"]), float(params["e2"])
    ax, ay, az = (float(v) for v in params.get("axes", (1.0, 1.0, 1.0)))
    nu, nv = 48, 25

    def spow(x: np.ndarray, e: float) -> np.ndarray:
        return np.sign(x) * np.abs(x) ** e

    eta = np.linspace(-math.pi / 2, math.pi / 2, nv)[:, None]
    omega = np.linspace(-math.pi, math.pi, nu, endpoint=False)[None, :]
    x = ax * spow(np.cos(eta), e1) * spow(np.cos(omega), e2)
    y = ay * spow(np.cos(eta), e1) * spow(np.sin(omega), e2)
    z = az * spow(np.sin(eta), e1) * np.ones_like(omega)
    _grid_surface(bm, np.stack([x, y, z], -1), wrap_u=True, cap=False)


def _blob(bm: bmesh.types.BMesh, params: dict) -> None:
    """A sphere displaced by a few low-frequency spherical bumps (seeded, smooth)."""
    bmesh.ops.create_icosphere(bm, subdivisions=4, radius=1.0)
    rng = np.random.default_rng(int(params["seed"]))
    count = int(params.get("lobes", 5))
    amp = float(params.get("amplitude", 0.3))
    dirs = rng.normal(size=(count, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    weights = rng.uniform(-amp, amp, size=count)
    sharp = rng.uniform(2.0, 6.0, size=count)
    for v in bm.verts:
        p = np.array(v.co)
        n = p / np.linalg.norm(p)
        r = 1.0 + float(np.sum(weights * np.exp(sharp * (dirs @ n - 1.0))))
        v.co = Vector(n * max(r, 0.2))


def _lathe(bm: bmesh.types.BMesh, params: dict) -> None:
    """Revolve a radius profile (list of radii, bottom to top) around Z: vases, bottles."""
    profile = np.asarray(params["profile"], dtype=float)
    height = float(params.get("height", 2.0))
    nu = 48
    z = np.linspace(-height / 2, height / 2, len(profile))
    # Smooth the profile with a cubic-like upsampling so the vase has no facets.
    fine = np.linspace(0, len(profile) - 1, 4 * len(profile))
    r = np.interp(fine, np.arange(len(profile)), profile)
    zz = np.interp(fine, np.arange(len(profile)), z)
    a = np.linspace(0, 2 * math.pi, nu, endpoint=False)
    pts = np.stack(
        [r[:, None] * np.cos(a)[None], r[:, None] * np.sin(a)[None], np.repeat(zz[:, None], nu, 1)],
        -1,
    )
    _grid_surface(bm, pts, wrap_u=True, cap=True)


def _box(bm: bmesh.types.BMesh, center: tuple, size: tuple) -> None:
    geom = bmesh.ops.create_cube(bm, size=1.0)
    mat = Matrix.Translation(Vector(center)) @ Matrix.Diagonal((*size, 1.0))
    bmesh.ops.transform(bm, matrix=mat, verts=geom["verts"])


def _cyl(bm: bmesh.types.BMesh, center: tuple, radius: float, height: float) -> None:
    geom = bmesh.ops.create_cone(
        bm, cap_ends=True, segments=20, radius1=radius, radius2=radius, depth=height
    )
    bmesh.ops.translate(bm, vec=Vector(center), verts=geom["verts"])


def _furniture(bm: bmesh.types.BMesh, params: dict) -> None:
    """Tables, stools, chairs, shelves and benches from boxes and cylinders (unit: metres)."""
    kind = params["type"]
    w, d, h = (float(v) for v in params["dims"])
    t = float(params.get("thickness", 0.04))
    leg = float(params.get("leg", 0.04))
    round_legs = bool(params.get("round_legs", False))

    def legs(top: float, inset: float) -> None:
        for sx in (-1, 1):
            for sy in (-1, 1):
                c = (sx * (w / 2 - inset), sy * (d / 2 - inset), top / 2)
                if round_legs:
                    _cyl(bm, c, leg / 2, top)
                else:
                    _box(bm, c, (leg, leg, top))

    if kind in ("table", "stool", "bench"):
        _box(bm, (0, 0, h - t / 2), (w, d, t))
        legs(h - t, leg)
    elif kind == "chair":
        seat = float(params.get("seat", 0.45))
        _box(bm, (0, 0, seat - t / 2), (w, d, t))
        legs(seat - t, leg)
        _box(bm, (0, d / 2 - t / 2, (seat + h) / 2), (w, t, h - seat))
    elif kind == "shelf":
        shelves = int(params.get("shelves", 3))
        for side in (-1, 1):
            _box(bm, (side * (w / 2 - t / 2), 0, h / 2), (t, d, h))
        for i in range(shelves + 1):
            _box(bm, (0, 0, t / 2 + i * (h - t) / shelves), (w - 2 * t, d, t))
        _box(bm, (0, d / 2 - t / 4, h / 2), (w - 2 * t, t / 2, h))
    else:
        raise MeshBuildError(f"unknown furniture type {kind!r}")


# ----------------------------------------------------------------------------- modifiers


def _apply_modifiers(bm: bmesh.types.BMesh, params: dict) -> None:
    """Deform in place: twist (rad per unit height), bend, taper, noise displacement, bevel."""
    twist = float(params.get("twist", 0.0))
    taper = float(params.get("taper", 0.0))
    bend = float(params.get("bend", 0.0))
    bevel = float(params.get("bevel", 0.0))
    subdiv = int(params.get("subdivide", 0))
    if bevel > 0:
        bmesh.ops.bevel(
            bm,
            geom=list(bm.edges),
            offset=bevel,
            segments=3,
            profile=0.5,
            affect="EDGES",
            clamp_overlap=True,
        )
    if subdiv > 0:
        bmesh.ops.subdivide_edges(bm, edges=list(bm.edges), cuts=subdiv, use_grid_fill=True)
        bmesh.ops.triangulate(bm, faces=list(bm.faces))
    scale = params.get("scale")
    if scale is not None:
        bmesh.ops.scale(bm, vec=Vector([float(v) for v in scale]), verts=bm.verts)
    disp = float(params.get("displace", 0.0))
    rng = np.random.default_rng(int(params.get("seed", 0)))
    waves = rng.normal(size=(6, 3)) * float(params.get("displace_freq", 2.0))
    phases = rng.uniform(0, 2 * math.pi, 6)
    bm.verts.ensure_lookup_table()
    if twist or taper or bend or disp:
        bm.normal_update()
        for v in bm.verts:
            x, y, z = v.co
            if disp:
                p = np.array((x, y, z))
                offset = disp * float(np.mean(np.sin(waves @ p + phases)))
                x, y, z = (np.array((x, y, z)) + offset * np.array(v.normal)).tolist()
            if taper:
                s = 1.0 + taper * z
                x, y = x * s, y * s
            if twist:
                a = twist * z
                x, y = x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)
            if bend:
                # Bend around the Y axis: arc of curvature ``bend`` along Z.
                r = 1.0 / bend
                a = z * bend
                x, z = (r - (r - x) * math.cos(a)), (r - x) * math.sin(a)
            v.co = Vector((x, y, z))


# ----------------------------------------------------------------------------- files


def _import_file(path: Path) -> bpy.types.Mesh:
    """Import an OBJ/PLY/STL/GLB into one joined mesh datablock and return it."""
    if not path.is_file():
        raise MeshBuildError(f"mesh file {path} does not exist")
    suffix = path.suffix.lower()
    before = set(bpy.data.objects)
    try:
        if suffix == ".obj":
            bpy.ops.wm.obj_import(filepath=str(path))
        elif suffix == ".ply":
            bpy.ops.wm.ply_import(filepath=str(path))
        elif suffix == ".stl":
            bpy.ops.wm.stl_import(filepath=str(path))
        elif suffix in (".glb", ".gltf"):
            bpy.ops.import_scene.gltf(filepath=str(path))
        else:
            raise MeshBuildError(f"{path}: unsupported mesh format {suffix!r}")
    except RuntimeError as exc:
        raise MeshBuildError(f"{path}: import failed: {exc}") from exc
    new = [o for o in bpy.data.objects if o not in before]
    bm = bmesh.new()
    for obj in new:
        if obj.type == "MESH":
            tmp = obj.data.copy()
            tmp.transform(obj.matrix_world)
            bm.from_mesh(tmp)
            bpy.data.meshes.remove(tmp)
    for obj in new:
        data = obj.data
        bpy.data.objects.remove(obj)
        if isinstance(data, bpy.types.Mesh) and data.users == 0:
            bpy.data.meshes.remove(data)
    if not bm.verts:
        bm.free()
        raise MeshBuildError(f"{path}: no mesh geometry in the file")
    mesh = bpy.data.meshes.new(path.stem)
    bm.to_mesh(mesh)
    bm.free()
    return mesh


# ----------------------------------------------------------------------------- entry point


def build_mesh(entry: dict, base_dir: Path | None = None) -> bpy.types.Mesh:
    """Return a new mesh datablock for a catalog entry, centred and scaled to ``size_m``."""
    kind = entry.get("kind")
    params = entry.get("params") or {}
    mesh_id = entry.get("id", "?")
    try:
        if kind == "file":
            # A path leaving the catalog's folder raises a ValueError, reported below.
            path = asset_path(entry["path"], base_dir)
            mesh = _import_file(path)
            bm = bmesh.new()
            bm.from_mesh(mesh)
            bpy.data.meshes.remove(mesh)
        else:
            bm = bmesh.new()
            if kind == "primitive":
                _primitive(bm, params.get("shape", "uv_sphere"), params)
            elif kind == "superquadric":
                _superquadric(bm, params)
            elif kind == "blob":
                _blob(bm, params)
            elif kind == "lathe":
                _lathe(bm, params)
            elif kind == "furniture":
                _furniture(bm, params)
            else:
                raise MeshBuildError(f"unknown mesh kind {kind!r}")
            _apply_modifiers(bm, params)
    except (KeyError, TypeError, ValueError) as exc:
        raise MeshBuildError(f"mesh {mesh_id!r}: {exc}") from exc
    if not bm.verts:
        bm.free()
        raise MeshBuildError(f"mesh {mesh_id!r}: no vertices")
    co = np.array([v.co for v in bm.verts])
    lo, hi = co.min(0), co.max(0)
    extent = float((hi - lo).max())
    if extent <= 0:
        bm.free()
        raise MeshBuildError(f"mesh {mesh_id!r}: degenerate geometry (zero size)")
    scale = float(entry.get("size_m", 1.0)) / UNIT_M / extent
    centre = (lo + hi) / 2
    bmesh.ops.translate(bm, vec=Vector(-centre), verts=bm.verts)
    bmesh.ops.scale(bm, vec=Vector((scale, scale, scale)), verts=bm.verts)
    bm.normal_update()
    mesh = bpy.data.meshes.new(f"phieat-{mesh_id}")
    bm.to_mesh(mesh)
    bm.free()
    for poly in mesh.polygons:
        poly.use_smooth = True
    if kind in ("furniture",) or (kind == "primitive" and params.get("shape") == "cube"):
        # Hard edges stay hard: smooth only where faces meet at a shallow angle.
        mesh.set_sharp_from_angle(angle=math.radians(40))
    return mesh


def bounding_radius(mesh: bpy.types.Mesh) -> float:
    """Radius (scene units) of the sphere around the origin that holds every vertex."""
    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    return float(np.linalg.norm(co.reshape(-1, 3), axis=1).max())
