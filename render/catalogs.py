"""Asset catalogs as the planner reads them: load, check and select entries.

``load_catalog`` reads one JSONL catalog (materials, meshes or lights), checking every
entry's required fields, its ID and that the files it names stay inside the catalog's
folder; ``load_catalogs`` reads the three catalogs a spec names, with a content hash of
each. ``_select`` keeps the entries of the spec's splits and categories. The planner
(``render.plan``) draws its generations from what this module returns; ``render.plan``
re-exports ``load_catalog``, ``load_catalogs`` and ``Catalogs``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from assets.catalog import PathEscapeError, asset_path
from phieat.schema import SchemaError, validate_material_id
from render.errors import PlanError
from render.spec import Spec

CATALOG_KINDS = ("materials", "meshes", "lights")
REQUIRED_FIELDS = {
    "materials": ("id", "category", "source", "licence", "group", "split"),
    "meshes": ("id", "kind", "params", "size_m", "group", "split", "licence"),
    "lights": ("id", "kind", "params", "group", "split", "licence"),
}


@dataclass(frozen=True)
class Catalogs:
    """The three catalogs as lists of entries sorted by id, with a content hash of each file."""

    materials: list[dict]
    meshes: list[dict]
    lights: list[dict]
    hashes: dict[str, str]


def load_catalog(path: str | Path, kind: str) -> list[dict]:
    """Read one JSONL catalog, checking each entry's required fields and unique IDs."""
    path = Path(path)
    if not path.exists():
        raise PlanError(
            f"catalog {path} does not exist: point [catalogs].{kind} of the spec at the "
            "catalog file (a path relative to the spec's folder, or an absolute path)"
        )
    entries: list[dict] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(entry, dict):
            raise PlanError(f"{where} must be a JSON object")
        for name in REQUIRED_FIELDS[kind]:
            if name not in entry:
                raise PlanError(f"{where}: entry {entry.get('id', '?')!r} is missing {name!r}")
        try:
            validate_material_id(entry["id"])
        except SchemaError as exc:
            raise PlanError(f"{where}: {exc}") from exc
        if entry["id"] in seen:
            raise PlanError(f"{where}: id {entry['id']!r} appears twice")
        if kind == "materials" and entry["source"] == "procedural" and "family" not in entry:
            raise PlanError(f"{where}: procedural material {entry['id']!r} has no 'family'")
        for ref in _file_refs(entry, kind):
            try:
                asset_path(ref, path.parent)
            except PathEscapeError as exc:
                raise PlanError(f"{where}: entry {entry['id']!r}: {exc}") from exc
        seen.add(entry["id"])
        entries.append(entry)
    return sorted(entries, key=lambda e: e["id"])


def _file_refs(entry: dict, kind: str) -> list[str]:
    """The files an entry names: texture maps, an HDRI, a mesh file (bundled HDRIs aside)."""
    if kind == "materials":
        maps = entry.get("maps")
        return [v for v in maps.values() if isinstance(v, str)] if isinstance(maps, dict) else []
    ref = entry.get("path")
    if not isinstance(ref, str) or ref.startswith("bpy:"):
        return []
    return [ref]


def _missing_catalog(spec: Spec, kind: str) -> str:
    """Where a missing catalog was looked for and how to point the spec at it."""
    raw = getattr(spec.catalogs, kind)
    looked = spec.catalog_path(kind)
    folder = Path(spec.path).resolve().parent
    text = f"{spec.path}: [catalogs].{kind} = {raw!r} does not exist: looked at {looked}" + (
        "" if Path(raw).is_absolute() else f" (relative to the spec's folder {folder})"
    )
    # A spec copied out of manifests/ still names the catalogs beside the original.
    for candidate in (Path.cwd() / raw, Path.cwd() / "manifests" / Path(raw).name):
        if candidate.is_file():
            rel = Path(os.path.relpath(candidate.resolve(), folder)).as_posix()
            return (
                f"{text}. {candidate} exists: set [catalogs].{kind} = {rel!r} in the spec "
                f"(or --set catalogs.{kind}={str(candidate.resolve())!r})"
            )
    return (
        f"{text}. Set [catalogs].{kind} to the catalog's path relative to the spec's folder, "
        "or to an absolute path"
    )


def load_catalogs(spec: Spec) -> Catalogs:
    for kind in CATALOG_KINDS:
        if spec.path and not spec.catalog_path(kind).exists():
            raise PlanError(_missing_catalog(spec, kind))
    lists = {kind: load_catalog(spec.catalog_path(kind), kind) for kind in CATALOG_KINDS}
    hashes = {
        kind: hashlib.sha256(spec.catalog_path(kind).read_bytes()).hexdigest()[:16]
        for kind in CATALOG_KINDS
    }
    return Catalogs(hashes=hashes, **lists)


def _splits(selected: list[str]) -> set[str] | None:
    return None if "all" in selected else set(selected)


def _select(spec: Spec, catalogs: Catalogs) -> tuple[list[dict], list[dict], list[dict]]:
    """Entries of the spec's splits (and categories); errors name the empty catalog."""
    c = spec.catalogs
    mat_splits = _splits(c.split)
    mesh_splits = _splits(c.mesh_split or c.split)
    light_splits = _splits(c.light_split or c.split)

    def keep(entries: list[dict], splits: set[str] | None) -> list[dict]:
        return [e for e in entries if splits is None or e["split"] in splits]

    materials = keep(catalogs.materials, mat_splits)
    if c.categories:
        materials = [m for m in materials if m["category"] in set(c.categories)]
    meshes = keep(catalogs.meshes, mesh_splits)
    lights = keep(catalogs.lights, light_splits)
    for kind, entries, key, splits in (
        ("meshes", meshes, "mesh_split", mesh_splits),
        ("lights", lights, "light_split", light_splits),
    ):
        if not entries:
            raise PlanError(
                f"{spec.catalog_path(kind)} has no entry in split {sorted(splits or ['all'])}"
                f': set [catalogs].{key} (e.g. "all") in {spec.path or "the spec"}'
            )
    return materials, meshes, lights
