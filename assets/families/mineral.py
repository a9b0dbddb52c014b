"""Stone, ceramic and other mineral families: marble, granite, sandstone, brick, glazed
ceramic, terracotta, concrete and plaster."""

from __future__ import annotations

from assets.families.params import OFFSET, ROT, Choice, Color, Family, Num, hex_palette

MARBLE = Family(
    "marble",
    "marble",
    {
        "base_color": Color(
            hex_palette("f2efe8", "e8e4dc", "d8d4cc", "2a2a2c", "3c4a3e", "e6d6c4", "c9b8a8"),
            0.02,
            0.15,
            0.05,
        ),
        "vein_color": Color(
            hex_palette("5a5a5e", "8a8078", "3a3a3c", "d8c8a8", "f0f0ec", "2e3a32"), 0.03, 0.2, 0.2
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
)

CERAMIC = Family(
    "ceramic",
    "ceramic",
    {
        "base_color": Color(
            hex_palette(
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
        "grout_color": Color(hex_palette("d8d4cc", "808080", "404040"), 0.02, 0.1, 0.1),
        "offset": OFFSET,
    },
    "glazed ceramic: glossy, mottled glaze, crackle, optionally as tiles with grout",
)

TERRACOTTA = Family(
    "terracotta",
    "terracotta",
    {
        "base_color": Color(
            hex_palette("b85a32", "c46a3e", "a04a28", "d08050", "8a4028", "c87848"),
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
)

CONCRETE = Family(
    "concrete",
    "concrete",
    {
        "base_color": Color(
            hex_palette("9a9892", "b0aca4", "7a7872", "c4bcb0", "8a8680"), 0.02, 0.15, 0.2
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
)

PLASTER = Family(
    "plaster",
    "plaster",
    {
        "base_color": Color(
            hex_palette("f0ece4", "e8dcc8", "d8d0c0", "e0c8b0", "c8d0c8", "f4f4f0"),
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
)

GRANITE = Family(
    "granite",
    "stone",
    {
        "base_color": Color(
            hex_palette("a09a94", "c8b8a8", "5a5a5e", "b08878", "6a6058", "d0ccc4"), 0.03, 0.2, 0.2
        ),
        "speck_color": Color(
            hex_palette("1a1a1c", "f0ece8", "6a3a30", "3a3a3a", "d8c8b8"), 0.03, 0.2, 0.2
        ),
        "speck_scale_m": Num(0.0007, 0.004, log=True),
        "speck_amount": Num(0.15, 0.6),
        "roughness": Num(0.05, 0.7),
        "sparkle": Num(0.0, 0.5),
        "bump_strength": Num(0.0, 0.4),
        "offset": OFFSET,
    },
    "crystalline stone: speckled grains, polished or flamed, mica sparkle",
)

SANDSTONE = Family(
    "sandstone",
    "stone",
    {
        "base_color": Color(
            hex_palette("d8c098", "c8a878", "b08868", "e0d0b0", "a87858", "9a8a7a"),
            0.02,
            0.15,
            0.15,
        ),
        "band_color": Color(hex_palette("b08058", "8a6848", "c8a070", "706050"), 0.02, 0.15, 0.2),
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
)

BRICK = Family(
    "brick",
    "stone",
    {
        "base_color": Color(
            hex_palette("9a4a32", "b0603c", "7a3a2a", "c89a78", "8a7a6a", "a85a48"),
            0.02,
            0.15,
            0.2,
        ),
        "mortar_color": Color(hex_palette("b8b0a4", "8a847c", "d8d0c4", "5a5650"), 0.02, 0.1, 0.15),
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
)
