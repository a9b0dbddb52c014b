"""CPU benchmark of the trainer: data-loader samples/s per core and train images/s.

    .venv/bin/python bench/train_bench.py                     # tiny-cpu, synthetic 64 px shards
    .venv/bin/python bench/train_bench.py --steps 20 --materials 96
    .venv/bin/python bench/train_bench.py --shards 'out/ds/shard-{000000..000009}.tar'

Loader: one process, one torch thread, no workers (so the number is per core), for the
tiny-cpu crops (64/32 px from 64 px views) and DINOv2-size crops (2x224 + 8x98 from 256 px
views), with the photometric part in the worker ("worker"), left to the device
(``crops.on_device``, "photometric on device") and with decoding and crops left to the device
too (``crops.decode_on_device``, "decode on device": the worker part only), each twice: on
shards whose views carry only their object masks (the worker decodes the chosen views' masks
to place crops on the object, as for datasets older than the crop metadata) and, "(crop
meta)", on shards whose json holds the crop metadata a renderer writes
(``object_bbox``/``object_grid``; no mask is decoded). Beside each figure:
the decode-only floor of the same shards measured in the same run (read the tar members and
json, choose two views, decode both JPEGs, nothing else) and the figure's share of it. Also
the device part of ``decode_on_device`` (``train.data.on_device``) run on this CPU. Train: the
tiny-cpu config end to end (loader worker + model) for ``--steps`` steps after warm-up.
Prints a table and one JSON line. Each loader figure is given as samples per wall-clock second
and per CPU second of the process (the two agree on an idle machine; on a shared one the
second is the steadier).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train.config import load_config  # noqa: E402
from train.data import (  # noqa: E402
    Loader,
    ShardStream,
    SkipCounter,
    choose_views,
    expand_urls,
    on_device,
)
from train.samples import _decode_image, _view_member  # noqa: E402
from train.synthetic import write_synthetic_shards  # noqa: E402

DINOV2 = ["crops.global_size=224", "crops.local_size=98", "crops.local_per_view=4"]
PATHS = {
    "worker": [],
    "photometric_on_device": ["crops.on_device=true"],
    "decode_on_device": ["crops.on_device=true", "crops.decode_on_device=true"],
}


def _config(overrides: list[str]):
    cfg = load_config("tiny-cpu", ["data.num_workers=0", "data.batch_size=16", *overrides])
    patch = 16 if cfg.crops.global_size % 16 == 0 and cfg.crops.local_size % 16 == 0 else 14
    return cfg, patch


class Clock:
    """Wall and process CPU time together: on a machine other jobs share, samples per CPU
    second of this one-thread process is the steadier per-core figure."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def rates(self, samples: int) -> tuple[float, float]:
        return samples / self.wall, samples / max(self.cpu, 1e-9)


def loader_rate(shards: list[str], overrides: list[str], batches: int) -> tuple[float, float]:
    """Samples/s of the loader, (wall clock, per CPU second), one process, no workers."""
    cfg, patch = _config(overrides)
    loader = iter(Loader(shards, cfg.data, cfg.crops, patch, seed=0))
    next(loader)
    with Clock() as clock:
        for _ in range(batches):
            next(loader)
    return clock.rates(batches * cfg.data.batch_size)


def device_part_rate(shards: list[str], overrides: list[str], batches: int) -> tuple[float, float]:
    """``on_device`` (decode, crops, photometric) on this CPU, one thread, batches made first."""
    cfg, patch = _config([*overrides, *PATHS["decode_on_device"]])
    loader = iter(Loader(shards, cfg.data, cfg.crops, patch, seed=0))
    ready = [next(loader) for _ in range(batches + 1)]
    on_device(ready.pop(), "cpu", cfg.crops)
    with Clock() as clock:
        for batch in ready:
            on_device(batch, "cpu", cfg.crops)
    return clock.rates(batches * cfg.data.batch_size)


def decode_floor(shards: list[str], samples: int) -> tuple[float, float]:
    """Samples/s of a loader that only reads and decodes: tar members and json, the choice of
    two views, both views decoded (the worker path's decoder), nothing else."""
    cfg, _ = _config([])
    stream = ShardStream(shards, cfg.data, cfg.crops, 16, seed=0)
    skips = SkipCounter("raise", 0, 1.0)
    rng = np.random.default_rng(0)

    def raws():
        epoch = 0
        while True:
            yield from stream._epoch_raw(epoch, 0, 1, skips)
            epoch += 1

    def decode(raw: dict) -> None:
        meta = json.loads(raw["json"])
        for view in sorted(set(choose_views(rng, meta["views"], True))):
            member = _view_member(raw, view)
            _decode_image(raw[member], raw["__key__"], member)

    source = raws()
    for _ in range(8):  # warm-up
        decode(next(source))
    with Clock() as clock:
        for _ in range(samples):
            decode(next(source))
    return clock.rates(samples)


