"""phieat-eval: evaluate material features on held-out renders and write a report.

Evaluate trained models beside the baselines, on an eval set rendered from the test split,
after checking that it shares no material, material group, mesh or light with training::

    phieat-eval run \\
        --model physical=out/train-physical --model photometric=out/train-photometric \\
        --model pixel-stats=pixel-stats --model random=random \\
        --eval-data out/data/eval-tiny --val-data out/data/val-tiny \\
        --train-index out/data/train-tiny/index.json --out out/eval

    phieat-eval report out/eval          # redraw figures and report.md from the saved results

A model is ``NAME=SPEC``; SPEC is a training out_dir, checkpoint or exported backbone (path
or fsspec URL), or one of the baselines (``pixel-stats``, ``random``, ``random-like:CKPT``,
``pretrained:ARCH:FILE`` for local DINOv2/DINOv3 weights). ``--eval-data`` and
``--val-data`` take a dataset folder/URL holding index.json, one .tar, or a brace pattern.
Outputs: ``OUT/<NAME>/metrics.json``, ``OUT/<NAME>/figures.npz``, ``OUT/report.md``,
``OUT/figures/*.png``. The same command runs on a laptop or a GPU node (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from phieat.helpfmt import HelpFormatter
from train.eval import data as eval_data
from train.eval import report as eval_report
from train.eval.features import SPEC_HELP, load_model
from train.eval.protocol import EvalConfig, evaluate

logger = logging.getLogger("phieat.train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _model_arg(text: str) -> tuple[str, str]:
    name, sep, spec = text.partition("=")
    if not sep or not spec:
        raise argparse.ArgumentTypeError(f"--model takes NAME=SPEC, got {text!r}")
    if not NAME_RE.match(name):
        raise argparse.ArgumentTypeError(
            f"--model name {name!r} must be letters, digits, '-', '_' or '.' (it names a folder)"
        )
    return name, spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phieat-eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="evaluate models on an eval set, write metrics and the report",
        description="Evaluate models on held-out data.\n\nModel specs:\n" + SPEC_HELP,
        formatter_class=HelpFormatter,
    )
    run.add_argument(
        "--model",
        action="append",
        type=_model_arg,
        required=True,
        metavar="NAME=SPEC",
        help="a model to evaluate (repeatable); see the spec list above",
    )
    run.add_argument(
        "--eval-data",
        required=True,
        metavar="URL",
        help="held-out eval dataset (test split): folder/URL, .tar or brace pattern",
    )
    run.add_argument(
        "--val-data",
        metavar="URL",
        help="val-split dataset: selection thresholds and probe hyper-parameters "
        "are chosen on it (default: a group-disjoint part of the eval set)",
    )
    run.add_argument(
        "--train-index",
        action="append",
        required=True,
        metavar="PATH",
        help="index.json (or dataset folder) of a training set (repeatable); the run stops if "
        "the eval or val set shares a material, group, mesh or light with it. 'none' skips "
        "the check (zero-shot baselines only)",
    )
    run.add_argument(
        "--scan-train-shards",
        action="store_true",
        help="read what each training set used from every shard's json too, not only from the "
        "lists in its index.json (an index written before those lists is always scanned)",
    )
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    run.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="resize eval views to this many pixels (default: as rendered; selection-scene "
        "views rendered larger than that are scored at their rendered size)",
    )
    run.add_argument(
        "--max-samples",
        type=int,
        default=None,
        help="read at most this many samples of each dataset (quick checks)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of queries, folds and random init")
    run.add_argument("--device", default="cpu", help="torch device for the backbones")
    run.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    run.add_argument(
        "--n-negatives",
        type=int,
        default=10,
        help="same-colour retrieval: wrong gallery views kept per query",
    )
    run.add_argument(
        "--selection-tile",
        type=int,
        default=0,
        metavar="PX",
        help="selection scenes rendered larger than the object views ([scenes] resolution): "
        "extract a backbone's patch features in PX x PX tiles stitched into one grid, each "
        "tile at the size the model saw in training (0 = the whole scene in one pass; "
        "default: %(default)s)",
    )
    run.add_argument(
        "--probe-group",
        default="group",
        choices=("family", "group", "material"),
        help="folds of the category probe never share this label; each category's groups "
        "are dealt over all folds (default: %(default)s; the roughness and metal probes "
        "always hold whole families out)",
    )
    run.add_argument(
        "--matid-ignore",
        type=int,
        action="append",
        default=None,
        metavar="INDEX",
        help="a material index of the matid maps that is not a material (repeatable): never "
        "clicked, and scored as 'not selected' (default: 0, the background of the "
        "renderer's maps; -1 clicks every index)",
    )
    run.add_argument("--no-report", action="store_true", help="write metrics only")
    rep = sub.add_parser("report", help="(re)draw figures and report.md from a run's folder")
    rep.add_argument("out", metavar="DIR", help="the --out folder of `phieat-eval run`")
    return parser


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return sorted(obj) if isinstance(obj, set) else list(obj)
    return str(obj)


def _write_json(path: Path, obj: object) -> None:
    eval_report.write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _write_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _find_train_log(info: dict) -> Path | None:
    """The trainer's ``metrics.jsonl`` near the loaded file (out_dir, or up to two levels up)."""
    source = info.get("source")
    if not source or "://" in str(source):
        return None
    here = Path(source).resolve()
    for folder in [here, *list(here.parents)[:3]]:
        candidate = folder / "metrics.jsonl"
        if candidate.is_file():
            return candidate
    return None


