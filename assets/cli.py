"""``phieat-render assets ...``: build, check and look at the asset catalogs.

Examples::

    phieat-render assets generate                       # built-in catalogs -> manifests/
    phieat-render assets generate --per-family 64 --out-dir /tmp/cat
    phieat-render assets scan materials ~/ambientcg --layout ambientcg --physical-size-m 2
    phieat-render assets scan meshes ~/models --size-m 0.4
    phieat-render assets scan lights ~/hdris
    phieat-render assets validate                       # all three default catalogs
    phieat-render assets split manifests/materials.jsonl --holdout-family marble
    phieat-render assets summary
    phieat-render assets preview --kind materials -n 48 -o docs/materials-contact-sheet.png

``python -m assets.cli ...`` runs the same commands without the top-level program.
Catalog kinds are taken from the file name (``materials.jsonl`` ...) or ``--kind``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from assets import catalog as cat
from assets import families, lights, meshes, texsets
from assets import preview as prev
from phieat.helpfmt import HelpFormatter

logger = logging.getLogger("phieat.render")
MIN_TEST = {"materials": 1, "meshes": 8, "lights": 3}


EXAMPLES = {
    "generate": """Write the built-in catalogs: procedural materials (19 families), meshes and
lights, each entry with its train/val/test split.

  phieat-render assets generate                          # -> manifests/*.jsonl
  phieat-render assets generate --per-family 8 --out-dir /tmp/cat --what materials""",
    "scan": """Add texture sets (MatSynth / ambientCG / Poly Haven folders), mesh files
(OBJ/PLY/STL/GLB) or HDRIs from a folder to a catalog, with a split per group.

  phieat-render assets scan materials ~/ambientcg --layout ambientcg --physical-size-m 2
  phieat-render assets scan meshes ~/models --size-m 0.4 --out /tmp/meshes.jsonl
  phieat-render assets scan lights ~/hdris --append

--split puts every scanned group in one split and leaves the entries already in the catalog
as they are, e.g. an outside test set added beside the built-in catalogs:

  phieat-render assets scan materials ~/test-textures --append --split test""",
    "validate": """Check catalogs: ids, required fields, that every file exists and decodes
(texture maps and HDRIs are decoded in full), categories and procedural diversity. Exits 1
when a problem is found, listing each one.

  phieat-render assets validate                          # the three default catalogs
  phieat-render assets validate /tmp/cat/materials.jsonl --no-diversity""",
    "split": """(Re)assign train/val/test in place, by material group, so that variants of one
