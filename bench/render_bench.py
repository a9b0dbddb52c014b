"""Render throughput, side by side in one run: the Ray pool, the Cycles floor, a fresh process
per view and a fresh process per material.

    python bench/render_bench.py       # demo setting (64 px, 16 samples, OIDN), 256 views
    python bench/render_bench.py --views 32 --modes pool              # a quick look at the pool
    python bench/render_bench.py --modes pool --pools 2x1 --repeat 3  # affinity on vs off
    python bench/render_bench.py --modes pool --pools 2x1 --tail-threads on,off
    python bench/render_bench.py --configs 128/16,256/32 --no-denoise
    python bench/render_bench.py --memory 200         # also worker RSS after 20 vs 200 renders
    python bench/render_bench.py --cache-mb 0 --mesh-cache off        # pool caches off

Every mode renders views of the same plan (``--views`` in all, ``--views-per-material`` per
material, drawn from ``manifests/*.jsonl`` like a real build; mesh and light change between
the views of a material) with the same render settings, so they give the same pixels:

* ``pool AxT``: ``render.build.build`` through ``RenderPool`` with A actors x T Cycles threads
  (actors started and bpy imported before the clock starts: steady state), shards of
  ``--shard-size`` materials. With more than one actor it runs once per ``--affinity``
  setting (cache-affine dispatch on or off, ``render.dispatch``) and ``--tail-threads``
  setting (at the end of the build, busy actors render with the threads of idle ones). The
  note gives hits / lookups of the actors' mesh, material and world caches and of the
  machine's mesh disk cache (``BlenderSession.cache_stats``), and where the actors' time went (from the shards'
  sidecars): Cycles, the rest of rendering a shard (building scenes, pass I/O, encoding,
  writing the tar, the reset between shards; also given as a share of Cycles' time: the
  overhead a long build pays on every view), the *tail* (actors done while another still
  renders its last shard: a build pays it once, at its end, so it shrinks with shards per
  actor) and the rest (the build's start and end, gaps between shards);
* ``floor``: the time Cycles itself spent in ``bpy.ops.render.render`` for the pool's views
  (each view's ``engine_time_s``) spread over its actors: the best any driver can do;
* ``fresh process per view``: what most render scripts do: a new Python process imports bpy,
  builds the scene and renders one view (``BlenderSession`` with its caches off, no mesh disk
  cache, persistent render data off), with all cores (``CORES`` threads);
* ``fresh process per material``: the same, one process renders all views of one material.

Columns: views rendered, wall seconds, wall seconds per view, the run's own floor per view
(its Cycles engine time spread over its processes: pool rows over the actors, fresh rows
their one process) and ``x floor``: seconds per view over the lowest floor of the pool runs
(the lowest floor row is 1.00; one process of 2 threads and two of 1 thread differ in Cycles
time). A fresh process per view or material takes long: by default ``fresh process per
view`` renders the plan's first ``--fresh-views`` views (the output says how many), the pool
and ``fresh process per material`` all of them. Uses ``manifests/*.jsonl`` when present,
else a small built-in set of uniform materials, primitive meshes and the HDRIs bundled with bpy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pool_time import actor_time_split, split_note  # noqa: E402 (bench/, beside this file)

from render.build import build  # noqa: E402
from render.plan import load_catalogs, make_plan  # noqa: E402
from render.spec import spec_from_dict  # noqa: E402

CORES = 2
MODES = ("pool", "view", "material")

# One fresh process: argv = jobs.json, threads, output folder. Prints each view's engine time.
FRESH_SCRIPT = """
import json, sys
from pathlib import Path
from render.blender.session import BlenderSession
payload = json.load(open(sys.argv[1]))
session = BlenderSession(threads=int(sys.argv[2]), cache_mb=0, mesh_cache_dir=False)
session.set_base_dirs(**{k + "_dir": Path(v) for k, v in payload["base_dirs"].items()})
session.scene.render.use_persistent_data = False
for job in payload["jobs"]:
    view = session.render_view(job)
    open(sys.argv[3] + f"/{job['key']}.{job['view']}.img", "wb").write(view.image)
    print("ENGINE", view.meta["engine_time_s"])
