"""``phieat-train``: train the physics-augmented DINO on rendered material shards.

Examples::

    # one machine (CPU or one GPU)
    phieat-train --config tiny-cpu data.urls='out/ds/shard-{000000..000009}.tar' out_dir=out/tiny

    # the photometric baseline: same losses, crops, steps; both views are one render
    phieat-train --config tiny-cpu data.urls=out/ds out_dir=out/tiny-photo data.physical_augmentation=false

    # one node, 8 GPUs (DDP; add parallel=fsdp for FSDP2 on large backbones)
    torchrun --standalone --nproc-per-node 8 -m train --config vitb14 \\
        data.urls='https://host/ds/shard-{000000..000999}.tar' out_dir=/ckpt/vitb14

    # several nodes (run on every node; resumes from the newest checkpoint after preemption)
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 \\
        -m train --config vitl14 parallel=fsdp data.urls='pipe:aws s3 cp s3://b/ds/shard-{000000..009999}.tar -' \\
        out_dir=/scratch/vitl14 ckpt_dir=s3://b/runs/vitl14/checkpoints

Settings are ``key=value`` overrides of the config (see ``train/config.py`` or
``--print-config``); a mistyped key fails with its name. ``data.urls`` may name a dataset
folder (``latest.json`` is followed), a version folder, an ``index.json``, a brace pattern or
``.tar`` files. Re-running with the same ``out_dir`` resumes from the newest checkpoint that
loads; a resume that changes the objective or the data is refused (``--allow-config-change``).
A setting, data path, dataset or checkpoint that cannot be used exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys

from train.config import ConfigError, load_config, to_toml


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phieat-train",
        description=__doc__.split("Examples::")[0].strip(),
        epilog="Examples::" + __doc__.split("Examples::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="tiny-cpu",
        help="config name in train/configs (tiny-cpu, vits14, vitb14, vitl14) or a .toml path",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as TOML and exit"
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a checkpoint even though the objective or the data changed "
        "(the same as allow_config_change=true; the change is recorded)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.steps=200"
    )
    return parser


def error_line(exc: BaseException) -> str:
    """The one line to print for ``exc``; for an error re-raised from a DataLoader worker, the
    original message rather than the worker's traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1]
        name = type(exc).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.allow_config_change:
        overrides.append("allow_config_change=true")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"phieat-train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    from phieat.schema import SchemaError
    from train.checkpoint import CheckpointError
    from train.data import DataError
    from train.train import main as train_main

    try:
        train_main(cfg)
    except (ConfigError, DataError, SchemaError, CheckpointError) as exc:
        print(f"phieat-train: {error_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
