"""The built-in light catalog and scanning of user HDRI folders (plain Python).

* ``hdri``: the 8 CC0 environments inside the bpy wheel, referenced as
  ``bpy:studiolights/world/<name>.exr`` and resolved by Blender at run time (never copied
  into the repository), plus user ``.hdr`` / ``.exr`` files;
* ``sky``: Blender 5's physical sky (``SINGLE_SCATTERING``, ``MULTIPLE_SCATTERING``,
  ``PREETHAM``, ``HOSEK_WILKIE``) with seeded sun elevation, azimuth and turbidity;
* ``studio``: seeded rigs of 1-4 rectangular area lights (softboxes and strips) with
  varied size, power, colour temperature and placement over a dim ambient.

Per-view rotation and exposure are chosen by the planner (``light_rotation``,
``light_strength`` of a view job), not stored here. Resolutions of one user HDRI
(``name_1k.hdr``, ``name_4k.exr``) share a ``group`` so the split keeps them together.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from phieat.schema import slugify

LICENCE = "CC0-1.0"
BUNDLED_HDRIS = ("city", "courtyard", "forest", "interior", "night", "studio", "sunrise", "sunset")
BUNDLED_PREFIX = "bpy:studiolights/world/"
SKY_TYPES = ("SINGLE_SCATTERING", "MULTIPLE_SCATTERING", "PREETHAM", "HOSEK_WILKIE")
HDRI_SUFFIXES = (".hdr", ".exr")
LIGHT_KINDS = ("hdri", "sky", "studio", "color")
# Relative exposure of the bundled HDRIs so that strength 1 gives a similar brightness.
_BUNDLED_STRENGTH = {"night": 2.5, "forest": 1.3, "sunset": 1.0, "sunrise": 1.0}
# The sky models differ in absolute radiance: these bring them near an indoor HDRI's exposure.
_SKY_STRENGTH = {
    "SINGLE_SCATTERING": 0.04,
    "MULTIPLE_SCATTERING": 0.03,
    "PREETHAM": 1.3,
    "HOSEK_WILKIE": 5.0,
}


def _entry(light_id: str, kind: str, params: dict, group: str | None = None) -> dict:
    return {
        "id": light_id,
        "kind": kind,
        "params": params,
        "group": group or light_id,
        "split": "train",
        "licence": LICENCE,
    }


def bundled_hdris() -> list[dict]:
    out = []
    for name in BUNDLED_HDRIS:
        entry = _entry(f"hdri-{name}", "hdri", {"strength": _BUNDLED_STRENGTH.get(name, 1.0)})
        entry["path"] = f"{BUNDLED_PREFIX}{name}.exr"
        out.append(entry)
    return out


def skies(count: int = 12, seed: int = 0) -> list[dict]:
    """Physical skies with seeded sun positions; all four sky models are used."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 77, i])
        sky_type = SKY_TYPES[i % len(SKY_TYPES)]
        params = {
            "sky_type": sky_type,
            "sun_elevation": round(float(rng.uniform(4.0, 70.0)), 2),
            "sun_azimuth": round(float(rng.uniform(0.0, 360.0)), 2),
            "turbidity": round(float(rng.uniform(1.8, 6.0)), 2),
            "ground_albedo": round(float(rng.uniform(0.1, 0.5)), 3),
            "strength": _SKY_STRENGTH[sky_type],
        }
        out.append(_entry(f"sky-{i:02d}", "sky", params))
    return out


def studio_rigs(count: int = 16, seed: int = 0) -> list[dict]:
    """Seeded studio rigs: 1-4 area lights around the object, each a softbox or a strip."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 91, i])
        lamps = []
        for k in range(int(rng.integers(1, 5))):
            strip = bool(rng.random() < 0.3)
            w = float(rng.uniform(0.3, 1.5))
            lamps.append(
                {
                    "size": [
                        round(w * (0.2 if strip else 1.0), 3),
                        round(w * (2.0 if strip else rng.uniform(0.6, 1.0)), 3),
                    ],
                    "power_w": round(float(rng.uniform(30.0, 200.0) * (1.0 if k == 0 else 0.5)), 1),
                    "kelvin": round(float(rng.uniform(2700.0, 7500.0)), 0),
                    "elevation": round(float(rng.uniform(-10.0, 75.0)), 1),
                    "azimuth": round(float(rng.uniform(0.0, 360.0)), 1),
                    "distance_m": round(float(rng.uniform(0.8, 2.5)), 2),
                }
            )
        ambient = round(float(rng.uniform(0.01, 0.12)), 3)
        params = {"lights": lamps, "ambient": [ambient, ambient, ambient]}
        out.append(_entry(f"studio-{i:02d}", "studio", params))
    return out


def builtin_lights(n_sky: int = 12, n_studio: int = 16) -> list[dict]:
    """8 bundled HDRIs + skies + studio rigs, sorted by id."""
    entries = bundled_hdris() + skies(n_sky) + studio_rigs(n_studio)
    return sorted(entries, key=lambda e: e["id"])


_RES_SUFFIX = re.compile(r"[_-](?:\d+k|\d+x\d+)$", re.IGNORECASE)


def scan_hdri_folder(
    folder: str | Path, prefix: str = "hdri", licence: str = "unknown"
) -> list[dict]:
    """Entries for every ``.hdr`` / ``.exr`` under ``folder``; one group per HDRI name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"HDRI folder {folder} does not exist or is not a folder")
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in HDRI_SUFFIXES):
        stem = path.relative_to(folder).with_suffix("").as_posix()
        light_id = slugify(f"{prefix}-{stem}")
        group = slugify(f"{prefix}-{_RES_SUFFIX.sub('', stem)}")
        entry = _entry(light_id, "hdri", {"strength": 1.0}, group)
        entry["path"] = str(path.resolve())
        entry["licence"] = licence
        out.append(entry)
    return out
