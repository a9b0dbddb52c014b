"""The shard contract between ``render/`` (writer) and ``train/`` (reader), schema version 1.

A dataset version is a folder or URL prefix holding ``shard-000000.tar``, ``shard-000001.tar``,
... Each published shard has a sidecar ``shard-000000.json`` (sha256, sample count, plan hash)
and a build ends by writing ``index.json``, with a dataset card ``README.md`` and ``wids.json``
beside it for other loaders (Hugging Face ``datasets``, ``wids``).

One sample is one material and V >= 2 views of it. Inside a tar, WebDataset groups files by
the part of the base name before the first dot, so a sample is stored as::

    oak-017__g0001.view0.jpg        rendered view 0 (sRGB; png / png16 / exr if the spec says)
    oak-017__g0001.view0.mask.png   optional: 8-bit object alpha
    oak-017__g0001.view0.matid.png  optional: 16-bit per-pixel material index
    oak-017__g0001.view1.jpg
    ...
    oak-017__g0001.json             metadata (see ``validate_meta``)

The key is ``<material_id>__g<NNNN>``: a material ID is a slug of lowercase letters, digits
and single hyphens (no dots, no ``__``), and the group number tells apart several samples of
one material. Trainers label samples by ``stable_label(material_id)`` so equal labels mean
the same material on every rank and shard.

A ``matid`` map holds 0 (``MATID_BACKGROUND``) where no object is, and k >= 1 for the k-th
distinct material of the view: 1 is the sample's material; in a material-selection scene (a
sample whose json lists ``scene_materials``; its views carry ``scene_objects``) index k is
``matid_materials[k - 1]`` of the view's json.

Optional fields, absent from older shards and checked only when present (the schema version
stays 1): a sample's json may hold ``hard_negative_group``, the id (a slug such as
``hn-0000-000012``) of a group of samples of different materials rendered on the same mesh
under the same light and camera, view by view; a group's samples are consecutive in one
shard (unless the group is longer than a shard). ``index.json`` then holds
``hard_negative_group_size``, the spec's group size.

Optional per-view crop metadata (``object_crop_meta``), written by the renderer from the view's
mask so that a trainer places its crops on the object without decoding the mask; shards without
it keep working through the mask, from which the trainer computes the same record:

* ``object_bbox``: ``[x0, y0, x1, y1]``, the object's bounding box (pixel edges, ``x1``/``y1``
  exclusive) divided by the image width/height and rounded to 6 decimals, so that
  ``object_bbox_pixels`` recovers the pixels exactly; ``null`` when the mask holds no object;
* ``object_grid``: the object's occupancy on a ``G x G`` grid (``G = 16``) spanning the bounding
  box, cell edges ``grid_edges``: one byte per cell, row-major, as a hex string (``2 G^2``
  characters; ``""`` with a null box). A byte is ``round(255 * object pixels / cell pixels)``,
  but 0 only for a cell without object pixels and 255 only for a full one. An object pixel is
  a mask pixel above ``MASK_THRESHOLD`` (8-bit grey).

This module imports only the standard library (``object_crop_meta`` imports numpy when called):
a trainer machine never needs Blender.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

MATERIAL_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
KEY_RE = re.compile(r"^(?P<material_id>[a-z0-9]+(?:-[a-z0-9]+)*)__g(?P<group>\d{4,})$")
MAX_ID_LENGTH = 120

# Image format name in the spec -> file extension of the view members.
IMAGE_FORMATS = {"jpg": "jpg", "png": "png", "png16": "png", "exr": "exr"}
META_MEMBER = "json"
MATID_BACKGROUND = 0  # the matid value of pixels where no object is
INDEX_NAME = "index.json"
FAILURES_NAME = "failures.jsonl"
# Beside index.json, for loaders other than phieat's: a dataset card whose YAML front matter
# Hugging Face ``datasets`` reads, and a ``wids`` shard list (url and sample count per shard).
CARD_NAME = "README.md"
WIDS_NAME = "wids.json"
VIEW_TRANSFORMS = ("Standard", "AgX")

SAMPLE_META_FIELDS = {
    "schema_version": int,
    "key": str,
    "material": dict,
    "views": list,
    "blender_version": str,
    "catalog_snapshot": dict,
    "plan_hash": str,
}
MATERIAL_FIELDS = {"id": str, "category": str, "source": str, "params": dict}
VIEW_FIELDS = {
    "mesh_id": str,
    "light_id": str,
    "light_rotation": (int, float),
    "light_strength": (int, float),
    "camera": dict,
    "seed": int,
    "samples": int,
    "view_transform": str,
    "render_time_s": (int, float),
}
INDEX_FIELDS = {
    "schema_version": int,
    "dataset": str,
    "version": str,
    "complete": bool,
    "views_per_sample": int,
    "image_format": str,
    "spec_hash": str,
    "catalog_hashes": dict,
    "shards": list,
    "failures": list,
    "materials": list,
    "categories": list,
    "licences": dict,
}
# What a build used, beside ``materials``: the material groups, meshes and lights of its
# published samples (scene objects included). The leakage check of an evaluation reads them
# instead of every shard's json; an index written before them lacks them.
INDEX_MATERIAL_GROUPS = "material_groups"
INDEX_MESHES = "meshes"
INDEX_LIGHTS = "lights"
# Optional fields: checked when present, so shards written before them stay valid.
HARD_NEGATIVE_GROUP = "hard_negative_group"
SAMPLE_META_OPTIONAL_FIELDS = {HARD_NEGATIVE_GROUP: str}
INDEX_OPTIONAL_FIELDS = {
    "hard_negative_group_size": int,
    INDEX_MATERIAL_GROUPS: list,
    INDEX_MESHES: list,
    INDEX_LIGHTS: list,
}
SHARD_FIELDS = {"name": str, "samples": int, "bytes": int, "sha256": str, "plan_hash": str}


class SchemaError(ValueError):
    """A sample, key, metadata record or index that breaks the shard contract."""


# ----------------------------------------------------------------------------- names


def validate_material_id(material_id: object) -> str:
    """Return ``material_id`` if it is a valid slug, else raise ``SchemaError`` saying why."""
    if not isinstance(material_id, str):
        raise SchemaError(f"material id must be a string, got {type(material_id).__name__}")
    if "." in material_id:
        raise SchemaError(
            f"material id {material_id!r} contains a dot: WebDataset cuts sample keys at the "
            "first dot, so dots are not allowed (use hyphens)"
        )
    if "__" in material_id:
        raise SchemaError(f"material id {material_id!r} contains '__', which separates the group")
    if len(material_id) > MAX_ID_LENGTH:
        raise SchemaError(f"material id {material_id!r} is longer than {MAX_ID_LENGTH} characters")
    if not MATERIAL_ID_RE.match(material_id):
        raise SchemaError(
            f"material id {material_id!r} is not a slug: use lowercase letters, digits and "
            "single hyphens, not at the start or end"
        )
    return material_id


def slugify(text: str) -> str:
    """Turn free text (a file or folder name) into a valid material/mesh/light ID."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise SchemaError(f"cannot make an ID from {text!r}: no letters or digits")
    return validate_material_id(slug[:MAX_ID_LENGTH].rstrip("-"))


