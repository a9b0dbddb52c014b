"""Decode-level checks of asset images without Blender: is this file the image it claims to be?

``check_image(path)`` returns ``None`` for a readable image and the reason otherwise. It reads
the whole file, so a truncated or damaged image is caught here, by ``phieat-render assets
validate``, rather than by a render that shows Blender's magenta missing-texture colour:

* Radiance ``.hdr``: the header (``#?`` magic, ``FORMAT``, resolution line) and every
  scanline, flat or run-length encoded, must be complete and consistent with the width.
* OpenEXR ``.exr``: the header (channels, compression, data window) and the chunk table of
  a single-part scanline file, whose every chunk must lie inside the file (tiled, deep and
  multi-part files: header only). Pixel data are not decompressed.
* Everything else (PNG, JPEG, TIFF, ...): a full decode with Pillow.

    from assets.imagecheck import check_image
    check_image(Path("maps/oak_basecolor.png"))   # None, or "... is not a readable image (...)"
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

EXR_MAGIC = b"\x76\x2f\x31\x01"
# Scanlines per chunk of each OpenEXR compression (NONE, RLE, ZIPS, ZIP, PIZ, PXR24, B44,
# B44A, DWAA, DWAB, HTJ2K).
EXR_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 32, 9: 256, 10: 256}
_EXR_TILED, _EXR_DEEP, _EXR_MULTIPART = 0x200, 0x800, 0x1000
_HDR_RESOLUTION = re.compile(rb"([-+])([XY]) (\d+) ([-+])([XY]) (\d+)")


class ImageCheckError(ValueError):
    """The bytes are not a complete image of the format the name says."""


def check_image(path: Path) -> str | None:
    """``None`` if ``path`` is a readable image, else the reason it is not."""
    path = Path(path)
    if not path.is_file():
        return f"file {path} does not exist"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    suffix = path.suffix.lower()
    try:
        if suffix == ".hdr":
            check_hdr(data)
        elif suffix == ".exr":
            check_exr(data)
        else:
            _check_pillow(data)
    except ImageCheckError as exc:
        kind = {".hdr": "a Radiance HDR file", ".exr": "an OpenEXR file"}
        return f"{path} is not {kind.get(suffix, 'a readable image')} ({exc})"
    return None


def _check_pillow(data: bytes) -> None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageCheckError(str(exc) or type(exc).__name__) from exc


# ----------------------------------------------------------------------------- Radiance HDR


def check_hdr(data: bytes) -> tuple[int, int]:
    """Walk a Radiance HDR file to its last scanline; returns ``(width, height)``."""
    if not data.startswith(b"#?"):
        raise ImageCheckError("no '#?' magic at the start: not a Radiance file")
    end = data.find(b"\n\n")
    if end < 0:
        raise ImageCheckError("the header never ends (no blank line)")
    for line in data[:end].split(b"\n")[1:]:
        if line.startswith(b"FORMAT=") and line[7:].strip() not in (
            b"32-bit_rle_rgbe",
            b"32-bit_rle_xyze",
        ):
            raise ImageCheckError(f"unknown pixel format {line[7:].decode('latin-1')!r}")
    pos = end + 2
    eol = data.find(b"\n", pos)
    match = _HDR_RESOLUTION.fullmatch(data[pos:eol].strip()) if eol > 0 else None
    if match is None or match.group(2) == match.group(5):
        raise ImageCheckError("no valid resolution line such as '-Y 512 +X 1024'")
    first, second = int(match.group(3)), int(match.group(6))
    if not first or not second:
        raise ImageCheckError("the resolution is zero")
    pos = eol + 1
    for row in range(first):
        pos = _hdr_scanline(data, pos, second, row)
    return (second, first) if match.group(2) == b"Y" else (first, second)


def _hdr_scanline(data: bytes, pos: int, width: int, row: int) -> int:
    """The position after scanline ``row`` starting at ``pos``."""
    head = data[pos : pos + 4]
    if len(head) < 4:
        raise ImageCheckError(f"truncated at scanline {row}")
    if 8 <= width < 0x8000 and head[0] == 2 and head[1] == 2 and not head[2] & 0x80:
        if (head[2] << 8 | head[3]) != width:
            raise ImageCheckError(f"scanline {row} says width {head[2] << 8 | head[3]}")
        pos += 4
        for channel in range(4):
            filled = 0
            while filled < width:
                if pos >= len(data):
                    raise ImageCheckError(f"truncated in scanline {row}")
                count = data[pos]
                if count > 128:
                    count -= 128
                    pos += 2
                else:
                    if count == 0:
                        raise ImageCheckError(f"empty run in scanline {row}")
                    pos += 1 + count
                filled += count
            if pos > len(data):
                raise ImageCheckError(f"truncated in scanline {row}")
            if filled != width:
                raise ImageCheckError(f"scanline {row} channel {channel} overruns its width")
        return pos
    # Flat pixels, possibly with old-style repeat markers (1, 1, 1, n).
    flat = np.frombuffer(data, np.uint8, count=min(4 * width, len(data) - pos), offset=pos)
    if len(flat) == 4 * width:
        pixels = flat.reshape(-1, 4)
        if not ((pixels[:, 0] == 1) & (pixels[:, 1] == 1) & (pixels[:, 2] == 1)).any():
            return pos + 4 * width
    filled, shift = 0, 0
    while filled < width:
        pixel = data[pos : pos + 4]
        if len(pixel) < 4:
            raise ImageCheckError(f"truncated in scanline {row}")
        pos += 4
        if pixel[:3] == b"\x01\x01\x01" and filled:
            filled += pixel[3] << shift
            shift += 8
        else:
            filled += 1
            shift = 0
    if filled != width:
        raise ImageCheckError(f"scanline {row} overruns its width")
    return pos


# ----------------------------------------------------------------------------- OpenEXR


def _cstr(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\x00", pos)
    if end < 0 or end - pos > 255:
        raise ImageCheckError("damaged header (an attribute name never ends)")
    return data[pos:end], end + 1


def check_exr(data: bytes) -> tuple[int, int]:
    """Check an OpenEXR header and (single-part scanline files) its chunk table; returns
    ``(width, height)`` of the data window."""
    if data[:4] != EXR_MAGIC:
        raise ImageCheckError("no OpenEXR magic number at the start")
    if len(data) < 8:
        raise ImageCheckError("truncated header")
    flags = struct.unpack_from("<I", data, 4)[0]
    pos, attrs = 8, {}
    while True:
        if pos >= len(data):
            raise ImageCheckError("truncated header")
        if data[pos] == 0:
            pos += 1
            break
        name, pos = _cstr(data, pos)
        kind, pos = _cstr(data, pos)
        if pos + 4 > len(data):
            raise ImageCheckError("truncated header")
        size = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        if size < 0 or pos + size > len(data):
            raise ImageCheckError(f"attribute {name.decode('latin-1')!r} runs past the file")
        attrs[name] = (kind, data[pos : pos + size])
        pos += size
    for required in (b"channels", b"compression", b"dataWindow"):
        if required not in attrs:
            raise ImageCheckError(f"the header has no {required.decode()!r}")
    x0, y0, x1, y1 = struct.unpack("<4i", attrs[b"dataWindow"][1][:16].ljust(16, b"\0"))
    width, height = x1 - x0 + 1, y1 - y0 + 1
    if width < 1 or height < 1:
        raise ImageCheckError(f"empty data window {width} x {height}")
    if flags & (_EXR_TILED | _EXR_DEEP | _EXR_MULTIPART):
        return width, height
    compression = attrs[b"compression"][1][:1]
    lines = EXR_LINES_PER_CHUNK.get(compression[0] if compression else -1)
    if lines is None:
        raise ImageCheckError(f"unknown compression {compression!r}")
    chunks = -(-height // lines)
    if pos + 8 * chunks > len(data):
        raise ImageCheckError("truncated chunk table")
    offsets = np.frombuffer(data, "<u8", count=chunks, offset=pos)
    for i, offset in enumerate(offsets.tolist()):
        if offset + 8 > len(data):
            raise ImageCheckError(f"chunk {i} of {chunks} lies past the end (truncated file)")
        size = struct.unpack_from("<i", data, offset + 4)[0]
        if size < 0 or offset + 8 + size > len(data):
            raise ImageCheckError(f"chunk {i} of {chunks} is cut short (truncated file)")
    return width, height
