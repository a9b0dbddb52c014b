"""Man-made finishes: paint over metal, car paint, moulded plastic and rubber."""

from __future__ import annotations

from assets.families.metals import METALS
from assets.families.params import OFFSET, ROT, Choice, Color, Family, Num, hex_palette

PAINTED_METAL = Family(
    "painted-metal",
    "paint",
    {
        "base_color": Color(
            hex_palette(
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
)

CAR_PAINT = Family(
    "car-paint",
    "paint",
    {
        "base_color": Color(
            hex_palette(
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
)

PLASTIC = Family(
    "plastic",
    "plastic",
    {
        "base_color": Color(
            hex_palette(
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
)

RUBBER = Family(
    "rubber",
    "rubber",
    {
        "base_color": Color(
            hex_palette("1c1c1c", "2a2a2a", "3a3030", "202a3a", "3a2018", "4a4a48"), 0.03, 0.2, 0.3
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
)
