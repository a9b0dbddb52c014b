"""Scan folders of PBR texture sets into material catalog entries (plain Python).

Three folder layouts are recognised:

* **MatSynth**: one folder per material holding ``basecolor``, ``normal``, ``roughness``,
  ``metallic``, ``height``, ``opacity`` (``.png``/``.jpg``/...) and ``metadata.json``
  (``category``, ``physical_size`` or ``physical_size_m``, ``license``/``licence``,
  optional ``normal_convention`` "gl"/"dx");
* **ambientCG**: ``<Name>_<Res>-<FMT>_Color``, ``_NormalGL`` / ``_NormalDX``,
  ``_Roughness``, ``_Metalness``, ``_Displacement``, ``_AmbientOcclusion``, ``_Opacity``;
* **Poly Haven**: ``<name>_diff_<res>``, ``_rough_``, ``_nor_gl_`` / ``_nor_dx_``,
  ``_metal_``, ``_disp_``, ``_ao_``, ``_alpha_``.

Every resolution of one set is its own entry but all share a ``group``, so the split
never puts a 1K and a 4K copy of the same texture on different sides. A set's category
comes from its metadata, else from keywords in its name, else from ``default_category``;
sets with no usable category are reported as skipped, never silently dropped. Maps are
stored as absolute paths (or relative to the catalog with ``relative_to``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from assets.catalog import CATEGORIES
from phieat.schema import slugify

LAYOUTS = ("matsynth", "ambientcg", "polyhaven")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".webp", ".bmp", ".tga")

AMBIENTCG_MAPS = {
    "color": "basecolor",
    "normalgl": "normal",
    "normaldx": "normal",
    "roughness": "roughness",
    "metalness": "metallic",
    "displacement": "height",
    "ambientocclusion": "ao",
    "opacity": "opacity",
}
POLYHAVEN_MAPS = {
    "diff": "basecolor",
    "diffuse": "basecolor",
    "col": "basecolor",
    "rough": "roughness",
    "nor_gl": "normal",
    "nor_dx": "normal",
    "metal": "metallic",
    "disp": "height",
    "ao": "ao",
    "alpha": "opacity",
}
MATSYNTH_MAPS = {
    "basecolor": "basecolor",
    "normal": "normal",
    "roughness": "roughness",
    "metallic": "metallic",
    "height": "height",
    "displacement": "height",
    "ao": "ao",
    "opacity": "opacity",
}
# Words in a set's name -> category (first match wins; checked in this order).
CATEGORY_WORDS = (
    ("terracotta", "terracotta"),
    ("marble", "marble"),
    ("granite", "stone"),
    ("wood", "wood"),
    ("plank", "wood"),
    ("bark", "wood"),
    ("parquet", "wood"),
    ("metal", "metal"),
    ("rust", "metal"),
    ("steel", "metal"),
    ("iron", "metal"),
    ("copper", "metal"),
    ("brass", "metal"),
    ("alumin", "metal"),
    ("chrome", "metal"),
    ("concrete", "concrete"),
    ("asphalt", "concrete"),
    ("cement", "concrete"),
    ("plaster", "plaster"),
    ("stucco", "plaster"),
    ("fabric", "fabric"),
    ("cloth", "fabric"),
    ("carpet", "fabric"),
    ("denim", "fabric"),
    ("wool", "fabric"),
    ("leather", "leather"),
    ("ground", "ground"),
    ("soil", "ground"),
    ("dirt", "ground"),
    ("gravel", "ground"),
    ("sand", "ground"),
    ("mud", "ground"),
    ("grass", "ground"),
    ("moss", "ground"),
    ("rock", "stone"),
    ("stone", "stone"),
    ("cobble", "stone"),
    ("slate", "stone"),
    ("brick", "stone"),
    ("tile", "ceramic"),
    ("ceramic", "ceramic"),
    ("porcelain", "ceramic"),
    ("plastic", "plastic"),
    ("rubber", "rubber"),
    ("paint", "paint"),
    ("clay", "terracotta"),
)


@dataclass
class ScanResult:
    entries: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def infer_category(name: str) -> str | None:
    low = name.lower()
    for word, category in CATEGORY_WORDS:
        if word in low:
            return category
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _path(p: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return p.resolve().relative_to(relative_to.resolve()).as_posix()
        except ValueError:
            return str(p.resolve())
    return str(p.resolve())


def _entry(
    layout: str,
    name: str,
    res: str,
    maps: dict,
    category: str,
    size: float | None,
    convention: str,
    licence: str,
) -> dict:
    base = f"{layout}-{name}"
    entry = {
        "id": slugify(f"{base}-{res}" if res else base),
        "category": category,
        "source": layout,
        "licence": licence,
        "group": slugify(base),
        "split": "train",
        "maps": maps,
        "normal_convention": convention,
    }
    if size is not None:
        entry["physical_size_m"] = float(size)
    return entry


def _scan_matsynth(folder, default_category, default_size, licence, relative_to) -> ScanResult:
    result = ScanResult()
    dirs = sorted({p.parent for p in _images(folder)})
    for d in dirs:
        maps = {}
        for p in sorted(d.iterdir()):
            key = p.stem.lower()
            if p.suffix.lower() in IMAGE_SUFFIXES and key in MATSYNTH_MAPS:
                maps.setdefault(MATSYNTH_MAPS[key], _path(p, relative_to))
        if not maps:
            continue
        meta: dict = {}
        meta_path = d / "metadata.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                result.skipped.append(f"{meta_path}: not valid JSON ({exc})")
                continue
        name = d.name
        if "basecolor" not in maps:
            result.skipped.append(f"{d}: no basecolor map (files named basecolor.png ...)")
            continue
        category = str(meta.get("category", "")).lower() or infer_category(name) or default_category
        if category not in CATEGORIES:
            result.skipped.append(f"{d}: category {category!r} is not allowed; pass --category")
            continue
        size = meta.get("physical_size_m", meta.get("physical_size", default_size))
        if isinstance(size, (list, tuple)):
            size = max(float(s) for s in size)
        if isinstance(size, (int, float)) and size > 100:  # MatSynth gives centimetres
            size = size / 100.0
        conv = str(meta.get("normal_convention", "gl")).lower()
        lic = str(meta.get("license", meta.get("licence", licence)))
        result.entries.append(_entry("matsynth", name, "", maps, category, size, conv, lic))
    return result


_ACG = re.compile(r"^(?P<name>.+?)_(?P<res>\d+K)(?:-(?P<fmt>[A-Za-z]+))?_(?P<map>[A-Za-z]+)$")
_PH = re.compile(
    r"^(?P<name>.+?)_(?P<map>nor_gl|nor_dx|diff|diffuse|col|rough|metal|disp|ao|alpha)_(?P<res>\d+k)$",
    re.IGNORECASE,
)


def _scan_named(folder, layout, default_category, default_size, licence, relative_to) -> ScanResult:
    result = ScanResult()
    sets: dict[tuple[str, str], dict] = {}
    conventions: dict[tuple[str, str], str] = {}
    pattern, table = (_ACG, AMBIENTCG_MAPS) if layout == "ambientcg" else (_PH, POLYHAVEN_MAPS)
    for p in _images(folder):
        m = pattern.match(p.stem)
        if not m:
            continue
        kind = m["map"].lower()
        if kind not in table:
            continue
        key = (m["name"], m["res"].lower())
        maps = sets.setdefault(key, {})
        if kind in ("normaldx", "nor_dx"):
            if "normal" in maps and conventions.get(key) == "gl":
                continue  # prefer the OpenGL map when a set ships both
            conventions[key] = "dx"
        elif kind in ("normalgl", "nor_gl"):
            conventions[key] = "gl"
        maps[table[kind]] = _path(p, relative_to)
    for (name, res), maps in sorted(sets.items()):
        if "basecolor" not in maps:
            result.skipped.append(f"{layout} set {name} {res}: no base colour map")
            continue
        category = infer_category(name) or default_category
        if category not in CATEGORIES:
            result.skipped.append(f"{layout} set {name}: cannot tell its category; pass --category")
            continue
        result.entries.append(
            _entry(
                layout,
                name,
                res,
                maps,
                category,
                default_size,
                conventions.get((name, res), "gl"),
                licence,
            )
        )
    return result


def detect_layout(folder: str | Path) -> str:
    """Guess the layout of a folder from its file names."""
    names = [p.stem for p in _images(Path(folder))]
    if any(_ACG.match(n) for n in names):
        return "ambientcg"
    if any(_PH.match(n) for n in names):
        return "polyhaven"
    if any(n.lower() == "basecolor" for n in names):
        return "matsynth"
    raise ValueError(
        f"{folder}: no texture set found (expected MatSynth basecolor.png folders, ambientCG "
        "*_1K-PNG_Color.png or Poly Haven *_diff_1k.png files); pass --layout"
    )


def scan_texture_sets(
    folder: str | Path,
    layout: str = "auto",
    default_category: str | None = None,
    default_size_m: float | None = 1.0,
    licence: str = "CC0-1.0",
    relative_to: str | Path | None = None,
) -> ScanResult:
    """Scan ``folder`` for texture sets; returns entries and the reasons for skipped sets."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"texture folder {folder} does not exist or is not a folder")
    if layout == "auto":
        layout = detect_layout(folder)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS} (or 'auto')")
    rel = Path(relative_to) if relative_to is not None else None
    if layout == "matsynth":
        return _scan_matsynth(folder, default_category, default_size_m, licence, rel)
    return _scan_named(folder, layout, default_category, default_size_m, licence, rel)


