"""Dataset specs: the strict, typed TOML file that says what to render and how.

A spec names the catalogs, the split, views per sample, render settings, camera and light
ranges, shard size, seed and output URL. Every key is checked: an unknown key, a wrong type
or an out-of-range value is an error that names the file and the key to fix.

Optional tables switch on extra kinds of samples; absent (or zero) they leave the plan and
its hashes exactly as before:

``[scenes]``
    material-selection scenes, several objects with different materials in one view, at
    ``[render].resolution`` or their own ``resolution`` (see ``ScenesSection``).
``[hard_negatives]``
    ``group_size = 4`` renders the materials in groups of 4 that share, view by view, the
    same mesh, light, light rotation and strength, camera pose and background, so a
    contrastive loss must tell them apart by material alone (see ``HardNegativesSection``).

    from render.spec import load_spec
    spec = load_spec("manifests/tiny.toml", overrides=["render.samples=4"])

Overrides are ``section.key=value`` strings whose value is parsed as TOML
(``render.passes=["mask"]``, ``dataset.output="s3://bucket/tiny"``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phieat.schema import (
    IMAGE_FORMATS,
    VIEW_TRANSFORMS,
    SchemaError,
    hash_obj,
    validate_material_id,
)
from render.errors import SpecError
from render.spec_tables import build_section, unknown_key

BACKGROUND_MODES = ("hdri", "plain", "random", "blur")
PASSES = ("mask", "matid")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSection:
    """What to render: the dataset's name, size, layout and where it goes."""

    name: str
    output: str
    seed: int = 0
    views: int = 4
    samples_per_material: int = 1
    shard_size: int = 64
    max_materials: int = 0
    resample_on_growth: bool = False


@dataclass(frozen=True)
class CatalogSection:
    """Catalog files (relative to the spec file) and which split of each to draw from."""

    materials: str = "materials.jsonl"
    meshes: str = "meshes.jsonl"
    lights: str = "lights.jsonl"
    split: list[str] = field(default_factory=lambda: ["train"])
    mesh_split: list[str] = field(default_factory=list)
    light_split: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RenderSection:
    """Cycles and output settings, copied into every view job's ``render`` record."""

    resolution: int = 256
    samples: int = 32
    denoise: bool = True
    bounces: int = 4
    image_format: str = "jpg"
    jpeg_quality: int = 92
    view_transform: str = "Standard"
    passes: list[str] = field(default_factory=list)
    background: str = "hdri"
    background_color: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


@dataclass(frozen=True)
class CameraSection:
    """Uniform ranges ``[low, high]``; distance is in bounding-sphere radii, angles in degrees."""

    distance: list[float] = field(default_factory=lambda: [2.4, 3.2])
    elevation: list[float] = field(default_factory=lambda: [5.0, 45.0])
    azimuth: list[float] = field(default_factory=lambda: [0.0, 360.0])
    lens_mm: list[float] = field(default_factory=lambda: [50.0, 50.0])


@dataclass(frozen=True)
class LightingSection:
    """Light rotation about world Z (degrees) and exposure multiplier ranges."""

    rotation: list[float] = field(default_factory=lambda: [0.0, 360.0])
    strength: list[float] = field(default_factory=lambda: [0.8, 1.25])


@dataclass(frozen=True)
class ScenesSection:
    """Material-selection scenes: several objects with different materials in one view.

    ``count`` scenes (0 = none; not limited by ``[dataset].max_materials``) of ``objects``
    objects each, every one a sample of ``[dataset].views`` views (every sample of a dataset
    has the same number: the index's ``views_per_sample``) keyed by its first material. ``same_material_pairs`` is
    the chance that an object repeats a material already in the scene;
    ``same_colour_pairs`` the chance that it gets a material of another family whose base
    colour is overridden to match one already there. ``distance`` is the camera distance
    in radii of the objects' joint bounding sphere (the renderer backs off until all fit).
    ``resolution`` is the size in pixels of the scene views (0, the default: the
    ``[render].resolution`` of the object views; else 16..8192): several objects share one
    frame, so each covers far fewer pixels (and ViT patches) than an object view's single
    object. Everything written per scene view (image, mask, matid, ``object_bbox``,
    ``resolution`` in its json) is at that size; the object views keep ``[render].resolution``.
    """

    count: int = 0
    objects: list[int] = field(default_factory=lambda: [2, 4])
    same_material_pairs: float = 0.3
    same_colour_pairs: float = 0.3
    distance: list[float] = field(default_factory=lambda: [1.4, 1.8])
    resolution: int = 0


