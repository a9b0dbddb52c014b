"""GPU benchmark of the training step: images/s and MFU for ViT-S/14 and ViT-B/14 in bf16.

    .venv/bin/python bench/train_gpu.py                          # vits14 and vitb14 configs
    .venv/bin/python bench/train_gpu.py --configs vitb14 --batch 128 --compile
    .venv/bin/python bench/train_gpu.py --device cpu --configs tiny-cpu --steps 2   # smoke test

Runs the real training step (teacher forward, student forward/backward on 2 global + 8 local
crops, all five losses, AdamW, EMA) on batches already on the device, so the number is the
model's throughput; data loading is measured by ``bench/train_bench.py``. MFU = achieved
model FLOP/s / peak dense bf16 FLOP/s (H100/H200 SXM 989e12, A100 312e12, or --peak-tflops).
FLOPs per image are counted from the architecture (matmuls x2, backward = 2x forward):
student forward+backward on every crop, teacher forward on the global crops, heads included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

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
    args = parser.parse_args()
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
    for name in args.configs:
        print(json.dumps(bench(name, args, device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
