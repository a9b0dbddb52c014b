"""Every ``assets`` subcommand's help teaches: a description, an example, defaults shown once
and never as "None"."""

from __future__ import annotations

import pytest

from assets import cli

SUBCOMMANDS = ("generate", "scan", "validate", "split", "summary", "preview")


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_assets_help_has_a_description_an_example_and_clean_defaults(name, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"phieat-render assets {name}" in text.split("options:")[0]  # an example line
    assert "(default: None)" not in text and "(default: False)" not in text
    for line in text.splitlines():
        assert line.count("default") <= 1, line


def test_preview_without_a_renderer_says_where_to_run_it(tmp_path, capsys):
    """The asset library never starts Blender itself: on its own, ``preview`` names the command
    that can render, and the other commands need no renderer."""
    argv = ["generate", "--per-family", "1", "--what", "materials", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    catalog = tmp_path / "materials.jsonl"
    assert cli.main(["preview", "--catalog", str(catalog), "-n", "2"]) == 2
    assert "run 'phieat-render assets preview" in capsys.readouterr().err