@dataclass(frozen=True)
class HardNegativesSection:
    """Factor-aware negatives: groups of materials rendered under identical conditions.

    ``group_size = k`` (0, the default, is off) partitions the materials of each generation
    of the plan, seeded by ``[dataset].seed``, into groups of ``k`` different materials (the
    last group of a partition may be smaller; a ``k`` above the material count makes one
    group). For
    view ``i`` every member of a group gets the same mesh, light, light rotation and
    strength, camera pose and background; only the material and the render seed differ.
    With ``samples_per_material`` > 1, each sample number is partitioned anew, so a material
    meets other negatives in each of its samples. Each sample's json records its group in
    ``hard_negative_group``; the members of a group are written consecutively, in one shard
    whenever ``group_size <= [dataset].shard_size`` (a shard then ends early rather than
    split a group). Selection scenes (``[scenes]``) are never grouped.
    """

    group_size: int = 0


@dataclass(frozen=True)
class BuildSection:
    """How a build runs. None of these change the pixels, so they are not in the version hash.

    ``material_timeout_s`` (0 = off) bounds one view of one material: the Ray pool stops the
    worker rendering it, retries the material ``max_retries`` times, then records it in
    ``failures.jsonl`` ("timeout after N s") and renders the rest of its shard without it.
    ``--local`` builds check the limit when a view returns (a render that never returns
    blocks them). ``shard_timeout_s`` bounds a whole shard task (Ray pool only).
    """

    workers: int = 0
    threads_per_worker: int = 1
    gpus_per_worker: float = 0.0
    max_retries: int = 2
    shard_attempts: int = 3
    max_failure_fraction: float = 0.02
    recycle_after_shards: int = 50
    max_worker_rss_mb: float = 6000.0
    shard_timeout_s: float = 0.0
    material_timeout_s: float = 0.0


@dataclass(frozen=True)
class Spec:
    """A whole dataset spec. ``path`` is the file it came from (catalogs resolve against it)."""

    dataset: DatasetSection
    catalogs: CatalogSection = field(default_factory=CatalogSection)
    render: RenderSection = field(default_factory=RenderSection)
    camera: CameraSection = field(default_factory=CameraSection)
    lighting: LightingSection = field(default_factory=LightingSection)
    scenes: ScenesSection = field(default_factory=ScenesSection)
    hard_negatives: HardNegativesSection = field(default_factory=HardNegativesSection)
    build: BuildSection = field(default_factory=BuildSection)
    path: str = ""

    def catalog_path(self, which: str) -> Path:
        """Absolute path of the ``materials`` / ``meshes`` / ``lights`` catalog."""
        raw = Path(getattr(self.catalogs, which))
        if raw.is_absolute() or not self.path:
            return raw
        return Path(self.path).resolve().parent / raw

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (saved beside outputs; ``path`` left out)."""
        data = dataclasses.asdict(self)
        data.pop("path")
        if not self.scenes.count:
            # Specs without scenes keep the shape (and hashes) they had before scenes existed.
            data.pop("scenes")
        elif self.scene_resolution == self.render.resolution:
            # Likewise scenes at the render resolution (the key came later): 0 and the render
            # resolution itself render the same pixels, so they make the same version.
            data["scenes"].pop("resolution")
        if not self.hard_negatives.group_size:
            # Likewise specs without hard-negative groups.
            data.pop("hard_negatives")
        return data

    @property
    def scene_resolution(self) -> int:
        """Pixels per side of the selection-scene views (``[scenes].resolution`` or, when 0,
        ``[render].resolution``)."""
        return self.scenes.resolution or self.render.resolution

    def render_settings(self) -> dict[str, Any]:
        """Everything that changes what a sample looks like: the dataset version hashes this."""
        data = self.to_dict()
        dataset = dict(data["dataset"])
        dataset.pop("output")
        catalogs = dict(data["catalogs"])
        for name in ("materials", "meshes", "lights"):
            catalogs.pop(name)
        settings = {
            "dataset": dataset,
            "catalogs": catalogs,
            "render": data["render"],
            "camera": data["camera"],
            "lighting": data["lighting"],
        }
        for optional in ("scenes", "hard_negatives"):
            if optional in data:
                settings[optional] = data[optional]
        return settings

    def spec_hash(self) -> str:
        return hash_obj(self.render_settings())


SECTIONS = {
    "dataset": DatasetSection,
    "catalogs": CatalogSection,
    "render": RenderSection,
    "camera": CameraSection,
    "lighting": LightingSection,
    "scenes": ScenesSection,
    "hard_negatives": HardNegativesSection,
    "build": BuildSection,
}


# ----------------------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Read and check a TOML spec; ``overrides`` are ``section.key=value`` strings."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpecError(f"spec file {path} does not exist") from exc
    except ValueError as exc:  # TOMLDecodeError, not UTF-8, or an integer too long to read
        raise SpecError(f"spec file {path} is not valid TOML: {exc}") from exc
    for item in overrides or []:
        apply_override(raw, item, str(path))
    return spec_from_dict(raw, str(path))


def apply_override(raw: dict[str, Any], item: str, where: str = "spec") -> None:
    """Apply one ``section.key=value`` override (value parsed as TOML, else a bare string)."""
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise SpecError(
            f"override {item!r} must look like section.key=value, e.g. render.samples=8"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # not TOML (or an integer too long to read): a bare string
        value = text
    raw.setdefault(section, {})[key] = value


def spec_from_dict(raw: dict[str, Any], where: str = "spec") -> Spec:
    """Build a ``Spec`` from decoded TOML, rejecting unknown sections/keys and bad values."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise SpecError(unknown_key(where, "", unknown[0], SECTIONS))
    if "dataset" not in raw:
        raise SpecError(f"{where}: missing the [dataset] section (needs at least name and output)")
    sections = {
        name: build_section(cls, raw.get(name, {}), where, name) for name, cls in SECTIONS.items()
    }
    spec = Spec(path=str(where), **sections)
    _check(spec, where)
    return spec


