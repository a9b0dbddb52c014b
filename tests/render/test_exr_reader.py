"""The pass reader of ``render.blender.exr``: the one-read path for scanlines written back to
back and the row-by-row path for any other order give the same arrays (no bpy needed)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from render.blender import exr

TYPES = {np.dtype("<u4"): 0, np.dtype("<f2"): 1, np.dtype("<f4"): 2}


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _header(channels: dict[str, np.ndarray], width: int, height: int, part: str | None) -> bytes:
    chlist = b"".join(
        name.encode()
        + b"\0"
        + struct.pack("<i", TYPES[a.dtype])
        + b"\0" * 4
        + struct.pack("<ii", 1, 1)
        for name, a in sorted(channels.items())
    )
    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    out = _attr("channels", "chlist", chlist + b"\0")
    out += _attr("compression", "compression", b"\0")
    out += _attr("dataWindow", "box2i", window)
    out += _attr("displayWindow", "box2i", window)
    out += _attr("lineOrder", "lineOrder", b"\0")
    if part is not None:
        out += _attr("name", "string", part.encode())
        out += _attr("chunkCount", "int", struct.pack("<i", height))
    return out + b"\0"


def write_exr(parts: list[dict[str, np.ndarray]], order: list[int] | None = None) -> bytes:
    """Uncompressed scanline EXR; several parts make a multi-part file. ``order``: the order
    the scanlines are stored in (the offset table always lists them top to bottom)."""
    multipart = len(parts) > 1
    height, width = next(iter(parts[0].values())).shape
    flags = 0x10 if multipart else 0
    head = struct.pack("<i", 20000630) + bytes([2, 0, 0, 0])
    head = head[:5] + bytes([flags]) + head[6:]
    headers = b"".join(
        _header(p, width, height, f"part{i}" if multipart else None) for i, p in enumerate(parts)
    )
    if multipart:
        headers += b"\0"
    table_start = len(head) + len(headers)
    chunks_start = table_start + 8 * height * len(parts)
    order = order or list(range(height))
    offsets, body = [], b""
    for part, channels in enumerate(parts):
        rows = {}
        for y in order:
            chunk = b"".join(channels[name][y].tobytes() for name in sorted(channels))
            prefix = struct.pack("<i", part) if multipart else b""
            rows[y] = chunks_start + len(body)
            body += prefix + struct.pack("<ii", y, len(chunk)) + chunk
        offsets += [rows[y] for y in range(height)]
    table = b"".join(struct.pack("<Q", o) for o in offsets)
    return head + headers + table + body


def channels(seed: int, width: int = 5, height: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "ViewLayer.Combined.R": rng.random((height, width)).astype("<f4"),
        "ViewLayer.Combined.A": rng.random((height, width)).astype("<f2"),
        "ViewLayer.Material Index.X": rng.integers(0, 9, (height, width)).astype("<u4"),
    }


def check(read: dict[str, np.ndarray], parts: list[dict[str, np.ndarray]]) -> None:
    expected = {k: v.astype(np.float32) for p in parts for k, v in p.items()}
    assert sorted(read) == sorted(expected)
    for name, values in expected.items():
        assert read[name].dtype == np.float32
        np.testing.assert_array_equal(read[name], values)


@pytest.mark.parametrize("n_parts", [1, 2])
def test_back_to_back_scanlines_read_in_one_go(tmp_path, monkeypatch, n_parts):
    parts = [channels(seed) for seed in range(n_parts)]
    path = tmp_path / "passes.exr"
    path.write_bytes(write_exr(parts))

    def no_rows(*args, **kwargs):
        raise AssertionError("the row-by-row reader ran on a back-to-back file")

    monkeypatch.setattr(exr, "_read_rows", no_rows)
    check(exr.read_passes(path), parts)


@pytest.mark.parametrize("n_parts", [1, 2])
def test_scanlines_stored_out_of_order_fall_back_to_rows(tmp_path, n_parts):
    parts = [channels(seed + 10) for seed in range(n_parts)]
    path = tmp_path / "passes.exr"
    path.write_bytes(write_exr(parts, order=[2, 0, 1]))
    assert exr._read_contiguous(path.read_bytes(), *_first_part(path), n_parts > 1) is None
    check(exr.read_passes(path), parts)


def _first_part(path):
    data = path.read_bytes()
    multipart = bool(data[5] & 0x10)
    header, pos = exr._parse_header(data, 8)
    if multipart:
        while data[pos] != 0:
            _, pos = exr._parse_header(data, pos)
        pos += 1
    height = header["dataWindow"][3] + 1
    n_parts = 2 if multipart else 1
    table = struct.unpack_from(f"<{height * n_parts}Q", data, pos)
    return header, table[:height], 0


def test_a_truncated_file_is_not_read_past_its_end(tmp_path):
    parts = [channels(3)]
    data = write_exr(parts)
    path = tmp_path / "cut.exr"
    path.write_bytes(data[:-7])
    with pytest.raises((ValueError, struct.error)):
        exr.read_passes(path)
