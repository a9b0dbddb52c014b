"""Shard loader: sources, index check, view choice, splitting, error policy, exact resume; augmentations."""

from __future__ import annotations

import io
import json
import tarfile

import fsspec
import numpy as np
import pytest
import torch

from phieat import schema
from train import augment
from train.config import load_config
from train.data import (
    DataError,
    Loader,
    ShardStream,
    SkipCounter,
    choose_views,
    expand_urls,
    read_index,
)
from train.synthetic import make_materials, write_synthetic_shards


def _cfg(**over):
    base = {
        "data.batch_size": 4, "data.num_workers": 0, "data.shuffle_buffer": 4,
        "crops.global_size": 32, "crops.local_size": 16, "crops.local_per_view": 1,
    }  # fmt: skip
    base.update(over)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_expand_urls_braces_folders_and_joins(shard_dir):
    urls = expand_urls(f"{shard_dir}/shard-{{000000..000001}}.tar::{shard_dir}")
    assert urls[:2] == [f"{shard_dir}/shard-000000.tar", f"{shard_dir}/shard-000001.tar"]
    assert len(urls) == 2 + 4
    assert expand_urls(["pipe:cat /x/s-{0..1}.tar"]) == [
        "pipe:cat /x/s-0.tar",
        "pipe:cat /x/s-1.tar",
    ]
    with pytest.raises(DataError, match="names no shards"):
        expand_urls("::")


def test_index_checked_and_unknown_schema_refused(shard_dir, tmp_path):
    cfg = _cfg()
    index = read_index(cfg.data, expand_urls(str(shard_dir)))
    assert index["views_per_sample"] == 4 and index["complete"]
    bad = dict(index, schema_version=99)
    (tmp_path / "index.json").write_text(json.dumps(bad))
    (tmp_path / "shard-000000.tar").write_bytes((shard_dir / "shard-000000.tar").read_bytes())
    with pytest.raises(schema.SchemaError, match="schema_version 99"):
        read_index(cfg.data, [str(tmp_path / "shard-000000.tar")])


def test_batch_layout_labels_and_views(shard_dir):
    cfg = _cfg()
    batch = _batches(Loader(expand_urls(str(shard_dir)), cfg.data, cfg.crops, 8, seed=0), 1)[0]
    assert batch["global"].shape == (8, 3, 32, 32) and batch["local"].shape == (8, 3, 16, 16)
    assert batch["masks"].shape == (8, 4, 4) and batch["masks"].dtype == torch.bool
    assert batch["labels"].dtype == torch.int64
    for key, label in zip(batch["keys"], batch["labels"].tolist(), strict=True):
        assert label == schema.stable_label(schema.parse_key(key)[0])
    views = batch["views"]
    assert (views[:, 0] != views[:, 1]).all()  # physical: two different renders


def test_choose_views_prefers_new_mesh_and_light():
    views = [
        {"mesh_id": "a", "light_id": "x"},
        {"mesh_id": "a", "light_id": "y"},
        {"mesh_id": "b", "light_id": "x"},
        {"mesh_id": "b", "light_id": "y"},
    ]
    rng = np.random.default_rng(0)
    for _ in range(50):
        i, j = choose_views(rng, views, physical=True)
        assert (
            views[i]["mesh_id"] != views[j]["mesh_id"]
            and views[i]["light_id"] != views[j]["light_id"]
        )
        i, j = choose_views(rng, views, physical=False)
        assert i == j


def test_photometric_baseline_uses_one_render(shard_dir):
    cfg = _cfg(**{"data.physical_augmentation": "false"})
    batch = _batches(Loader(expand_urls(str(shard_dir)), cfg.data, cfg.crops, 8, seed=0), 1)[0]
    assert (batch["views"][:, 0] == batch["views"][:, 1]).all()
    assert batch["global"].shape == (8, 3, 32, 32)  # same number of crops as the physical run


