"""What a plan costs and how it reads: images, core-hours, wall-clock time and bytes
(``estimate``, printed by ``plan --estimate`` with ``format_estimate``) and a one-line-per-shard
summary (``describe``).

The cost model (``model_core_s_per_image``) and the fit it comes from are documented below,
beside its constants. This module only reads a ``render.plan.Plan``; the planner never
imports it.
"""

from __future__ import annotations

import os
from typing import Any

from phieat.schema import IMAGE_FORMATS
from render.errors import PlanError
from render.plan import Plan, ShardPlan
from render.spec import Spec

# Cost model in core-seconds per image: the CPU time Blender and the build spend on one view,
# which is what a Ray pool that keeps every core busy needs in cores x wall-clock seconds.
# Fitted on 2026-12-02 on a shared 2-core x86 machine (AMD EPYC, 1 thread per core, bpy 5.0.1)
# from the user CPU time (getrusage) of local builds with one 1-thread BlenderSession started
# beforehand, the shipped catalogs, 4 materials x 3 views per build with manifests/tiny.toml's
# camera, every view on another mesh and HDRI, 3 plan seeds, 3-8 runs per setting (user core-s
# per image, mean and range; the model's value after the arrow):
#    32 px / 16 samples:   0.115 (0.10-0.13) -> 0.13    + denoiser: 0.18 (0.15-0.20) -> 0.20
#    64 px / 16 samples:   0.31  (0.28-0.33) -> 0.29    + denoiser: 0.41 (0.34-0.49) -> 0.42
#   128 px / 16 samples:   0.93  (0.78-1.08) -> 0.92    + denoiser: 1.20 (1.09-1.29) -> 1.30
# and the demo's training views (manifests/loop-train.toml: 64 px / 16 samples + denoiser,
# closer camera), 8 runs of 3 materials x 4 views: 0.46 (0.33-0.54) -> 0.42.
# System time is left out: while the one Cycles thread renders, Blender's idle worker threads
# yield the CPU in a loop, which costs up to 0.3 s of system time per 64 px view when a core is
# idle and almost nothing when the machine is busy; it is not work a full pool pays for.
# Path tracing scales with pixels x samples (3.2e-6 core-s per pixel-sample). The fixed part
# per view (0.08 core-s) is scene sync, building the view's mesh and material, pass I/O,
# compositing and encoding, measured without any cache of meshes or materials across views:
# with 3-12 views per shard nearly every view builds its own mesh. A cache that reuses them
# lowers this term; refit it then. OpenImageDenoise adds a start-up cost plus a cost per pixel.
# Against the pool benchmark of docs/cluster.md (cores x wall-clock, 2-thread actors included):
# 128 px / 16 samples 0.90-1.13 (model 0.92), 256 px / 32 samples 5.65-6.17 (model 6.8), and
# the README's demo, 4-6 images/s on 2 idle cores at 64 px / 16 samples + denoiser: 0.33-0.50
# (model 0.42). On other hardware use `plan --estimate --core-s-per-image X` with a number
# from bench/render_bench.py. tests/faults/test_render_faults.py checks the model against a
# small real build (within 30 %).
CORE_S_PER_PIXEL_SAMPLE = 3.2e-6
CORE_S_FIXED_PER_VIEW = 0.08
CORE_S_DENOISE_FIXED = 0.05
CORE_S_DENOISE_PER_PIXEL = 2.0e-5
BYTES_PER_PIXEL = {"jpg": 0.35, "png": 1.3, "png16": 3.2, "exr": 4.5}
PASS_BYTES_PER_PIXEL = {"mask": 0.04, "matid": 0.06}
TAR_MEMBER_OVERHEAD = 768  # header plus average padding


def model_core_s_per_image(resolution: int, samples: int, denoise: bool) -> float:
    """The model's core-seconds per image at these render settings (see above): the CPU time
    of rendering, building the scene of and encoding one view, Blender's start-up excluded."""
    pixels = resolution * resolution
    cost = CORE_S_FIXED_PER_VIEW + CORE_S_PER_PIXEL_SAMPLE * pixels * samples
    if denoise:
        cost += CORE_S_DENOISE_FIXED + CORE_S_DENOISE_PER_PIXEL * pixels
    return cost