"""

MEMORY_SCRIPT = """
import json, sys
from render.blender.session import BlenderSession
jobs = json.load(open(sys.argv[1]))
total, per_shard = int(sys.argv[2]), int(sys.argv[3])
session = BlenderSession(threads=1)
rss = {}
for n in range(1, total + 1):
    session.render_view(jobs[(n - 1) % len(jobs)])
    if n % per_shard == 0:
        session.reset()
        rss[n] = session.rss_mb()
print(json.dumps(rss))
"""


def builtin_catalogs(folder: Path, n_materials: int) -> Path:
    """Uniform materials with varied params, 4 primitive meshes, 4 bundled HDRIs."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, entries: list[dict]) -> None:
        lines = [json.dumps(e, sort_keys=True) for e in sorted(entries, key=lambda e: e["id"])]
        (folder / name).write_text("\n".join(lines) + "\n")

    common = {"licence": "CC0-1.0", "split": "train"}
    write(
        "materials.jsonl",
        [
            {
                "id": f"bench-{i:03d}",
                "category": "plastic",
                "source": "procedural",
                "family": "uniform",
                "params": {
                    "base_color": [0.2 + 0.1 * (i % 7), 0.3, 0.6 - 0.05 * (i % 9)],
                    "roughness": 0.1 + 0.08 * (i % 10),
                    "metallic": float(i % 2),
                },
                "group": f"bench-{i:03d}",
                **common,
            }
            for i in range(n_materials)
        ],
    )
    write(
        "meshes.jsonl",
        [
            {
                "id": "mesh-" + s.replace("_", "-"),
                "kind": "primitive",
                "params": {"shape": s},
                "size_m": 0.3,
                "group": "mesh-" + s.replace("_", "-"),
                **common,
            }
            for s in ("uv_sphere", "cube", "torus", "cylinder")
        ],
    )
    write(
        "lights.jsonl",
        [
            {
                "id": f"hdri-{n}",
                "kind": "hdri",
                "params": {},
                "path": f"bpy:studiolights/world/{n}.exr",
                "group": n,
                **common,
            }
            for n in ("city", "forest", "studio", "sunset")
        ],
    )
    return folder


def make_spec(
    catalogs: Path,
    output: str,
    res: int,
    spp: int,
    materials: int,
    views: int,
    denoise: bool,
    shard_size: int = 3,
):
    raw = {
        "dataset": {
            "name": "bench",
            "output": output,
            "views": views,
            "shard_size": shard_size,
            "max_materials": materials,
        },
        "catalogs": {
            "materials": str(catalogs / "materials.jsonl"),
            "meshes": str(catalogs / "meshes.jsonl"),
            "lights": str(catalogs / "lights.jsonl"),
            "split": "all",
        },
        "render": {"resolution": res, "samples": spp, "denoise": denoise, "passes": []},
        "build": {"max_failure_fraction": 1.0, "recycle_after_shards": 0},
    }
    return spec_from_dict(raw, "bench")