def map_file_names(layout: str, name: str, res: str = "1k") -> dict[str, str]:
    """File names (relative to the set's folder) a layout uses: the writer side of the scan."""
    if layout == "matsynth":
        return {
            m: f"{m}.png"
            for m in ("basecolor", "normal", "roughness", "metallic", "height", "opacity")
        }
    if layout == "ambientcg":
        stem = f"{name}_{res.upper()}-PNG"
        return {
            "basecolor": f"{stem}_Color.png",
            "normal": f"{stem}_NormalGL.png",
            "normal_dx": f"{stem}_NormalDX.png",
            "roughness": f"{stem}_Roughness.png",
            "metallic": f"{stem}_Metalness.png",
            "height": f"{stem}_Displacement.png",
            "ao": f"{stem}_AmbientOcclusion.png",
            "opacity": f"{stem}_Opacity.png",
        }
    if layout == "polyhaven":
        return {
            "basecolor": f"{name}_diff_{res}.png",
            "normal": f"{name}_nor_gl_{res}.png",
            "normal_dx": f"{name}_nor_dx_{res}.png",
            "roughness": f"{name}_rough_{res}.png",
            "metallic": f"{name}_metal_{res}.png",
            "height": f"{name}_disp_{res}.png",
            "ao": f"{name}_ao_{res}.png",
            "opacity": f"{name}_alpha_{res}.png",
        }
    raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
