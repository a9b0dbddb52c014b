"""Strict config: shipped configs load, mistyped keys and values fail naming the key, round trip."""

from __future__ import annotations

import pytest

from train.cli import main as cli_main
from train.config import CONFIG_DIR, ConfigError, load_config, to_dict, to_toml


@pytest.mark.parametrize("name", ["tiny-cpu", "vits14", "vitb14", "vitl14"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.crops.global_size % (cfg.model.patch_size or 14) == 0
    assert cfg.crops.local_size % (cfg.model.patch_size or 14) == 0


def test_tiny_cpu_is_small():
    cfg = load_config("tiny-cpu")
    assert (cfg.crops.global_size, cfg.crops.local_size) == (64, 32)
    # Few prototypes for 150 materials: 2048 left the DINO targets near uniform.
    assert 64 <= cfg.model.head_prototypes <= 1024 and cfg.loss.teacher_temp <= 0.05


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.stepz=3", "unknown key 'optim.stepz'"),
        ("optim.steps=ten", "optim.steps must be int"),
        ("data.physical_augmentation=1", "data.physical_augmentation must be true or false"),
        ("loss.centering=softmax", "loss.centering = 'softmax' is not one of"),
        ("crops.global_scale=[0.9, 0.1]", "crops.global_scale must be"),
        ("model=3", "model must be a table"),
        ("nokey", "is not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-cpu", [override])


def test_bad_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[optim]\nlr = 0.1\n")
    with pytest.raises(ConfigError, match=r"mine.toml: unknown key 'optim.lr'"):
        load_config(str(path))


def test_overrides_types_and_round_trip(tmp_path):
    cfg = load_config(
        "tiny-cpu", ["optim.base_lr=1", "data.urls=a.tar::b/{0..1}.tar", "out_dir=/x/y"]
    )
    assert cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr, float)
    assert cfg.data.urls == ["a.tar", "b/{0..1}.tar"] and cfg.out_dir == "/x/y"
    saved = tmp_path / "config.toml"
    saved.write_text(to_toml(cfg))
    assert to_dict(load_config(str(saved))) == to_dict(cfg)


def test_cli_print_config_and_errors(capsys):
    assert cli_main(["--config", "tiny-cpu", "--print-config", "optim.steps=7"]) == 0
    assert "steps = 7" in capsys.readouterr().out
    assert cli_main(["--config", "tiny-cpu", "optim.stepz=7"]) == 2
    assert "optim.stepz" in capsys.readouterr().err
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) == [
        "tiny-cpu",
        "vitb14",
        "vitl14",
        "vits14",
    ]