def test_photometric_labels_are_per_render_not_per_material(shard_dir):
    """The baseline's positives are crops of one render: the same material seen again as another
    render (another view or sample) must get another label; physical runs label the material."""
    from train.data import sample_label

    assert sample_label("oak-1", "oak-1__g0000", (2, 2), physical=True) == schema.stable_label(
        "oak-1"
    )
    photo = {
        sample_label("oak-1", key, (v, v), physical=False)
        for key in ("oak-1__g0000", "oak-1__g0001")
        for v in range(4)
    }
    assert len(photo) == 8 and schema.stable_label("oak-1") not in photo
    by_sample = {
        sample_label("oak-1", key, (0, 1), physical=True, by="sample")
        for key in ("oak-1__g0000", "oak-1__g0001")
    }
    assert len(by_sample) == 2 and schema.stable_label("oak-1") not in by_sample
    # Through the loader: two epochs of one material-per-sample stream give each (key, view)
    # its own label, and equal labels only ever mean the same render.
    cfg = _cfg(**{"data.physical_augmentation": "false", "data.shuffle_buffer": 1})
    loader = Loader(expand_urls(str(shard_dir)), cfg.data, cfg.crops, 8, seed=0)
    seen: dict[int, tuple[str, int]] = {}
    for batch in _batches(loader, 8):
        for key, label, view in zip(
            batch["keys"], batch["labels"].tolist(), batch["views"][:, 0].tolist(), strict=True
        ):
            assert seen.setdefault(label, (key, view)) == (key, view)
    materials = {schema.parse_key(k)[0] for k, _ in seen.values()}
    assert len(seen) > len(materials)  # some material came back as another render


def test_hard_negative_groups_stay_together_through_the_shuffle(tmp_path):
    """With data.hard_negative_batches the shuffle moves whole groups: each batch of 4 holds
    one complete group of 4 materials; without it the groups are scattered."""
    write_synthetic_shards(tmp_path, materials=16, per_shard=4, hard_negative_group_size=4)
    shards = expand_urls(str(tmp_path))

    def groups_per_batch(on: bool) -> list[set[str]]:
        cfg = _cfg(**{"data.hard_negative_batches": str(on).lower(), "data.shuffle_buffer": 8})
        loader = Loader(shards, cfg.data, cfg.crops, 8, seed=0)
        members = {schema.make_key(m["id"], 0): i // 4 for i, m in enumerate(make_materials(16, 0))}
        return [{members[k] for k in b["keys"]} for b in _batches(loader, 8)]

    assert all(len(g) == 1 for g in groups_per_batch(True))
    assert any(len(g) > 1 for g in groups_per_batch(False))


def test_streams_split_samples_across_ranks_and_workers(shard_dir):
    cfg = _cfg(**{"data.shuffle_buffer": 1})
    shards = expand_urls(str(shard_dir))
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, cfg.data, cfg.crops, 8, seed=0, rank=rank, world=2)
        raw = list(stream._epoch_raw(0, rank, 2, skips=SkipCounter("raise", 0)))
        seen.append({r["__key__"] for r in raw})
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 12
    # More streams than shards: every stream reads every shard and keeps every S-th sample.
    seen = []
    for s in range(6):
        stream = ShardStream(shards, cfg.data, cfg.crops, 8, seed=0, rank=s, world=6)
        seen.append(
            {r["__key__"] for r in stream._epoch_raw(0, s, 6, skips=SkipCounter("raise", 0))}
        )
    assert sum(len(k) for k in seen) == 12 and len(set().union(*seen)) == 12


