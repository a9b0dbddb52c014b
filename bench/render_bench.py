"""Render throughput: the Ray pool vs the pure Cycles floor vs a fresh process per material.

    python bench/render_bench.py                           # 128/16 and 256/32, 6 materials x 3 views
    python bench/render_bench.py --configs 128/16 --views 3,4
    python bench/render_bench.py --memory 200              # worker RSS after 20 vs 200 renders
    python bench/render_bench.py --configs 64/16 --denoise --skip-naive   # the demo setting
    python bench/render_bench.py --cache-mb 0 --mesh-cache off            # caches as before

For each resolution/samples pair and views-per-material count it renders the same plan (mesh
and light change between the views of a material, as in a real plan) several ways and prints:

* ``pool 1x2`` / ``pool 2x1``: ``render.build.build`` through ``RenderPool`` with 1 actor x 2
  Cycles threads and 2 actors x 1 thread (actors already started; steady state);
* ``floor``: the time Cycles itself spent in ``bpy.ops.render.render`` for those views (from
  each view's ``engine_time_s``), spread over the same cores: the best any driver can do;
* ``caches``: hits / lookups of the workers' mesh, material and world caches and of the
  machine's mesh disk cache in that pool run (``BlenderSession.cache_stats``). The caches
  outlive a shard; ``--cache-mb 0 --mesh-cache off`` renders as shards did before them
  (everything built once per shard and freed at its end). The disk cache stays between runs:
  use ``--mesh-cache DIR`` with a new folder to time a machine's first build;
* ``naive, our scene code``: one fresh Python + Blender process per material rendering its
  views with this project's ``BlenderSession`` (persistent render data on) and 2 threads;
* ``naive, typical script``: the same, but with ``use_persistent_data`` off, as most render
  scripts run: Cycles rebuilds its whole scene for every view.

Both naive rows use the same plan, catalogs and render settings as the pool (and give the
same pixels); only how processes and Cycles' scene data are kept differs. Numbers: images/s,
core-seconds per image (wall x cores / images), the pool's overhead over the floor in %, and
the pool's speed-up over each naive row. Uses ``manifests/*.jsonl`` when present, else a small
built-in set of uniform materials, primitive meshes and the HDRIs bundled with bpy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import storage  # noqa: E402
from render.build import build  # noqa: E402
from render.plan import load_catalogs, make_plan  # noqa: E402
from render.spec import spec_from_dict  # noqa: E402
from render.verify import iter_tar_samples  # noqa: E402

CORES = 2

NAIVE_SCRIPT = """
import json, sys
from render.blender.session import BlenderSession
jobs = json.load(open(sys.argv[1]))
session = BlenderSession(threads=int(sys.argv[2]), cache_mb=0, mesh_cache_dir=False)
session.scene.render.use_persistent_data = sys.argv[4] == "persistent"
for job in jobs:
    view = session.render_view(job)
    open(sys.argv[3] + f"/{job['key']}.{job['view']}.img", "wb").write(view.image)
