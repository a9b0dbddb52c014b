"""The end-to-end demo on the embedded default assets: render -> train -> evaluate -> report.

``make demo`` runs this after setting up ``.venv``. Every stage is a plain CLI call that a
user could type, and every stage resumes: finished shards and checkpoints are reused, so an
interrupted demo picks up where it stopped. On 2 idle CPU cores it takes about 27 minutes
(about an hour with three seeds)::

    python scripts/demo.py --out out                          # the whole loop
    python scripts/demo.py --out out --quick                  # the shard contract only: tiny.toml
    python scripts/demo.py --out out --seeds 0 1 2            # three seeds per model (spread in report)
    python scripts/demo.py --out out --models physical-hardneg  # add the hard-negative ablation

Stages (outputs under ``--out``):

1. ``phieat-render build`` of ``manifests/tiny.toml`` (seconds, with a contact sheet
   ``<out>/tiny-preview.png``), then ``manifests/loop-train.toml`` (150 training-split materials x 4
   views), ``loop-val.toml`` (100 val-split materials and 10 selection scenes) and
   ``eval-tiny.toml`` (100 test-split materials on test-split meshes and lights, 20 selection
   scenes, with object and material-index masks); ``loop-train-hardneg.toml`` only for
   ``physical-hardneg``.
2. ``phieat-train --config tiny-cpu`` four times on the same shards and budget, a 2 x 2 of
   views x L_contrast: physical augmentation (two views = two renders of a material on other
   meshes and lights) and the photometric baseline (two views = two augmentations of one
   render), each with and without L_contrast (``--models`` picks a subset).
3. ``phieat-eval run`` of all of them beside the pixel-statistics and random-init baselines; the
   report is ``<out>/demo/eval/report.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"train": "loop-train", "val": "loop-val", "eval": "eval-tiny"}


def _resolve(output: Path) -> Path:
    """The version folder a finished build points to (``latest.json``)."""
    from render.build import resolve_dataset_url

    return Path(resolve_dataset_url(str(output)))


def run(cmd: list[str], log: Path) -> None:
    """Run one stage's command, teeing its output to ``log``; stop the demo if it fails."""
    print("$ " + " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        code = proc.wait()
    if code != 0:
        sys.exit(f"demo: stage failed with exit code {code}: {' '.join(cmd)} (log: {log})")


def build(spec: str, output: Path, log: Path, preview: Path | None = None) -> Path:
    """``phieat-render build`` one spec (resumes by itself); returns its version folder."""
    cmd = [sys.executable, "-m", "render", "build", spec, "--output", str(output)]
    if preview is not None:
        cmd += ["--preview", str(preview)]
    run(cmd, log)
    return _resolve(output)


def stage_render(out: Path, quick: bool, models: list[str]) -> dict[str, Path]:
    """tiny.toml first (seconds: the shard contract end to end, with a contact sheet), then
    the demo's training, val and held-out eval sets, and the hard-negative training set when
    a chosen model trains on it."""
    log = out / "logs" / "render.log"
    dirs = {"tiny": build("manifests/tiny.toml", out / "tiny", log, out / "tiny-preview.png")}
    if quick:
        return dirs
    roles = dict(DATASETS)
    for model in models:
        role = MODELS[model][0]
        if role not in roles:
            roles[role] = EXTRA_DATASETS[role]
    for role, name in roles.items():
        preview = out / "demo" / f"{name}-preview.png" if role in ("train", "eval") else None
        dirs[role] = build(f"manifests/{name}.toml", out / "demo" / "data" / name, log, preview)
    return dirs


# The models the demo trains, all with the same crops, steps and seed: name -> (training set,
# trainer overrides). A 2 x 2 design, views x L_contrast: physical (two renders of a material
# on other meshes and lights) or photometric (the DINO baseline: two augmentations of one
# render), each with and without L_contrast. The demo's sets hold one sample per material, so
# a physical run's L_contrast positives are the views of one sample: no material label adds
# anything the views do not already say (data.labels=sample trains the identical model), and
# the photometric run's positives are crops of one render. physical-hardneg (not run by
# default): physical, on a training set rendered in groups of 4 materials sharing mesh, light
# and camera, whole groups per batch (hard negatives).
MODELS = {
    "physical": ("train", ["data.physical_augmentation=true"]),
    "photometric": ("train", ["data.physical_augmentation=false"]),
    "physical-nocontrast": (
        "train",
        ["data.physical_augmentation=true", "loss.contrast_weight=0"],
    ),
    "photometric-nocontrast": (
        "train",
        ["data.physical_augmentation=false", "loss.contrast_weight=0"],
    ),
    "physical-hardneg": (
        "train-hardneg",
        ["data.physical_augmentation=true", "data.hard_negative_batches=true"],
    ),
}
DEFAULT_MODELS = ["physical", "photometric", "physical-nocontrast", "photometric-nocontrast"]
# Training sets only some models need: role -> spec name.
EXTRA_DATASETS = {"train-hardneg": "loop-train-hardneg"}


def stage_train(
    out: Path, data: dict[str, Path], seeds: list[int], steps: int | None, models: list[str]
) -> dict[str, Path]:
    runs = {}
    for model in models:
        role, overrides = MODELS[model]
        for seed in seeds:
            name = model + (f"-s{seed}" if len(seeds) > 1 else "")
            out_dir = out / "demo" / "train" / name
            cmd = [
                sys.executable,
                "-m",
                "train",
                "--config",
                "tiny-cpu",
                f"data.urls={data[role]}",
                f"out_dir={out_dir}",
                f"seed={seed}",
                *overrides,
                # Same steps for every model, however busy the machine: no wall-clock cap.
                "max_minutes=0",
            ]
            if steps:
                cmd.append(f"optim.steps={steps}")
            run(cmd, out / "logs" / f"train-{name}.log")
            runs[name] = out_dir
    return runs


def stage_eval(out: Path, data: dict[str, Path], runs: dict[str, Path]) -> Path:
    eval_dir = out / "demo" / "eval"
    cmd = [sys.executable, "-m", "train.eval.cli", "run"]
    for name, run_dir in runs.items():
        cmd += ["--model", f"{name}={run_dir}"]
    first = next(iter(runs.values()))
    cmd += [
        "--model",
        "pixel-stats=pixel-stats",
        "--model",
        f"random-init=random-like:{first}",
        "--eval-data",
        str(data["eval"]),
        "--val-data",
        str(data["val"]),
        *[
            arg
            for role in data
            if role.startswith("train")
            for arg in ("--train-index", str(data[role] / "index.json"))
        ],
        "--out",
        str(eval_dir),
    ]
    run(cmd, out / "logs" / "eval.log")
    return eval_dir


def headline(eval_dir: Path, only: list[str] | None = None) -> str:
    """The tables printed at the end: one row per model (the report's own headline table),
    then, with several seeds, each model's mean ± half the spread over seeds."""
    from train.eval.report import current_models, headline_table, seed_table

    names = [f.parent.name for f in sorted(eval_dir.glob("*/metrics.json"))]
    models = current_models(eval_dir, [n for n in names if only is None or n in only])
    seeds = seed_table(models)
    return headline_table(models) + ("\n\nover seeds:\n" + seeds if seeds else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Re-run the same command to resume: finished shards and checkpoints are reused.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument(
        "--quick", action="store_true", help="only render manifests/tiny.toml and preview it"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds per model (default: 0)"
    )
    parser.add_argument("--steps", type=int, default=None, help="override optim.steps")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=DEFAULT_MODELS,
        help=f"models to train (default: {' '.join(DEFAULT_MODELS)}; physical-hardneg also "
        "renders its own training set)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    times: dict[str, float] = {}
    start = time.perf_counter()
    data = stage_render(out, args.quick, args.models)
    times["render"] = time.perf_counter() - start
    if args.quick:
        print(f"\nshards: {data['tiny']}\npreview: {out / 'tiny-preview.png'}")
        return 0
    start = time.perf_counter()
    runs = stage_train(out, data, args.seeds, args.steps, args.models)
    times["train"] = time.perf_counter() - start
    start = time.perf_counter()
    eval_dir = stage_eval(out, data, runs)
    times["eval"] = time.perf_counter() - start

    print("\n" + headline(eval_dir, [*runs, "pixel-stats", "random-init"]))
    print("\nstage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"training shards: {data['train']}")
    print(f"held-out eval shards: {data['eval']}")
    print(f"report: {eval_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
