"""A user's first steps: resumed runs that know what they trained, every way to name a
dataset, and warnings for settings that train something other than what was meant."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tomllib

import pytest
import torch

from train.checkpoint import load_checkpoint
from train.cli import main as cli_main
from train.config import ConfigError, load_config
from train.data import DataError, resolve_data
from train.synthetic import write_synthetic_shards
from train.train import main


def _run(micro, shard_dir, out_dir, steps: int, *extra: str) -> dict:
    return main(load_config(None, micro(shard_dir, out_dir, steps) + list(extra)))


# ----------------------------------------------------------------------------- resumed runs


def test_resume_refuses_another_objective_and_keeps_the_record(shard_dir, tmp_path, micro):
    _run(micro, shard_dir, tmp_path, 2)
    before = (tmp_path / "config.toml").read_text()
    with pytest.raises(ConfigError) as info:
        _run(micro, shard_dir, tmp_path, 4, "data.physical_augmentation=false")
    message = str(info.value)
    assert "data.physical_augmentation true -> false" in message
    assert "--allow-config-change" in message and "ckpt-00000002.pt (step 2)" in message
    assert (tmp_path / "config.toml").read_text() == before
    assert [p.name for p in tmp_path.glob("config*.toml")] == ["config.toml"]


def test_cli_refusal_is_one_line_and_the_flag_allows_it(shard_dir, tmp_path, micro, capsys):
    assert cli_main(["--config", "tiny-cpu", *micro(shard_dir, tmp_path, 2)]) == 0
    argv = ["--config", "tiny-cpu", *micro(shard_dir, tmp_path, 3), "loss.koleo_weight=0.3"]
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("phieat-train: ") and "loss.koleo_weight 0.1 -> 0.3" in err[-1]
    assert "Traceback" not in "\n".join(err)
    # Allowed, a change the checkpoint's model cannot hold is still one line.
    assert cli_main(["--allow-config-change", *argv, "loss.contrast_weight=0"]) == 2
    assert "cannot be continued with these settings" in capsys.readouterr().err
    assert cli_main(["--allow-config-change", *argv]) == 0
    history = load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-00000003.pt"))["config_history"]
    assert history == [
        {"step": 2, "changes": {"loss.koleo_weight": [0.1, 0.3], "optim.steps": [2, 3]}}
    ]
    export = torch.load(tmp_path / "export" / "backbone.pt", weights_only=True)
    assert export["config_history"] == history
    resumed = tomllib.loads((tmp_path / "config.resume-00000002.toml").read_text())
    assert resumed["loss"]["koleo_weight"] == 0.3
    assert tomllib.loads((tmp_path / "config.toml").read_text())["loss"]["koleo_weight"] == 0.1


def test_resume_refuses_other_data(shard_dir, tmp_path, micro):
    _run(micro, shard_dir, tmp_path / "run", 2)
    other = tmp_path / "other"
    write_synthetic_shards(other, materials=12, views=4, size=64, per_shard=3, seed=5)
    with pytest.raises(ConfigError, match=r"data \(version and shard checksums\)"):
        _run(micro, other, tmp_path / "run", 4)


def test_resume_accepts_a_rebuilt_index_of_the_same_data(shard_dir, tmp_path, micro):
    """A build that resumes rewrites index.json (its creation time) without changing the
    data: training resumes."""
    data = tmp_path / "data"
    shutil.copytree(shard_dir, data)
    _run(micro, data, tmp_path / "run", 2)
    index = json.loads((data / "index.json").read_text())
    index["created"] = "2099-01-01T00:00:00Z"
    (data / "index.json").write_text(json.dumps(index))
    _run(micro, data, tmp_path / "run", 2)  # the same run: nothing refused


def test_schedule_change_is_warned_and_recorded(shard_dir, tmp_path, micro, caplog):
    _run(micro, shard_dir, tmp_path, 2)
    caplog.set_level(logging.INFO, logger="phieat.train")
    summary = _run(micro, shard_dir, tmp_path, 4)
    assert summary["step"] == 4
    assert "with changed settings: optim.steps 2 -> 4" in caplog.text
    assert tomllib.loads((tmp_path / "config.toml").read_text())["optim"]["steps"] == 2
    assert tomllib.loads((tmp_path / "config.resume-00000002.toml").read_text())["optim"][
        "steps"
    ] == 4  # fmt: skip
    ckpt = load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-00000004.pt"))
    assert ckpt["config_history"] == [{"step": 2, "changes": {"optim.steps": [2, 4]}}]


def test_a_fresh_run_keeps_an_older_config_aside(shard_dir, tmp_path, micro):
    _run(micro, shard_dir, tmp_path, 2)
    _run(micro, shard_dir, tmp_path, 3, "resume=false", "seed=4")
    kept = list(tmp_path.glob("config.before-*.toml"))
    assert len(kept) == 1 and tomllib.loads(kept[0].read_text())["seed"] == 0
    assert tomllib.loads((tmp_path / "config.toml").read_text())["seed"] == 4


# ----------------------------------------------------------------------------- naming a dataset


@pytest.fixture
def dataset(tmp_path):
    """A build's output folder: ``latest.json`` naming the version folder ``v-0001``."""
    root = tmp_path / "ds"
    write_synthetic_shards(root / "v-0001", materials=6, views=4, size=32, per_shard=3)
    (root / "latest.json").write_text(
        json.dumps({"version": "v-0001", "index": "v-0001/index.json", "dataset": "synthetic"})
    )
    return root


