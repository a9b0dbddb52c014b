"""The session's Blender scene: Cycles settings, compute device, camera and its placement.

``setup_scene`` turns the factory scene into the one every view renders in (Cycles with a
fixed thread count, persistent data, transparent film, the Combined, Environment and
Material Index passes) and ``add_camera`` adds its camera; ``configure`` applies one view's
render settings (resolution, samples, bounces, seed, view transform). ``place_camera`` puts
the camera on its orbit around the main object and ``frame_scene`` backs it off until a
selection scene's objects are all in frame. ``BlenderSession`` calls these; the objects
themselves are in ``render.blender.objects``, the light in ``render.blender.lights``.

A view's light rotation never touches the world: the camera and the objects turn the other
way instead (see ``place_camera``).
"""

from __future__ import annotations

import logging
import math

import bpy
import numpy as np
from mathutils import Matrix, Vector

from assets.units import UNIT_M
from render.errors import RenderError

logger = logging.getLogger("phieat.render")

CAMERA_NAME = "phieat-camera"
VIEW_TRANSFORMS = ("Standard", "AgX")
SENSOR_MM = 36.0
CLAMP_INDIRECT = 10.0
# Selection scenes: the objects' bounding boxes fill at most this fraction of the frame.
FRAME_FILL = 0.94


def setup_scene(scene: bpy.types.Scene, threads: int, device: str) -> None:
    """Render settings shared by every view; raise ``RenderError`` if ``device`` is missing."""
    scene.render.engine = "CYCLES"
    scene.render.threads_mode = "FIXED"
    scene.render.threads = threads
    scene.render.use_persistent_data = True
    scene.render.film_transparent = True
    scene.render.use_compositing = False
    scene.render.use_sequencer = False
    scene.render.resolution_percentage = 100
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    cycles = scene.cycles
    cycles.use_adaptive_sampling = False
    cycles.use_animated_seed = False
    cycles.sample_clamp_indirect = CLAMP_INDIRECT
    cycles.caustics_reflective = False
    cycles.caustics_refractive = False
    set_device(scene, device)
    layer = scene.view_layers[0]
    layer.use_pass_combined = True
    layer.use_pass_environment = True
    layer.use_pass_material_index = True
    layer.use_pass_z = False


