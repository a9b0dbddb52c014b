"""Minimal reader for the uncompressed float OpenEXR files Blender writes for render passes.

``BlenderSession`` saves the render result as a multi-layer EXR with ``exr_codec='NONE'`` and
32-bit floats, then reads the passes back with :func:`read_passes`. Only that narrow case
(single- or multi-part scanline files, no compression, HALF/FLOAT/UINT channels) is supported;
anything else raises ``ValueError`` naming the file and the unsupported feature.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = 20000630
_PIXEL_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _read_cstr(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _parse_channels(blob: bytes) -> list[tuple[str, np.dtype]]:
    channels = []
    pos = 0
    while pos < len(blob) and blob[pos] != 0:
        name, pos = _read_cstr(blob, pos)
        pixel_type = struct.unpack_from("<i", blob, pos)[0]
        pos += 16  # pixel type, pLinear + 3 reserved bytes, xSampling, ySampling
        channels.append((name, _PIXEL_TYPES[pixel_type]))
    return channels


def _parse_header(data: bytes, pos: int) -> tuple[dict, int]:
    header: dict = {}
    while data[pos] != 0:
        name, pos = _read_cstr(data, pos)
        kind, pos = _read_cstr(data, pos)
        size = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        value = data[pos : pos + size]
        pos += size
        if kind == "chlist":
            header[name] = _parse_channels(value)
        elif kind == "box2i":
            header[name] = struct.unpack("<4i", value)
        elif kind in ("compression", "lineOrder"):
            header[name] = value[0]
        elif kind == "int":
            header[name] = struct.unpack("<i", value)[0]
        elif kind == "string":
            header[name] = value.decode("latin-1")
    return header, pos + 1


def read_passes(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{channel name: float32 array (H, W)}`` for every channel of an EXR file.

    Rows are top to bottom (EXR order). Channel names keep Blender's layer prefix, e.g.
    ``ViewLayer.Combined.R`` or ``ViewLayer.Material Index.X``.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    flags = data[5]
    if flags & 0x02:
        raise ValueError(f"{path}: tiled EXR files are not supported")
    multipart = bool(flags & 0x10)
    pos = 8
    headers = []
    while True:
        header, pos = _parse_header(data, pos)
        headers.append(header)
        if not multipart or data[pos] == 0:
            break
    if multipart:
        pos += 1
    tables = []
    for header in headers:
        if header.get("compression", 0) != 0:
            raise ValueError(
                f"{path}: compressed EXR (code {header['compression']}); write with exr_codec='NONE'"
            )
        x0, y0, x1, y1 = header["dataWindow"]
        count = header.get("chunkCount", y1 - y0 + 1)
        tables.append(struct.unpack_from(f"<{count}Q", data, pos))
        pos += 8 * count
    out: dict[str, np.ndarray] = {}
    for part, (header, offsets) in enumerate(zip(headers, tables, strict=True)):
        x0, y0, x1, y1 = header["dataWindow"]
        width, height = x1 - x0 + 1, y1 - y0 + 1
        channels = header["channels"]
        arrays = {name: np.zeros((height, width), np.float32) for name, _ in channels}
        for offset in offsets:
            cursor = offset
            if multipart:
                chunk_part = struct.unpack_from("<i", data, cursor)[0]
                if chunk_part != part:
                    raise ValueError(f"{path}: chunk of part {chunk_part} in part {part}'s table")
                cursor += 4
            y, _size = struct.unpack_from("<ii", data, cursor)
            cursor += 8
            row = y - y0
            for name, dtype in channels:
                values = np.frombuffer(data, dtype=dtype, count=width, offset=cursor)
                arrays[name][row] = values.astype(np.float32)
                cursor += width * dtype.itemsize
        out.update(arrays)
    return out
