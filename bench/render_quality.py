"""Quality per second: how close cheap render settings come to a high-sample reference.

    python bench/render_quality.py --grid "64:4,16" --reference-samples 128   # a quick look
    python bench/render_quality.py --reference-samples 256 --time-budget-s 1380 \\
        --grid "64:4,8,16,32,64;256:4,8,16,32;128:4,8,16,32"  # the run in docs/cluster.md
    python bench/render_quality.py --rescore out/rq.json --criterion worst   # no rendering

Six catalog materials of different families (brushed metal, glazed ceramic with subsurface,
fabric, marble with subsurface, car paint with a clear coat, coated wood) are rendered on one
catalog mesh under one catalog HDRI at each resolution x samples x denoiser x adaptive
sampling setting of ``--grid`` and scored against a reference of the same view:

* **Reference**: two renders with ``--reference-samples / 2`` samples each (no denoiser, no
  adaptive sampling) and seeds other than the job's. Their mean is the reference; their
  difference measures its own noise (``E|a - b|^2`` is twice one half's noise; the mean has
  half of it). That noise is independent of the scored image and adds to the measured MSE:
  ``PSNR raw`` is against the reference as it is, ``PSNR`` (mean, worst material) against a
  noise-free one, the measured noise taken out of the MSE (floored at a tenth of it: at most
  10 dB above what the reference resolves). SSIM is against the reference as it is.
* **PSNR** and **SSIM** (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2
  0.03, per RGB channel, averaged) of the 8-bit display image, only over the object (the
  reference's alpha >= 0.5); the background is an HDRI lookup, not path traced.
* **Seconds per view**: ``engine``: Cycles' ``bpy.ops.render.render`` (denoiser included);
  ``wall``: the whole ``BlenderSession.render_view`` (PNG encoding included: builds write
  JPEG, ~0.18 s less at 256 px); ``cpu``: the process's CPU time in that call, all threads.
  On a shared machine wall time mostly measures the neighbours: rank and plot use CPU time.

The jobs are the planner's own: ``render.views.plan_sample`` on ``manifests/loop-train.toml``
with ``render.resolution/samples/denoise`` overridden (PNG output, mask pass), i.e. what a
build of that spec renders. Adaptive sampling is no spec setting (builds render without it):
here it is switched on in the session's scene with Blender's defaults (noise threshold 0.01,
automatic minimum samples; the job's samples are the maximum) from ``--adaptive-min-samples``.

A setting *passes* when its PSNR (``--criterion``: mean over materials, or the worst) is >=
``--psnr-threshold`` (and SSIM >= ``--ssim-threshold`` if set); the cheapest passing one a
spec can ask for (adaptive off) is each resolution's recommendation. Prints a table and a
JSON line (``--json-out``: every row, for ``--rescore``), draws the figure with Pillow.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render.catalogs import load_catalogs  # noqa: E402
from render.spec import Spec, load_spec  # noqa: E402
from render.views import plan_sample  # noqa: E402

BASE_SPEC = ROOT / "manifests" / "loop-train.toml"
MATERIALS = (
    "metal-brushed-0000-2f3cb4",
    "ceramic-0000-3b7d64",
    "fabric-0000-f844f0",
    "marble-0000-0a7b26",
    "car-paint-0000-4cf212",
    "wood-0012-f9da4c",
)
MESH = "lathe-vase-bulb"
LIGHT = "hdri-courtyard"
SHIPPED = {64: (16, True), 128: (16, False), 256: (32, True)}  # loop-*/demo/full.toml
DEFAULT_GRID = "64:4,8,16,32,64;128:4,8,16,32;256:4,8,16,32"
ADAPTIVE_THRESHOLD = 0.01  # Blender's default noise threshold
# SSIM constants of Wang et al. (2004), for images in [0, 1].
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03


# ----------------------------------------------------------------------------- metrics


def object_mask(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean (H, W) mask of the object: ``alpha`` (0-1 floats or 0-255 uint8) >= threshold."""
    alpha = np.asarray(alpha)
    alpha = alpha / 255.0 if alpha.dtype == np.uint8 else alpha
    mask = (alpha[..., 0] if alpha.ndim == 3 else alpha) >= threshold
    if not mask.any():
        raise ValueError("the object mask is empty: the object is not in the image")
    return mask


def psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of (H, W[, C]) images in [0, 1] over the pixels of ``mask`` (inf if equal)."""
    err = (np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2
    if err.ndim == 3:
        err = err.mean(axis=2)
    mse = float(err[mask].mean() if mask is not None else err.mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_blur(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian (sigma 1.5, 11 taps) over the first two axes, mirrored edges."""
    t = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    kernel /= kernel.sum()
    r = SSIM_RADIUS
    pad = [(r, r), (r, r)] + [(0, 0)] * (x.ndim - 2)
    p = np.pad(x, pad, mode="symmetric")  # = scipy.ndimage "reflect", scikit-image's mode
    h, w = x.shape[:2]
    rows = sum(k * p[i : i + h] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def ssim_map(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of (H, W[, C]) images in [0, 1], averaged over channels: (H, W)."""
    x, y = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    vx, vy = _gaussian_blur(x * x) - mx * mx, _gaussian_blur(y * y) - my * my
    cov = _gaussian_blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=2) if s.ndim == 3 else s


def ssim(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the pixels of ``mask`` (the window still sees the pixels around them)."""
    s = ssim_map(image, reference)
    return float(s[mask].mean() if mask is not None else s.mean())


def decode(png: bytes) -> np.ndarray:
    """An 8-bit PNG as floats in [0, 1]: (H, W, 3) for RGB, (H, W) for greyscale."""
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64) / 255.0


# ----------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Setting:
    resolution: int
    samples: int
    denoise: bool
    adaptive: bool


def variant_spec(base: Path, resolution: int, samples: int, denoise: bool) -> Spec:
    """The shipped spec with other render settings, lossless output and the mask pass."""
    extra = [f"render.resolution={resolution}", f"render.samples={samples}"]
    extra += [f"render.denoise={str(denoise).lower()}", 'render.image_format="png"']
    return load_spec(base, overrides=[*extra, 'render.passes=["mask"]'])


def view_job(spec: Spec, material: dict, mesh: dict, light: dict) -> dict:
    """View 0 of the material's first sample, as the planner makes it (one mesh, one light)."""
    return plan_sample(spec, material, 0, [mesh], [light])["views"][0]


def catalog_entries(base: Path, material_ids: list[str], mesh_id: str, light_id: str):
    """The catalog entries named on the command line (an unknown ID stops the bench)."""
    catalogs = load_catalogs(load_spec(base))
    found = []
    for kind, wanted in [("materials", m) for m in material_ids] + [
        ("meshes", mesh_id),
        ("lights", light_id),
    ]:
        by_id = {entry["id"]: entry for entry in getattr(catalogs, kind)}
        if wanted not in by_id:
            raise SystemExit(f"{wanted!r} is not in the {kind} catalog of {base}: pass another")
        found.append(by_id[wanted])
    return found[:-2], found[-2], found[-1]


# ----------------------------------------------------------------------------- rendering


def render(session, job: dict, adaptive: bool) -> dict:
    """Render one job; return its image, alpha and times (engine, wall, process CPU)."""
    cycles = session.scene.cycles
    cycles.use_adaptive_sampling = adaptive
    cycles.adaptive_threshold = ADAPTIVE_THRESHOLD
    cycles.adaptive_min_samples = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    view = session.render_view(job)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if bool(session.scene.cycles.use_adaptive_sampling) != adaptive:
        raise RuntimeError("the session reset adaptive sampling during the render")
    image, alpha, engine = decode(view.image), decode(view.mask), view.meta["engine_time_s"]
    return {"image": image, "alpha": alpha, "engine": engine, "wall": wall, "cpu": cpu}


def reference(session, spec: Spec, material: dict, mesh: dict, light: dict) -> dict:
    """Two renders of the view with other seeds and half the reference samples each: their
    mean is the reference, and half their difference measures the reference's own noise."""
    job = view_job(spec, material, mesh, light)
    halves = []
    for k in (1, 2):
        half = {**job, "seed": (job["seed"] + k) % (2**31 - 1)}
        halves.append(render(session, half, False))
    a, b = halves[0]["image"], halves[1]["image"]
    mask = object_mask(halves[0]["alpha"])
    # Independent noise: E|a - b|^2 = 2 var(half), and the mean has var(half) / 2.
    noise_mse = 10 ** (-psnr(a, b, mask) / 10) / 4
    wall, cpu = (sum(h[k] for h in halves) for k in ("wall", "cpu"))
    return {"image": (a + b) / 2, "mask": mask, "noise_mse": noise_mse, "wall": wall, "cpu": cpu}


def corrected_psnr(measured: float, noise_mse: float) -> float:
    """PSNR against a noise-free reference: the reference's independent noise taken out of
    the measured MSE, floored at a tenth of it (at most 10 dB above what it resolves)."""
    mse = 10 ** (-measured / 10)
    return -10 * math.log10(max(mse - noise_mse, 0.1 * noise_mse))


def run(args: argparse.Namespace) -> dict:
    from render.blender.session import BlenderSession

    base = Path(args.spec)
    materials, mesh, light = catalog_entries(base, args.materials, args.mesh, args.light)
    session = BlenderSession(threads=args.threads, quiet=True)
    rows, refs, skipped = [], [], []
    started = time.perf_counter()
    for res, samples in args.grid.items():
        for material in materials:
            if args.time_budget_s and time.perf_counter() - started > args.time_budget_s:
                skipped.append(f"{material['id']}@{res}px")
                continue
            # Build the material, mesh and world before any clock runs.
            warm = variant_spec(base, 32, 1, False)
            render(session, view_job(warm, material, mesh, light), False)
            ref_spec = variant_spec(base, res, args.reference_samples // 2, False)
            ref = reference(session, ref_spec, material, mesh, light)
            mask = ref["mask"]
            noise_psnr = -10 * math.log10(max(ref["noise_mse"], 1e-12))
            refs.append({"material": material["id"], "resolution": res, "wall_s": ref["wall"]})
            refs[-1].update(cpu_s=ref["cpu"], mask_pixels=int(mask.sum()), noise_psnr=noise_psnr)
            grid = [
                Setting(res, spp, dn, ad)
                for spp in samples
                for dn in (False, True)
                for ad in (False, True)
                if spp >= args.adaptive_min_samples or not ad
            ]
            for setting in grid:
                spec = variant_spec(base, res, setting.samples, setting.denoise)
                job = view_job(spec, material, mesh, light)
                best = None
                for _ in range(args.repeat):
                    out = render(session, job, setting.adaptive)
                    if best is None or out["cpu"] < best["cpu"]:
                        best = out
                measured = psnr(best["image"], ref["image"], mask)
                row = {"material": material["id"], **setting.__dict__, "engine_s": best["engine"]}
                row.update(wall_s=best["wall"], cpu_s=best["cpu"], psnr_raw=measured)
                row["psnr"] = corrected_psnr(measured, ref["noise_mse"])
                row["ssim"] = ssim(best["image"], ref["image"], mask)
                rows.append(row)
            print(
                f"  {res}px {material['id']} done ({time.perf_counter() - started:.0f} s,"
                f" load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
                flush=True,
            )
    session.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "refs": refs, "skipped": skipped, "seconds": seconds}


# ----------------------------------------------------------------------------- summary


def summarise(result: dict, args: argparse.Namespace) -> dict:
    rows, refs = result["rows"], result["refs"]
    settings: dict[Setting, list[dict]] = {}
    for row in rows:
        key = Setting(row["resolution"], row["samples"], row["denoise"], row["adaptive"])
        settings.setdefault(key, []).append(row)
    table = []
    for s, rs in settings.items():
        entry = {**s.__dict__, "materials": len(rs)}
        for key in ("engine_s", "wall_s", "cpu_s"):
            entry[key] = float(np.mean([r[key] for r in rs]))
        for key in ("psnr_raw", "psnr", "ssim"):
            entry[f"{key}_mean"] = float(np.mean([r[key] for r in rs]))
            entry[f"{key}_min"] = float(min(r[key] for r in rs))
        entry["psnr_min_material"] = min(rs, key=lambda r: r["psnr"])["material"]
        agg = "min" if args.criterion == "worst" else "mean"
        entry["passes"] = entry[f"psnr_{agg}"] >= args.psnr_threshold and (
            entry[f"ssim_{agg}"] >= args.ssim_threshold
        )
        entry["shipped"] = SHIPPED.get(s.resolution) == (s.samples, s.denoise) and not s.adaptive
        table.append(entry)
    recommend = {}
    for res in args.grid:
        ok = [e for e in table if e["resolution"] == res and e["passes"]]
        # A spec cannot ask for adaptive sampling: the recommendation is a spec setting.
        spec_ok = [e for e in ok if not e["adaptive"]]
        best = min(spec_ok, key=lambda e: e["cpu_s"]) if spec_ok else None
        adaptive = min(ok, key=lambda e: e["cpu_s"]) if ok else None
        shipped = next((e for e in table if e["resolution"] == res and e["shipped"]), None)
        recommend[res] = {"cheapest_passing": best, "cheapest_passing_any": adaptive}
        recommend[res]["shipped"] = shipped
    per_res = {}
    for res in args.grid:
        rr = [r for r in refs if r["resolution"] == res]
        if rr:
            noise = [r["noise_psnr"] for r in rr]
            per_res[res] = {"reference_noise_psnr_min": min(noise)}
            per_res[res]["reference_noise_psnr_mean"] = float(np.mean(noise))
            for key in ("cpu_s", "wall_s"):
                per_res[res][f"reference_{key}"] = float(np.mean([r[key] for r in rr]))
    return {"table": table, "recommend": recommend, "references": per_res}


def print_table(summary: dict, args: argparse.Namespace) -> None:
    heads = "res spp denoise adaptive engine_s wall_s cpu_s PSNR_raw PSNR_mean PSNR_min"
    print(" ".join(f"{h:>8}" for h in (heads + " SSIM_mean SSIM_min").split()), " note")
    order = ("resolution", "denoise", "adaptive", "samples")
    for e in sorted(summary["table"], key=lambda e: [e[k] for k in order]):
        note = ("pass" if e["passes"] else "") + (" shipped" if e["shipped"] else "")
        if summary["recommend"][e["resolution"]]["cheapest_passing"] is e:
            note += " <- cheapest passing"
        cells = [e["resolution"], e["samples"], *("on" if e[k] else "off" for k in order[1:3])]
        cells += [f"{e[k]:.3f}" for k in ("engine_s", "wall_s", "cpu_s")]
        cells += [f"{e[k]:.2f}" for k in ("psnr_raw_mean", "psnr_mean", "psnr_min")]
        cells += [f"{e[k]:.4f}" for k in ("ssim_mean", "ssim_min")]
        print(" ".join(f"{c:>8}" for c in cells), "", note.strip())
    for res, r in summary["references"].items():
        print(
            f"{res:>4} reference 2 x {args.reference_samples // 2} spp: {r['reference_wall_s']:.1f} s"
            f" wall, {r['reference_cpu_s']:.1f} s CPU; its own noise: PSNR"
            f" {r['reference_noise_psnr_min']:.1f} (worst material), {r['reference_noise_psnr_mean']:.1f}"
            " (mean)"
        )
    print(
        "PSNR raw: against the reference; PSNR mean/min: its noise taken out (see --help);"
        f" pass: {'worst material' if args.criterion == 'worst' else 'mean'}"
        f" PSNR >= {args.psnr_threshold} dB"
        + (f" and SSIM >= {args.ssim_threshold}" if args.ssim_threshold else "")
        + " on the object mask; cheapest: CPU seconds per view"
    )


# ----------------------------------------------------------------------------- figure

COLOURS = {64: (31, 119, 180), 128: (44, 160, 44), 256: (214, 39, 40)}


def plot(summary: dict, path: Path, args: argparse.Namespace) -> None:
    """PSNR and SSIM (means over materials) vs CPU seconds per view, log scale: one curve
    per resolution x denoiser, adaptive sampling off (on gave the same images here)."""
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    table = [e for e in summary["table"] if not e["adaptive"]]
    img = Image.new("RGB", (900, 760), "white")
    draw = ImageDraw.Draw(img)
    x_lo = math.log10(min(e["cpu_s"] for e in table) * 0.8)
    x_hi = math.log10(max(e["cpu_s"] for e in table) * 1.25)
    panels = (
        ("psnr_mean", "PSNR on the object vs a noise-free reference, dB", args.psnr_threshold),
        ("ssim_mean", "SSIM on the object vs the reference", args.ssim_threshold or 0.95),
    )
    for n, (key, title, line) in enumerate(panels):
        x0, y0, x1, y1 = 60, 50 + n * 350, 880, 340 + n * 350
        ys = [e[key] for e in table if math.isfinite(e[key])] + [line]
        pad = 0.05 * (max(ys) - min(ys) or 1)
        y_lo, y_hi = min(ys) - pad, max(ys) + pad

        def px(x, y, x0=x0, y0=y0, x1=x1, y1=y1, y_lo=y_lo, y_hi=y_hi):
            u = (math.log10(x) - x_lo) / (x_hi - x_lo)
            return x0 + u * (x1 - x0), y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0)

        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 16), f"{title} (mean of materials)", fill="black", font=font)
        for x in (m * 10.0**d for d in range(-2, 3) for m in (1, 2, 5)):
            if x_lo <= math.log10(x) <= x_hi:
                draw.line([px(x, y_lo)[0], y0, px(x, y_lo)[0], y1], fill=(225, 225, 225))
                draw.text((px(x, y_lo)[0] - 8, y1 + 4), f"{x:g}", fill="black", font=font)
        for k in range(6):
            y = y_lo + k * (y_hi - y_lo) / 5
            draw.text((8, px(1.0, y)[1] - 6), f"{y:.3g}", fill="black", font=font)
        draw.line([x0, px(1.0, line)[1], x1, px(1.0, line)[1]], fill=(120, 120, 120))
        draw.text((x1 - 90, px(1.0, line)[1] - 15), f"{line:g}", fill=(90, 90, 90), font=font)
        draw.text((380, y1 + 18), "CPU seconds per view (log)", fill="black", font=font)
        for res in sorted(args.grid):
            for denoise in (False, True):
                curve = sorted(
                    (e for e in table if e["resolution"] == res and e["denoise"] == denoise),
                    key=lambda e: e["samples"],
                )
                colour = COLOURS.get(res, (0, 0, 0))
                if not denoise:  # a lighter shade without the denoiser
                    colour = tuple(int(c + (255 - c) * 0.5) for c in colour)
                points = [px(e["cpu_s"], e[key]) for e in curve if math.isfinite(e[key])]
                if len(points) > 1:
                    draw.line(points, fill=colour, width=3)
                for (u, v), e in zip(points, curve, strict=False):
                    draw.ellipse([u - 4, v - 4, u + 4, v + 4], fill=colour)
                    draw.text((u + 5, v + 3), str(e["samples"]), fill=colour, font=font)
                label = f"{res} px {'denoised' if denoise else 'raw'}"
                slot = sorted(args.grid).index(res) * 2 + denoise
                draw.line([60 + slot * 135, 12, 78 + slot * 135, 12], fill=colour, width=3)
                draw.text((82 + slot * 135, 6), label, fill="black", font=font)
    draw.text(
        (60, 735),
        f"numbers: samples per pixel; reference 2 x {args.reference_samples // 2} samples;"
        f" {len(args.materials)} materials; {args.mesh}; {args.light}",
        fill="black",
        font=font,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    img.quantize(colors=64).save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- CLI


def parse_grid(text: str) -> dict[int, list[int]]:
    """``"64:4,16;256:8"`` -> ``{64: [4, 16], 256: [8]}``."""
    grid = {}
    for group in filter(None, text.split(";")):
        res, _, samples = group.partition(":")
        grid[int(res)] = [int(x) for x in samples.split(",")]
    return grid


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--grid", type=parse_grid, default=parse_grid(DEFAULT_GRID), help="res:spp,...;res:...")
    add("--reference-samples", type=int, default=1024, help="two halves, other seeds, raw")
    add("--adaptive-min-samples", type=int, default=16, help="adaptive only from these spp")
    add("--time-budget-s", type=float, default=0, help="skip what is left after this; 0: none")
    add("--materials", type=lambda t: t.split(","), default=list(MATERIALS), help="IDs, a,b,c")
    add("--mesh", default=MESH, help="mesh ID of the spec's meshes catalog")
    add("--light", default=LIGHT, help="light ID of the spec's lights catalog")
    add("--spec", default=str(BASE_SPEC), help="shipped spec the jobs are planned from")
    add("--threads", type=int, default=2, help="Cycles threads")
    add("--repeat", type=int, default=1, help="renders per setting; least CPU time counts")
    add("--psnr-threshold", type=float, default=35.0, help="dB on the object")
    add("--ssim-threshold", type=float, default=0.0, help="0: not a criterion")
    add("--criterion", choices=("mean", "worst"), default="mean", help="over the materials")
    add("--rescore", help="a --json-out file to summarise again, without rendering")
    add("--figure", default=str(ROOT / "out" / "render_quality.png"), help="PNG to write")
    add("--json-out", help="also write every row and the summary here")
    args = parser.parse_args()

    if args.rescore:
        saved = json.loads(Path(args.rescore).read_text())
        for key in ("reference_samples", "threads", "materials", "mesh", "light"):
            setattr(args, key, saved[key])
        args.adaptive_min_samples = saved["adaptive_min_samples"]
        args.grid = {int(k): v for k, v in saved["grid"].items()}
        result = {k: saved[k] for k in ("rows", "refs", "skipped", "seconds")}
    print(
        f"materials {', '.join(args.materials)}; mesh {args.mesh}; light {args.light};"
        f" {args.threads} threads; reference 2 x {args.reference_samples // 2} spp;"
        f" load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if not args.rescore:
        result = run(args)
    summary = summarise(result, args)
    print_table(summary, args)
    plot(summary, Path(args.figure), args)
    if result["skipped"]:
        print(f"skipped (time budget): {', '.join(result['skipped'])}")
    print(
        f"figure {args.figure}; the run took {result['seconds']:.0f} s;"
        f" load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    keys = ("reference_samples", "threads", "materials", "mesh", "light", "grid")
    line = {
        "bench": "render_quality",
        **{k: getattr(args, k) for k in (*keys, "adaptive_min_samples", "criterion")},
        "thresholds": {"psnr": args.psnr_threshold, "ssim": args.ssim_threshold},
        "seconds": round(result["seconds"], 1),
        "skipped": result["skipped"],
        **summary,
    }
    print(json.dumps(line, default=lambda v: None))
    if args.json_out:
        rows = {"rows": result["rows"], "refs": result["refs"]}
        Path(args.json_out).write_text(json.dumps({**line, **rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
