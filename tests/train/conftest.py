"""Fixtures for trainer tests: tiny synthetic shards in the exact shard format, a micro model."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.synthetic import write_synthetic_shards


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """12 materials x 4 views of 64 px (jpg + mask png), 3 samples per shard, index.json."""
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, materials=12, views=4, size=64, per_shard=3, seed=0)
    return out


@pytest.fixture
def micro():
    """``micro(shard_dir, out_dir, steps)`` -> overrides for a micro model run."""
    return micro_overrides


def micro_overrides(shard_dir: Path, out_dir: Path, steps: int = 6) -> list[str]:
    """A ~100K-parameter ViT on 32/16 px crops: each step takes a fraction of a second."""
    return [
        f"data.urls={shard_dir}/shard-{{000000..000003}}.tar",
        f"out_dir={out_dir}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.shuffle_buffer=4",
        "crops.global_size=32",
        "crops.local_size=16",
        "crops.local_per_view=1",
        "model.arch=vit_tiny_patch16_224",
        "model.patch_size=8",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.head_prototypes=64",
        "model.head_hidden=32",
        "model.head_bottleneck=16",
        "model.contrast_hidden=32",
        "model.contrast_dim=16",
        f"optim.steps={steps}",
        "optim.warmup_steps=2",
        "optim.freeze_last_layer_steps=1",
        "loss.warmup_teacher_temp_steps=2",
        "log_every=1",
        "ckpt_every=0",
        "progress=false",
        "tensorboard=false",
        "threads=1",
    ]