def test_loader_resume_gives_the_same_next_batches(shard_dir):
    cfg = _cfg(**{"data.num_workers": 2})
    shards = expand_urls(str(shard_dir))
    reference = _batches(Loader(shards, cfg.data, cfg.crops, 8, seed=3), 6)
    first = Loader(shards, cfg.data, cfg.crops, 8, seed=3)
    _batches(first, 3)  # odd: the next batch comes from the second worker
    state = json.loads(json.dumps(first.state_dict()))
    resumed = Loader(shards, cfg.data, cfg.crops, 8, seed=3)
    resumed.load_state_dict(state)
    for want, got in zip(reference[3:], _batches(resumed, 3), strict=True):
        assert want["keys"] == got["keys"]
        assert torch.equal(want["global"], got["global"]) and torch.equal(
            want["masks"], got["masks"]
        )
    other = Loader(shards, _cfg(**{"data.num_workers": 1}).data, cfg.crops, 8, seed=3)
    with pytest.raises(DataError, match="num_workers=2"):
        other.load_state_dict(state)


def _corrupt_copy(shard_dir, tmp_path):
    src = tarfile.open(shard_dir / "shard-000000.tar")
    out = tmp_path / "shard-000000.tar"
    with tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith("view0.jpg"):
                data = b"not a jpeg"
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "shard-000001.tar"
    truncated.write_bytes((shard_dir / "shard-000001.tar").read_bytes()[:3000])
    return [str(out), str(truncated), str(shard_dir / "shard-000002.tar")]


def test_error_policy_warn_counts_and_continues(shard_dir, tmp_path):
    shards = _corrupt_copy(shard_dir, tmp_path)
    cfg = _cfg(**{"data.shuffle_buffer": 1, "data.batch_size": 1, "data.index": '""'})
    loader = Loader(shards, cfg.data, cfg.crops, 8, seed=0)
    batches = _batches(loader, 4)
    assert all(b["global"].shape[0] == 2 for b in batches)
    assert sum(loader.errors.values()) >= 1
    strict = _cfg(**{"data.shuffle_buffer": 1, "data.batch_size": 1, "data.error_policy": "raise"})
    with pytest.raises(DataError, match=r"synth-00\d__g0000"):
        for _ in range(12):
            _batches(Loader(shards, strict.data, strict.crops, 8, seed=1), 12)


def test_fsspec_and_pipe_sources(shard_dir):
    data = (shard_dir / "shard-000000.tar").read_bytes()
    with fsspec.open("memory://ds/shard-000000.tar", "wb") as handle:
        handle.write(data)
    cfg = _cfg(**{"data.batch_size": 3, "data.index": '""'})
    for url in ("memory://ds/shard-000000.tar", f"pipe:cat {shard_dir}/shard-000000.tar"):
        batch = _batches(Loader([url], cfg.data, cfg.crops, 8, seed=0), 1)[0]
        assert sorted(batch["keys"]) == ["synth-000__g0000", "synth-001__g0000", "synth-002__g0000"]


def test_crop_box_stays_on_the_object():
    mask = np.zeros((64, 64), dtype=bool)
    mask[40:64, 0:24] = True  # object fills 14% of the image
    grid = augment.ObjectGrid.from_mask(mask)
    rng = np.random.default_rng(0)
    for _ in range(100):
        x0, y0, x1, y1 = augment.crop_box(rng, 64, 64, (0.05, 0.12), grid, 0.5, tries=10)
        assert mask[y0:y1, x0:x1].mean() >= 0.5
    # Without a mask the box is an ordinary random-resized crop of the right area.
    x0, y0, x1, y1 = augment.crop_box(rng, 64, 64, (0.25, 0.25))
    assert abs((x1 - x0) * (y1 - y0) - 1024) < 80


def test_photometric_identity_blur_solarize_and_devices_agree():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8))
    identity = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 3)
    out = augment.photometric(images, identity, normalize=False)
    assert torch.allclose(out, images.float() / 255, atol=1e-6)
    params = identity.clone()
    params[1, 4] = 1.5  # blur image 1 only
    params[2, 5] = 1.0  # solarize image 2 only
    out = augment.photometric(images, params, normalize=False)
    assert torch.allclose(out[0], images[0].float() / 255, atol=1e-6)
    assert out[1].std() < (images[1].float() / 255).std()
    x = images[2].float() / 255
    assert torch.allclose(out[2], torch.where(x >= 0.5, 1 - x, x), atol=1e-6)
    mask = augment.block_mask(rng, 8, 8, 0.4)
    assert 0.3 * 64 <= mask.sum() <= 0.6 * 64


