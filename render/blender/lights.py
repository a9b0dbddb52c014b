"""Lighting for a view: HDRI environments, Blender's physical sky and procedural studio rigs.

``build_world(entry, name)`` makes a new world datablock for one light catalog entry (the
session keeps it across shards, see ``BlenderSession``) and ``add_rig`` adds a studio entry's
area lights (under one parent empty); ``setup_light(scene, entry, rotation_deg, strength)``
does both on the scene's one world ``WORLD_NAME``. HDRI paths of the form
``bpy:studiolights/world/city.exr`` resolve inside the bpy wheel, so the 8 bundled CC0
environments are used in place and never copied. A loaded image is reused by path while a
world uses it; ``release_images`` removes the ones nothing uses.
"""

from __future__ import annotations

import math
from pathlib import Path

import bpy

from assets.catalog import PathEscapeError, asset_path
from assets.units import UNIT_M

BUNDLED_PREFIX = "bpy:"
RIG_NAME = "phieat-rig"
WORLD_NAME = "phieat-world"
MAP_RESOLUTION = 256
SKY_TYPES = ("SINGLE_SCATTERING", "MULTIPLE_SCATTERING", "PREETHAM", "HOSEK_WILKIE")


class LightBuildError(ValueError):
    """A light entry cannot be built (missing HDRI file, unknown kind or sky type)."""


def resolve_hdri_path(path: str, base_dir: Path | None = None) -> Path:
    """Resolve ``bpy:...`` paths inside the bpy data files, relative paths against ``base_dir``."""
    if path.startswith(BUNDLED_PREFIX):
        rel = path[len(BUNDLED_PREFIX) :]
        folder, _, name = rel.rpartition("/")
        root = bpy.utils.system_resource("DATAFILES", path=folder)
        resolved = Path(root) / name
    else:
        try:
            resolved = asset_path(path, base_dir)
        except PathEscapeError as exc:
            raise LightBuildError(f"HDRI {exc}") from exc
    if not resolved.is_file():
        raise LightBuildError(f"HDRI file {path!r} not found (looked at {resolved})")
    return resolved


def _load_image(path: Path) -> bpy.types.Image:
    key = str(path)
    for image in bpy.data.images:
        if image.filepath == key and image_loaded(image):
            return image
    try:
        image = bpy.data.images.load(key, check_existing=True)
    except RuntimeError as exc:
        raise LightBuildError(f"cannot read HDRI {path}: {exc}") from exc
    if not image_loaded(image):
        # An image Blender cannot decode renders as its magenta "missing" colour: refuse it.
        bpy.data.images.remove(image)
        raise LightBuildError(f"HDRI {path} is not a readable image (Blender cannot decode it)")
    image.colorspace_settings.name = "Linear Rec.709"
    return image


def image_loaded(image: bpy.types.Image) -> bool:
    """Whether Blender holds pixels for ``image``: loading is lazy, and reading the size
    forces the decode, which leaves a size of 0 x 0 and no data for a missing or
    undecodable file (rendered as magenta)."""
    try:
        width, height = image.size
        return width > 0 and height > 0 and bool(image.has_data)
    except ReferenceError:
        return False


def _world(scene: bpy.types.Scene) -> bpy.types.World:
    world = bpy.data.worlds.get(WORLD_NAME) or bpy.data.worlds.new(WORLD_NAME)
    scene.world = world
    _world_settings(world)
    world.node_tree.nodes.clear()
    return world


def _world_settings(world: bpy.types.World) -> None:
    # "AUTOMATIC" builds the importance map at the HDRI's resolution, which costs Cycles
    # ~1-3 s on every world change; a fixed map keeps that to ~0.1 s with little extra noise.
    world.cycles.sampling_method = "MANUAL"
    world.cycles.sample_map_resolution = MAP_RESOLUTION


def clear_rig() -> None:
    """Remove the studio rig (its lamps and their data), if any."""
    rig = bpy.data.objects.get(RIG_NAME)
    if rig is None:
        return
    for child in list(rig.children):
        data = child.data
        bpy.data.objects.remove(child)
        if data is not None and data.users == 0:
            bpy.data.lights.remove(data)
    bpy.data.objects.remove(rig)


def kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Approximate linear RGB of a black body (1,000-40,000 K), normalised to max 1."""
    t = kelvin / 100.0
    if t <= 66:
        r = 1.0
        g = max(0.0, min(1.0, (99.4708025861 * math.log(t) - 161.1195681661) / 255))
        b = (
            0.0
            if t <= 19
            else max(0.0, min(1.0, (138.5177312231 * math.log(t - 10) - 305.0447927307) / 255))
        )
    else:
        r = max(0.0, min(1.0, 329.698727446 * (t - 60) ** -0.1332047592 / 255))
        g = max(0.0, min(1.0, 288.1221695283 * (t - 60) ** -0.0755148492 / 255))
        b = 1.0
    # sRGB-encoded values -> linear
    return tuple(c**2.2 for c in (r, g, b))


def setup_light(
    scene: bpy.types.Scene,
    entry: dict,
    rotation_deg: float,
    strength: float,
    base_dir: Path | None = None,
) -> None:
    """Make ``entry`` the scene's lighting, rotated ``rotation_deg`` about Z, scaled ``strength``
    (rebuilding the one world ``WORLD_NAME``)."""
    clear_rig()
    world = _world(scene)
    _fill_world(world, entry, rotation_deg, strength, base_dir)
    add_rig(scene, entry, rotation_deg, strength)


def build_world(
    entry: dict,
    name: str,
    rotation_deg: float = 0.0,
    strength: float = 1.0,
    base_dir: Path | None = None,
) -> bpy.types.World:
    """A new world datablock for a light entry (a studio rig's ambient only: see
    ``add_rig``); a world that cannot be built is removed before the error propagates."""
    world = bpy.data.worlds.new(name)
    _world_settings(world)
    world.node_tree.nodes.clear()
    try:
        _fill_world(world, entry, rotation_deg, strength, base_dir)
    except BaseException:
        bpy.data.worlds.remove(world)
        raise
    return world


def _fill_world(
    world: bpy.types.World,
    entry: dict,
    rotation_deg: float,
    strength: float,
    base_dir: Path | None,
) -> None:
    nodes, links = world.node_tree.nodes, world.node_tree.links
    out = nodes.new("ShaderNodeOutputWorld")
    bg = nodes.new("ShaderNodeBackground")
    links.new(bg.outputs["Background"], out.inputs["Surface"])
    kind = entry.get("kind")
    params = entry.get("params") or {}
    rot = math.radians(rotation_deg)
    if kind in ("hdri", "sky"):
        coord = nodes.new("ShaderNodeTexCoord")
        mapping = nodes.new("ShaderNodeMapping")
        mapping.inputs["Rotation"].default_value = (0.0, 0.0, rot)
        links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
        if kind == "hdri":
            tex = nodes.new("ShaderNodeTexEnvironment")
            tex.image = _load_image(resolve_hdri_path(entry["path"], base_dir))
            bg.inputs["Strength"].default_value = strength * float(params.get("strength", 1.0))
        else:
            tex = nodes.new("ShaderNodeTexSky")
            sky_type = params.get("sky_type", "MULTIPLE_SCATTERING")
            if sky_type not in SKY_TYPES:
                raise LightBuildError(f"sky_type {sky_type!r} is not one of {list(SKY_TYPES)}")
            tex.sky_type = sky_type
            elevation = math.radians(float(params.get("sun_elevation", 30.0)))
            # The sky node has no vector input in Blender 5: rotate the sun instead.
            azimuth = math.radians(float(params.get("sun_azimuth", 0.0))) + rot
            if sky_type in ("PREETHAM", "HOSEK_WILKIE"):
                tex.turbidity = float(params.get("turbidity", 2.5))
                tex.ground_albedo = float(params.get("ground_albedo", 0.3))
                tex.sun_direction = (
                    math.cos(elevation) * math.sin(azimuth),
                    math.cos(elevation) * math.cos(azimuth),
                    math.sin(elevation),
                )
            else:
                tex.sun_elevation = elevation
                tex.sun_rotation = azimuth
                tex.altitude = float(params.get("altitude", 0.0))
                tex.air_density = float(params.get("air", 1.0))
                tex.aerosol_density = float(
                    params.get("aerosol", params.get("turbidity", 2.5) / 2.5)
                )
                tex.ozone_density = float(params.get("ozone", 1.0))
                tex.sun_intensity = float(params.get("sun_intensity", 1.0))
            # Physical sky radiance is ~30x an indoor HDRI: bring it to a comparable exposure.
            bg.inputs["Strength"].default_value = strength * float(params.get("strength", 0.03))
        if "Vector" in tex.inputs:
            links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        links.new(tex.outputs["Color"], bg.inputs["Color"])
    elif kind == "studio":
        ambient = params.get("ambient", [0.05, 0.05, 0.05])
        bg.inputs["Color"].default_value = (*[float(c) for c in ambient], 1.0)
        bg.inputs["Strength"].default_value = strength
    elif kind == "color":
        bg.inputs["Color"].default_value = (*[float(c) for c in params["color"]], 1.0)
        bg.inputs["Strength"].default_value = strength
    else:
        raise LightBuildError(f"unknown light kind {kind!r} (hdri, sky, studio, color)")


def add_rig(scene: bpy.types.Scene, entry: dict, rotation_deg: float, strength: float) -> None:
    """Add a studio entry's area lights under one parent empty (other kinds have none)."""
    if entry.get("kind") != "studio":
        return
    params = entry.get("params") or {}
    rot = math.radians(rotation_deg)
    rig = bpy.data.objects.new(RIG_NAME, None)
    scene.collection.objects.link(rig)
    rig.rotation_euler = (0.0, 0.0, rot)
    for i, lamp in enumerate(params.get("lights", [])):
        light = bpy.data.lights.new(f"{RIG_NAME}-{i}", type="AREA")
        light.shape = "RECTANGLE"
        light.size = float(lamp["size"][0]) / UNIT_M  # sizes and distances are metres
        light.size_y = float(lamp["size"][1]) / UNIT_M
        # Cycles measures distance in scene units: keep the irradiance of P watts at d metres.
        light.energy = float(lamp["power_w"]) * strength / UNIT_M**2
        light.color = kelvin_to_rgb(float(lamp.get("kelvin", 5500)))
        obj = bpy.data.objects.new(f"{RIG_NAME}-{i}", light)
        scene.collection.objects.link(obj)
        obj.parent = rig
        el, az = math.radians(float(lamp["elevation"])), math.radians(float(lamp["azimuth"]))
        dist = float(lamp["distance_m"]) / UNIT_M
        obj.location = (
            dist * math.cos(el) * math.sin(az),
            -dist * math.cos(el) * math.cos(az),
            dist * math.sin(el),
        )
        # Point the light's -Z axis at the origin.
        direction = -obj.location.normalized()
        obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def release_images() -> None:
    """Empty ``WORLD_NAME`` and remove images nothing uses (``BlenderSession.reset``)."""
    world = bpy.data.worlds.get(WORLD_NAME)
    if world is not None:
        world.node_tree.nodes.clear()
    for image in list(bpy.data.images):
        if image.users == 0:
            bpy.data.images.remove(image)
