"""Catalog files: JSONL I/O, validation, group-wise split and summaries (plain Python).

A catalog is a JSONL file (one JSON object per line, sorted by ``id``) of materials,
meshes or lights; see the team's shared data shapes. ``validate_catalog`` collects every
problem (duplicate or dotted IDs, unknown categories, missing or unreadable files, missing
fields, a procedural family that does not exist) and raises ``CatalogError`` listing them
with the file, line and entry ID. ``assign_splits`` puts whole *groups* into train / val /
test by a seeded hash, optionally holding out whole families, and checks that the test
split can serve retrieval (enough lights and meshes); ``summary`` counts entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from assets import families as fam
from assets.lights import BUNDLED_HDRIS, BUNDLED_PREFIX, LIGHT_KINDS, SKY_TYPES
from assets.meshes import MESH_KINDS, MESH_SUFFIXES
from phieat.schema import SchemaError, validate_material_id

KINDS = ("materials", "meshes", "lights")
SPLITS = ("train", "val", "test")
CATEGORIES = (
    "ceramic",
    "concrete",
    "fabric",
    "ground",
    "leather",
    "marble",
    "metal",
    "plaster",
    "plastic",
    "stone",
    "terracotta",
    "wood",
    "rubber",
    "paint",
    "glass",
)
SOURCES = ("procedural", "matsynth", "ambientcg", "polyhaven")
MAP_NAMES = ("basecolor", "normal", "roughness", "metallic", "height", "ao", "opacity")
REQUIRED = {
    "materials": ("id", "category", "source", "licence", "group", "split"),
    "meshes": ("id", "kind", "params", "size_m", "group", "split", "licence"),
    "lights": ("id", "kind", "params", "group", "split", "licence"),
}
DEFAULT_PATHS = {k: Path("manifests") / f"{k}.jsonl" for k in KINDS}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".hdr", ".bmp", ".tga", ".webp")


class CatalogError(ValueError):
    """A catalog that cannot be used; the message lists each bad entry and what to fix."""

    def __init__(self, problems: Sequence[str], where: str = "catalog") -> None:
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n  {shown}{more}")


# ----------------------------------------------------------------------------- I/O


def read_catalog(path: str | Path) -> list[dict]:
    """Entries of a JSONL catalog (in file order); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(
            [f"{path} does not exist (create it with 'assets generate' or 'assets scan')"],
            str(path),
        )
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CatalogError([f"line {lineno}: not valid JSON ({exc})"], str(path)) from exc
        if not isinstance(entry, dict):
            raise CatalogError([f"line {lineno}: must be a JSON object"], str(path))
        entry.setdefault("_line", lineno)
        entries.append(entry)
    return entries


