"""The shard contract end to end: the renderer's ShardWriter writes, the trainer's loader reads."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image

from phieat import schema
from render.writer import ShardWriter
from train.config import load_config
from train.data import Loader
from train.synthetic import make_materials, render_view


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_render_writer_shard_reads_in_the_trainer(tmp_path):
    writer = ShardWriter(scratch_dir=tmp_path)
    materials = make_materials(4, seed=3)
    for m, material in enumerate(materials):
        key = schema.make_key(material["id"], 7)
        members, views = [], []
        for v in range(3):
            image, mask = render_view(material, v, v + 1, 48, seed=m * 10 + v)
            members.append((schema.view_member(v, "png"), _png(image)))
            members.append((schema.mask_member(v), _png(mask.astype(np.uint8) * 255)))
            views.append(
                {
                    "mesh_id": f"mesh-{v}", "light_id": f"light-{v}", "light_rotation": 10.0 * v,
                    "light_strength": 1.0, "camera": {"distance": 2.6}, "seed": v, "samples": 4,
                    "view_transform": "AgX", "render_time_s": 0.1,
                }
            )  # fmt: skip
        meta = {
            "schema_version": schema.SCHEMA_VERSION, "key": key,
            "material": {"id": material["id"], "category": material["category"], "source": "procedural", "params": {}},
            "views": views, "blender_version": "5.0.1", "catalog_snapshot": {}, "plan_hash": "p",
        }  # fmt: skip
        members.append((schema.META_MEMBER, json.dumps(meta).encode()))
        writer.add_sample(key, members)
    writer.close()
    url = str(tmp_path / schema.shard_name(0))
    writer.publish(url)
    cfg = load_config(
        None,
        [
            "data.batch_size=4",
            "data.num_workers=0",
            "crops.global_size=32",
            "crops.local_size=16",
            'data.index=""',
        ],
    )
    batch = next(iter(Loader([url], cfg.data, cfg.crops, 16, seed=0)))
    assert sorted(batch["keys"]) == sorted(schema.make_key(m["id"], 7) for m in materials)
    assert batch["labels"].tolist() == [
        schema.stable_label(schema.parse_key(k)[0]) for k in batch["keys"]
    ]
    assert batch["global"].shape == (8, 3, 32, 32) and torch.isfinite(batch["global"]).all()
