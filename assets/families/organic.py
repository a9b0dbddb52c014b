"""Wood, textile, leather and ground (soil, sand, gravel) families."""

from __future__ import annotations

from assets.families.params import OFFSET, ROT, Color, Family, Num, hex_palette

WOOD = Family(
    "wood",
    "wood",
    {
        "base_color": Color(
            hex_palette("c8955a", "d9b07c", "a06a3c", "7a4a28", "e0c49a", "5b3a24", "b8743e"),
            0.02,
            0.15,
            0.2,
        ),
        "dark_color": Color(
            hex_palette("7a4a26", "5c3418", "8a5a30", "3d2412", "9c6c3c"), 0.02, 0.15, 0.2
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
)

FABRIC = Family(
    "fabric",
    "fabric",
    {
        "base_color": Color(
            hex_palette(
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
            hex_palette("3a4a6a", "d8d0c0", "202020", "8a8a8a", "c8a040"), 0.03, 0.2, 0.2
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
)

LEATHER = Family(
    "leather",
    "leather",
    {
        "base_color": Color(
            hex_palette(
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
)

GROUND = Family(
    "ground",
    "ground",
    {
        "base_color": Color(
            hex_palette("6a4a30", "8a7050", "4a3a2a", "c8b088", "5a5040", "7a5a3a"), 0.02, 0.2, 0.2
        ),
        "stone_color": Color(hex_palette("8a8680", "a09888", "5a5450", "c0b8a8"), 0.02, 0.15, 0.2),
        "pebble_scale_m": Num(0.006, 0.04, log=True),
        "pebble_amount": Num(0.0, 0.7),
        "clump_scale_m": Num(0.01, 0.08, log=True),
        "bump_strength": Num(0.2, 1.0),
        "roughness": Num(0.75, 1.0),
        "moisture": Num(0.0, 0.6),
        "offset": OFFSET,
    },
    "soil, sand and gravel: clumps and pebbles, dry or wet",
)