def write_catalog(path: str | Path, entries: Iterable[dict]) -> Path:
    """Write entries sorted by id, one JSON object per line, atomically (temp + rename)."""
    path = Path(path)
    rows = sorted((_clean(e) for e in entries), key=lambda e: e["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for entry in rows:
            fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return path


def _clean(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def catalog_hash(entries: Iterable[dict]) -> str:
    text = "\n".join(
        json.dumps(_clean(e), sort_keys=True) for e in sorted(entries, key=lambda e: e["id"])
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- validation


def _where(entry: dict) -> str:
    line = entry.get("_line")
    return f"{'line ' + str(line) + ' ' if line else ''}entry {entry.get('id', '?')!r}"


class PathEscapeError(ValueError):
    """A relative file reference in a catalog that leaves the catalog's folder."""


def asset_path(ref: str, base_dir: str | Path | None = None) -> Path:
    """Resolve a catalog's file reference (texture map, HDRI, mesh file).

    Absolute paths are used as written; relative ones resolve against the catalog's folder
    ``base_dir`` and must stay inside it: ``../x.png`` (or ``a/../../x.png``) raises
    ``PathEscapeError``, so a catalog cannot make a build read files from anywhere.
    """
    p = Path(ref)
    if p.is_absolute():
        return p
    parts = Path(os.path.normpath(ref)).parts
    if parts and parts[0] == "..":
        raise PathEscapeError(
            f"path {ref!r} leaves the catalog's folder: keep relative paths inside it "
            "(beside the catalog or below), or write the file's absolute path"
        )
    return Path(base_dir) / p if base_dir is not None else p


def _resolve(path: str, base_dir: Path | None) -> Path:
    return asset_path(path, base_dir)


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` decodes as the image its name says, else the reason it is not
    (see ``assets.imagecheck``: HDR scanlines, EXR chunks, a full Pillow decode)."""
    from assets.imagecheck import check_image as decode_check

    return decode_check(Path(path))


def _check_material(entry: dict, base_dir: Path | None, check_files: bool) -> list[str]:
    where, out = _where(entry), []
    if entry.get("category") not in CATEGORIES:
        out.append(f"{where}: category {entry.get('category')!r} is not one of {list(CATEGORIES)}")
    source = entry.get("source")
    if source not in SOURCES:
        out.append(f"{where}: source {source!r} is not one of {list(SOURCES)}")
    elif source == "procedural":
        family = entry.get("family")
        if family not in fam.FAMILIES and family != "uniform":
            out.append(
                f"{where}: unknown procedural family {family!r}; known: {sorted(fam.FAMILIES)}"
            )
        elif family in fam.FAMILIES:
            params = entry.get("params")
            if not isinstance(params, dict):
                out.append(f"{where}: procedural entry needs a 'params' object")
            else:
                missing = sorted(set(fam.FAMILIES[family].params) - set(params))
                if missing:
                    out.append(f"{where}: params miss {missing} of family {family!r}")
    else:
        maps = entry.get("maps")
        if not isinstance(maps, dict) or not maps.get("basecolor"):
            out.append(f"{where}: a {source} texture set needs 'maps' with at least 'basecolor'")
        else:
            unknown = sorted(set(maps) - set(MAP_NAMES))
            if unknown:
                out.append(f"{where}: unknown map names {unknown}; use {list(MAP_NAMES)}")
            for name, rel in sorted(maps.items()):
                if name not in MAP_NAMES or not rel:
                    continue
                try:
                    path = _resolve(rel, base_dir)
                except PathEscapeError as exc:
                    out.append(f"{where}: map {name!r}: {exc}")
                    continue
                reason = check_image(path) if check_files else None
                if reason:
                    out.append(f"{where}: map {name!r}: {reason}")
        size = entry.get("physical_size_m")
        if size is not None and not (isinstance(size, (int, float)) and size > 0):
            out.append(f"{where}: physical_size_m must be a positive number, got {size!r}")
        conv = entry.get("normal_convention", "gl")
        if conv not in ("gl", "dx"):
            out.append(f"{where}: normal_convention {conv!r} must be 'gl' or 'dx'")
    return out


def _check_mesh(entry: dict, base_dir: Path | None, check_files: bool) -> list[str]:
    where, out = _where(entry), []
    if entry.get("kind") not in MESH_KINDS:
        out.append(f"{where}: kind {entry.get('kind')!r} is not one of {list(MESH_KINDS)}")
    size = entry.get("size_m")
    if not isinstance(size, (int, float)) or isinstance(size, bool) or not size > 0:
        out.append(f"{where}: size_m must be a positive number of metres, got {size!r}")
    if entry.get("kind") == "file":
        path = entry.get("path")
        if not path:
            out.append(f"{where}: a file mesh needs 'path'")
        else:
            try:
                p = _resolve(path, base_dir)
            except PathEscapeError as exc:
                return [*out, f"{where}: {exc}"]
            if p.suffix.lower() not in MESH_SUFFIXES:
                out.append(f"{where}: {p} is not one of {list(MESH_SUFFIXES)}")
            elif check_files and not p.is_file():
                out.append(f"{where}: mesh file {p} does not exist")
    return out


def _check_light(entry: dict, base_dir: Path | None, check_files: bool) -> list[str]:
    where, out = _where(entry), []
    kind, params = entry.get("kind"), entry.get("params") or {}
    if kind not in LIGHT_KINDS:
        out.append(f"{where}: kind {kind!r} is not one of {list(LIGHT_KINDS)}")
    elif kind == "hdri":
        path = entry.get("path")
        if not path:
            out.append(f"{where}: an hdri light needs 'path'")
        elif path.startswith("bpy:"):
            name = path[len(BUNDLED_PREFIX) :].removesuffix(".exr")
            if not path.startswith(BUNDLED_PREFIX) or name not in BUNDLED_HDRIS:
                out.append(
                    f"{where}: {path!r} is not one of the bundled HDRIs {list(BUNDLED_HDRIS)}"
                )
        else:
            try:
                resolved = _resolve(path, base_dir)
            except PathEscapeError as exc:
                return [*out, f"{where}: {exc}"]
            reason = check_image(resolved) if check_files else None
            if reason:
                out.append(f"{where}: {reason}")
    elif kind == "sky":
        if params.get("sky_type") not in SKY_TYPES:
            out.append(
                f"{where}: sky_type {params.get('sky_type')!r} is not one of {list(SKY_TYPES)}"
            )
    elif kind == "studio":
        lamps = params.get("lights")
        if not isinstance(lamps, list) or not lamps:
            out.append(f"{where}: a studio rig needs a non-empty 'lights' list")
        else:
            for i, lamp in enumerate(lamps):
                missing = [
                    k
                    for k in ("size", "power_w", "elevation", "azimuth", "distance_m")
                    if k not in lamp
                ]
                if missing:
                    out.append(f"{where}: lights[{i}] misses {missing}")
    return out


_CHECKS = {"materials": _check_material, "meshes": _check_mesh, "lights": _check_light}


def validate_catalog(
    entries: Sequence[dict],
    kind: str,
    base_dir: str | Path | None = None,
    check_files: bool = True,
    diversity: bool = True,
    where: str = "catalog",
) -> dict:
    """Raise ``CatalogError`` listing every problem; return a small report when clean."""
    if kind not in KINDS:
        raise ValueError(f"catalog kind {kind!r} is not one of {KINDS}")
    base = Path(base_dir) if base_dir is not None else None
    problems: list[str] = []
    seen: dict[str, str] = {}
    for entry in entries:
        w = _where(entry)
        missing = [k for k in REQUIRED[kind] if k not in entry]
        if missing:
            problems.append(f"{w}: missing field(s) {missing}")
            continue
        try:
            validate_material_id(entry["id"])
        except SchemaError as exc:
            problems.append(f"{w}: {exc}")
        if entry["id"] in seen:
            problems.append(f"{w}: duplicate id (first seen at {seen[entry['id']]})")
        seen.setdefault(entry["id"], w)
        if entry["split"] not in SPLITS:
            problems.append(f"{w}: split {entry['split']!r} is not one of {list(SPLITS)}")
        if not isinstance(entry["group"], str) or not entry["group"]:
            problems.append(f"{w}: group must be a non-empty string")
        if not isinstance(entry["licence"], str) or not entry["licence"]:
            problems.append(f"{w}: licence must be a non-empty string")
        problems.extend(_CHECKS[kind](entry, base, check_files))
    report: dict = {"entries": len(entries)}
    if kind == "materials" and diversity and not problems:
        div = fam.diversity_report(entries)
        problems.extend(div["problems"])
        report["diversity"] = div["families"]
    if kind in ("materials", "meshes", "lights") and not problems:
        problems.extend(_check_groups(entries))
    if problems:
        raise CatalogError(problems, where)
    return report


def _check_groups(entries: Sequence[dict]) -> list[str]:
    """Near-duplicates must not straddle the split: one group, one split."""
    splits: dict[str, set[str]] = {}
    for e in entries:
        splits.setdefault(e["group"], set()).add(e["split"])
    return [
        f"group {g!r} is split across {sorted(s)}: entries of one group must share a split "
        "(run 'assets split')"
        for g, s in sorted(splits.items())
        if len(s) > 1
    ]


# ----------------------------------------------------------------------------- split


def _bucket(group: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def assign_splits(
    entries: Sequence[dict],
    kind: str,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    holdout_families: Sequence[str] = (),
    min_test: int = 0,
    stratify: str | None = None,
    only: str | None = None,
) -> list[dict]:
    """Return copies of ``entries`` with ``split`` set group-wise and deterministically.

    ``only`` (``"train"``, ``"val"`` or ``"test"``) puts every entry in that one split and
    skips the fractions and checks below: an outside test set scanned on its own, say.

    A group goes to test if its hash bucket is below ``test``, to val if below
    ``test + val``, else to train; adding entries never moves another group. Families in
    ``holdout_families`` (materials) go wholly to test. If the test split holds fewer than
    ``min_test`` entries, train groups with the smallest buckets move to test. With
    ``stratify`` (e.g. ``"kind"``), every value of that field with at least 4 groups gets at
    least one test group, so a test split of lights is not all studio rigs. Raises
    ``CatalogError`` when the catalog cannot satisfy that or train would be empty.
    """
    if only is not None:
        if only not in SPLITS:
            raise CatalogError([f"split {only!r} is not one of {list(SPLITS)}"], kind)
        return [dict(e, split=only) for e in entries]
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise CatalogError(
            [f"fractions val={val} test={test} must be in [0, 1) and sum below 1"], kind
        )
    held = set(holdout_families)
    if held and kind == "materials":
        unknown = held - {e.get("family") for e in entries}
        if unknown:
            raise CatalogError(
                [f"--holdout-family {sorted(unknown)}: no such family in the catalog"], kind
            )
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e["group"], []).append(e)
    split_of: dict[str, str] = {}
    for group, members in groups.items():
        if held and any(m.get("family") in held for m in members):
            split_of[group] = "test"
            continue
        b = _bucket(group, seed)
        split_of[group] = "test" if b < test else ("val" if b < test + val else "train")

    if stratify:
        strata: dict[str, list[str]] = {}
        for group, members in groups.items():
            strata.setdefault(str(members[0].get(stratify)), []).append(group)
        for _value, members in sorted(strata.items()):
            if len(members) >= 4 and not any(split_of[g] == "test" for g in members):
                split_of[min(members, key=lambda g: _bucket(g, seed))] = "test"

    def count(split: str) -> int:
        return sum(len(groups[g]) for g, s in split_of.items() if s == split)

    if count("test") < min_test:
        movable = sorted(
            (g for g, s in split_of.items() if s != "test"), key=lambda g: _bucket(g, seed)
        )
        for group in movable:
            if count("test") >= min_test:
                break
            split_of[group] = "test"
    problems = []
    if count("test") < min_test:
        problems.append(
            f"the test split holds {count('test')} {kind} but needs at least {min_test}: add "
            f"{kind} (distinct groups) to the catalog"
        )
    if groups and count("train") == 0:
        problems.append(f"no {kind} left for train: lower --test/--val or add {kind}")
    if problems:
        raise CatalogError(problems, f"{kind} split")
    return [dict(e, split=split_of[e["group"]]) for e in entries]


# ----------------------------------------------------------------------------- summary


def summary(entries: Sequence[dict], kind: str) -> dict:
    """Counts per split and per category/source/family (materials) or kind (meshes, lights)."""
    out: dict = {"entries": len(entries), "groups": len({e.get("group") for e in entries})}
    out["split"] = dict(sorted(Counter(e.get("split") for e in entries).items()))
    if kind == "materials":
        for key in ("category", "source", "family"):
            out[key] = dict(sorted(Counter(str(e.get(key)) for e in entries if key in e).items()))
    else:
        out["kind"] = dict(sorted(Counter(e.get("kind") for e in entries).items()))
    out["licence"] = dict(sorted(Counter(e.get("licence") for e in entries).items()))
    return out


def format_summary(summ: dict, kind: str) -> str:
    lines = [f"{kind}: {summ['entries']} entries in {summ['groups']} groups"]
    for key in ("split", "category", "source", "family", "kind", "licence"):
        if key in summ:
            parts = ", ".join(f"{k} {v}" for k, v in summ[key].items())
            lines.append(f"  {key:9s} {parts}")
    return "\n".join(lines)