def make_key(material_id: str, group: int) -> str:
    """``make_key('oak-017', 1) == 'oak-017__g0001'``."""
    validate_material_id(material_id)
    if not isinstance(group, int) or group < 0:
        raise SchemaError(f"group must be a non-negative integer, got {group!r}")
    return f"{material_id}__g{group:04d}"


def parse_key(key: str) -> tuple[str, int]:
    """Inverse of ``make_key``; raises ``SchemaError`` naming the bad key."""
    if not isinstance(key, str):
        raise SchemaError(f"sample key must be a string, got {type(key).__name__}")
    if "." in key:
        raise SchemaError(f"sample key {key!r} contains a dot (WebDataset would split it)")
    match = KEY_RE.match(key)
    if not match:
        raise SchemaError(f"sample key {key!r} is not '<material_id>__g<NNNN>'")
    return match["material_id"], int(match["group"])


def view_member(index: int, image_format: str = "jpg") -> str:
    """Member name (the part after the key) of view ``index``: ``view0.jpg``."""
    if image_format not in IMAGE_FORMATS:
        raise SchemaError(f"image format {image_format!r} is not one of {sorted(IMAGE_FORMATS)}")
    return f"view{index}.{IMAGE_FORMATS[image_format]}"


def mask_member(index: int) -> str:
    return f"view{index}.mask.png"


