"""The commands of README.md and docs/*.md, as a reader meets them.

* Every ``phieat-render``, ``phieat-train`` and ``phieat-eval`` line of a shell code block
  (also written as ``python -m render ...``, ``torchrun ... -m train ...`` or
  ``deploy/submit.sh SPEC OUTPUT ...``) parses with the program's own parser; a spec's
  ``--set`` values and the trainer's ``key=value`` settings load with the strict spec and
  config loaders; every file of this repository a command names exists; every ``make``
  target exists. A flag, subcommand, setting or file renamed in the code fails here.
* The one-machine path runs for real at toy size, in the order a user runs it: render
  ``manifests/tiny.toml`` with a contact sheet, verify, preview, ask what a re-run would
  add, render a held-out set, train a few steps, evaluate, redraw the report. Only output
  paths and sizes differ from the documented commands.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_end_to_end import TOY

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
SHELL_BLOCKS = {"bash", "sh", "shell", "console", "cron"}
PROGRAMS = {
    "phieat-render": "render",
    "phieat-train": "train",
    "phieat-eval": "train.eval.cli",
}
MODULES = {module: prog for prog, module in PROGRAMS.items()}
# Top-level folders of the repository: a command's argument under one of them names a file
# that must exist. out/ holds what commands write.
REPO_DIRS = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {"out"}


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One simple command of a document: ``argv`` from the program word on."""

    doc: str
    line: int
    text: str
    argv: tuple[str, ...]
    fenced: bool

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


# ----------------------------------------------------------------------------- extraction


def _code_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """``(line number of the first line, info string, lines)`` of each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+)\s*(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        yield i + 2, info.lower(), body
        i = j + 1


def _logical_lines(body: list[str], first: int) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, with the number of their first line."""
    pending, start = "", first
    for n, line in enumerate(body, first):
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _simple_commands(line: str) -> Iterator[list[str]]:
    """Split a shell line at ``&&``, ``||``, ``;``, ``|`` and ``&``; drop redirections."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    command: list[str] = []
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in {"&&", "||", ";", "|", "&"}:
            yield command
            command = []
        elif set(token) <= set("<>&"):
            if command and command[-1].isdigit():
                command.pop()  # the 2 of 2>&1
            skip_next = True
        else:
            command.append(token)
    yield command


def _strip_env(argv: list[str]) -> list[str]:
    """Drop leading ``VAR=value`` assignments; an ``export`` is no command to check."""
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    if argv[:1] == ["export"]:
        return []
    return argv


def doc_commands(doc: str) -> list[DocCommand]:
    """Every simple command of ``doc``'s shell code blocks (fenced) and of its inline code
    spans that start with a program (``phieat-*``, ``python``, ``torchrun``, ``make``; not
    fenced), in document order."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    found: list[DocCommand] = []
    for first, info, body in _code_blocks(text):
        if info not in SHELL_BLOCKS:
            continue
        for n, line in _logical_lines(body, first):
            if info == "cron":
                if line.lstrip().startswith("#") or not line.strip():
                    continue
                line = line.split(None, 5)[5]  # minute hour day month weekday command
            for argv in _simple_commands(line):
                argv = _strip_env(argv)
                if argv:
                    found.append(DocCommand(doc, n, " ".join(line.split()), tuple(argv), True))
    fence = re.compile(r"^\s*```.*?^\s*```", re.S | re.M)
    prose = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    inline = (
        r"`((?:phieat-(?:render|train|eval)|python3?|\.venv/bin/python|torchrun|make)(?: [^`]*)?)`"
    )
    for m in re.finditer(inline, prose):
        n = prose.count("\n", 0, m.start()) + 1
        found.append(DocCommand(doc, n, m.group(1), tuple(shlex.split(m.group(1))), False))
    return sorted(found, key=lambda c: c.line)


ALL = [c for doc in DOCS for c in doc_commands(doc)]