def image_resolutions(shards: list[ShardPlan], default: int) -> dict[int, int]:
    """``{pixels per side: images}`` over the view jobs of ``shards`` (``default`` for a job
    that names none)."""
    counts: dict[int, int] = {}
    for shard in shards:
        for sample in shard.samples:
            for job in sample["views"]:
                res = int((job.get("render") or {}).get("resolution") or default)
                counts[res] = counts.get(res, 0) + 1
    return counts


def estimate(
    plan: Plan,
    shards: list[ShardPlan] | None = None,
    core_s_per_image: float | None = None,
    cores: int | None = None,
) -> dict[str, Any]:
    """Expected images, core-hours, wall-clock time on ``cores`` cores (default: this
    machine's) and bytes of ``shards`` (default: the whole plan)."""
    shards = plan.shards if shards is None else shards
    r = plan.spec.render
    cores = int(cores or os.cpu_count() or 1)
    if cores < 1:
        raise PlanError(f"cores must be >= 1, got {cores}")
    images = sum(s.num_images for s in shards)
    samples = sum(len(s.samples) for s in shards)
    # Images per resolution: selection scenes may render at their own ([scenes].resolution).
    by_resolution = image_resolutions(shards, r.resolution)
    base = model_core_s_per_image(r.resolution, r.samples, r.denoise)
    core_s = 0.0
    pixel_total = 0
    for res, n in by_resolution.items():
        # A given cost per image is one at [render].resolution; other sizes scale with the model.
        cost = base if res == r.resolution else model_core_s_per_image(res, r.samples, r.denoise)
        core_s += n * (cost if core_s_per_image is None else core_s_per_image * cost / base)
        pixel_total += n * res * res
    # The mean over the plan's images (the given or modelled cost when all are one size).
    core_s_per_image = core_s / images if images else (core_s_per_image or base)
    members_per_view = 1 + len(r.passes)
    per_pixel = BYTES_PER_PIXEL[r.image_format] + sum(PASS_BYTES_PER_PIXEL[p] for p in r.passes)
    image_bytes = per_pixel * pixel_total
    total_bytes = (
        image_bytes
        + images * members_per_view * TAR_MEMBER_OVERHEAD
        + samples * (1200 * plan.spec.dataset.views + TAR_MEMBER_OVERHEAD)
    )
    return {
        "shards": len(shards),
        "samples": samples,
        "images": images,
        "core_s_per_image": round(core_s_per_image, 4),
        "core_hours": round(core_s / 3600.0, 3),
        "cores": cores,
        "wall_s": round(core_s / cores, 1),
        "bytes": int(total_bytes),
        "image_format": r.image_format,
        "extension": IMAGE_FORMATS[r.image_format],
    }


def format_bytes(n: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.25 GB``, ``2.0 TB`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_estimate(est: dict[str, Any], spec: Spec) -> str:
    """The estimate as ``plan --estimate`` prints it (before the shard listing)."""
    r = spec.render
    denoise = " + denoiser" if r.denoise else ""
    scenes = ""
    if spec.scenes.count and spec.scene_resolution != r.resolution:
        scenes = f", selection scenes at {spec.scene_resolution} px"
    mean = "mean " if scenes else ""
    return (
        f"estimate: {est['images']} images in {est['shards']} shards, about "
        f"{format_duration(est['wall_s'])} on {est['cores']} cores "
        f"({est['core_hours']:.3g} core-hours, {est['core_s_per_image']:.2f} {mean}core-s per "
        f"image at {r.resolution} px{scenes} / {r.samples} samples{denoise}), "
        f"{format_bytes(est['bytes'])} of {est['image_format']} shards"
    )


def describe(plan: Plan, shards: list[ShardPlan] | None = None, max_shards: int = 20) -> str:
    """A human-readable summary: one line per shard, then totals."""
    shards = plan.shards if shards is None else shards
    lines = []
    for shard in shards[:max_shards]:
        keys = ", ".join(s["key"] for s in shard.samples[:3])
        more = f", ... (+{len(shard.samples) - 3})" if len(shard.samples) > 3 else ""
        lines.append(
            f"{shard.name}  gen {shard.generation}  {len(shard.samples):4d} samples  "
            f"{shard.num_images:5d} images  plan {shard.plan_hash}  [{keys}{more}]"
        )
    if len(shards) > max_shards:
        lines.append(f"... {len(shards) - max_shards} more shards")
    lines.append(
        f"{len(shards)} shards, {sum(len(s.samples) for s in shards)} samples, "
        f"{sum(s.num_images for s in shards)} images"
    )
    return "\n".join(lines)
