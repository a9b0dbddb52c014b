"""The smallest valid Radiance HDR and OpenEXR files, written by hand for the asset tests."""

from __future__ import annotations

import struct


def tiny_hdr(width: int = 2, height: int = 1, rle: bool = False) -> bytes:
    """An RGBE file of mid-grey pixels: flat, or run-length encoded (needs 8 <= width)."""
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    if not rle:
        return header + bytes([128, 128, 128, 128]) * (width * height)
    line = bytes([2, 2, width >> 8, width & 0xFF])
    for value in (128, 128, 128, 129):
        left = width
        while left:
            run = min(left, 127)
            if run > 2:
                line += bytes([128 + run, value])  # a run of one value
            else:
                line += bytes([run]) + bytes([value]) * run  # literal bytes
            left -= run
    return header + line * height


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def tiny_exr(width: int = 2, height: int = 1) -> bytes:
    """An uncompressed scanline file with one HALF channel ``Y``."""
    channels = b"Y\0" + struct.pack("<i", 1) + b"\0\0\0\0" + struct.pack("<ii", 1, 1) + b"\0"
    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    header = (
        b"\x76\x2f\x31\x01"
        + struct.pack("<I", 2)
        + _attr("channels", "chlist", channels)
        + _attr("compression", "compression", b"\0")
        + _attr("dataWindow", "box2i", window)
        + _attr("displayWindow", "box2i", window)
        + _attr("lineOrder", "lineOrder", b"\0")
        + _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
        + _attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
        + _attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
        + b"\0"
    )
    table_end = len(header) + 8 * height
    rows, offsets = b"", []
    for y in range(height):
        pixels = struct.pack("<e", 0.5) * width
        offsets.append(table_end + len(rows))
        rows += struct.pack("<ii", y, len(pixels)) + pixels
    return header + b"".join(struct.pack("<Q", o) for o in offsets) + rows