def _check(spec: Spec, where: str) -> None:
    d, r, b = spec.dataset, spec.render, spec.build

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise SpecError(f"{where}: {key} {message}")

    _check_finite(spec, where)
    try:
        validate_material_id(d.name)
    except SchemaError as exc:
        raise SpecError(f"{where}: [dataset].name: {exc}") from exc
    need(bool(d.output), "[dataset].output", "must name a folder or fsspec URL")
    need(d.views >= 2, "[dataset].views", f"must be >= 2 (views of one material), got {d.views}")
    need(d.samples_per_material >= 1, "[dataset].samples_per_material", "must be >= 1")
    need(d.shard_size >= 1, "[dataset].shard_size", "must be >= 1")
    need(d.max_materials >= 0, "[dataset].max_materials", "must be >= 0 (0 = all)")
    need(0 <= d.seed < 2**63, "[dataset].seed", "must be a non-negative 64-bit integer")
    for key in ("split", "mesh_split", "light_split"):
        for split in getattr(spec.catalogs, key):
            need(
                split in SPLITS + ("all",),
                f"[catalogs].{key}",
                f"has {split!r}; use {SPLITS} or 'all'",
            )
    need(bool(spec.catalogs.split), "[catalogs].split", "must name at least one split")
    need(16 <= r.resolution <= 8192, "[render].resolution", "must be within 16..8192 pixels")
    need(r.samples >= 1, "[render].samples", "must be >= 1")
    need(r.bounces >= 0, "[render].bounces", "must be >= 0")
    need(
        r.image_format in IMAGE_FORMATS,
        "[render].image_format",
        f"must be one of {sorted(IMAGE_FORMATS)}",
    )
    need(1 <= r.jpeg_quality <= 100, "[render].jpeg_quality", "must be within 1..100")
    need(
        r.view_transform in VIEW_TRANSFORMS,
        "[render].view_transform",
        f"must be one of {list(VIEW_TRANSFORMS)}",
    )
    for p in r.passes:
        need(p in PASSES, "[render].passes", f"has {p!r}; allowed: {list(PASSES)}")
    need(len(set(r.passes)) == len(r.passes), "[render].passes", "lists a pass twice")
    need(
        r.background in BACKGROUND_MODES,
        "[render].background",
        f"must be one of {list(BACKGROUND_MODES)}",
    )
    need(
        len(r.background_color) == 3 and all(0.0 <= c <= 1.0 for c in r.background_color),
        "[render].background_color",
        f"must be [r, g, b] with each channel within 0..1 (linear), got {r.background_color}",
    )
    for section, names in (
        ("camera", ("distance", "elevation", "azimuth", "lens_mm")),
        ("lighting", ("rotation", "strength")),
    ):
        for name in names:
            lo_hi = getattr(getattr(spec, section), name)
            need(
                len(lo_hi) == 2 and lo_hi[0] <= lo_hi[1],
                f"[{section}].{name}",
                f"must be a range [low, high] with low <= high, got {lo_hi}",
            )
    need(
        spec.camera.distance[0] > 1.0,
        "[camera].distance",
        "must start above 1.0 (the camera would sit inside the object)",
    )
    need(
        -90.0 <= spec.camera.elevation[0] and spec.camera.elevation[1] <= 90.0,
        "[camera].elevation",
        f"must lie within -90..90 degrees, got {spec.camera.elevation}",
    )
    need(
        spec.camera.lens_mm[0] > 0,
        "[camera].lens_mm",
        f"must be positive millimetres, got {spec.camera.lens_mm}",
    )
    need(
        spec.lighting.strength[0] > 0,
        "[lighting].strength",
        f"must be positive (0 renders a black image), got {spec.lighting.strength}",
    )
    sc = spec.scenes
    need(sc.count >= 0, "[scenes].count", "must be >= 0 (0 = no selection scenes)")
    need(
        len(sc.objects) == 2 and 2 <= sc.objects[0] <= sc.objects[1] <= 16,
        "[scenes].objects",
        f"must be a range [low, high] with 2 <= low <= high <= 16, got {sc.objects}",
    )
    for name in ("same_material_pairs", "same_colour_pairs"):
        need(0 <= getattr(sc, name) <= 1, f"[scenes].{name}", "must be a probability within 0..1")
    need(
        sc.same_material_pairs + sc.same_colour_pairs <= 1,
        "[scenes].same_material_pairs",
        "plus same_colour_pairs must be <= 1 (they are chances of exclusive cases)",
    )
    need(
        len(sc.distance) == 2 and 1.0 < sc.distance[0] <= sc.distance[1],
        "[scenes].distance",
        f"must be a range [low, high] with 1 < low <= high, got {sc.distance}",
    )
    need(
        sc.resolution == 0 or 16 <= sc.resolution <= 8192,
        "[scenes].resolution",
        f"must be 0 (= [render].resolution) or within 16..8192 pixels, got {sc.resolution}",
    )
    if sc.count:
        need(
            "matid" in r.passes,
            "[render].passes",
            'must include "matid" when [scenes].count > 0 (selection is scored on it)',
        )
    need(
        spec.hard_negatives.group_size >= 0,
        "[hard_negatives].group_size",
        f"must be >= 0 (0 = off, k = groups of k materials), got {spec.hard_negatives.group_size}",
    )
    need(b.workers >= 0, "[build].workers", "must be >= 0 (0 = one per free core group)")
    need(b.threads_per_worker >= 1, "[build].threads_per_worker", "must be >= 1")
    need(b.gpus_per_worker >= 0, "[build].gpus_per_worker", "must be >= 0")
    need(b.max_retries >= 0, "[build].max_retries", "must be >= 0")
    need(b.shard_attempts >= 1, "[build].shard_attempts", "must be >= 1")
    need(0 <= b.max_failure_fraction <= 1, "[build].max_failure_fraction", "must be within 0..1")
    need(b.recycle_after_shards >= 0, "[build].recycle_after_shards", "must be >= 0 (0 = never)")
    need(
        b.max_worker_rss_mb >= 0,
        "[build].max_worker_rss_mb",
        "must be >= 0 MiB (0 = no memory limit)",
    )
    need(b.shard_timeout_s >= 0, "[build].shard_timeout_s", "must be >= 0 (0 = no timeout)")
    need(
        b.material_timeout_s >= 0,
        "[build].material_timeout_s",
        "must be >= 0 seconds per view of a material (0 = no timeout)",
    )


def _check_finite(spec: Spec, where: str) -> None:
    """Every number of every section must be finite: ``inf`` and ``nan`` are valid TOML, but
    no range, strength, colour or timeout means anything with them (and ``inf`` in a range
    would only fail later, deep inside the planner)."""
    for name in SECTIONS:
        section = getattr(spec, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise SpecError(
                    f"{where}: [{name}].{f.name} must hold finite numbers (no inf or nan), "
                    f"got {value!r}"
                )


def replace_build(spec: Spec, **changes: Any) -> Spec:
    """A copy of ``spec`` with some ``[build]`` values changed (command-line options)."""
    build = dataclasses.replace(spec.build, **{k: v for k, v in changes.items() if v is not None})
    out = dataclasses.replace(spec, build=build)
    _check(out, spec.path or "spec")
    return out


def replace_output(spec: Spec, output: str | None) -> Spec:
    if not output:
        return spec
    return dataclasses.replace(spec, dataset=dataclasses.replace(spec.dataset, output=output))