def add_camera(scene: bpy.types.Scene) -> bpy.types.Object:
    """A new camera (horizontal sensor fit), linked to ``scene`` and made its camera."""
    cam_data = bpy.data.cameras.new(CAMERA_NAME)
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.sensor_width = SENSOR_MM
    camera = bpy.data.objects.new(CAMERA_NAME, cam_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def set_device(scene: bpy.types.Scene, device: str) -> None:
    """Render on the CPU, on any GPU (``GPU``) or on one backend (``OPTIX``, ``CUDA``...)."""
    cycles = scene.cycles
    if device == "CPU":
        cycles.device = "CPU"
        return
    prefs = bpy.context.preferences.addons["cycles"].preferences
    kinds = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL") if device == "GPU" else (device,)
    for kind in kinds:
        try:
            prefs.compute_device_type = kind
        except TypeError:
            continue
        prefs.get_devices()
        gpus = [d for d in prefs.devices if d.type == kind]
        if gpus:
            for dev in prefs.devices:
                dev.use = dev.type == kind
            cycles.device = "GPU"
            logger.info("Cycles renders on %s: %s", kind, ", ".join(d.name for d in gpus))
            return
    raise RenderError("-", f"device {device!r} requested but no such GPU is visible")


def configure(scene: bpy.types.Scene, render: dict, seed: int, threads: int) -> None:
    """Apply one view's ``render`` settings and seed."""
    res = int(render.get("resolution", 64))
    scene.render.resolution_x = res
    scene.render.resolution_y = res
    cycles = scene.cycles
    cycles.samples = int(render.get("samples", 8))
    cycles.use_denoising = bool(render.get("denoise", False))
    bounces = int(render.get("bounces", 4))
    cycles.max_bounces = bounces
    cycles.diffuse_bounces = min(bounces, 3)
    cycles.glossy_bounces = bounces
    cycles.transmission_bounces = bounces
    cycles.transparent_max_bounces = max(bounces, 8)
    cycles.seed = int(seed) % 2**31
    transform = render.get("view_transform", "Standard")
    if transform not in VIEW_TRANSFORMS:
        raise ValueError(f"render.view_transform {transform!r} is not one of {VIEW_TRANSFORMS}")
    scene.view_settings.view_transform = transform
    scene.render.threads = threads


def place_camera(
    camera: bpy.types.Object,
    cam: dict,
    radius: float,
    light_rotation: float,
    target: object = None,
) -> dict:
    """Put ``camera`` at ``cam``'s distance (times ``radius``), elevation and azimuth, looking
    at the origin (or ``target``); return the camera record of the view's meta."""
    distance = float(cam.get("distance", 3.0)) * radius
    elevation = math.radians(float(cam.get("elevation", 20.0)))
    azimuth = math.radians(float(cam.get("azimuth", 0.0)))
    lens = float(cam.get("lens_mm", 50.0))
    location = Vector(
        (
            distance * math.cos(elevation) * math.sin(azimuth),
            -distance * math.cos(elevation) * math.cos(azimuth),
            distance * math.sin(elevation),
        )
    )
    # Rotating the light by +r about Z is the same picture as rotating object and camera
    # by -r: the world stays untouched, and a world update costs Cycles ~1 s (it rebuilds
    # the environment importance map), while moving objects is free.
    spin = Matrix.Rotation(-math.radians(light_rotation), 3, "Z")
    if target is None:
        camera.location = spin @ location
        camera.rotation_euler = (-(spin @ location)).to_track_quat("-Z", "Y").to_euler()
    else:
        # A selection scene: look at the objects' centre instead of the origin.
        location = location + Vector([float(c) for c in target])
        camera.location = spin @ location
        aim = spin @ Vector([float(c) for c in target]) - camera.location
        camera.rotation_euler = aim.to_track_quat("-Z", "Y").to_euler()
    camera.data.lens = lens
    camera.data.clip_start = max(1e-4, distance - 2.0 * radius) * 0.5
    camera.data.clip_end = distance + 4.0 * radius
    record = {
        "distance": float(cam.get("distance", 3.0)),
        "elevation": math.degrees(elevation),
        "azimuth": math.degrees(azimuth),
        "lens_mm": lens,
        "location_m": [round(float(c) * UNIT_M, 6) for c in location],
    }
    if target is not None:
        record["distance"] = round(record["distance"], 4)
        record["target_m"] = [round(float(c) * UNIT_M, 6) for c in target]
    return record


def frame_scene(
    camera: bpy.types.Object, cam: dict, corners: np.ndarray, light_rotation: float
) -> dict:
    """Aim the camera at the centre of the objects' bounding boxes, ``distance`` times
    their joint radius away, and back off until every box corner is inside the frame."""
    lo, hi = corners.min(0), corners.max(0)
    target = (lo + hi) / 2
    radius = float(np.linalg.norm(corners - target, axis=1).max())
    spin = np.array(Matrix.Rotation(-math.radians(light_rotation), 3, "Z"))
    world = corners @ spin.T
    factor = float(cam.get("distance", 3.0))
    limit = FRAME_FILL * SENSOR_MM / 2 / float(cam.get("lens_mm", 50.0))
    for _ in range(80):
        record = place_camera(camera, {**cam, "distance": factor}, radius, light_rotation, target)
        rot = np.array(camera.rotation_euler.to_matrix())
        local = (world - np.array(camera.location)) @ rot
        depth = -local[:, 2]
        if (depth > 0).all() and (np.abs(local[:, :2]).max(1) <= depth * limit).all():
            break
        factor *= 1.04
    record["scene_radius_m"] = round(radius * UNIT_M, 6)
    return record
