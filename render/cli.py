"""``phieat-render``: plan, build, verify and preview material datasets rendered with Blender.

Local run (Ray on this machine's cores, or --local for one process without Ray)::

    phieat-render plan manifests/tiny.toml --estimate
    phieat-render build manifests/tiny.toml --preview out/tiny-preview.png
    phieat-render verify out/tiny

One node with 32 cores, 2 Cycles threads per worker::

    phieat-render build manifests/demo.toml --threads-per-worker 2

A Ray cluster (see docs/cluster.md), outputs to an object store::

    RAY_ADDRESS=ray://head:10001 phieat-render build manifests/full.toml \\
        --output s3://bucket/phieat/full --gpus-per-worker 1

or as a Ray job on the cluster's job server (the head needs the ``cluster`` extra)::

    RAY_ADDRESS=http://head:8265 deploy/submit.sh manifests/full.toml s3://bucket/phieat/full

``python -m render ...`` is the same program.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from phieat.helpfmt import HelpFormatter
from phieat.schema import SchemaError
from render import storage
from render.errors import BuildStopped, ClusterError
from render.plan import PlanError

logger = logging.getLogger("phieat.render")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="dataset spec (TOML), e.g. manifests/tiny.toml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a spec value (TOML syntax), e.g. --set render.samples=8; repeatable",
    )
    p.add_argument(
        "--output", help="write to this folder or fsspec URL instead of [dataset].output"
    )


def _load(args: argparse.Namespace):
    from render.spec import load_spec, replace_output

    return replace_output(load_spec(args.spec, args.overrides), args.output)


# ----------------------------------------------------------------------------- plan


def cmd_plan(args: argparse.Namespace) -> int:
    from render.build import expected_blender_version
    from render.estimate import describe, estimate, format_estimate
    from render.journal import failed_materials, load_snapshots, published_sidecar
    from render.plan import dataset_version, load_catalogs, make_plan

    spec = _load(args)
    blender = args.blender_version or expected_blender_version()
    version = dataset_version(spec, blender)
    version_url = storage.join(spec.dataset.output, version)
    previous = load_snapshots(version_url)
    failed = failed_materials(version_url) if previous else None
    plan = make_plan(spec, load_catalogs(spec), previous, failed)
    if args.write:
        storage.write_bytes(args.write, plan.to_json())
        print(f"wrote the plan to {args.write}", file=sys.stderr)
    if args.json:
        sys.stdout.write(plan.to_json().decode("utf-8"))
        return 0
    print(f"dataset {spec.dataset.name}  version {version} (Blender {blender})  -> {version_url}")
    print(f"{len(plan.generations)} generation(s); stored: {len(previous)}")
    shards = plan.shards
    if args.diff:
        todo, reasons = [], {}
        for shard in plan.shards:
            sidecar, why = published_sidecar(version_url, shard, deep=False)
            if sidecar is None:
                todo.append(shard)
                reasons[why] = reasons.get(why, 0) + 1
        why = "".join(f", {n} {why}" for why, n in sorted(reasons.items()))
        print(
            f"a build would render {len(todo)} of {len(plan.shards)} shards "
            f"({len(plan.new_shards)} in a new generation{why})"
        )
        shards = todo
    if args.estimate:
        est = estimate(plan, shards, core_s_per_image=args.core_s_per_image, cores=args.cores)
        print(format_estimate(est, spec))
    print(describe(plan, shards, max_shards=args.max_shards))
    return 0


# ----------------------------------------------------------------------------- build


_STOP_SIGNALS: list[int] = []


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``BuildStopped`` while the block runs.

    cron, systemd and Kubernetes stop a program with SIGTERM; raising lets every ``finally``
    run (shards in flight abandoned, the lock released) instead of dying mid-write.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP_SIGNALS.clear()

    def stop(signum: int, frame: object) -> None:
        # Remembered too: Ray turns an exception raised inside its waits into a plain
        # KeyboardInterrupt.
        _STOP_SIGNALS.append(signum)
        raise BuildStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_build(args: argparse.Namespace) -> int:
    from render.build import build
    from render.spec import replace_build

    spec = _load(args)
    spec = replace_build(
        spec,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        max_failure_fraction=args.max_failure_fraction,
        material_timeout_s=args.material_timeout_s,
    )
    with stop_on_signals():
        result = build(
            spec,
            local=args.local,
            progress=not args.no_progress,
            verbose=args.verbose,
            address=args.address,
            force_unlock=args.force_unlock,
            trust_sidecars=args.trust_sidecars,
        )
    print(result.summary())
    if args.preview and result.rendered + result.skipped:
        from render.preview import write_preview

        write_preview(result.version_url, args.preview)
        print(f"preview  {args.preview}")
    return result.exit_code


# ----------------------------------------------------------------------------- verify / preview


def cmd_verify(args: argparse.Namespace) -> int:
    from render.verify import verify_dataset

    report = verify_dataset(args.url, deep=not args.quick)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_preview(args: argparse.Namespace) -> int:
    from render.preview import write_preview

    out = write_preview(args.url, args.out, shard=args.shard, rows=args.rows, thumb=args.thumb)
    print(out)
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phieat-render",
        description="Render material datasets with Blender (Cycles) into WebDataset shards.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Blender's own logs and info messages"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "plan",
        help="print the deterministic plan of a spec (shards, samples, view jobs)",
        description="Expand a spec and its catalogs into shards -> samples -> view jobs. "
        "Nothing is rendered. Same spec + catalogs give the same plan, byte for byte.",
        epilog="examples:\n"
        "  phieat-render plan manifests/tiny.toml\n"
        "  phieat-render plan manifests/tiny.toml --json > plan.json\n"
        "  phieat-render plan manifests/full.toml --estimate\n"
        "  phieat-render plan manifests/demo.toml --diff     # what a re-run would add",
        formatter_class=HelpFormatter,
    )
    _spec_args(p)
    p.add_argument("--json", action="store_true", help="print the whole plan as canonical JSON")
    p.add_argument(
        "--write", metavar="FILE", help="also write the canonical JSON plan to FILE (path or URL)"
    )
    p.add_argument("--diff", action="store_true", help="list only shards a build would render now")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print images, wall-clock time on --cores cores, core-hours and size first",
    )
    p.add_argument(
        "--core-s-per-image", type=float, help="cost per image for --estimate (default: model)"
    )
    p.add_argument(
        "--cores",
        type=int,
        help="cores the build will use, for the wall-clock time of --estimate "
        "(default: this machine's)",
    )
    p.add_argument("--max-shards", type=int, default=20, help="shards listed in the summary")
    p.add_argument(
        "--blender-version", help="Blender version for the version hash (default: installed bpy)"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "build",
        help="render what is missing of a dataset and write its index",
        description="Render every shard of the plan that is missing, corrupt or stale, publish "
        "each atomically with a sidecar, and write failures.jsonl and index.json. Re-running "
        "resumes; exit status 1 when shards are missing or failures exceed the threshold. "
        "SIGTERM or Ctrl-C stops cleanly (shards in flight abandoned, lock released; exit "
        "status 143 or 130): run the same command again to resume.",
        epilog="examples:\n"
        "  phieat-render build manifests/tiny.toml --preview out/tiny.png\n"
        "  phieat-render build manifests/tiny.toml --local          # no Ray, one process\n"
        "  phieat-render build manifests/demo.toml --threads-per-worker 2\n"
        "  phieat-render build manifests/full.toml --address auto --output s3://bucket/full\n"
        "  phieat-render build manifests/full.toml --material-timeout-s 600\n"
        "  phieat-render build manifests/tiny.toml --set render.samples=4 --set dataset.views=3",
        formatter_class=HelpFormatter,
    )
    _spec_args(p)
    p.add_argument("--local", action="store_true", help="render in this process, without Ray")
    p.add_argument(
        "--workers", type=int, help="Ray actors (default [build].workers; 0 = cores / threads)"
    )
    p.add_argument(
        "--threads-per-worker", type=int, help="Cycles threads = CPUs reserved per actor"
    )
    p.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per actor (OptiX, falling back to CUDA)"
    )
    p.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )
    p.add_argument(
        "--max-failure-fraction",
        type=float,
        help="fail the build above this share of failed samples",
    )
    p.add_argument(
        "--material-timeout-s",
        type=float,
        metavar="SECONDS",
        help="limit for one view of a material (default [build].material_timeout_s; 0 = off). "
        "The Ray pool stops a worker stuck past it, retries the material "
        "[build].max_retries times, then records it in failures.jsonl ('timeout after N s') and "
        "publishes its shard without it. --local checks the limit only when a view returns: "
        "it cannot stop a render that never returns",
    )
    p.add_argument(
        "--force-unlock", action="store_true", help="take over the lock of a build that died"
    )
    p.add_argument(
        "--trust-sidecars",
        action="store_true",
        help="skip re-hashing published shards (size check only)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--preview", metavar="PNG", help="write a contact sheet (rows from across the shards) here"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Blender's own logs and info messages",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "verify",
        help="check a dataset: checksums, counts, schema, decodable images",
        description="Check every shard listed in index.json: presence, size, sha256, sidecar, "
        "sample count, schema of every sample, V views, decodable images, unique keys.",
        epilog="examples:\n  phieat-render verify out/tiny\n  phieat-render verify s3://bucket/full --quick",
        formatter_class=HelpFormatter,
    )
    p.add_argument("url", help="dataset output (uses latest.json) or a version folder v-<hash>")
    p.add_argument(
        "--quick", action="store_true", help="sizes and sidecars only; do not read the tars"
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "preview",
        help="write a contact sheet PNG: one row per material, its views side by side",
        description="Contact sheet of a dataset: each row is a sample (one material), each "
        "column one of its V views; rows come from shards spread over the index (or --shard).",
        epilog="examples:\n  phieat-render preview out/tiny -o out/tiny.png\n"
        "  phieat-render preview out/demo --shard 2 --rows 20 --thumb 96",
        formatter_class=HelpFormatter,
    )
    p.add_argument("url", help="dataset output (uses latest.json) or a version folder")
    p.add_argument(
        "-o", "--out", help="PNG path or URL to write (default: out/<dataset>-preview.png)"
    )
    p.add_argument(
        "--shard",
        type=int,
        help="only this shard of the index (0-based; default: rows from across the shards)",
    )
    p.add_argument("--rows", type=int, default=12, help="samples (rows) to show")
    p.add_argument("--thumb", type=int, default=128, help="thumbnail size in pixels")
    p.set_defaults(func=cmd_preview)

    try:
        assets_cli = importlib.import_module("assets.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "assets.cli":
            raise
    else:
        from render.build import blender_session_factory

        assets_cli.add_parser(sub, renderer=blender_session_factory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if not isinstance(exc, BuildStopped):
            exc = BuildStopped(_STOP_SIGNALS[-1] if _STOP_SIGNALS else signal.SIGINT)
        name = exc.signal_name
        if args.command == "build":
            print(
                f"stopped by {name}: published shards are kept, shards in flight were "
                f"abandoned; resume with the same command: phieat-render {shlex.join(argv)}",
                file=sys.stderr,
            )
        else:
            print(f"stopped by {name}", file=sys.stderr)
        return exc.exit_code
    except (PlanError, SchemaError, storage.StorageError, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # SpecError and friends carry the key to fix
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