def test_on_device_photometric_matches_worker_path(shard_dir):
    from train.runtime import to_device as _to_device

    shards = expand_urls(str(shard_dir))
    worker = _batches(Loader(shards, _cfg().data, _cfg().crops, 8, seed=5), 1)[0]
    cfg = _cfg(**{"crops.on_device": "true"})
    raw = _batches(Loader(shards, cfg.data, cfg.crops, 8, seed=5), 1)[0]
    assert raw["global"].dtype == torch.uint8
    moved = _to_device(raw, torch.device("cpu"), on_device_aug=True)
    assert torch.allclose(moved["global"], worker["global"], atol=1e-5)
    assert torch.allclose(moved["local"], worker["local"], atol=1e-5)


def test_synthetic_shards_pass_the_schema(tmp_path):
    urls = write_synthetic_shards(tmp_path, materials=2, views=2, size=16, per_shard=2)
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("synth-000__g0000.json").read())
    assert "synth-000__g0000.view1.mask.png" in names
    schema.validate_meta(meta, "synth-000__g0000")
    schema.validate_index(json.loads((tmp_path / "index.json").read_text()))


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 2)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shard_dir, world, workers):
    """Two epochs of 12 samples over ``world`` ranks x ``workers`` workers with a shuffle
    buffer: a stream's batches run across the epoch boundary, the streams together see each
    sample exactly once per epoch (shards are dealt to the streams afresh every epoch), and
    the order of the second epoch is not the first's."""
    cfg = _cfg(**{"data.batch_size": 2, "data.num_workers": workers, "data.shuffle_buffer": 4})
    shards = expand_urls(str(shard_dir))
    per_stream = 12 // (world * workers)
    epochs: list[list[list[str]]] = [[], []]
    for rank in range(world):
        loader = Loader(shards, cfg.data, cfg.crops, 8, seed=5, rank=rank, world=world)
        # Batches alternate between the workers: batch i comes from worker i % workers.
        batches = _batches(loader, 2 * per_stream * workers // 2)
        for w in range(workers):
            keys = [k for b in batches[w::workers] for k in b["keys"]]
            assert len(keys) == 2 * per_stream
            epochs[0].append(keys[:per_stream])
            epochs[1].append(keys[per_stream:])
    for epoch in epochs:
        flat = [k for stream in epoch for k in stream]
        assert sorted(flat) == sorted(set(flat)) and len(flat) == 12  # each sample once
    assert epochs[0] != epochs[1]  # a new order


def test_resampled_mode_draws_shards_with_replacement_per_epoch(shard_dir):
    """``data.resampled``: each stream draws its shards with replacement, afresh every epoch,
    reproducibly for a seed; batches keep coming past what one pass over the data holds."""
    cfg = _cfg(**{"data.resampled": "true", "data.batch_size": 3, "data.shuffle_buffer": 1})
    shards = expand_urls(str(shard_dir))
    stream = ShardStream(shards, cfg.data, cfg.crops, 8, seed=0, rank=0, world=2)
    plans = [stream._epoch_plan(epoch, 0, 2)[0] for epoch in range(8)]
    assert all(len(p) == len(shards) // 2 and set(p) <= set(shards) for p in plans)
    assert len({tuple(p) for p in plans}) > 1  # a new draw each epoch
    assert any(len(set(p)) < len(p) for p in plans)  # with replacement: repeats happen
    again = ShardStream(shards, cfg.data, cfg.crops, 8, seed=0, rank=0, world=2)
    assert [again._epoch_plan(e, 0, 2)[0] for e in range(8)] == plans
    keys = [
        k for b in _batches(Loader(shards, cfg.data, cfg.crops, 8, seed=0), 8) for k in b["keys"]
    ]
    assert len(keys) == 24 > 12  # more than one pass over the 12 samples
