"""A renderer without Blender for the fault tests: ``FakeSession`` renders each view as a
two-tone JPEG coloured by material and view (never one flat colour, the same bytes every
time), so builds run in seconds and equal plans give equal shards."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


class _View:
    def __init__(self, image: bytes, meta: dict) -> None:
        self.image, self.mask, self.matid, self.meta = image, None, None, meta


class FakeSession:
    """A renderer without Blender: each view a two-tone 32 px JPEG (never one flat colour)."""

    blender_version = "5.0.1"

    def __init__(self, threads: int = 1, device: str = "CPU", quiet: bool = True) -> None:
        pass

    def render_view(self, job: dict) -> _View:
        res = job["render"]["resolution"]
        shade = hashlib.sha256(f"{job['material']['id']}/{job['view']}".encode()).digest()[:3]
        rgb = np.empty((res, res, 3), np.uint8)
        rgb[:] = np.frombuffer(shade, np.uint8)
        rgb[:, : res // 2] //= 2
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        meta = {
            "mesh_id": job["mesh"]["id"],
            "light_id": job["light"]["id"],
            "light_rotation": job["light_rotation"],
            "light_strength": job["light_strength"],
            "camera": job["camera"],
            "seed": job["seed"],
            "samples": job["render"]["samples"],
            "view_transform": job["render"]["view_transform"],
            "render_time_s": 0.001,
            "engine_time_s": 0.0005,
        }
        return _View(buf.getvalue(), meta)

    def reset(self) -> None:
        pass

    def rss_mb(self) -> float:
        return 100.0
