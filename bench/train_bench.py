"""CPU benchmark of the trainer: data-loader samples/s per core and train images/s.

    .venv/bin/python bench/train_bench.py                     # tiny-cpu, synthetic 64 px shards
    .venv/bin/python bench/train_bench.py --steps 20 --materials 96
    .venv/bin/python bench/train_bench.py --shards 'out/ds/shard-{000000..000009}.tar'

Loader: one process, one torch thread, no workers (so the number is per core), for the
tiny-cpu crops (64/32 px from 64 px views) and DINOv2-size crops (2x224 + 8x98 from 256 px
views), with the photometric part in the worker and with it left to the device. Train: the
tiny-cpu config end to end (loader worker + model) for ``--steps`` steps after warm-up.
Prints a table and one JSON line.
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

import torch  # noqa: E402

from train.config import load_config  # noqa: E402
from train.data import Loader, expand_urls  # noqa: E402
from train.synthetic import write_synthetic_shards  # noqa: E402


def loader_rate(shards: list[str], overrides: list[str], batches: int) -> float:
    cfg = load_config("tiny-cpu", ["data.num_workers=0", "data.batch_size=16", *overrides])
    patch = 16 if cfg.crops.global_size % 16 == 0 and cfg.crops.local_size % 16 == 0 else 14
    loader = iter(Loader(shards, cfg.data, cfg.crops, patch, seed=0))
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * cfg.data.batch_size / (time.perf_counter() - start)


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
            small = write_synthetic_shards(
                Path(tmp) / "s64", materials=args.materials, views=4, size=64, per_shard=16
            )
            big = write_synthetic_shards(
                Path(tmp) / "s256", materials=16, views=4, size=256, per_shard=16
            )
        results = {
            "loader_tiny_samples_per_s_per_core": loader_rate(small, [], args.batches),
            "loader_tiny_on_device_samples_per_s_per_core": loader_rate(
                small, ["crops.on_device=true"], args.batches
            ),
            "loader_dinov2_samples_per_s_per_core": loader_rate(
                big,
                [
                    "crops.global_size=224",
                    "crops.local_size=98",
                    "crops.local_per_view=4",
                    "crops.blur_sigma=[0.1, 2.0]",
                ],
                max(2, args.batches // 3),
            ),
            "loader_dinov2_on_device_samples_per_s_per_core": loader_rate(
                big,
                [
                    "crops.global_size=224",
                    "crops.local_size=98",
                    "crops.local_per_view=4",
                    "crops.on_device=true",
                ],
                max(2, args.batches // 3),
            ),
        }
        torch.set_num_threads(os.cpu_count() or 1)
        results.update(
            train_rate(small, str(Path(tmp) / "run"), args.steps, args.batch, args.workers)
        )
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