def _names(source) -> list[str]:
    return [u.rsplit("/", 2)[-2] + "/" + u.rsplit("/", 1)[-1] for u in source.shards]


def test_every_way_to_name_a_dataset(dataset):
    want = ["v-0001/shard-000000.tar", "v-0001/shard-000001.tar"]
    version = dataset / "v-0001"
    for urls in (
        dataset,
        version,
        version / "index.json",
        f"{version}/shard-{{000000..000001}}.tar",
        f"{version}/shard-000000.tar::{version}/shard-000001.tar",
    ):
        source = resolve_data(load_config(None, [f"data.urls={urls}"]).data)
        assert _names(source) == want, urls
    assert resolve_data(load_config(None, [f"data.urls={dataset}"]).data).index_url == str(
        version / "index.json"
    )


def test_training_on_a_dataset_folder_follows_latest_json(dataset, tmp_path, micro):
    summary = _run(micro, dataset, tmp_path / "run", 1, f"data.urls={dataset}")
    assert summary["step"] == 1


def test_eval_resolves_a_dataset_folder(dataset):
    from train.eval.data import resolve_shards

    urls, index = resolve_shards(str(dataset))
    assert index is not None and [u.rsplit("/", 1)[-1] for u in urls] == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]


def test_dataset_paths_are_checked_up_front(dataset, tmp_path):
    def error(urls: str, *extra: str) -> str:
        with pytest.raises(DataError) as info:
            resolve_data(load_config(None, [f"data.urls={urls}", *extra]).data)
        return str(info.value)

    assert "does not exist" in error(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("x")
    assert "neither a folder" in error(str(tmp_path / "notes.txt"))
    (dataset / "latest.json").write_text('{"version": "v-9999"}')
    assert "holds no index.json" in error(str(dataset))
    (dataset / "latest.json").write_text("{")
    assert "latest.json is not valid JSON" in error(str(dataset))
    index = json.loads((dataset / "v-0001" / "index.json").read_text())
    index["shards"][0]["name"] = "../x.tar"
    (dataset / "v-0001" / "index.json").write_text(json.dumps(index))
    assert "not a file in the dataset" in error(str(dataset / "v-0001" / "index.json"))
    assert "is empty" in error("")


# ----------------------------------------------------------------------------- warnings


def test_warnings_for_a_small_dataset_and_an_all_warm_up_run(dataset, tmp_path, micro, caplog):
    caplog.set_level(logging.INFO, logger="phieat.train")
    _run(
        micro, dataset, tmp_path / "run", 2, f"data.urls={dataset}", "data.batch_size=8",
        "optim.warmup_steps=5",
    )  # fmt: skip
    assert "the dataset holds 6 samples, fewer than one batch (8" in caplog.text
    assert "optim.steps=2 ends within the learning-rate warm-up" in caplog.text


def test_a_max_minutes_stop_is_announced(shard_dir, tmp_path, micro, caplog):
    caplog.set_level(logging.INFO, logger="phieat.train")
    summary = _run(micro, shard_dir, tmp_path, 50, "max_minutes=0.00001")
    assert summary["step"] < 50
    assert "max_minutes=1e-05: the run stops" in caplog.text
    assert (
        f"stopped by max_minutes=1e-05 at step {summary['step']} of optim.steps=50" in caplog.text
    )


def test_log_lines_print_rounded_numbers(shard_dir, tmp_path, micro, caplog):
    caplog.set_level(logging.INFO, logger="phieat.train")
    _run(micro, shard_dir, tmp_path, 2)
    assert "step 2 of 2: loss" in caplog.text
    long_floats = [m for m in caplog.messages if re.search(r"\d\.\d{6,}", m)]
    assert not long_floats
