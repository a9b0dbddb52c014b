"""From a finished Cycles render to the bytes of one view.

Cycles renders with a transparent film and the Environment and Material Index passes;
``read_render_passes`` reads them back from an uncompressed EXR (``render.blender.exr``),
``composite`` lays the visible background (HDRI, blurred HDRI, plain or random colour) under
the object's alpha in linear light, and ``encode`` hands the linear image to Blender's colour
management (Standard or AgX view transform) to write JPEG, PNG or EXR bytes. The mask and
material-index images are plain greyscale PNGs (``png``). ``RenderedView`` is what
``BlenderSession.render_view`` returns.

Intermediate files go to the session's temporary folder and are removed right after they are
read, so a killed worker leaves nothing behind in ``/dev/shm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

from render.blender.exr import read_passes

OUTPUT_IMAGE = "phieat-output"
BACKGROUND_MODES = ("hdri", "plain", "random", "blur")
IMAGE_FORMATS = ("jpg", "png", "png16", "exr")


@dataclass
class RenderedView:
    """One rendered view: encoded image bytes, optional mask / material-index PNGs, metadata."""

    image: bytes
    mask: bytes | None
    matid: bytes | None
    meta: dict = field(default_factory=dict)


def read_render_passes(scene: bpy.types.Scene, tmp: Path) -> dict[str, np.ndarray]:
    """The passes of the last render by name (``Combined.R``, ``Environment.G``, ...)."""
    settings = scene.render.image_settings
    settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.exr_codec = "NONE"
    settings.color_depth = "32"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "passes.exr"
    bpy.data.images["Render Result"].save_render(str(path), scene=scene)
    raw = read_passes(path)
    path.unlink()
    layer = scene.view_layers[0].name
    passes: dict[str, np.ndarray] = {}
    for name, values in raw.items():
        if name.startswith(layer + "."):
            passes[name[len(layer) + 1 :]] = values
    return passes


def composite(
    passes: dict[str, np.ndarray], strength: float, background: dict, mode: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The linear (H, W, 3) image with its background, and the object's alpha (H, W).

    ``strength`` scales the light (rendering is linear in it). A ``random`` background
    without a colour draws one from ``seed`` and writes it into ``background`` (the view's
    meta records it).
    """
    alpha = np.clip(passes["Combined.A"], 0.0, 1.0)
    rgb = strength * np.stack([passes[f"Combined.{c}"] for c in "RGB"], axis=-1)
    env = strength * np.stack([passes[f"Environment.{c}"] for c in "RGB"], axis=-1)
    if mode == "hdri":
        # The Environment pass is already weighted by background coverage.
        rgb = rgb + env
    else:
        if mode == "blur":
            # Fill the object's hole by normalised convolution, then blur.
            sigma = float(background.get("sigma", 0.04)) * rgb.shape[1]
            cover = (1.0 - alpha)[..., None]
            num = _gaussian_blur(env, sigma)
            den = _gaussian_blur(cover, sigma)
            fill = num / np.maximum(den, 1e-4)
        else:
            color = background.get("color")
            if color is None:
                color = np.random.default_rng(seed).uniform(0.05, 0.9, 3).tolist()
                background["color"] = color
            fill = np.broadcast_to(np.asarray(color, np.float32)[:3], rgb.shape)
        rgb = rgb + (1.0 - alpha)[..., None] * fill
    return rgb, alpha


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) array with edge padding."""
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, k in enumerate(kernel):
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(i, i + out.shape[axis])
            acc += k * padded[tuple(sl)]
        out = acc
    return out.astype(np.float32)


def encode(scene: bpy.types.Scene, rgb: np.ndarray, render: dict, tmp: Path) -> bytes:
    """Encode a linear (H, W, 3) image with the scene's colour management."""
    fmt = render.get("image_format", "jpg")
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"render.image_format {fmt!r} is not one of {IMAGE_FORMATS}")
    h, w, _ = rgb.shape
    image = bpy.data.images.get(OUTPUT_IMAGE)
    if image is None or tuple(image.size) != (w, h):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(OUTPUT_IMAGE, w, h, alpha=True, float_buffer=True)
        image.colorspace_settings.name = "Linear Rec.709"
    rgba = np.concatenate([rgb, np.ones((h, w, 1), np.float32)], axis=2)
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())
    settings = scene.render.image_settings
    settings.media_type = "IMAGE"
    settings.color_mode = "RGB"
    if fmt == "jpg":
        settings.file_format = "JPEG"
        settings.quality = int(render.get("jpeg_quality", 92))
        suffix = ".jpg"
    elif fmt in ("png", "png16"):
        settings.file_format = "PNG"
        settings.color_depth = "16" if fmt == "png16" else "8"
        settings.compression = 15
        suffix = ".png"
    else:
        settings.file_format = "OPEN_EXR"
        settings.color_depth = "16"
        settings.exr_codec = "ZIP"
        suffix = ".exr"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"view{suffix}"
    image.save_render(str(path), scene=scene)
    data = path.read_bytes()
    path.unlink()  # a killed worker leaves nothing behind in /dev/shm
    return data


def png(array: np.ndarray) -> bytes:
    """8-bit (uint8) or 16-bit (uint16) greyscale PNG bytes."""
    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