def train_rate(shards: list[str], out_dir: str, steps: int, batch: int, workers: int) -> dict:
    from train.train import main

    warm = 3
    cfg = load_config(
        "tiny-cpu",
        [
            f"data.urls={'::'.join(shards)}", f"out_dir={out_dir}", f"optim.steps={steps + warm}",
            f"data.batch_size={batch}", f"data.num_workers={workers}", "log_every=1",
            "ckpt_every=0", "progress=false", "tensorboard=false", "export=false", "resume=false",
        ],
    )  # fmt: skip
    main(cfg)
    records = [
        json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    timed = records[warm:]  # the first steps include start-up and allocator warm-up
    seconds = sum(r["step_time_s"] for r in timed)
    return {
        "train_images_per_s": batch * len(timed) / seconds,
        "train_step_time_s": seconds / len(timed),
        "train_data_wait": sum(r["data_wait"] * r["step_time_s"] for r in timed) / seconds,
        "train_batch": batch,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shards", default="", help="existing shards (default: write synthetic ones)"
    )
    parser.add_argument("--materials", type=int, default=48, help="synthetic materials to write")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--workers", type=int, default=1, help="data workers during training")
    parser.add_argument("--batches", type=int, default=6, help="loader batches of 16 to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            small = big = expand_urls(args.shards)
        else:
            small, big = (
                write_synthetic_shards(
                    Path(tmp) / "s64", materials=args.materials, views=4, size=64, per_shard=16,
                    crop_meta=False,
                ),
                write_synthetic_shards(
                    Path(tmp) / "s256", materials=16, views=4, size=256, per_shard=16,
                    crop_meta=False,
                ),
            )  # fmt: skip
        # Masks only (datasets older than the crop metadata), then the same with it.
        sources = {"": (small, big)}
        if not args.shards:
            sources[" (crop meta)"] = (
                write_synthetic_shards(
                    Path(tmp) / "s64-meta", materials=args.materials, views=4, size=64,
                    per_shard=16,
                ),
                write_synthetic_shards(
                    Path(tmp) / "s256-meta", materials=16, views=4, size=256, per_shard=16
                ),
            )  # fmt: skip
        results: dict[str, float] = {}
        rows = []
        for i, (name, shards, extra, batches) in enumerate(
            (("tiny", small, [], args.batches), ("dinov2", big, DINOV2, args.batches))
        ):
            floor = decode_floor(shards, 16 * batches)
            rows.append((name, "decode-only floor", floor, floor))
            for path, overrides in PATHS.items():
                for label, pair in sources.items():
                    rate = loader_rate(pair[i], [*extra, *overrides], batches)
                    rows.append((name, path + label, rate, floor))
            part = device_part_rate(shards, extra, max(1, batches // 2))
            rows.append((name, "device part on this cpu", part, floor))
        torch.set_num_threads(os.cpu_count() or 1)
        results.update(
            train_rate(small, str(Path(tmp) / "run"), args.steps, args.batch, args.workers)
        )
    print("loader, samples/s per core: wall clock (share of the decode-only floor) | per CPU s")
    for name, path, (wall, cpu), (floor_wall, floor_cpu) in rows:
        print(
            f"  {name:<7}{path:<38}{wall:9.1f} ({wall / floor_wall:6.1%}) |"
            f"{cpu:9.1f} ({cpu / floor_cpu:6.1%})"
        )
        slug = path.replace("-", "_").replace(" (", "_").replace(")", "").replace(" ", "_")
        key = f"loader_{name}_{slug}"
        results[f"{key}_samples_per_s_per_core"] = wall
        results[f"{key}_samples_per_cpu_s"] = cpu
        if path != "decode-only floor":
            results[f"{key}_share_of_floor"] = wall / floor_wall
    for key in ("train_images_per_s", "train_step_time_s", "train_data_wait", "train_batch"):
        print(f"{key:<28}{results[key]:10.3f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
