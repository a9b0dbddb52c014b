"""Damaged data and bad input on the trainer side: each case a clear error, or skipped and counted.

Every case writes its own tiny synthetic dataset (``train.synthetic``) and damages it the way a
disk, a copy or a user would: undecodable images, invalid json, a damaged tar header, a
truncated shard, bytes changed so they still decode, a deleted or invalid ``index.json``, a
path that does not exist, a truncated or foreign checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from train import checkpoint
from train.checkpoint import atomic_torch_save, list_checkpoints, load_checkpoint
from train.cli import main as cli_main
from train.config import load_config
from train.synthetic import write_synthetic_shards
from train.train import main


def _micro(urls: str, out_dir, steps: int = 3) -> list[str]:
    """The micro model of tests/train/conftest.py: a fraction of a second per step."""
    return [
        f"data.urls={urls}", f"out_dir={out_dir}", "data.batch_size=4", "data.num_workers=0",
        "data.shuffle_buffer=4", "crops.global_size=32", "crops.local_size=16",
        "crops.local_per_view=1", "model.arch=vit_tiny_patch16_224", "model.patch_size=8",
        "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.head_prototypes=64",
        "model.head_hidden=32", "model.head_bottleneck=16", "model.contrast_hidden=32",
        "model.contrast_dim=16", f"optim.steps={steps}", "optim.warmup_steps=1",
        "optim.freeze_last_layer_steps=1", "loss.warmup_teacher_temp_steps=1", "log_every=1",
        "ckpt_every=0", "progress=false", "tensorboard=false", "threads=1", "max_minutes=0",
    ]  # fmt: skip


def _dataset(path: pathlib.Path, materials: int = 36, per_shard: int = 3) -> pathlib.Path:
    """12 shards of 3 samples: one damaged shard stays under data.max_skipped_fraction."""
    write_synthetic_shards(path, materials=materials, views=4, size=48, per_shard=per_shard)
    return path


def _rewrite(shard: pathlib.Path, change) -> None:
    """Rewrite a shard with ``change(name, data) -> data`` applied to every member."""
    with tarfile.open(shard) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for name, data in members:
            data = change(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    shard.write_bytes(buffer.getvalue())


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli_main(["--config", "tiny-cpu", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1] if err.strip() else ""


# ----------------------------------------------------------------------------- samples and shards


def test_undecodable_jpeg_sample_is_skipped_and_counted(tmp_path):
    ds = _dataset(tmp_path / "ds")
    _rewrite(
        ds / "shard-000001.tar",
        lambda n, d: b"not a jpeg" if n.startswith("synth-004__") and n.endswith(".jpg") else d,
    )
    cfg = load_config(None, _micro(f"{ds}/shard-{{000000..000011}}.tar", tmp_path / "run", 4))
    main(cfg)
    last = _metrics(tmp_path / "run")[-1]
    assert last["skipped_samples"] >= 1 and last["skipped_shards"] == 0  # 16 samples of 12: twice


def test_invalid_json_sample_is_skipped_and_counted(tmp_path):
    ds = _dataset(tmp_path / "ds")
    _rewrite(
        ds / "shard-000002.tar",
        lambda n, d: b'{"schema_version": 1, "key": ' if n == "synth-007__g0000.json" else d,
    )
    cfg = load_config(None, _micro(str(ds), tmp_path / "run", 4))
    main(cfg)
    assert _metrics(tmp_path / "run")[-1]["skipped_samples"] >= 1


def _damage_header(shard: pathlib.Path, member_index: int) -> None:
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[member_index].offset
    data = bytearray(shard.read_bytes())
    data[offset : offset + 100] = (
        b"\xff" * 100
    )  # name field and the header checksum no longer agree
    shard.write_bytes(bytes(data))


def test_damaged_tar_header_skips_the_rest_of_the_shard_and_counts_it(tmp_path):
    ds = _dataset(tmp_path / "ds")
    _damage_header(ds / "shard-000000.tar", member_index=10)  # 2nd sample: 9 members each
    # Named explicitly with no index: the damage is found in the tar itself.
    urls = f"{ds}/shard-{{000000..000011}}.tar"
    cfg = load_config(None, _micro(urls, tmp_path / "run", 10) + ['data.index=""'])
    main(cfg)
    assert _metrics(tmp_path / "run")[-1]["skipped_shards"] == 1


def test_shard_truncated_at_a_member_boundary_is_counted_against_its_index_record(tmp_path):
    ds = _dataset(tmp_path / "ds")
    shard = ds / "shard-000003.tar"
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[9].offset  # the tar ends cleanly after one sample
    shard.write_bytes(shard.read_bytes()[:cut])
    cfg = load_config(None, _micro(str(ds), tmp_path / "run", 10))  # 40 samples: one epoch
    main(cfg)
    assert _metrics(tmp_path / "run")[-1]["skipped_shards"] == 1


def test_too_many_skipped_samples_stop_the_run_with_one_line(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    for i in range(6):
        _rewrite(ds / f"shard-00000{i}.tar", lambda n, d: b"x" if n.endswith(".jpg") else d)
    code, line = _cli(_micro(str(ds), tmp_path / "run", 20), capsys)
    assert code == 2
    assert line.startswith("phieat-train: ") and "data.max_skipped_fraction=0.1" in line
    assert "18 of 36 samples were unreadable" in line


def test_verify_shards_catches_changed_bytes_that_still_decode(tmp_path):
    ds = _dataset(tmp_path / "ds")

    def reencode(name, data):
        if not (name.startswith("synth-000__") and name.endswith(".jpg")):
            return data
        out = io.BytesIO()
        pixels = 255 - np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        Image.fromarray(pixels).save(out, format="JPEG")
        return out.getvalue()

    _rewrite(ds / "shard-000000.tar", reencode)  # index.json keeps the old sha256
    cfg = load_config(None, _micro(str(ds), tmp_path / "run", 10) + ["data.verify_shards=true"])
    main(cfg)
    last = _metrics(tmp_path / "run")[-1]
    assert last["skipped_shards"] == 1 and last["skipped_samples"] == 0


# ----------------------------------------------------------------------------- index.json and paths


def test_deleted_index_is_an_error_unless_the_shards_are_named(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    (ds / "index.json").unlink()
    code, line = _cli(_micro(str(ds), tmp_path / "run"), capsys)
    assert code == 2 and "holds no index.json" in line
    assert "shard-{000000..000011}.tar" in line  # says how to name the shards instead
    assert not (tmp_path / "run" / "checkpoints").exists()
    explicit = f"{ds}/shard-{{000000..000011}}.tar"
    assert _cli(_micro(explicit, tmp_path / "run", 1), capsys)[0] == 0


def test_invalid_index_json_is_one_line(tmp_path, capsys):
    ds = _dataset(tmp_path / "ds")
    (ds / "index.json").write_text('{"schema_version": 1, "shards": [')
    code, line = _cli(_micro(str(ds), tmp_path / "run"), capsys)
    assert code == 2 and "index.json is not valid JSON" in line


def test_missing_data_path_fails_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    import train.train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data path was checked")

    monkeypatch.setattr(train.train, "MetaArch", no_model)
    code, line = _cli(_micro(str(tmp_path / "nonexistent"), tmp_path / "run"), capsys)
    assert code == 2 and line == (
        f"phieat-train: data.urls: {tmp_path / 'nonexistent'} does not exist (pass a dataset "
        "folder, a version folder v-<hash>, an index.json, a brace pattern or .tar files)"
    )
    code, line = _cli(
        _micro(str(tmp_path / "shard-{000000..000002}.tar"), tmp_path / "run"), capsys
    )
    assert code == 2 and "3 of 3 shards do not exist" in line


# ----------------------------------------------------------------------------- checkpoints


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    ds = _dataset(tmp_path / "ds")
    run = tmp_path / "run"
    main(load_config(None, _micro(str(ds), run, 4) + ["ckpt_every=2", "keep_last=3"]))
    newest = run / "checkpoints" / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    caplog.set_level(logging.INFO, logger="phieat.train")
    summary = main(load_config(None, _micro(str(ds), run, 5) + ["ckpt_every=2", "keep_last=3"]))
    assert summary["step"] == 5
    assert f"skipping checkpoint {newest}" in caplog.text
    assert "resumed from" in caplog.text and "ckpt-00000002.pt at step 2" in caplog.text


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"path": pathlib.Path("/x")}, foreign)  # needs weights_only=False to load
    for path in (text, foreign):
        with pytest.raises(checkpoint.CheckpointError) as info:
            load_checkpoint(str(path))
        assert str(path) in str(info.value) and "weights_only" not in str(info.value)
    # The only checkpoint of a run does not load: one line, status 2.
    ds = _dataset(tmp_path / "ds")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "ckpt-00000002.pt").write_text("garbage")
    code, line = _cli(_micro(str(ds), tmp_path / "run"), capsys)
    assert code == 2 and "no checkpoint in" in line and "resume=false" in line


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "ckpt" / "ckpt-00000001.pt"
        atomic_torch_save({"step": 1}, str(path))
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        atomic_torch_save({"step": 2}, str(path))
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "ckpt"))] == [1]