"""
NAIVE_RUNS = {"naive-ours": "persistent", "naive-typical": "fresh"}
NAIVE_LABELS = {"naive-ours": "naive, our scene code", "naive-typical": "naive, typical script"}

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


def engine_seconds(version_url: str) -> tuple[float, int]:
    total, images = 0.0, 0
    index = storage.read_json(storage.join(version_url, "index.json"))
    for shard in index["shards"]:
        for _, members in iter_tar_samples(storage.join(version_url, shard["name"])):
            for view in json.loads(members["json"])["views"]:
                total += view["engine_time_s"]
                images += 1
    return total, images


def run_pool(spec, workers: int, threads: int) -> dict:
    from render.pool import RenderPool

    pool = RenderPool(workers=workers, threads_per_worker=threads, recycle_after_shards=0)
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
    engine, images = engine_seconds(result.version_url)
    floor = engine / workers  # each actor renders its views back to back
    return {"wall": wall, "images": images, "floor": floor, "engine": engine, "caches": caches}


def run_naive(spec, threads: int, data: str) -> dict:
    """One fresh process per material; ``data`` is ``persistent`` or ``fresh`` render data."""
    plan = make_plan(spec, load_catalogs(spec))
    samples = [s for shard in plan.shards for s in shard.samples]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for sample in samples:  # one fresh process per material
            jobs = Path(tmp) / "jobs.json"
            jobs.write_text(json.dumps(sample["views"]))
            subprocess.run(
                [sys.executable, "-c", NAIVE_SCRIPT, str(jobs), str(threads), tmp, data],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wall = time.perf_counter() - started
    return {"wall": wall, "images": sum(len(s["views"]) for s in samples)}


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
    parser.add_argument("--configs", default="128/16,256/32", help="resolution/samples pairs")
    parser.add_argument("--materials", type=int, default=6)
    parser.add_argument("--shard-size", type=int, default=3, help="samples per shard (one task)")
    parser.add_argument(
        "--views", default="3", help="views per material, or a list: 3,4 (4 is the spec default)"
    )
    parser.add_argument("--denoise", action="store_true", help="OpenImageDenoise on every view")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds; best counts")
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
    view_counts = [int(v) for v in args.views.split(",")]
    # Set before Ray starts: the local workers inherit this process's environment.
    if args.cache_mb is not None:
        os.environ["PHIEAT_BLENDER_CACHE_MB"] = str(args.cache_mb)
    if args.mesh_cache is not None:
        os.environ["PHIEAT_MESH_CACHE_DIR"] = args.mesh_cache

    from render.pool import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=CORES)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.catalogs) if args.catalogs else ROOT / "manifests"
        if not (folder / "materials.jsonl").exists():
            folder = builtin_catalogs(Path(tmp) / "catalogs", max(args.materials, 200))
        print(f"catalogs {folder}; {args.materials} materials x {args.views} views; {CORES} cores")
        print(
            f"caches   {os.environ.get('PHIEAT_BLENDER_CACHE_MB', 'default')} MB per worker, "
            f"mesh disk cache {os.environ.get('PHIEAT_MESH_CACHE_DIR', 'default')}; "
            f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        print(
            f"{'config':>8} {'V':>2} {'run':>21} {'images':>6} {'wall s':>7} {'img/s':>6} "
            f"{'core-s/img':>10}  note"
        )
        for views in view_counts:
            for config in args.configs.split(","):
                bench_config(config, views, args, folder, tmp)
        if args.memory:
            rss = run_memory(folder, args.memory, tmp)
            first = rss[min(k for k in rss if k >= 20)]
            last = rss[max(rss)]
            print(
                f"memory: RSS after 20 renders {first:.0f} MB, after {max(rss)} renders {last:.0f} MB ({100 * (last / first - 1):+.1f}%)"
            )
    shutdown_ray()
    return 0


def bench_config(config: str, views: int, args: argparse.Namespace, folder: Path, tmp: str) -> None:
    """Run every method ``args.repeat`` times in alternating rounds; print the best of each."""
    res, spp = (int(x) for x in config.split("/"))
    runs: dict[str, list[dict]] = {}
    # Rounds alternate the methods; the best round of each counts (shared machines).
    for round_ in range(args.repeat):
        for workers, threads in ((1, 2), (2, 1)):
            spec = make_spec(
                folder,
                f"{tmp}/{config.replace('/', '-')}-v{views}-{workers}x{threads}-{round_}",
                res,
                spp,
                args.materials,
                views,
                args.denoise,
                args.shard_size,
            )
            runs.setdefault(f"{workers}x{threads}", []).append(run_pool(spec, workers, threads))
        if not args.skip_naive:
            for name, data in NAIVE_RUNS.items():
                runs.setdefault(name, []).append(run_naive(spec, CORES, data))
    best = {name: min(rs, key=lambda r: r["wall"]) for name, rs in runs.items()}
    rows = []
    for name in ("1x2", "2x1"):
        r = best[name]
        overhead = 100.0 * (r["wall"] / r["floor"] - 1.0)
        rows.append((f"pool {name}", r["images"], r["wall"], f"{overhead:+.0f}% over floor"))
        rows.append((f"floor {name}", r["images"], r["floor"], f"caches: {r['caches'] or '-'}"))
    for name in NAIVE_RUNS:
        if name in best:
            n = best[name]
            ratio = ", ".join(
                f"{pool} {n['wall'] / best[pool]['wall']:.2f}x" for pool in ("1x2", "2x1")
            )
            rows.append((NAIVE_LABELS[name], n["images"], n["wall"], f"pool speed-up: {ratio}"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    for name, images, wall, note in rows:
        print(
            f"{config:>8} {views:>2} {name:>21} {images:6d} {wall:7.2f} {images / wall:6.2f} "
            f"{wall * CORES / images:10.2f}  {note}"
        )
    print(f"{'':>8} (best of {args.repeat} alternating rounds; load average {load})")


if __name__ == "__main__":
    raise SystemExit(main())