def _leakage(args: argparse.Namespace, sets: dict[str, eval_data.EvalSet]) -> str:
    if [p for p in args.train_index if p.lower() == "none"]:
        if len(args.train_index) > 1:
            raise SystemExit("--train-index none cannot be combined with other --train-index")
        logger.warning("leakage check skipped (--train-index none)")
        return "skipped (--train-index none)"
    for path in args.train_index:
        usage = eval_data.dataset_usage(path, scan=getattr(args, "scan_train_shards", False))
        for label, es in sets.items():
            eval_data.check_leakage(es.usage(), usage, f"{path} (checked against {label})")
    return "passed: no shared material, group, mesh or light with " + ", ".join(
        f"`{p}`" for p in args.train_index
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    size = args.image_size or None
    eval_set = eval_data.read_eval_set(
        args.eval_data, image_size=size, max_samples=args.max_samples
    )
    size = size or int(eval_set.images.shape[1])
    val_set = (
        eval_data.read_eval_set(args.val_data, image_size=size, max_samples=args.max_samples)
        if args.val_data
        else None
    )
    sets = {"--eval-data": eval_set} | ({"--val-data": val_set} if val_set is not None else {})
    try:
        leakage = _leakage(args, sets)
    except eval_data.LeakageError as exc:
        logger.error("%s", exc)
        return 2
    cfg = EvalConfig(
        seed=args.seed,
        batch_size=args.batch_size,
        n_negatives=args.n_negatives,
        probe_group=args.probe_group,
        selection_tile=args.selection_tile,
        matid_ignore=(
            tuple(args.matid_ignore) if args.matid_ignore is not None else EvalConfig.matid_ignore
        ),
    )
    names = [name for name, _ in args.model]
    if len(set(names)) != len(names):
        raise SystemExit(f"--model names must be unique, got {names}")
    for name, spec in args.model:
        logger.info("evaluating %s = %s", name, spec)
        extractor = load_model(spec, image_size=size, device=args.device, seed=args.seed)
        result = evaluate(extractor, eval_set, val_set, cfg)
        info = dict(getattr(extractor, "info", {}) or {})
        metrics = {
            "model": {"name": name, "spec": spec, **{k: v for k, v in info.items()}},
            "data": {
                "eval_data": args.eval_data,
                "val_data": args.val_data,
                "image_size": size,
                "leakage_check": leakage,
            },
            **result.metrics,
        }
        folder = out / name
        _write_json(folder / "metrics.json", metrics)
        arrays = eval_report.figure_arrays(result.figures, eval_set.images, eval_set.material)
        _write_npz(folder / "figures.npz", arrays)
        # A random re-initialisation points at its template checkpoint: not its training log.
        log = _find_train_log(info) if info.get("init") != "random" else None
        if log is not None:
            shutil.copyfile(log, folder / "train_metrics.jsonl")
        r = metrics.get("retrieval", {})
        s = metrics.get("selection", {})
        logger.info(
            "%s: R@1 %s  mAP %s  selection IoU %s",
            name,
            eval_report.fmt(r.get("recall@1")),
            eval_report.fmt(r.get("map")),
            eval_report.fmt(s.get("iou")),
        )
    previous = (
        json.loads((out / "models.json").read_text()) if (out / "models.json").exists() else []
    )
    _write_json(out / "models.json", names + [n for n in previous if n not in names])
    models = {n: json.loads((out / n / "metrics.json").read_text()) for n in names}
    print(eval_report.headline_table(models))
    for line in eval_report.comparison_lines(models) + eval_report.baseline_lines(models):
        print(line)
    if not args.no_report:
        path = eval_report.write_report(out)
        print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            return run(args)
        print(eval_report.write_report(args.out))
        return 0
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