def run_pool(spec, workers: int, threads: int, affinity: bool, tail_threads: bool = True) -> dict:
    from render.pool import RenderPool

    pool = RenderPool(
        workers=workers,
        threads_per_worker=threads,
        recycle_after_shards=0,
        affinity=affinity,
        tail_threads=tail_threads,
    )
    try:
        # Actors started and bpy imported before the clock starts.
        deadline = time.monotonic() + 300
        while len(pool.worker_info()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.perf_counter()
        result = build(spec, pool=pool, progress=False)
        wall = time.perf_counter() - started
        caches = pool.cache_summary()
    finally:
        pool.close()
    if result.exit_code != 0 or result.skipped:
        raise SystemExit(f"pool {workers}x{threads}: not a clean full build: {result.summary()}")
    split = actor_time_split(result.version_url, wall, workers)
    # Each actor renders its views back to back: the floor spreads Cycles' time over them.
    return {
        "wall": wall,
        "images": split["images"],
        "floor": split["engine"] / workers,
        "caches": caches,
        "split": split,
    }


def run_fresh(spec, per: str, views: int, threads: int) -> dict:
    """A fresh process per view (``per="view"``) or per material (``"material"``), over the
    plan's first ``views`` views (whole materials for ``material``; 0: all)."""
    plan = make_plan(spec, load_catalogs(spec))
    samples = [s for shard in plan.shards for s in shard.samples]
    total = sum(len(s["views"]) for s in samples)
    views = total if views <= 0 else min(views, total)
    if per == "view":
        batches = [[job] for s in samples for job in s["views"]][:views]
    else:
        batches, count = [], 0
        for s in samples:
            if count >= views:
                break
            batches.append(s["views"])
            count += len(s["views"])
    base_dirs = {k: str(spec.catalog_path(k).parent) for k in ("materials", "meshes", "lights")}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    engine = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.json"
        started = time.perf_counter()
        for batch in batches:
            jobs.write_text(json.dumps({"jobs": batch, "base_dirs": base_dirs}))
            out = subprocess.run(
                [sys.executable, "-c", FRESH_SCRIPT, str(jobs), str(threads), tmp],
                check=True,
                env=env,
                capture_output=True,
                text=True,
            ).stdout
            engine += sum(float(x.split()[1]) for x in out.splitlines() if x.startswith("ENGINE "))
        wall = time.perf_counter() - started
    images = sum(len(b) for b in batches)
    return {"wall": wall, "images": images, "floor": engine, "total": total}


def run_memory(catalogs: Path, total: int, tmp: str) -> dict:
    spec = make_spec(catalogs, f"{tmp}/mem", 32, 2, 10**6, 2, False)
    plan = make_plan(spec, load_catalogs(spec))
    jobs = [j for shard in plan.shards for s in shard.samples for j in s["views"]]
    path = Path(tmp) / "mem-jobs.json"
    path.write_text(json.dumps(jobs))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path), str(total), "10"],
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
    ).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="64/16", help="resolution/samples pairs, e.g. 64/16")
    parser.add_argument(
        "--denoise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="OpenImageDenoise on every view (on: the demo setting)",
    )
    parser.add_argument("--views", type=int, default=256, help="views in the plan, all modes")
    parser.add_argument("--views-per-material", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=8, help="materials per pool shard")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="pool (with its floor), view, material"
    )
    parser.add_argument(
        "--pools", default="1x2,2x1", help="pool shapes, actors x threads (each <= 2 cores)"
    )
    parser.add_argument(
        "--affinity",
        default="on,off",
        help="cache-affine dispatch for pools of 2+ actors: on, off or on,off (both)",
    )
    parser.add_argument(
        "--tail-threads",
        default="on",
        help="pools of 2+ actors: at the end of the build, busy actors take the threads of "
        "idle ones: on, off or on,off (both)",
    )
    parser.add_argument(
        "--fresh-views", type=int, default=128, help="views for 'fresh process per view' (0: all)"
    )
    parser.add_argument(
        "--fresh-material-views",
        type=int,
        default=0,
        help="views for 'fresh process per material', whole materials (0: all)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds; best counts")
    parser.add_argument(
        "--memory", type=int, default=0, help="also measure RSS after this many renders"
    )
    parser.add_argument(
        "--catalogs", help="folder with materials/meshes/lights.jsonl (default: manifests/)"
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        help="bound of each worker's caches in MB (PHIEAT_BLENDER_CACHE_MB; 0: one shard only)",
    )
    parser.add_argument(
        "--mesh-cache", help="mesh disk cache folder, or 'off' (PHIEAT_MESH_CACHE_DIR)"
    )
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    for flag, value in (("--affinity", args.affinity), ("--tail-threads", args.tail_threads)):
        if unknown := set(value.split(",")) - {"on", "off"}:
            parser.error(f"{flag}: unknown {sorted(unknown)}; use on, off or on,off")
    # Set before Ray starts: the local workers inherit this process's environment.
    if args.cache_mb is not None:
        os.environ["PHIEAT_BLENDER_CACHE_MB"] = str(args.cache_mb)
    if args.mesh_cache is not None:
        os.environ["PHIEAT_MESH_CACHE_DIR"] = args.mesh_cache

    from render.pool import ensure_ray, shutdown_ray

    if "pool" in modes:
        ensure_ray(num_cpus=CORES)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.catalogs) if args.catalogs else ROOT / "manifests"
        materials = math.ceil(args.views / args.views_per_material)
        if not (folder / "materials.jsonl").exists():
            folder = builtin_catalogs(Path(tmp) / "catalogs", max(materials, 200))
        print(
            f"catalogs {folder}; {materials} materials x {args.views_per_material} views, "
            f"{args.shard_size} materials per pool shard; {CORES} cores; denoise "
            f"{'on' if args.denoise else 'off'}"
        )
        print(
            f"caches   {os.environ.get('PHIEAT_BLENDER_CACHE_MB', 'default')} MB per worker, "
            f"mesh disk cache {os.environ.get('PHIEAT_MESH_CACHE_DIR', 'default')}; "
            f"load average {load_average()}"
        )
        for config in args.configs.split(","):
            bench_config(config, materials, modes, args, folder, tmp)
        if args.memory:
            rss = run_memory(folder, args.memory, tmp)
            first = rss[min(k for k in rss if k >= 20)]
            last = rss[max(rss)]
            print(
                f"memory: RSS after 20 renders {first:.0f} MB, after {max(rss)} renders "
                f"{last:.0f} MB ({100 * (last / first - 1):+.1f}%)"
            )
    if "pool" in modes:
        shutdown_ray()
    return 0


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run_names(modes: list[str], args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(row name, how to run it) for every run of one round, in order."""
    runs = []
    if "pool" in modes:
        for shape in args.pools.split(","):
            workers, threads = (int(x) for x in shape.split("x"))
            affinities = args.affinity.split(",") if workers > 1 else ["on"]
            tails = args.tail_threads.split(",") if workers > 1 else ["on"]
            for affinity in affinities:
                for tail in tails:
                    name = f"pool {shape}" + (", affinity off" if affinity == "off" else "")
                    name += ", tail threads off" if tail == "off" else ""
                    how = (workers, threads, affinity == "on", tail == "on")
                    runs.append((name, {"pool": how}))
    if "view" in modes:
        runs.append(("fresh process per view", {"fresh": ("view", args.fresh_views)}))
    if "material" in modes:
        runs.append(
            ("fresh process per material", {"fresh": ("material", args.fresh_material_views)})
        )
    return runs


def bench_config(
    config: str,
    materials: int,
    modes: list[str],
    args: argparse.Namespace,
    folder: Path,
    tmp: str,
) -> None:
    """Run every mode ``args.repeat`` times in alternating rounds; print the best of each."""
    res, spp = (int(x) for x in config.split("/"))
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.repeat):
        for i, (name, how) in enumerate(run_names(modes, args)):
            # A new output folder per run: a build into a used one skips published shards.
            output = f"{tmp}/{config.replace('/', '-')}-run{i}-round{round_}"
            spec = make_spec(
                folder,
                output,
                res,
                spp,
                materials,
                args.views_per_material,
                args.denoise,
                args.shard_size,
            )
            if "pool" in how:
                run = run_pool(spec, *how["pool"])
            else:
                run = run_fresh(spec, *how["fresh"], threads=CORES)
            runs.setdefault(name, []).append(run)
            print(f"  ... {name}: {run['wall']:.1f} s (load average {load_average()})", flush=True)
    best = {name: min(rs, key=lambda r: r["wall"]) for name, rs in runs.items()}
    rows: list[tuple[str, dict, str]] = []
    for name, run in best.items():
        if name.startswith("pool"):
            rows.append((name, run, f"{split_note(run['split'])}; caches: {run['caches'] or '-'}"))
            floor = {**run, "wall": run["floor"]}
            rows.append((f"floor of {name} (Cycles engine time)", floor, ""))
        else:
            rows.append((f"{name}: {run['images']} of {run['total']} views", run, ""))
    # The best any driver could do here: the lowest Cycles time per view of the pool runs.
    floors = [r["floor"] / r["images"] for n, r, _ in rows if n.startswith("floor")]
    floors = floors or [r["floor"] / r["images"] for _, r, _ in rows]
    reference = min(floors, default=0.0)
    width = max(len(n) for n, _, _ in rows) if rows else 10
    print(
        f"\n{config}{' + OIDN' if args.denoise else ''}, best of {args.repeat} "
        f"(load average {load_average()}); x floor: s/view over the lowest floor s/view"
    )
    print(
        f"{'mode':<{width}} {'views':>5} {'wall s':>7} {'s/view':>7} {'floor s/view':>12} "
        f"{'x floor':>7}  note"
    )
    for name, run, note in rows:
        per_view = run["wall"] / run["images"]
        own_floor = run["floor"] / run["images"]
        ratio = per_view / reference if reference else float("nan")
        print(
            f"{name:<{width}} {run['images']:5d} {run['wall']:7.1f} {per_view:7.3f} "
            f"{own_floor:12.3f} {ratio:7.2f}  {note}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