material never straddle two splits.

  phieat-render assets split manifests/materials.jsonl --val 0.1 --test 0.1
  phieat-render assets split manifests/materials.jsonl --holdout-family marble""",
    "summary": """Counts per split, category, source, family and kind.

  phieat-render assets summary
  phieat-render assets summary /tmp/cat/materials.jsonl""",
    "preview": """Render a contact sheet of catalog entries with Blender (one tile each).

  phieat-render assets preview                           # 48 materials -> out/materials-preview.png
  phieat-render assets preview --kind meshes -n 24 --split test -o /tmp/meshes.png""",
}


def _kind_of(path: Path, kind: str | None) -> str:
    if kind:
        return kind
    for k in cat.KINDS:
        if path.stem.startswith(k):
            return k
    raise ValueError(f"cannot tell the catalog kind of {path} from its name: pass --kind")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val", type=float, default=0.1, help="fraction of groups for val")
    p.add_argument("--test", type=float, default=0.1, help="fraction of groups for test")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the group hash")
    p.add_argument(
        "--holdout-family",
        action="append",
        default=[],
        metavar="FAMILY",
        help="put every material of this procedural family in test (repeatable)",
    )
    p.add_argument(
        "--min-test-meshes",
        type=int,
        default=MIN_TEST["meshes"],
        help="the test split must hold at least this many meshes",
    )
    p.add_argument(
        "--min-test-lights",
        type=int,
        default=MIN_TEST["lights"],
        help="the test split must hold at least this many lights",
    )


def _catalog_args(p: argparse.ArgumentParser) -> None:
    """The catalog files a command reads (see ``_catalogs``) and their ``--kind``."""
    p.add_argument("catalogs", nargs="*", help="catalog files (default: the three in manifests/)")
    p.add_argument(
        "--kind", choices=cat.KINDS, help="catalog kind when the file name does not tell"
    )


def _split(entries: list[dict], kind: str, args: argparse.Namespace) -> list[dict]:
    min_test = {
        "materials": MIN_TEST["materials"],
        "meshes": args.min_test_meshes,
        "lights": args.min_test_lights,
    }[kind]
    return cat.assign_splits(
        entries,
        kind,
        val=args.val,
        test=args.test,
        seed=args.split_seed,
        holdout_families=args.holdout_family if kind == "materials" else (),
        min_test=min_test,
        stratify=None if kind == "materials" else "kind",
    )


# ----------------------------------------------------------------------------- commands


def cmd_generate(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    fams = args.family or None
    if fams:
        unknown = sorted(set(fams) - set(families.FAMILIES))
        if unknown:
            raise ValueError(f"--family {unknown}: unknown; known: {sorted(families.FAMILIES)}")
    made = {
        "materials": lambda: families.generate(args.per_family, fams),
        "meshes": meshes.builtin_meshes,
        "lights": lambda: lights.builtin_lights(args.skies, args.studios),
    }
    for kind in args.what:
        entries = _split(made[kind](), kind, args)
        cat.validate_catalog(entries, kind, where=kind)
        path = cat.write_catalog(out_dir / f"{kind}.jsonl", entries)
        print(f"wrote {path} ({len(entries)} {kind})")
    return 0


def _merge(path: Path, new: list[dict], kind: str, args: argparse.Namespace) -> list[dict]:
    old = cat.read_catalog(path) if path.exists() and args.append else []
    ids = {e["id"] for e in old}
    clash = sorted(e["id"] for e in new if e["id"] in ids)
    if clash:
        raise cat.CatalogError([f"id {i!r} is already in {path}" for i in clash], str(path))
    if args.split:
        # One split for the scanned folder; the catalog's own entries keep theirs.
        return old + cat.assign_splits(new, kind, only=args.split)
    return _split(old + new, kind, args)


def cmd_scan(args: argparse.Namespace) -> int:
    kind = args.kind
    out = Path(args.out or cat.DEFAULT_PATHS[kind])
    rel = out.parent if args.relative else None
    if kind == "materials":
        result = texsets.scan_texture_sets(
            args.folder,
            layout=args.layout,
            default_category=args.category,
            default_size_m=args.physical_size_m,
            licence=args.licence,
            relative_to=rel,
        )
        for reason in result.skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        new = result.entries
    elif kind == "meshes":
        new = meshes.scan_mesh_folder(args.folder, args.size_m, licence=args.licence)
    else:
        new = lights.scan_hdri_folder(args.folder, licence=args.licence)
    if not new:
        raise ValueError(f"no {kind} found under {args.folder}")
    entries = _merge(out, new, kind, args)
    cat.validate_catalog(entries, kind, base_dir=out.parent, diversity=False, where=str(out))
    cat.write_catalog(out, entries)
    print(f"wrote {out}: {len(new)} new, {len(entries)} in total")
    return 0


def _catalogs(args: argparse.Namespace) -> Iterator[tuple[Path, str]]:
    """``(path, kind)`` of each catalog named on the command line (default: the three)."""
    paths = [Path(p) for p in args.catalogs] or [cat.DEFAULT_PATHS[k] for k in cat.KINDS]
    for path in paths:
        yield path, _kind_of(path, args.kind)


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path, kind in _catalogs(args):
        try:
            entries = cat.read_catalog(path)
            report = cat.validate_catalog(
                entries,
                kind,
                base_dir=path.parent,
                check_files=not args.no_files,
                diversity=not args.no_diversity,
                where=str(path),
            )
            if kind in ("meshes", "lights"):
                n_test = sum(e["split"] == "test" for e in entries)
                if n_test < MIN_TEST[kind]:
                    raise cat.CatalogError(
                        [
                            f"the test split holds {n_test} {kind}, needs >= {MIN_TEST[kind]}: run 'assets split'"
                        ],
                        str(path),
                    )
        except cat.CatalogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        extra = ""
        if report.get("diversity"):
            worst = min(
                (v.get("min_distance", 1.0) for v in report["diversity"].values()), default=1.0
            )
            extra = f", diversity ok (closest pair {worst:.3f} apart)"
        print(f"ok: {path} ({report['entries']} {kind}{extra})")
    return 2 if failed else 0


def cmd_split(args: argparse.Namespace) -> int:
    for path, kind in _catalogs(args):
        entries = _split(cat.read_catalog(path), kind, args)
        cat.write_catalog(path, entries)
        print(cat.format_summary(cat.summary(entries, kind), f"{path}"))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    for path, kind in _catalogs(args):
        print(cat.format_summary(cat.summary(cat.read_catalog(path), kind), f"{path} [{kind}]"))
    return 0


def _spread(entries: list[dict], n: int, key: str) -> list[dict]:
    """Up to ``n`` entries, taking turns across the values of ``key`` (every family shows)."""
    buckets: dict[str, list[dict]] = {}
    for e in entries:
        buckets.setdefault(str(e.get(key, e.get("kind"))), []).append(e)
    chosen: list[dict] = []
    rank = 0
    while len(chosen) < n and any(len(b) > rank for b in buckets.values()):
        for b in buckets.values():
            # Step through variants (seeds 0, 4, 8 ...) rather than near-duplicate siblings.
            index = rank * families.SEEDS_PER_VARIANT
            if index < len(b) and len(chosen) < n:
                chosen.append(b[index])
        rank += 1
    return chosen


def cmd_preview(args: argparse.Namespace) -> int:
    if args.renderer is None:
        raise ValueError(
            "preview renders with Blender, which this library does not start itself: "
            "run 'phieat-render assets preview ...'"
        )
    kind = args.kind
    path = Path(args.catalog or cat.DEFAULT_PATHS[kind])
    entries = sorted(
        cat.read_catalog(path), key=lambda e: (str(e.get("family", "")), e.get("seed", 0), e["id"])
    )
    entries = [e for e in entries if not args.split or e["split"] == args.split]
    chosen = _spread(entries, args.n, "family") if kind == "materials" else entries[: args.n]
    if not chosen:
        raise ValueError(f"{path}: nothing to preview")
    session = args.renderer(threads=args.threads, quiet=not args.verbose)
    session.set_base_dirs(materials_dir=path.parent, meshes_dir=path.parent, lights_dir=path.parent)
    tiles = []
    start = time.perf_counter()
    if kind == "lights":
        for pair in prev.light_jobs(chosen, args.tile, args.samples):
            tiles.append(([session.render_view(j).image for j in pair], pair[0]["light"]["id"]))
    else:
        jobs = (
            prev.material_jobs(chosen, args.tile, args.samples)
            if kind == "materials"
            else prev.mesh_jobs(chosen, args.tile, args.samples)
        )
        for job, entry in zip(jobs, chosen, strict=True):
            label = (
                f"{entry['family']} {entry['seed']}"
                if "seed" in entry and "family" in entry
                else entry["id"]
            )
            tiles.append(([session.render_view(job).image], label))
    target = args.out or str(Path("out") / f"{kind}-preview.png")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    out = prev.contact_sheet(tiles, target, columns=args.columns, tile=args.tile)
    secs = time.perf_counter() - start
    print(f"wrote {out}: {len(tiles)} {kind} in {secs:.1f} s")
    session.close()
    return 0


# ----------------------------------------------------------------------------- parser


def add_parser(
    subparsers: argparse._SubParsersAction, renderer: Callable[..., Any] | None = None
) -> argparse.ArgumentParser:
    """Register the ``assets`` command group on a parent parser's subparsers.

    ``renderer(threads=, quiet=)`` opens a session with ``set_base_dirs`` and ``render_view``
    (``phieat-render`` passes its Blender session); without one, ``preview`` says where to
    run it, and every other command works."""
    parser = subparsers.add_parser(
        "assets",
        help="generate, scan, validate, split, summarise and preview asset catalogs",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 0)
    sub = parser.add_subparsers(dest="assets_command", metavar="COMMAND")

    p = sub.add_parser(
        "generate",
        description=EXAMPLES["generate"],
        help="write the built-in catalogs (procedural materials, meshes, lights)",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--out-dir", default="manifests", help="folder for materials/meshes/lights.jsonl"
    )
    p.add_argument(
        "--what", nargs="+", choices=cat.KINDS, default=list(cat.KINDS), help="catalogs to write"
    )
    p.add_argument(
        "--per-family", type=int, default=families.DEFAULT_PER_FAMILY, help="seeds per family"
    )
    p.add_argument("--family", action="append", default=[], help="only this family (repeatable)")
    p.add_argument("--skies", type=int, default=12, help="physical-sky lights")
    p.add_argument("--studios", type=int, default=16, help="studio rigs")
    _split_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "scan",
        description=EXAMPLES["scan"],
        help="add texture sets, mesh files or HDRIs from a folder",
        formatter_class=HelpFormatter,
    )
    p.add_argument("kind", choices=cat.KINDS, help="what the folder holds")
    p.add_argument("folder", help="folder to scan (recursively)")
    p.add_argument("--out", help="catalog to write (default manifests/<kind>.jsonl)")
    p.add_argument(
        "--append", action="store_true", help="add to the existing catalog instead of replacing it"
    )
    p.add_argument(
        "--layout", default="auto", choices=("auto", *texsets.LAYOUTS), help="texture-set layout"
    )
    p.add_argument("--category", help="category for sets whose name/metadata does not tell")
    p.add_argument(
        "--physical-size-m", type=float, default=1.0, help="real width of a texture tile (m)"
    )
    p.add_argument(
        "--size-m", type=float, default=0.3, help="real size of meshes without a sidecar json (m)"
    )
    p.add_argument("--licence", default="unknown", help="licence to record for the scanned files")
    p.add_argument(
        "--relative", action="store_true", help="store paths relative to the catalog file"
    )
    p.add_argument(
        "--split",
        choices=cat.SPLITS,
        help="put every group of the folder in this split (the fractions below are then not "
        "used, and the catalog's other entries keep their split), e.g. --append --split test "
        "for an outside test set",
    )
    _split_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser(
        "validate",
        description=EXAMPLES["validate"],
        help="check catalogs: ids, fields, files, images, categories, diversity",
        formatter_class=HelpFormatter,
    )
    _catalog_args(p)
    p.add_argument(
        "--no-files", action="store_true", help="skip checking that files exist and decode"
    )
    p.add_argument(
        "--no-diversity", action="store_true", help="skip the procedural diversity check"
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "split",
        description=EXAMPLES["split"],
        help="(re)assign train/val/test by group, in place",
        formatter_class=HelpFormatter,
    )
    _catalog_args(p)
    _split_args(p)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        "summary",
        description=EXAMPLES["summary"],
        help="counts per split, category, source, family, kind",
        formatter_class=HelpFormatter,
    )
    _catalog_args(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "preview",
        description=EXAMPLES["preview"],
        help="render a contact sheet PNG of materials, meshes or lights",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--kind", choices=cat.KINDS, default="materials", help="what to show")
    p.add_argument("--catalog", help="catalog file (default manifests/<kind>.jsonl)")
    p.add_argument(
        "-n", type=int, default=48, help="how many entries (materials: spread over families)"
    )
    p.add_argument("-o", "--out", help="PNG to write (default: out/<kind>-preview.png)")
    p.add_argument("--split", choices=cat.SPLITS, help="only entries of this split")
    p.add_argument("--columns", type=int, default=8, help="tiles per row")
    p.add_argument("--tile", type=int, default=96, help="tile size in pixels")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples per tile (denoised)")
    p.add_argument("--threads", type=int, default=2, help="Cycles threads")
    p.set_defaults(func=cmd_preview, renderer=renderer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``assets`` commands on their own: ``python -m assets.cli validate``."""
    top = argparse.ArgumentParser(
        prog="python -m assets.cli", description=__doc__, formatter_class=HelpFormatter
    )
    top.add_argument("-v", "--verbose", action="store_true", help="info logs and Blender's output")
    subs = top.add_subparsers(dest="command")
    assets = add_parser(subs)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = top.parse_args(["assets", *argv])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    del assets
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
