"""Metal families: brushed, polished and oxidised bare metal.

``METALS`` is the shared palette of metal colours (steel, aluminium, copper, brass, gold,
bronze ...), also used by the painted families in ``assets.families.synthetic``.
"""

from __future__ import annotations

from assets.families.params import OFFSET, ROT, Choice, Color, Family, Num, hex_palette

METALS = hex_palette("c8c8c8", "d6d7d9", "b4b5b8", "f2c9a0", "e8b25e", "d9a066", "b5a38c", "9e9e9e")

METAL_BRUSHED = Family(
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
)

METAL_POLISHED = Family(
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
)

METAL_OXIDISED = Family(
    "metal-oxidised",
    "metal",
    {
        "base_color": Color(METALS, 0.01, 0.1, 0.1),
        "oxide_color": Color(
            hex_palette("8a3e1c", "6e3216", "a4582a", "4e8a72", "5ca088", "3c2a20", "7a6a5a"),
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
)
