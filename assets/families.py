"""Procedural material families: seeded parameter samplers with stable IDs.

A family (``wood``, ``marble``, ``metal-brushed`` ...) declares its parameters: numeric
ranges (roughness, bump strength, feature sizes in metres, coat, sheen, anisotropy,
subsurface ...), colours (sampled in HSV, stored as linear RGB) and discrete choices. A
material is ``(family, seed)``:

* seeds come in *variants* of ``SEEDS_PER_VARIANT``: a variant draws every parameter, and
  each seed of it perturbs the numeric ones a little. Siblings are near-duplicates, so they
  share a ``group`` and the split never puts them on both sides;
* the ID is ``<family>-<seed:04d>-<hash6>`` where ``hash6`` is a hash of the parameters,
  so the same ID always means the same parameters (and, rendered, the same pixels);
* randomness comes only from ``numpy.random.default_rng`` seeded by a hash of
  ``(family, variant)`` / ``(family, seed)``: adding a family never changes another.

``material_entry(family, seed)`` gives a catalog entry; ``generate(n_per_family)`` the
built-in catalog; ``diversity_report(entries)`` the check that non-colour parameters vary
and no two materials are closer than a minimum distance.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from phieat.schema import hash_obj

SEEDS_PER_VARIANT = 4
DEFAULT_PER_FAMILY = 360
JITTER = 0.1  # fraction of a parameter's range a seed moves away from its variant
MIN_DISTANCE = 0.02  # minimum normalised distance between two materials of a family
LICENCE = "CC0-1.0"


@dataclass(frozen=True)
class Num:
    """A numeric parameter uniform in [lo, hi] (``log`` for scales spanning decades)."""

    lo: float
    hi: float
    log: bool = False
    jitter: bool = True

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(np.exp(rng.uniform(np.log(self.lo), np.log(self.hi))))
        return float(rng.uniform(self.lo, self.hi))

    def perturb(self, value: float, rng: np.random.Generator) -> float:
        if not self.jitter:
            return value
        if self.log:
            span = np.log(self.hi) - np.log(self.lo)
            v = np.log(value) + rng.uniform(-JITTER, JITTER) * span
            return float(np.exp(np.clip(v, np.log(self.lo), np.log(self.hi))))
        v = value + rng.uniform(-JITTER, JITTER) * (self.hi - self.lo)
        return float(np.clip(v, self.lo, self.hi))

    def normalise(self, value: float) -> float:
        if self.log:
            return float((np.log(value) - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo)))
        return float((value - self.lo) / (self.hi - self.lo)) if self.hi > self.lo else 0.0


@dataclass(frozen=True)
class Color:
    """A colour: one of ``palette`` (sRGB 0-1 triples) jittered in HSV, stored linear."""

    palette: tuple[tuple[float, float, float], ...]
    hue: float = 0.02
    sat: float = 0.12
    val: float = 0.15

    def sample(self, rng: np.random.Generator) -> list[float]:
        base = self.palette[int(rng.integers(len(self.palette)))]
        h, s, v = colorsys.rgb_to_hsv(*base)
        h = (h + rng.uniform(-self.hue, self.hue)) % 1.0
        s = float(np.clip(s * (1 + rng.uniform(-self.sat, self.sat) * 2), 0, 1))
        v = float(np.clip(v * (1 + rng.uniform(-self.val, self.val)), 0.01, 1))
        rgb = colorsys.hsv_to_rgb(h, s, v)
        return [round(_srgb_to_linear(c), 4) for c in rgb]


@dataclass(frozen=True)
class Choice:
    """A discrete parameter (kept for the whole variant)."""

    options: tuple

    def sample(self, rng: np.random.Generator) -> object:
        return self.options[int(rng.integers(len(self.options)))]


@dataclass(frozen=True)
class Family:
    name: str
    category: str
    params: dict = field(default_factory=dict)
    description: str = ""

    def numeric(self) -> list[str]:
        """Non-colour numeric parameters that change the material (placement excluded)."""
        return [k for k, v in self.params.items() if isinstance(v, Num) and k not in PLACEMENT]


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def _hex(*codes: str) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(int(c[i : i + 2], 16) / 255 for i in (0, 2, 4)) for c in codes)


# Where the pattern sits on the object: not a property of the material, so the diversity
# check ignores these two.
PLACEMENT = ("rotation", "offset")
ROT = Num(0.0, 6.2832, jitter=False)
OFFSET = Num(0.0, 50.0, jitter=False)
METALS = _hex("c8c8c8", "d6d7d9", "b4b5b8", "f2c9a0", "e8b25e", "d9a066", "b5a38c", "9e9e9e")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "wood",
            "wood",
            {
                "base_color": Color(
                    _hex("c8955a", "d9b07c", "a06a3c", "7a4a28", "e0c49a", "5b3a24", "b8743e"),
                    0.02,
                    0.15,
                    0.2,
                ),
                "dark_color": Color(
                    _hex("7a4a26", "5c3418", "8a5a30", "3d2412", "9c6c3c"), 0.02, 0.15, 0.2
                ),
                "ring_spacing_m": Num(0.003, 0.02, log=True),
                "ring_distortion": Num(0.5, 4.0),
                "ring_sharpness": Num(0.0, 1.0),
                "grain_scale_m": Num(0.0004, 0.003, log=True),
                "grain_strength": Num(0.05, 0.4),
                "log_offset_m": Num(0.05, 0.6),
                "roughness": Num(0.25, 0.75),
                "coat": Num(0.0, 1.0),
                "coat_roughness": Num(0.02, 0.3),
                "bump_strength": Num(0.02, 0.25),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "rings (saw wave around a log axis) with distorted growth, fibres, optional varnish",
        ),
        Family(
            "marble",
            "marble",
            {
                "base_color": Color(
                    _hex("f2efe8", "e8e4dc", "d8d4cc", "2a2a2c", "3c4a3e", "e6d6c4", "c9b8a8"),
                    0.02,
                    0.15,
                    0.05,
                ),
                "vein_color": Color(
                    _hex("5a5a5e", "8a8078", "3a3a3c", "d8c8a8", "f0f0ec", "2e3a32"), 0.03, 0.2, 0.2
                ),
                "vein_scale_m": Num(0.03, 0.2, log=True),
                "vein_distortion": Num(4.0, 14.0),
                "vein_width": Num(0.06, 0.35),
                "vein_contrast": Num(0.4, 1.0),
                "cloud_strength": Num(0.0, 0.4),
                "roughness": Num(0.03, 0.4),
                "subsurface": Num(0.0, 0.3),
                "subsurface_scale": Num(0.002, 0.02, log=True),
                "bump_strength": Num(0.0, 0.15),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "turbulent veins over a clouded base, polished or honed, translucent",
        ),
        Family(
            "metal-brushed",
            "metal",
            {
                "base_color": Color(METALS, 0.01, 0.1, 0.08),
                "metallic": Num(0.92, 1.0),
                "roughness": Num(0.12, 0.5),
                "anisotropic": Num(0.3, 0.95),
                "brush_scale_m": Num(0.0003, 0.003, log=True),
                "brush_strength": Num(0.1, 0.8),
                "brush_direction": Choice(("X", "Y", "Z", "radial")),
                "roughness_variation": Num(0.0, 0.2),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "anisotropic metal with brush streaks in one direction",
        ),
        Family(
            "metal-polished",
            "metal",
            {
                "base_color": Color(METALS, 0.01, 0.1, 0.08),
                "metallic": Num(0.95, 1.0),
                "roughness": Num(0.01, 0.18),
                "smudge_scale_m": Num(0.01, 0.1, log=True),
                "smudge_strength": Num(0.0, 0.25),
                "scratch_density": Num(0.0, 1.0),
                "scratch_scale_m": Num(0.005, 0.05, log=True),
                "dent_strength": Num(0.0, 0.3),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "mirror-like metal with smudges, fine scratches and dents",
        ),
        Family(
            "metal-oxidised",
            "metal",
            {
                "base_color": Color(METALS, 0.01, 0.1, 0.1),
                "oxide_color": Color(
                    _hex("8a3e1c", "6e3216", "a4582a", "4e8a72", "5ca088", "3c2a20", "7a6a5a"),
                    0.03,
                    0.2,
                    0.2,
                ),
                "oxide_coverage": Num(0.2, 0.85),
                "oxide_scale_m": Num(0.01, 0.15, log=True),
                "oxide_roughness": Num(0.6, 1.0),
                "metal_roughness": Num(0.15, 0.55),
                "pit_strength": Num(0.1, 0.8),
                "pit_scale_m": Num(0.0008, 0.006, log=True),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "bare metal eaten by rust or patina: a rough, non-metallic, pitted oxide mask",
        ),
        Family(
            "painted-metal",
            "paint",
            {
                "base_color": Color(
                    _hex(
                        "b8281e",
                        "1e5aa0",
                        "2e7a3a",
                        "e8c020",
                        "f0f0f0",
                        "202020",
                        "e87020",
                        "607080",
                    ),
                    0.02,
                    0.15,
                    0.15,
                ),
                "roughness": Num(0.2, 0.7),
                "metal_color": Color(METALS[:3], 0.01, 0.1, 0.1),
                "chip_coverage": Num(0.0, 0.5),
                "chip_scale_m": Num(0.005, 0.06, log=True),
                "orange_peel_m": Num(0.0005, 0.003, log=True),
                "orange_peel_strength": Num(0.0, 0.3),
                "chip_depth": Num(0.1, 0.8),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "paint over steel, orange-peel surface, chipped to bare metal",
        ),
        Family(
            "car-paint",
            "paint",
            {
                "base_color": Color(
                    _hex(
                        "a01018",
                        "0a2a6e",
                        "1a1a1a",
                        "d8d8d8",
                        "6e7072",
                        "0e4a2a",
                        "d86010",
                        "4a1860",
                        "c8b060",
                    ),
                    0.02,
                    0.1,
                    0.15,
                ),
                "metallic": Num(0.0, 0.9),
                "roughness": Num(0.2, 0.55),
                "flake_scale_m": Num(0.0002, 0.0015, log=True),
                "flake_strength": Num(0.0, 0.6),
                "coat": Num(0.85, 1.0),
                "coat_roughness": Num(0.0, 0.08),
                "coat_ior": Num(1.45, 1.6),
                "thin_film": Num(0.0, 300.0),
                "offset": OFFSET,
            },
            "metallic base with flakes under a glossy clear coat, optional pearl (thin film)",
        ),
        Family(
            "plastic",
            "plastic",
            {
                "base_color": Color(
                    _hex(
                        "d03030",
                        "3060c0",
                        "30a050",
                        "f0d020",
                        "f0f0f0",
                        "202020",
                        "f08020",
                        "a040c0",
                        "40c0c0",
                        "f0a0b0",
                    ),
                    0.03,
                    0.2,
                    0.15,
                ),
                "roughness": Num(0.03, 0.75),
                "specular": Num(0.3, 0.7),
                "subsurface": Num(0.0, 0.25),
                "subsurface_scale": Num(0.001, 0.01, log=True),
                "texture_kind": Choice(("smooth", "grain", "stipple")),
                "texture_scale_m": Num(0.0003, 0.003, log=True),
                "bump_strength": Num(0.0, 0.4),
                "offset": OFFSET,
            },
            "moulded plastic: glossy to matte, smooth / grained / stippled, a little translucent",
        ),
        Family(
            "rubber",
            "rubber",
            {
                "base_color": Color(
                    _hex("1c1c1c", "2a2a2a", "3a3030", "202a3a", "3a2018", "4a4a48"), 0.03, 0.2, 0.3
                ),
                "roughness": Num(0.55, 0.95),
                "specular": Num(0.2, 0.5),
                "sheen": Num(0.0, 0.5),
                "sheen_roughness": Num(0.3, 0.8),
                "bump_scale_m": Num(0.0005, 0.004, log=True),
                "bump_strength": Num(0.05, 0.5),
                "dust": Num(0.0, 0.4),
                "offset": OFFSET,
            },
            "dark, soft-sheened rubber with fine surface noise and dust",
        ),
        Family(
            "ceramic",
            "ceramic",
            {
                "base_color": Color(
                    _hex(
                        "f4f2ec",
                        "2e5a8a",
                        "8ab0a0",
                        "c04030",
                        "202428",
                        "e0c890",
                        "6a8a4a",
                        "d8e0e8",
                    ),
                    0.02,
                    0.15,
                    0.1,
                ),
                "roughness": Num(0.02, 0.35),
                "coat": Num(0.0, 1.0),
                "subsurface": Num(0.0, 0.3),
                "subsurface_scale": Num(0.001, 0.01, log=True),
                "glaze_variation": Num(0.0, 0.35),
                "glaze_scale_m": Num(0.01, 0.1, log=True),
                "crackle_scale_m": Num(0.004, 0.03, log=True),
                "crackle_strength": Num(0.0, 0.6),
                "tile_size_m": Num(0.02, 0.08, log=True),
                "tiled": Choice((0, 0, 1)),
                "grout_color": Color(_hex("d8d4cc", "808080", "404040"), 0.02, 0.1, 0.1),
                "offset": OFFSET,
            },
            "glazed ceramic: glossy, mottled glaze, crackle, optionally as tiles with grout",
        ),
        Family(
            "terracotta",
            "terracotta",
            {
                "base_color": Color(
                    _hex("b85a32", "c46a3e", "a04a28", "d08050", "8a4028", "c87848"),
                    0.02,
                    0.15,
                    0.15,
                ),
                "roughness": Num(0.65, 0.95),
                "mottle_strength": Num(0.05, 0.4),
                "mottle_scale_m": Num(0.005, 0.05, log=True),
                "pore_scale_m": Num(0.0005, 0.003, log=True),
                "pore_strength": Num(0.1, 0.7),
                "efflorescence": Num(0.0, 0.35),
                "offset": OFFSET,
            },
            "unglazed fired clay: porous, mottled, with pale salt bloom",
        ),
        Family(
            "concrete",
            "concrete",
            {
                "base_color": Color(
                    _hex("9a9892", "b0aca4", "7a7872", "c4bcb0", "8a8680"), 0.02, 0.15, 0.2
                ),
                "roughness": Num(0.6, 0.95),
                "aggregate_scale_m": Num(0.001, 0.006, log=True),
                "aggregate_contrast": Num(0.0, 0.3),
                "pore_scale_m": Num(0.001, 0.006, log=True),
                "pore_strength": Num(0.1, 0.8),
                "stain_strength": Num(0.0, 0.5),
                "stain_scale_m": Num(0.05, 0.4, log=True),
                "offset": OFFSET,
            },
            "cast concrete: aggregate speckle, air pores, water stains",
        ),
        Family(
            "plaster",
            "plaster",
            {
                "base_color": Color(
                    _hex("f0ece4", "e8dcc8", "d8d0c0", "e0c8b0", "c8d0c8", "f4f4f0"),
                    0.02,
                    0.2,
                    0.08,
                ),
                "roughness": Num(0.55, 0.95),
                "stucco_scale_m": Num(0.001, 0.01, log=True),
                "stucco_strength": Num(0.2, 1.0),
                "trowel_scale_m": Num(0.02, 0.15, log=True),
                "trowel_strength": Num(0.0, 0.5),
                "tone_variation": Num(0.0, 0.2),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "wall plaster: stucco bumps, trowel strokes, tone variation",
        ),
        Family(
            "granite",
            "stone",
            {
                "base_color": Color(
                    _hex("a09a94", "c8b8a8", "5a5a5e", "b08878", "6a6058", "d0ccc4"), 0.03, 0.2, 0.2
                ),
                "speck_color": Color(
                    _hex("1a1a1c", "f0ece8", "6a3a30", "3a3a3a", "d8c8b8"), 0.03, 0.2, 0.2
                ),
                "speck_scale_m": Num(0.0007, 0.004, log=True),
                "speck_amount": Num(0.15, 0.6),
                "roughness": Num(0.05, 0.7),
                "sparkle": Num(0.0, 0.5),
                "bump_strength": Num(0.0, 0.4),
                "offset": OFFSET,
            },
            "crystalline stone: speckled grains, polished or flamed, mica sparkle",
        ),
        Family(
            "sandstone",
            "stone",
            {
                "base_color": Color(
                    _hex("d8c098", "c8a878", "b08868", "e0d0b0", "a87858", "9a8a7a"),
                    0.02,
                    0.15,
                    0.15,
                ),
                "band_color": Color(_hex("b08058", "8a6848", "c8a070", "706050"), 0.02, 0.15, 0.2),
                "band_scale_m": Num(0.01, 0.1, log=True),
                "band_distortion": Num(2.0, 8.0),
                "band_contrast": Num(0.1, 0.8),
                "grain_scale_m": Num(0.0003, 0.002, log=True),
                "grain_strength": Num(0.2, 0.9),
                "roughness": Num(0.75, 1.0),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "sedimentary stone: distorted bedding bands over a sandy grain",
        ),
        Family(
            "brick",
            "stone",
            {
                "base_color": Color(
                    _hex("9a4a32", "b0603c", "7a3a2a", "c89a78", "8a7a6a", "a85a48"),
                    0.02,
                    0.15,
                    0.2,
                ),
                "mortar_color": Color(
                    _hex("b8b0a4", "8a847c", "d8d0c4", "5a5650"), 0.02, 0.1, 0.15
                ),
                "brick_length_m": Num(0.18, 0.3),
                "brick_height_m": Num(0.05, 0.09),
                "mortar_m": Num(0.006, 0.015),
                "tint_variation": Num(0.05, 0.4),
                "roughness": Num(0.7, 0.95),
                "pore_scale_m": Num(0.0008, 0.004, log=True),
                "bump_strength": Num(0.3, 1.0),
                "offset": OFFSET,
            },
            "running-bond brick wall: per-brick tint, recessed mortar, porous faces",
        ),
        Family(
            "fabric",
            "fabric",
            {
                "base_color": Color(
                    _hex(
                        "3a4a6a",
                        "8a2a2a",
                        "d8d0c0",
                        "2a5a3a",
                        "6a5a4a",
                        "202020",
                        "c8a040",
                        "7a4a8a",
                    ),
                    0.03,
                    0.2,
                    0.2,
                ),
                "weft_color": Color(
                    _hex("3a4a6a", "d8d0c0", "202020", "8a8a8a", "c8a040"), 0.03, 0.2, 0.2
                ),
                "weft_mix": Num(0.0, 1.0),
                "thread_spacing_m": Num(0.0008, 0.004, log=True),
                "weave_strength": Num(0.2, 1.0),
                "roughness": Num(0.7, 1.0),
                "sheen": Num(0.2, 1.0),
                "sheen_roughness": Num(0.2, 0.7),
                "fuzz": Num(0.0, 0.5),
                "rotation": ROT,
                "offset": OFFSET,
            },
            "woven cloth: over/under warp and weft threads, sheen, fuzz",
        ),
        Family(
            "leather",
            "leather",
            {
                "base_color": Color(
                    _hex(
                        "5a3420",
                        "3a2418",
                        "8a5a36",
                        "1a1414",
                        "a0522d",
                        "6a1a1a",
                        "c8a078",
                        "2a3a4a",
                    ),
                    0.02,
                    0.15,
                    0.2,
                ),
                "roughness": Num(0.3, 0.8),
                "grain_scale_m": Num(0.001, 0.004, log=True),
                "grain_strength": Num(0.3, 1.0),
                "wrinkle_scale_m": Num(0.01, 0.06, log=True),
                "wrinkle_strength": Num(0.0, 0.5),
                "sheen": Num(0.0, 0.4),
                "coat": Num(0.0, 0.6),
                "wear": Num(0.0, 0.4),
                "offset": OFFSET,
            },
            "tanned hide: pebbled grain in cells, wrinkles, worn lighter patches, finish",
        ),
        Family(
            "ground",
            "ground",
            {
                "base_color": Color(
                    _hex("6a4a30", "8a7050", "4a3a2a", "c8b088", "5a5040", "7a5a3a"), 0.02, 0.2, 0.2
                ),
                "stone_color": Color(_hex("8a8680", "a09888", "5a5450", "c0b8a8"), 0.02, 0.15, 0.2),
                "pebble_scale_m": Num(0.006, 0.04, log=True),
                "pebble_amount": Num(0.0, 0.7),
                "clump_scale_m": Num(0.01, 0.08, log=True),
                "bump_strength": Num(0.2, 1.0),
                "roughness": Num(0.75, 1.0),
                "moisture": Num(0.0, 0.6),
                "offset": OFFSET,
            },
            "soil, sand and gravel: clumps and pebbles, dry or wet",
        ),
    ]
}


# ----------------------------------------------------------------------------- sampling


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _round(value):
    if isinstance(value, float):
        return round(value, 5)
    return value


def _vector(fam: Family, params: dict) -> np.ndarray:
    return np.array([fam.params[k].normalise(params[k]) for k in fam.numeric()])


@functools.lru_cache(maxsize=4096)
def _variant(family: str, variant: int) -> tuple[dict, ...]:
    """All seeds of one variant: the variant's draw and its perturbed siblings.

    A sibling is redrawn (from the same deterministic stream) until it is at least
    ``2 * MIN_DISTANCE`` from every earlier seed of the variant, so near-duplicates are
    still measurably different materials.
    """
    fam = FAMILIES[family]
    base_rng = _rng("phieat-family", family, variant)
    base = {name: spec.sample(base_rng) for name, spec in fam.params.items()}
    seeds = [base]
    for k in range(1, SEEDS_PER_VARIANT):
        rng = _rng("phieat-seed", family, variant * SEEDS_PER_VARIANT + k)
        for _attempt in range(50):
            params = {}
            for name, spec in fam.params.items():
                if isinstance(spec, Num):
                    params[name] = spec.perturb(base[name], rng)
                elif isinstance(spec, Color):
                    # Siblings keep the variant's colour but shift its brightness a little.
                    shade = float(rng.uniform(0.9, 1.1))
                    params[name] = [round(min(1.0, c * shade), 4) for c in base[name]]
                else:
                    params[name] = base[name]
            vec = _vector(fam, params)
            far = all(
                np.sqrt(((vec - _vector(fam, other)) ** 2).mean()) >= 2 * MIN_DISTANCE
                for other in seeds
            )
            if far:
                break
        seeds.append(params)
    return tuple({name: _round(value) for name, value in p.items()} for p in seeds)


def sample_params(family: str, seed: int) -> dict:
    """The parameters of ``(family, seed)``: deterministic, independent of other families."""
    if family not in FAMILIES:
        raise KeyError(f"unknown material family {family!r}; known: {sorted(FAMILIES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    params = _variant(family, seed // SEEDS_PER_VARIANT)[seed % SEEDS_PER_VARIANT]
    return {k: (list(v) if isinstance(v, list) else v) for k, v in params.items()}


def material_id(family: str, seed: int, params: dict | None = None) -> str:
    params = sample_params(family, seed) if params is None else params
    return f"{family}-{seed:04d}-{hash_obj(params, 6)}"


def material_entry(family: str, seed: int) -> dict:
    """A catalog entry for ``(family, seed)``; ``split`` is filled in by the split step."""
    params = sample_params(family, seed)
    fam = FAMILIES[family]
    return {
        "id": material_id(family, seed, params),
        "category": fam.category,
        "source": "procedural",
        "family": family,
        "seed": seed,
        "params": params,
        "group": f"{family}-v{seed // SEEDS_PER_VARIANT:04d}",
        "licence": LICENCE,
        "split": "train",
    }


def generate(
    per_family: int = DEFAULT_PER_FAMILY, families: Iterable[str] | None = None
) -> list[dict]:
    """The built-in procedural catalog: ``per_family`` seeds of every family, sorted by id."""
    names = list(families) if families is not None else list(FAMILIES)
    entries = [material_entry(f, s) for f in names for s in range(per_family)]
    return sorted(entries, key=lambda e: e["id"])


# ----------------------------------------------------------------------------- diversity


def parameter_vector(entry: dict) -> np.ndarray:
    """Non-colour numeric parameters of an entry, each normalised to [0, 1] by its range."""
    return _vector(FAMILIES[entry["family"]], entry["params"])


def diversity_report(
    entries: Iterable[dict], min_distance: float = MIN_DISTANCE, min_spread: float = 0.1
) -> dict:
    """Check variety per family: every non-colour numeric parameter must spread (std of
    its normalised value >= ``min_spread``) and no two materials may be closer than
    ``min_distance`` (RMS distance of normalised non-colour parameters).

    Returns ``{"families": {name: {...}}, "problems": [text, ...]}``; no problems = passes.
    """
    by_family: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("source") == "procedural" and entry.get("family") in FAMILIES:
            by_family.setdefault(entry["family"], []).append(entry)
    report: dict = {"families": {}, "problems": []}
    for name, items in sorted(by_family.items()):
        vecs = np.stack([parameter_vector(e) for e in items])
        keys = FAMILIES[name].numeric()
        spread = vecs.std(axis=0) if len(items) > 1 else np.zeros(len(keys))
        info = {"materials": len(items), "parameters": len(keys)}
        if len(items) > 1:
            diff = vecs[:, None, :] - vecs[None, :, :]
            dist = np.sqrt((diff**2).mean(-1))
            np.fill_diagonal(dist, np.inf)
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
            info["min_distance"] = round(float(dist[i, j]), 4)
            info["closest_pair"] = [items[i]["id"], items[j]["id"]]
            if dist[i, j] < min_distance:
                report["problems"].append(
                    f"family {name}: materials {items[i]['id']} and {items[j]['id']} are only "
                    f"{dist[i, j]:.4f} apart (minimum {min_distance})"
                )
            flat = [k for k, s in zip(keys, spread, strict=True) if s < min_spread]
            info["min_spread"] = round(float(spread.min()), 4)
            # Spread is only meaningful over several independent variants.
            if len({e.get("group") for e in items}) >= 8 and flat:
                report["problems"].append(
                    f"family {name}: non-colour parameters {flat} barely vary (std < {min_spread})"
                )
        report["families"][name] = info
    return report


def families_table() -> list[tuple[str, str, str]]:
    """(family, category, description) rows for summaries and docs."""
    return [(f.name, f.category, f.description) for f in FAMILIES.values()]
