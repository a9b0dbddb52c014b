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
        arrays = _read_contiguous(data, header, offsets, part, multipart)
        if arrays is None:
            arrays = _read_rows(data, header, offsets, part, multipart, path)
        out.update(arrays)
    return out


def _read_contiguous(
    data: bytes, header: dict, offsets: tuple[int, ...], part: int, multipart: bool
) -> dict[str, np.ndarray] | None:
    """One part's channels in one read when its scanlines lie back to back, top to bottom
    (how Blender writes them); ``None`` for any other layout."""
    x0, y0, x1, y1 = header["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    channels = header["channels"]
    fields: list[tuple[str, str] | tuple[str, np.dtype, tuple[int]]] = []
    if multipart:
        fields.append(("part", "<i4"))
    fields += [("y", "<i4"), ("size", "<i4")]
    fields += [(f"c{i}", dtype, (width,)) for i, (_, dtype) in enumerate(channels)]
    record = np.dtype(fields)
    if len(offsets) != height or not offsets:
        return None
    stride = np.diff(np.asarray(offsets, dtype=np.int64))
    if stride.size and not (stride == record.itemsize).all():
        return None
    if offsets[0] + height * record.itemsize > len(data):
        return None
    rows = np.frombuffer(data, dtype=record, count=height, offset=offsets[0])
    expected_y = np.arange(y0, y0 + height, dtype=np.int32)
    if not np.array_equal(rows["y"], expected_y):
        return None
    if (rows["size"] != record.itemsize - (12 if multipart else 8)).any():
        return None
    if multipart and (rows["part"] != part).any():
        return None
    return {name: rows[f"c{i}"].astype(np.float32) for i, (name, _) in enumerate(channels)}


def _read_rows(
    data: bytes,
    header: dict,
    offsets: tuple[int, ...],
    part: int,
    multipart: bool,
    path: Path,
) -> dict[str, np.ndarray]:
    """One part's channels scanline by scanline, in whatever order the offset table says."""
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
    return arrays
