"""Samples and their view jobs: how one sample's V views are drawn.

Randomness is explicit: every sample has its own ``numpy.random.Generator`` seeded from the
spec seed and the sample key, so a sample's views do not depend on which other materials
exist. Each view draws a different mesh and light from its siblings while the pools have
enough entries, then starts repeating. A member of a hard-negative group draws its views
from the group's generator (seed, ``HARD_NEGATIVE_SALT``, group id) instead, so all members
see the same meshes, lights, cameras and backgrounds; only its render seeds come from its
own generator.

``view_job`` draws from its generator in a fixed order: plans (and their hashes) depend on
it. The planner (``render.plan``) calls ``plan_sample`` for every regular sample;
selection scenes (``render.scenes``) build their views with ``view_job`` too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from phieat.schema import HARD_NEGATIVE_GROUP, make_key
from render.spec import Spec

HARD_NEGATIVE_SALT = 130363


def digest(text: str) -> int:
    """A stable 64-bit integer of ``text`` (a seed part)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _uniform(rng: np.random.Generator, lo_hi: list[float]) -> float:
    lo, hi = lo_hi
    return round(float(rng.uniform(lo, hi)) if hi > lo else float(lo), 3)


def distinct_indices(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` indices into ``n`` entries, all different while ``k <= n``, then repeating."""
    out: list[int] = []
    while len(out) < k:
        take = min(n, k - len(out))
        out.extend(int(i) for i in rng.choice(n, size=take, replace=False))
    return out


def _background_color(spec: Spec, rng: np.random.Generator) -> list[float]:
    """A view's background colour: drawn from ``rng`` in "random" mode, else the spec's."""
    if spec.render.background == "random":
        return [round(float(c), 3) for c in rng.uniform(0.05, 0.95, size=3)]
    return [float(c) for c in spec.render.background_color]


def view_job(
    spec: Spec,
    rng: np.random.Generator,
    key: str,
    view: int,
    material: dict,
    mesh: dict,
    light: dict,
    render: dict[str, Any],
    distance: list[float],
) -> dict[str, Any]:
    """One view job; draws from ``rng`` in a fixed order (plans depend on it)."""
    color = _background_color(spec, rng)
    return {
        "key": key,
        "view": view,
        "material": material,
        "mesh": mesh,
        "light": light,
        "light_rotation": _uniform(rng, spec.lighting.rotation),
        "light_strength": _uniform(rng, spec.lighting.strength),
        "camera": {
            "distance": _uniform(rng, distance),
            "elevation": _uniform(rng, spec.camera.elevation),
            "azimuth": _uniform(rng, spec.camera.azimuth),
            "lens_mm": _uniform(rng, spec.camera.lens_mm),
        },
        "background": {"mode": spec.render.background, "color": color},
        "render": render,
        "seed": int(rng.integers(0, 2**31 - 1)),
    }


def render_record(spec: Spec, resolution: int = 0) -> dict[str, Any]:
    """The render settings every view job of ``spec`` carries; ``resolution`` (pixels per
    side) replaces ``[render].resolution`` when given (selection scenes: ``render.scenes``)."""
    r = spec.render
    return {
        "resolution": resolution or r.resolution,
        "samples": r.samples,
        "denoise": r.denoise,
        "bounces": r.bounces,
        "view_transform": r.view_transform,
        "image_format": r.image_format,
        "jpeg_quality": r.jpeg_quality,
        "passes": list(r.passes),
    }


def plan_sample(
    spec: Spec,
    material: dict,
    group: int,
    meshes: list[dict],
    lights: list[dict],
    hard_negative_group: str | None = None,
) -> dict[str, Any]:
    """One sample: V view jobs of ``material``, drawn with the sample's own seeded generator.

    A member of a hard-negative group draws its views from the group's generator instead, so
    all members see the same meshes, lights, cameras and backgrounds; its render seeds still
    come from its own generator.
    """
    key = make_key(material["id"], group)
    rng = np.random.default_rng([spec.dataset.seed, digest(key)])
    own = rng
    if hard_negative_group:
        rng = np.random.default_rng(
            [spec.dataset.seed, HARD_NEGATIVE_SALT, digest(hard_negative_group)]
        )
    views = spec.dataset.views
    mesh_idx = distinct_indices(rng, len(meshes), views)
    light_idx = distinct_indices(rng, len(lights), views)
    render = render_record(spec)
    jobs = [
        view_job(
            spec,
            rng,
            key,
            v,
            material,
            meshes[mesh_idx[v]],
            lights[light_idx[v]],
            render,
            spec.camera.distance,
        )
        for v in range(views)
    ]
    if not hard_negative_group:
        return {"key": key, "material": material, "views": jobs}
    for job in jobs:
        job["seed"] = int(own.integers(0, 2**31 - 1))
    return {
        "key": key,
        "material": material,
        "views": jobs,
        HARD_NEGATIVE_GROUP: hard_negative_group,
    }
