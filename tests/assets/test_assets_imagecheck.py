"""Asset images are decoded, not sniffed: truncated or fake HDR, EXR and PNG files are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_fakes import tiny_exr, tiny_hdr
from PIL import Image

from assets.imagecheck import ImageCheckError, check_exr, check_hdr, check_image


def test_valid_hdr_files_pass_flat_and_run_length_encoded():
    assert check_hdr(tiny_hdr(3, 2)) == (3, 2)
    assert check_hdr(tiny_hdr(300, 4, rle=True)) == (300, 4)
    # Old-style run markers (1, 1, 1, n) repeat the previous pixel n times.
    header = b"#?RADIANCE\n\n-Y 1 +X 5\n"
    assert check_hdr(header + bytes([9, 9, 9, 128]) + bytes([1, 1, 1, 4])) == (5, 1)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"hello, not an image", "magic"),
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n", "header never ends"),
        (b"#?RADIANCE\n\nY 2 X 2\n", "resolution"),
        (b"#?RADIANCE\nFORMAT=16-bit\n\n-Y 1 +X 1\n\0\0\0\0", "pixel format"),
        (tiny_hdr(300, 4, rle=True)[:-3], "truncated"),
        (tiny_hdr(3, 2)[:-1], "truncated"),
        (tiny_hdr(300, 1, rle=True).replace(bytes([2, 2, 1, 44]), bytes([2, 2, 1, 40])), "width"),
    ],
)
def test_broken_hdr_files_are_named(data, reason):
    with pytest.raises(ImageCheckError, match=reason):
        check_hdr(data)


def test_exr_chunks_must_lie_inside_the_file():
    good = tiny_exr(5, 3)
    assert check_exr(good) == (5, 3)
    with pytest.raises(ImageCheckError, match="truncated"):
        check_exr(good[:-1])
    with pytest.raises(ImageCheckError, match="magic"):
        check_exr(b"#?RADIANCE\n")
    with pytest.raises(ImageCheckError, match="runs past the file"):
        check_exr(good[:40])


def test_check_image_reports_the_file_and_the_reason(tmp_path: Path):
    (tmp_path / "a.hdr").write_text("a text file named .hdr\n")
    assert "a.hdr is not a Radiance HDR file (no '#?' magic" in check_image(tmp_path / "a.hdr")
    png = tmp_path / "b.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(png)
    assert check_image(png) is None
    png.write_bytes(png.read_bytes()[:-30])  # the last rows of pixels are gone
    assert "is not a readable image" in check_image(png)
    assert "does not exist" in check_image(tmp_path / "missing.exr")