def matid_member(index: int) -> str:
    return f"view{index}.matid.png"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sidecar_name(shard: str) -> str:
    """``shard-000003.tar`` -> ``shard-000003.json``."""
    if not shard.endswith(".tar"):
        raise SchemaError(f"shard name {shard!r} does not end in .tar")
    return shard[: -len(".tar")] + ".json"


def stable_label(material_id: str) -> int:
    """A signed 64-bit label that is the same for a material on every machine and run."""
    digest = hashlib.blake2b(material_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the text that hashes are taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def hash_obj(obj: Any, length: int = 16) -> str:
    """A short, stable hex digest of a JSON-serialisable object."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


# ----------------------------------------------------------------------------- crop metadata

# Per-view fields of a sample's json (optional: see the module docstring).
OBJECT_BBOX = "object_bbox"
OBJECT_GRID = "object_grid"
OBJECT_GRID_SIZE = 16  # cells per side of the occupancy grid the renderer writes
MASK_THRESHOLD = 127  # a mask pixel (8-bit grey) above this belongs to the object
BBOX_DECIMALS = 6
HEX_RE = re.compile(r"^[0-9a-f]*$")


def grid_edges(start: int, stop: int, cells: int) -> list[int]:
    """Pixel edges of ``cells`` cells splitting ``[start, stop)``: ``start + i * (stop - start) // cells``
    for ``i = 0 .. cells`` (a box narrower than ``cells`` pixels has empty cells)."""
    return [start + i * (stop - start) // cells for i in range(cells + 1)]


def object_bbox_pixels(bbox: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """``object_bbox`` back in pixels ``(x0, y0, x1, y1)`` of a ``width x height`` image."""
    x0, y0, x1, y1 = (
        min(max(int(round(v * size)), 0), size)
        for v, size in zip(bbox, (width, height, width, height), strict=True)
    )
    return x0, y0, x1, y1


def object_crop_meta(mask: Any, cells: int = OBJECT_GRID_SIZE) -> dict[str, Any]:
    """``{object_bbox, object_grid}`` of one view from its object mask (bool ``[H, W]`` array).

    The renderer stores it in the view's json; a trainer reading a shard without it computes
    it from the decoded mask, so both see the very same record."""
    import numpy as np  # only here: the rest of the contract needs no numpy

    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return {OBJECT_BBOX: None, OBJECT_GRID: ""}
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    ys, xs = np.array(grid_edges(y0, y1, cells)), np.array(grid_edges(x0, x1, cells))
    # Object pixels per cell; reduceat sums [start_i, start_i+1), and gives a stray row or
    # column for an empty cell, which the cell's zero size then clears.
    inside = mask[y0:y1, x0:x1].view(np.uint8)
    counts = np.add.reduceat(inside, xs[:-1] - x0, axis=1, dtype=np.int32)
    counts = np.add.reduceat(counts, ys[:-1] - y0, axis=0).astype(np.int64)
    area = (ys[1:] - ys[:-1])[:, None] * (xs[1:] - xs[:-1])
    counts *= area > 0
    occupancy = (510 * counts + area) // np.maximum(2 * area, 1)  # round half up
    np.maximum(occupancy, counts > 0, out=occupancy)  # 0 only when empty
    np.minimum(occupancy, 255 - (counts < area), out=occupancy)  # 255 only when full
    bbox = [
        round(v / size, BBOX_DECIMALS)
        for v, size in zip((x0, y0, x1, y1), (width, height, width, height), strict=True)
    ]
    return {OBJECT_BBOX: bbox, OBJECT_GRID: occupancy.astype(np.uint8).tobytes().hex()}


def _check_object_meta(view: Mapping, where: str) -> None:
    """The optional crop metadata of one view: both fields or neither, well formed."""
    if OBJECT_BBOX not in view and OBJECT_GRID not in view:
        return
    if OBJECT_BBOX not in view or OBJECT_GRID not in view:
        raise SchemaError(
            f"{where} has one of {OBJECT_BBOX!r} and {OBJECT_GRID!r} without the other"
        )
    bbox, grid = view[OBJECT_BBOX], view[OBJECT_GRID]
    if not isinstance(grid, str):
        raise SchemaError(f"{where}.{OBJECT_GRID} must be a hex string, got {type(grid).__name__}")
    if bbox is None:
        if grid:
            raise SchemaError(f"{where}.{OBJECT_GRID} must be empty when {OBJECT_BBOX} is null")
        return
    numbers = isinstance(bbox, list) and len(bbox) == 4
    numbers = numbers and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    if not numbers or not (0 <= bbox[0] < bbox[2] <= 1 and 0 <= bbox[1] < bbox[3] <= 1):
        raise SchemaError(
            f"{where}.{OBJECT_BBOX} {bbox!r} is not [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 "
            "and 0 <= y0 < y1 <= 1 (or null)"
        )
    cells = math.isqrt(len(grid) // 2)
    if cells < 1 or len(grid) != 2 * cells * cells or not HEX_RE.match(grid):
        raise SchemaError(
            f"{where}.{OBJECT_GRID} must hold 2 hex digits per cell of a square grid "
            f"(2 * G * G characters), got {len(grid)} characters"
        )


# ----------------------------------------------------------------------------- validation


def _check_fields(record: Mapping, fields: Mapping[str, Any], where: str) -> None:
    if not isinstance(record, Mapping):
        raise SchemaError(f"{where} must be a JSON object, got {type(record).__name__}")
    for name, kind in fields.items():
        if name not in record:
            raise SchemaError(f"{where} is missing the field {name!r}")
        value = record[name]
        # bool is a subclass of int: never accept it where a number is meant.
        if isinstance(value, bool) and kind is not bool:
            raise SchemaError(f"{where}.{name} must be {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise SchemaError(
                f"{where}.{name} must be {_kind_name(kind)}, got {type(value).__name__}"
            )


def _check_optional_fields(record: Mapping, fields: Mapping[str, Any], where: str) -> None:
    _check_fields(record, {name: kind for name, kind in fields.items() if name in record}, where)


def _kind_name(kind: Any) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def check_schema_version(version: object, where: str) -> None:
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise SchemaError(
            f"{where} has schema_version {version!r}; this phieat reads "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}. Upgrade phieat or re-render the dataset."
        )


def validate_meta(meta: Mapping, key: str | None = None) -> Mapping:
    """Validate one sample's metadata record (the ``json`` member)."""
    if not isinstance(meta, Mapping):  # before reading its key: a list has no .get
        raise SchemaError(f"sample {key or '?'} json must be a JSON object")
    where = f"sample {key or meta.get('key', '?')!s} json"
    check_schema_version(meta.get("schema_version"), where)
    _check_fields(meta, SAMPLE_META_FIELDS, where)
    _check_optional_fields(meta, SAMPLE_META_OPTIONAL_FIELDS, where)
    if HARD_NEGATIVE_GROUP in meta and not MATERIAL_ID_RE.match(meta[HARD_NEGATIVE_GROUP]):
        raise SchemaError(
            f"{where}.{HARD_NEGATIVE_GROUP} {meta[HARD_NEGATIVE_GROUP]!r} is not a slug "
            "(lowercase letters, digits and single hyphens, e.g. 'hn-0000-000012')"
        )
    material_id, _ = parse_key(meta["key"])
    if key is not None and meta["key"] != key:
        raise SchemaError(f"{where}: key field {meta['key']!r} does not match the tar key {key!r}")
    _check_fields(meta["material"], MATERIAL_FIELDS, f"{where}.material")
    if meta["material"]["id"] != material_id:
        raise SchemaError(
            f"{where}: material.id {meta['material']['id']!r} does not match the key's "
            f"material {material_id!r}"
        )
    views = meta["views"]
    if len(views) < 2:
        raise SchemaError(f"{where}: needs at least 2 views, has {len(views)}")
    for i, view in enumerate(views):
        _check_fields(view, VIEW_FIELDS, f"{where}.views[{i}]")
        if view["view_transform"] not in VIEW_TRANSFORMS:
            raise SchemaError(
                f"{where}.views[{i}].view_transform {view['view_transform']!r} is not one of "
                f"{list(VIEW_TRANSFORMS)}"
            )
        _check_object_meta(view, f"{where}.views[{i}]")
    return meta


def validate_sample(sample: Mapping[str, Any], image_format: str | None = None) -> Mapping:
    """Validate a sample as WebDataset yields it: ``__key__`` plus member name -> value.

    The ``json`` member may be raw bytes, text or an already decoded dict. View members must
    all be present for every view the metadata lists; ``image_format`` (if given) fixes the
    extension they must have.
    """
    if "__key__" not in sample:
        raise SchemaError("sample has no __key__")
    key = sample["__key__"]
    parse_key(key)
    if META_MEMBER not in sample:
        raise SchemaError(f"sample {key}: missing member {META_MEMBER!r} (the metadata)")
    meta = sample[META_MEMBER]
    if isinstance(meta, (bytes, bytearray)):
        meta = meta.decode("utf-8")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"sample {key}: json member is not valid JSON ({exc})") from exc
    validate_meta(meta, key)
    extensions = (
        [IMAGE_FORMATS[image_format]] if image_format else sorted(set(IMAGE_FORMATS.values()))
    )
    for i in range(len(meta["views"])):
        if not any(f"view{i}.{ext}" in sample for ext in extensions):
            raise SchemaError(
                f"sample {key}: missing member view{i}.{extensions[0]} "
                f"(metadata lists {len(meta['views'])} views)"
            )
    known = {META_MEMBER}
    for i in range(len(meta["views"])):
        known |= {f"view{i}.{ext}" for ext in extensions} | {mask_member(i), matid_member(i)}
    extra = sorted(name for name in sample if not name.startswith("__") and name not in known)
    if extra:
        raise SchemaError(f"sample {key}: unexpected members {extra}")
    return meta


