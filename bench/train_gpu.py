"""GPU benchmark of the training step: images/s and MFU for ViT-S/14 and ViT-B/14 in bf16.

    .venv/bin/python bench/train_gpu.py                          # vits14 and vitb14 configs
    .venv/bin/python bench/train_gpu.py --configs vitb14 --batch 128 --compile
    .venv/bin/python bench/train_gpu.py --device cpu --configs tiny-cpu --steps 2   # smoke test
    .venv/bin/torchrun --nproc-per-node 8 bench/train_gpu.py --check   # world-size invariant?
    .venv/bin/torchrun --nproc-per-node 2 bench/train_gpu.py --check --device cpu   # gloo
    .venv/bin/python bench/train_gpu.py --loader                 # the device part of the loader

Runs the real training step (teacher forward, student forward/backward on 2 global + 8 local
crops, all five losses, AdamW, EMA) on batches already on the device, so the number is the
model's throughput; data loading is measured by ``bench/train_bench.py``, except for the
device part of ``crops.decode_on_device`` (``--loader``): DINOv2-size batches (2x224 + 8x98
crops from 256 px JPEG views) made by the worker beforehand, then timed on the device: batched
JPEG decode alone, decode + crops + photometric (``train.data.on_device``), and for
comparison the photometric part alone on crops cut in the worker (``crops.on_device``). MFU = achieved
model FLOP/s / peak dense bf16 FLOP/s (H100/H200 SXM 989e12, A100 312e12, or --peak-tflops).
FLOPs per image are counted from the architecture (matmuls x2, backward = 2x forward):
student forward+backward on every crop, teacher forward on the global crops, heads included.

``--check`` (under torchrun, W >= 2 ranks; run it first on a new cluster) compares W ranks
holding a split batch with one process holding the whole batch, on this machine's backend
(NCCL on GPUs), and prints one JSON record per check and a verdict; exit status 1 if any fails:

* every loss (``train.losses.invariance``), fp64: value, each input row's gradient (divided by
  W, as DDP/FSDP2 average) and targets/centres, to 1e-6; KoLeo, per rank by design, against the
  mean of each rank's own KoLeo;
* two real training steps (``train.train.main`` on fixed batches, micro model, all five losses,
  DDP and FSDP2, centering and Sinkhorn-Knopp), fp64: student, teacher and Gram-teacher
  parameters, both centres and every logged loss, to 1e-5;
* the same steps in bf16 autocast (on CUDA, or with --check-bf16): rounding differs with the
  per-rank batch shape, so they are held to BF16_TOL instead (every logged loss within 3 %,
  centres within 1 % of their scale, parameter updates within 50 % in norm). A wrong objective
  shows in the fp64 checks; these say that mixed precision did not break what they tested.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.train_gpu_check import run_check  # noqa: E402
from train.config import TrainConfig, load_config  # noqa: E402
from train.meta_arch import MetaArch  # noqa: E402
from train.train import make_optimizer, schedules  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def vit_forward_flops(tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> float:
    """Matmul FLOPs of one ViT forward on ``tokens`` tokens (qkv, attention, proj, MLP)."""
    per_layer = 2 * tokens * dim * 3 * dim + 2 * 2 * tokens * tokens * dim + 2 * tokens * dim * dim
    per_layer += 2 * 2 * tokens * dim * int(mlp_ratio * dim)
    return depth * per_layer


def head_flops(rows: int, cfg: TrainConfig, dim: int) -> float:
    m = cfg.model
    mlp = (
        dim * m.head_hidden
        + m.head_hidden * m.head_hidden * (m.head_layers - 2)
        + m.head_hidden * m.head_bottleneck
    )
    return 2 * rows * (mlp + m.head_bottleneck * m.head_prototypes)


def flops_per_image(cfg: TrainConfig, meta: MetaArch) -> float:
    bb = meta.student.backbone
    dim, depth, p = bb.embed_dim, len(bb.blocks), bb.patch_size
    prefix = bb.num_prefix_tokens
    n_global, n_local = 2 * cfg.crops.global_per_view, 2 * cfg.crops.local_per_view
    g_tokens = (cfg.crops.global_size // p) ** 2 + prefix
    l_tokens = (cfg.crops.local_size // p) ** 2 + prefix
    mlp_ratio = (
        bb.vit.blocks[0].mlp.fc1.out_features / dim if hasattr(bb.vit.blocks[0].mlp, "fc1") else 4.0
    )
    student = n_global * vit_forward_flops(g_tokens, dim, depth, mlp_ratio)
    student += n_local * vit_forward_flops(l_tokens, dim, depth, mlp_ratio)
    student += head_flops(n_global + n_local, cfg, dim)
    masked = cfg.crops.mask_prob * sum(cfg.crops.mask_ratio) / 2 * (g_tokens - prefix) * n_global
    student += head_flops(int(masked), cfg, dim)
    teacher = n_global * vit_forward_flops(g_tokens, dim, depth, mlp_ratio) + head_flops(
        n_global + int(masked), cfg, dim
    )
    return 3 * student + teacher


def random_batch(cfg: TrainConfig, batch: int, patch: int, device: torch.device) -> dict:
    n_global, n_local = 2 * cfg.crops.global_per_view, 2 * cfg.crops.local_per_view
    g, lsz = cfg.crops.global_size, cfg.crops.local_size
    grid = g // patch
    masks = torch.rand(n_global * batch, grid, grid, device=device) < 0.15
    return {
        "global": torch.randn(n_global * batch, 3, g, g, device=device),
        "local": torch.randn(n_local * batch, 3, lsz, lsz, device=device) if n_local else None,
        "masks": masks,
        "labels": torch.randint(0, batch // 2, (batch,), device=device),
    }


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    overrides = [f"data.batch_size={args.batch}"] if args.batch else []
    cfg = load_config(name, overrides)
    torch.manual_seed(0)
    meta = MetaArch(cfg).to(device)
    optimizer = make_optimizer(cfg, meta.student, device)
    student = torch.compile(meta.student) if args.compile else meta.student
    batch_size = cfg.data.batch_size
    batch = random_batch(cfg, batch_size, meta.student.backbone.patch_size, device)
    use_bf16 = device.type == "cuda"

    def step(i: int) -> None:
        sched = schedules(cfg, 1000 + i, 1)
        for group in optimizer.param_groups:
            group["lr"] = sched["lr"] * group["lr_scale"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            losses = meta(batch, sched["teacher_temp"], 1000 + i, student)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(meta.student.parameters(), 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meta.update_teacher(sched["momentum"])

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images_per_s = batch_size * args.steps / seconds
    flops = flops_per_image(cfg, meta)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else _peak(device)
    return {
        "config": name,
        "arch": cfg.model.arch,
        "batch": batch_size,
        "images_per_s": round(images_per_s, 2),
        "step_s": round(seconds / args.steps, 4),
        "gflops_per_image": round(flops / 1e9, 2),
        "mfu": round(images_per_s * flops / peak, 4) if peak else None,
        "gpu_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }


# ----------------------------------------------------------------------------- --loader


def _timed(fn, batches: list, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn(batch)`` over ``batches`` (after one warm-up pass)."""
    for batch in batches:
        fn(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            fn(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * len(batches))


def bench_loader(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The device part of the loader at DINOv2 size, on batches the worker made beforehand."""
    import tempfile

    from train.augment import photometric
    from train.data import Loader, _device_images, on_device
    from train.synthetic import write_synthetic_shards

    batch_size = args.batch or 128
    overrides = [
        "data.num_workers=0", f"data.batch_size={batch_size}", "data.shuffle_buffer=16",
        "crops.global_size=224", "crops.local_size=98", "crops.local_per_view=4",
        "crops.on_device=true",
    ]  # fmt: skip
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_synthetic_shards(
            Path(tmp), materials=max(16, batch_size), views=4, size=256, per_shard=32
        )
        deferred_cfg = load_config("tiny-cpu", [*overrides, "crops.decode_on_device=true"])
        worker_cfg = load_config("tiny-cpu", overrides)
        deferred = Loader(shards, deferred_cfg.data, deferred_cfg.crops, 14, seed=0)
        cut = Loader(shards, worker_cfg.data, worker_cfg.crops, 14, seed=0)
        it, it_cut = iter(deferred), iter(cut)
        ready = [next(it) for _ in range(args.loader_batches)]
        ready_cut = [next(it_cut) for _ in range(args.loader_batches)]

    def photometric_only(batch: dict) -> None:
        for name in ("global", "local"):
            photometric(batch[name].to(device, non_blocking=True), batch[f"{name}_params"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cases = (
        ("decode_only", lambda b: _device_images(b["images"], device)),
        ("decode_crops_photometric", lambda b: on_device(b, device, deferred_cfg.crops)),
        ("photometric_only", photometric_only),
    )
    for name, fn in cases:
        batches = ready_cut if name == "photometric_only" else ready
        seconds = _timed(fn, batches, device, args.steps)
        records.append(
            {
                "loader_device_part": name,
                "batch": batch_size,
                "samples_per_s": round(batch_size / seconds, 1),
                "ms_per_batch": round(seconds * 1e3, 2),
            }
        )
    if device.type == "cuda":
        records.append(
            {"loader_gpu_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
        )
    return records


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["vits14", "vitb14"])
    parser.add_argument(
        "--batch", type=int, default=0, help="per-GPU batch (default: the config's)"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--peak-tflops", type=float, default=0.0, help="peak dense bf16 TFLOP/s of the device"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="under torchrun: check that W ranks give the objective of one process (see above)",
    )
    parser.add_argument("--check-bf16", action="store_true", help="--check bf16 steps off CUDA too")
    parser.add_argument("--check-only", nargs="*", default=[], help="--check these checks only")
    parser.add_argument("--check-dir", default="", help="--check trainer outputs (default: tmp)")
    parser.add_argument("--check-out", default="", help="--check: write the records to this JSON")
    parser.add_argument(
        "--loader",
        action="store_true",
        help="time the device part of crops.decode_on_device instead of training steps",
    )
    parser.add_argument(
        "--loader-batches", type=int, default=4, help="--loader: distinct batches to cycle"
    )
    args = parser.parse_args()
    if args.check:
        if args.device == "cuda" and not torch.cuda.is_available():
            print(
                "train_gpu.py --check: no CUDA device visible (use --device cpu)", file=sys.stderr
            )
            return 2
        code = run_check(args)
        # Leave without running C++ static destructors: on a loaded machine a gloo rank has
        # aborted in them ("terminate called without an active exception", SIGABRT) after
        # its process group was destroyed and its records were written, turning a finished
        # check into a failed torchrun.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "train_gpu.py: no CUDA device visible (use --device cpu for a smoke test)",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}")
    if args.loader:
        for record in bench_loader(args, device):
            print(json.dumps(record))
        return 0
    for name in args.configs:
        print(json.dumps(bench(name, args, device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