def as_program(argv: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """``(phieat program, its arguments)`` for the ways the docs run one, else None."""
    argv = list(argv)
    if argv[0] in PROGRAMS:
        return argv[0], argv[1:]
    if argv[0] == "ray" and "--" in argv:
        return as_program(tuple(argv[argv.index("--") + 1 :]))
    if argv[0] == "deploy/submit.sh" and len(argv) >= 3:
        # deploy/submit.sh SPEC OUTPUT [ARGS]: python -m render build SPEC --output OUTPUT
        # --no-progress ARGS (see the script).
        return "phieat-render", ["build", argv[1], "--output", argv[2], "--no-progress", *argv[3:]]
    if Path(argv[0]).name in {"python", "python3", "torchrun"} and "-m" in argv:
        i = argv.index("-m")
        module = argv[i + 1] if i + 1 < len(argv) else ""
        if module in MODULES:
            return MODULES[module], argv[i + 2 :]
    return None


# ----------------------------------------------------------------------------- parsing


class _ParseError(Exception):
    pass


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` and its subparsers raise instead of printing and exiting."""

    def error(message: str) -> None:
        raise _ParseError(message)

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def _parser(prog: str) -> argparse.ArgumentParser:
    if prog == "phieat-render":
        from render.cli import build_parser
    elif prog == "phieat-train":
        from train.cli import build_parser
    else:
        from train.eval.cli import build_parser
    return _strict(build_parser())


def check_program(prog: str, args: list[str], complete: bool = True) -> None:
    """Parse ``args`` with ``prog``'s parser and load its spec or config strictly.

    ``complete=False`` (inline mentions such as ``phieat-eval run``) accepts a line that
    lacks required arguments but not an unknown subcommand, flag or setting."""
    parser = _parser(prog)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ns = parser.parse_args(args)
    except SystemExit as exc:  # --help
        assert exc.code == 0, f"{prog} {shlex.join(args)} exited with {exc.code}"
        return
    except _ParseError as exc:
        if complete or "arguments are required" not in str(exc):
            raise AssertionError(f"{prog} {shlex.join(args)}: {exc}") from None
        return
    if prog == "phieat-train":
        from train.config import load_config

        load_config(ns.config, ns.overrides)
    elif complete and prog == "phieat-render" and getattr(ns, "spec", None):
        # (an inline mention may name a placeholder such as SPEC)
        from render.spec import load_spec

        load_spec(ROOT / ns.spec, ns.overrides)


def _named_files(argv: tuple[str, ...]) -> Iterator[str]:
    """Arguments (or ``key=`` / ``--flag=`` values) that name a path inside the repository."""
    for token in argv:
        for value in {token, token.split("=", 1)[-1]}:
            if "://" in value or value.startswith(("/", "$", "~")):
                continue
            head = value.split("/", 1)[0]
            if "/" in value and head in REPO_DIRS:
                yield value


def _check_command(command: DocCommand) -> None:
    for name in _named_files(command.argv):
        assert list(ROOT.glob(name)), f"{command.where}: {name} does not exist"
    if command.argv[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in command.argv[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), (
                f"{command.where}: no make target {target!r}"
            )
    program = as_program(command.argv)
    if program:
        check_program(*program, complete=command.fenced)


# ----------------------------------------------------------------------------- tests


def test_the_docs_show_commands_of_every_program():
    """The extraction finds what the documents show (so an empty list cannot pass)."""
    fenced = [as_program(c.argv) for c in ALL if c.fenced]
    assert {p[0] for p in fenced if p} >= {"phieat-render", "phieat-train"}
    cluster = [c for c in ALL if c.doc == "docs/cluster.md" and c.fenced]
    assert any(c.argv[:3] == ("phieat-render", "build", "manifests/tiny.toml") for c in cluster)
    assert {p[0] for c in ALL if (p := as_program(c.argv))} >= set(PROGRAMS)
    assert all((ROOT / d).exists() for d in DOCS) and "docs/cluster.md" in DOCS


def test_no_command_hides_in_a_block_without_a_shell_language():
    """A ``phieat-`` line in a block marked neither bash nor cron would not be checked."""
    for doc in DOCS:
        for first, info, body in _code_blocks((ROOT / doc).read_text(encoding="utf-8")):
            if info in SHELL_BLOCKS:
                continue
            for n, line in enumerate(body, first):
                assert not re.match(r"\s*(\$ )?phieat-", line), f"{doc}:{n}: {line}"


@pytest.mark.parametrize(
    "command", [pytest.param(c, id=f"{c.doc}:{c.line}:{' '.join(c.argv[:3])}") for c in ALL]
)
def test_documented_command(command: DocCommand):
    _check_command(command)


def documented_settings(doc: str) -> list[tuple[int, str, str]]:
    """``(line, kind, text)`` of the settings ``doc`` names in inline code: spec keys as
    ``[section].key`` (kind ``spec``), training settings as ``section.key=value`` or
    ``section.key`` (kind ``train``)."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    found = []
    patterns = {
        "spec": r"`\[[a-z_]+\](?:\.[a-z_]+)?(?: = [^`]*)?`",
        "train": r"`(?:data|optim|loss|model|crops)\.[a-z_]+(?: ?= ?[^`]*)?`",
    }
    for kind, pattern in patterns.items():
        for m in re.finditer(pattern, text):
            found.append((text.count("\n", 0, m.start()) + 1, kind, m.group(0).strip("`")))
    return sorted(found)


def _check_setting(kind: str, text: str, together: tuple[str, ...] = ()) -> None:
    """``together``: settings shown with this one (``crops.on_device = true`` and
    ``crops.decode_on_device = true``), applied first."""
    if kind == "train":
        from train.config import load_config

        key, sep, value = (part.strip() for part in text.partition("="))
        if not sep:  # a key named without a value: set it to what it already is
            from train.config import TrainConfig, to_dict

            node = to_dict(TrainConfig())
            for part in key.split("."):
                assert part in node, f"no training setting {key!r}"
                node = node[part]
            value = repr(node).lower() if isinstance(node, bool) else repr(node)
        load_config(None, [*(t.replace(" ", "") for t in together), f"{key}={value}"])
        return
    from render.spec import Spec

    section, _, key = text.split(" = ")[0].partition(".")
    sections = typing.get_type_hints(Spec)
    name = section.strip("[]")
    assert name in sections and dataclasses.is_dataclass(sections[name]), f"no spec [{name}]"
    if key:
        assert key in {f.name for f in dataclasses.fields(sections[name])}, f"no spec {text}"


SETTINGS = [(doc, *s) for doc in DOCS for s in documented_settings(doc)]


@pytest.mark.parametrize(
    "doc, line, kind, text", [pytest.param(*s, id=f"{s[0]}:{s[1]}:{s[3]}") for s in SETTINGS]
)
def test_documented_setting(doc: str, line: int, kind: str, text: str):
    """Settings named in the prose (``[build].max_retries``, ``data.labels=sample``) exist
    and take the value shown."""
    together = tuple(
        t for d, n, k, t in SETTINGS if (d, n, k) == (doc, line, kind) and "=" in t and t != text
    )
    _check_setting(kind, text, together)


# ----------------------------------------------------------------------------- the walk


def _program(prog: str) -> list[str]:
    """The installed console script, else ``python -m`` of its module."""
    script = Path(sys.executable).parent / prog
    return [str(script)] if script.exists() else [sys.executable, "-m", PROGRAMS[prog]]


def _documented(doc: str, text: str) -> list[str]:
    """The argv of a command as ``doc`` shows it; fails if the document no longer does."""
    for c in ALL:
        if c.doc == doc and " ".join(c.argv) == text:
            return list(c.argv)
    raise AssertionError(f"{doc} no longer shows `{text}`; update the walk-through")


def _swap(argv: list[str], paths: dict[str, str]) -> list[str]:
    return [paths.get(a, a) for a in argv]


def run(argv: list[str]) -> str:
    """Run a documented command; it must exit 0 without a traceback."""
    proc = subprocess.run(
        _program(argv[0]) + argv[1:],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{output}"
    assert "Traceback" not in output, f"{shlex.join(argv)}:\n{output}"
    return output


@pytest.mark.blender
@pytest.mark.slow
def test_the_one_machine_walkthrough(tmp_path: Path):
    """README and docs/cluster.md on one machine, at toy size (``TOY`` of the end-to-end
    test: 32 px, 2 samples, 4 materials x 3 views), into a temporary folder."""
    data, eval_data = str(tmp_path / "tiny"), str(tmp_path / "eval-tiny")
    run_dir, report = str(tmp_path / "run"), str(tmp_path / "eval")
    sheet = str(tmp_path / "tiny-preview.png")
    toy = [*TOY, "--output", data]

    # What a build will cost, before it runs (docs/cluster.md, "One machine").
    out = run(
        _documented("docs/cluster.md", "phieat-render plan manifests/demo.toml --estimate")
        + ["--output", str(tmp_path / "demo-render")]
    )
    assert "estimate: 1200 images in 10 shards" in out
    # README step 1: the tiny spec with its contact sheet (the command of its header).
    spec = (ROOT / "manifests" / "tiny.toml").read_text()
    assert "#   phieat-render build manifests/tiny.toml --preview out/tiny-preview.png" in spec
    build = _documented("docs/cluster.md", "phieat-render build manifests/tiny.toml --local")
    out = run(build + ["--preview", sheet, *toy])
    assert "shards   2 planned, 2 rendered" in out and Path(sheet).stat().st_size > 0
    paths = {"out/demo-render": data, "out/demo-render.png": str(tmp_path / "again.png")}
    run(_swap(_documented("docs/cluster.md", "phieat-render verify out/demo-render"), paths))
    preview = "phieat-render preview out/demo-render -o out/demo-render.png"
    run(_swap(_documented("docs/cluster.md", preview), paths))
    assert (tmp_path / "again.png").stat().st_size > 0
    # What a re-run would add: nothing (docs/cluster.md, nightly rebuilds).
    diff = "phieat-render plan manifests/full.toml --output s3://my-bucket/phieat/full --diff --estimate"
    paths |= {"manifests/full.toml": "manifests/tiny.toml", "s3://my-bucket/phieat/full": data}
    out = run(_swap(_documented("docs/cluster.md", diff), paths) + TOY)
    assert "a build would render 0 of 2 shards" in out

    # README step 1 also renders the held-out set; step 2 trains, step 3 evaluates.
    held_out = _swap(build, {"manifests/tiny.toml": "manifests/eval-tiny.toml"})
    run(held_out + [*TOY, "--output", eval_data, "--set", "scenes.count=1"])
    train = _documented("README.md", "phieat-train --config tiny-cpu")
    run(
        train
        + [f"data.urls={data}", f"out_dir={run_dir}", "optim.steps=2", "optim.warmup_steps=1"]
        + ["data.batch_size=4", "data.num_workers=0", "progress=false", "tensorboard=false"]
    )
    evaluate = _documented("README.md", "phieat-eval run")
    run(
        evaluate
        + ["--model", f"physical={run_dir}", "--model", "pixel-stats=pixel-stats"]
        + ["--eval-data", eval_data, "--train-index", data, "--out", report]
    )
    run(["phieat-eval", "report", report])
    assert (Path(report) / "report.md").stat().st_size > 0