def validate_index(index: Mapping, where: str = INDEX_NAME) -> Mapping:
    """Validate the ``index.json`` of a dataset version."""
    if not isinstance(index, Mapping):
        raise SchemaError(f"{where} must be a JSON object")
    check_schema_version(index.get("schema_version"), where)
    _check_fields(index, INDEX_FIELDS, where)
    _check_optional_fields(index, INDEX_OPTIONAL_FIELDS, where)
    if index["views_per_sample"] < 2:
        raise SchemaError(f"{where}.views_per_sample must be >= 2")
    if index.get("hard_negative_group_size", 1) < 1:
        raise SchemaError(f"{where}.hard_negative_group_size must be >= 1 when present")
    if index["image_format"] not in IMAGE_FORMATS:
        raise SchemaError(
            f"{where}.image_format {index['image_format']!r} is not one of {sorted(IMAGE_FORMATS)}"
        )
    seen = set()
    for i, shard in enumerate(index["shards"]):
        _check_fields(shard, SHARD_FIELDS, f"{where}.shards[{i}]")
        if shard["name"] in seen:
            raise SchemaError(f"{where}.shards[{i}]: shard {shard['name']!r} listed twice")
        seen.add(shard["name"])
    for material_id in index["materials"]:
        validate_material_id(material_id)
    return index
