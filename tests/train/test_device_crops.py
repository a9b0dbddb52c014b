"""The device path (``crops.decode_on_device``) gives the worker path's crops for the same seed.

The worker draws every random choice in both paths, so keys, labels, iBOT masks, photometric
parameters, crop boxes and flips must be equal, and the resume position exact. Pixels differ
only by resampling arithmetic: the worker resizes uint8 with torch's fixed-point kernel, which
rounds to uint8 after each of its two separable passes, while ``augment.cut_crops`` applies
the same filter weights in float32 and never rounds. Each rounding moves a value by at most
half a level, so a crop may differ by up to 1 level of 255 (``GEOMETRY_TOL``); on CPU both
paths decode the JPEGs with the same decoder, so nothing else differs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train import augment
from train.config import ConfigError, load_config
from train.data import Loader, expand_urls, on_device, pack_images
from train.runtime import to_device as _to_device
from train.samples import _device_images

# Two roundings to uint8 of at most half a level each (see the module docstring).
GEOMETRY_TOL = 1.0 + 1e-3
# After photometric: 1 level is 1/255 = 0.0039 on [0, 1], 0.0175 after division by the
# smallest ImageNet std (0.224); brightness and contrast (up to 1.3 each) and saturation
# (up to 1.1) can scale it by ~1.9, so 0.04 normalised units. Solarize is a step at 0.5: a
# pixel within a level of it may land on the other side in one path, so a few values
# (``STEP_FRACTION``) may differ by more.
PHOTOMETRIC_TOL = 0.04
STEP_FRACTION = 1e-3


def _cfg(*extra: str):
    base = [
        "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=4",
        "crops.global_size=32", "crops.local_size=16", "crops.local_per_view=2",
        "crops.on_device=true", *extra,
    ]  # fmt: skip
    return load_config(None, base)


def _first(shard_dir, *extra: str, seed: int = 7) -> dict:
    cfg = _cfg(*extra)
    return next(iter(Loader(expand_urls(str(shard_dir)), cfg.data, cfg.crops, 8, seed=seed)))


def test_same_choices_and_crops_for_the_same_seed(shard_dir):
    worker = _first(shard_dir)
    device = _first(shard_dir, "crops.decode_on_device=true")
    assert device["keys"] == worker["keys"]
    for name in ("labels", "masks", "views", "global_params", "local_params"):
        assert torch.equal(device[name], worker[name]), name
    images = _device_images(device["images"], "cpu")
    for name, size in (("global", 32), ("local", 16)):
        boxes = device[f"{name}_boxes"]
        # Same boxes and flips: the worker's own resize of the device path's boxes is bit-equal.
        redone = torch.stack([
            augment.render_crop(images[s], tuple(b.tolist()), size, bool(f))
            for s, b, f in zip(device[f"{name}_source"], boxes, device[f"{name}_flip"], strict=True)
        ])  # fmt: skip
        assert torch.equal(redone, worker[name]), name
        cut = augment.cut_crops(
            images, device[f"{name}_source"], boxes, size, device[f"{name}_flip"]
        )
        diff = (cut - worker[name].float()).abs()
        assert diff.max() <= GEOMETRY_TOL, (name, float(diff.max()))
        assert diff.mean() < 0.4, name  # rounding error, not a shifted or mirrored crop
    # The crops' sources are the views the worker chose, in sample order.
    assert len(device["images"]["lengths"]) == 2 * len(device["keys"])


def test_device_batch_matches_worker_batch_after_photometric(shard_dir):
    cpu = torch.device("cpu")
    cfg = _cfg("crops.decode_on_device=true")
    worker = _to_device(_first(shard_dir), cpu, on_device_aug=True)
    device = _to_device(_first(shard_dir, "crops.decode_on_device=true"), cpu, True, cfg.crops)
    for name in ("global", "local"):
        assert device[name].shape == worker[name].shape and device[name].dtype == torch.float32
        diff = (device[name] - worker[name]).abs()
        assert (diff > PHOTOMETRIC_TOL).float().mean() <= STEP_FRACTION, name
        assert diff.mean() < 0.01, name
    assert torch.equal(device["masks"], worker["masks"])
    assert torch.equal(device["labels"], worker["labels"])
    assert "images" not in device and "global_boxes" not in device


def test_resume_gives_the_same_device_batches(shard_dir):
    cfg = _cfg("crops.decode_on_device=true")
    shards = expand_urls(str(shard_dir))
    full = Loader(shards, cfg.data, cfg.crops, 8, seed=3)
    it = iter(full)
    want = [next(it) for _ in range(5)]
    first = Loader(shards, cfg.data, cfg.crops, 8, seed=3)
    it = iter(first)
    for _ in range(2):
        next(it)
    resumed = Loader(shards, cfg.data, cfg.crops, 8, seed=3)
    resumed.load_state_dict(first.state_dict())
    it = iter(resumed)
    for expected in want[2:]:
        got = next(it)
        assert got["keys"] == expected["keys"]
        for name in ("global_boxes", "global_flip", "global_params", "local_boxes", "masks"):
            assert torch.equal(got[name], expected[name]), name
        assert torch.equal(got["images"]["bytes"], expected["images"]["bytes"])
        a = on_device(got, "cpu", cfg.crops)
        b = on_device(expected, "cpu", cfg.crops)
        assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])


def test_non_jpeg_views_and_mixed_sizes_are_padded():
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, (3, 20, 24), dtype=np.uint8))
    big = torch.from_numpy(rng.integers(0, 256, (3, 32, 32), dtype=np.uint8))
    images = _device_images(pack_images([small, big]), "cpu")
    assert images.shape == (2, 3, 32, 32) and torch.equal(images[0, :, :20, :24], small)
    boxes = torch.tensor([[2, 3, 22, 19], [0, 0, 32, 32]])
    cut = augment.cut_crops(images, torch.tensor([0, 1]), boxes, 16, torch.tensor([True, False]))
    for i, (image, box, flip) in enumerate(((small, boxes[0], True), (big, boxes[1], False))):
        want = augment.render_crop(image, tuple(box.tolist()), 16, flip)
        assert (cut[i] - want.float()).abs().max() <= GEOMETRY_TOL


def test_decode_on_device_needs_on_device():
    with pytest.raises(ConfigError, match="crops.on_device"):
        load_config(None, ["crops.decode_on_device=true"])


def test_trainer_runs_the_device_path_and_resumes(shard_dir, tmp_path, micro):
    from train.train import main

    extra = ["crops.on_device=true", "crops.decode_on_device=true", "data.num_workers=2"]
    main(load_config(None, micro(shard_dir, tmp_path / "full", steps=4) + extra))
    main(
        load_config(
            None, micro(shard_dir, tmp_path / "split", steps=4) + extra + ["stop_at_step=2"]
        )
    )
    main(load_config(None, micro(shard_dir, tmp_path / "split", steps=4) + extra))

    def read(path):
        return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]

    a, b = read(tmp_path / "full"), read(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        assert ra["batch_digest"] == rb["batch_digest"], ra["step"]
        assert rb["loss/total"] == pytest.approx(ra["loss/total"], rel=1e-5, abs=1e-6)


@pytest.mark.gpu
def test_cuda_decode_and_crops_match_the_cpu(shard_dir):
    """nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: decoded pixels may differ
    by a few levels, so this holds the CUDA batch to the CPU one on average, not per pixel."""
    cfg = _cfg("crops.decode_on_device=true")
    batch = _first(shard_dir, "crops.decode_on_device=true")
    cpu = on_device(batch, "cpu", cfg.crops)
    cuda = on_device(batch, "cuda", cfg.crops)
    for name in ("global", "local"):
        assert cuda[name].is_cuda
        assert (cuda[name].cpu() - cpu[name]).abs().mean() < 0.05, name


def test_truncated_jpeg_is_refused_in_the_worker(shard_dir):
    import tarfile

    from train.data import DataError
    from train.samples import _jpeg_payload

    with tarfile.open(shard_dir / "shard-000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".view0.jpg"))
        data = tar.extractfile(member).read()
    payload, width, height = _jpeg_payload(data, "k", "view0.jpg")
    assert (width, height) == (64, 64) and bytes(payload.numpy()) == data
    with pytest.raises(DataError, match="truncated"):
        _jpeg_payload(data[: len(data) // 2], "k", "view0.jpg")
