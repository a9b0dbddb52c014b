"""Contact sheet of a dataset: one row per material sample, its V views side by side.

    phieat-render preview out/tiny                       # first shard of the latest version
    phieat-render preview out/tiny --shard 3 --rows 16 -o sheet.png

The sheet is a PNG (written to a temporary name, then renamed) with the sample key at the
start of each row, so a glance shows whether views of one material differ in shape, light
and pose while the material stays the same.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from phieat.schema import IMAGE_FORMATS, INDEX_NAME, SchemaError
from render import storage
from render.build import resolve_dataset_url
from render.verify import iter_tar_samples

LABEL_WIDTH = 200


def _thumb(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I;16", "I", "F"):
            img = img.point(lambda v: v / 256).convert("L")
        return img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def contact_sheet(url: str, shard: int = 0, rows: int = 12, thumb: int = 128) -> Image.Image:
    """Build the sheet for shard number ``shard`` of the dataset at ``url``."""
    version_url = resolve_dataset_url(url)
    index = storage.read_json(storage.join(version_url, INDEX_NAME))
    if not index["shards"]:
        raise SchemaError(f"{version_url}/{INDEX_NAME} lists no shards: nothing to preview")
    if not 0 <= shard < len(index["shards"]):
        raise SchemaError(
            f"--shard {shard} is out of range: the index lists {len(index['shards'])} shards"
        )
    name = index["shards"][shard]["name"]
    views = index["views_per_sample"]
    ext = IMAGE_FORMATS[index["image_format"]]
    if ext == "exr":
        raise SchemaError("preview shows 8/16-bit images; this dataset stores linear EXR views")
    samples = []
    for key, members in iter_tar_samples(storage.join(version_url, name)):
        samples.append((key, [members[f"view{v}.{ext}"] for v in range(views)]))
        if len(samples) >= rows:
            break
    pad = 4
    width = LABEL_WIDTH + views * (thumb + pad) + pad
    height = max(1, len(samples)) * (thumb + pad) + pad + 20
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), f"{index['dataset']} {index['version']} {name}", fill=(230, 230, 230))
    for r, (key, images) in enumerate(samples):
        y = 20 + pad + r * (thumb + pad)
        draw.text((pad, y + thumb // 2 - 6), key[: LABEL_WIDTH // 6], fill=(230, 230, 230))
        for v, data in enumerate(images):
            sheet.paste(_thumb(data, thumb), (LABEL_WIDTH + pad + v * (thumb + pad), y))
    return sheet


def write_preview(url: str, out: str, shard: int = 0, rows: int = 12, thumb: int = 128) -> str:
    """Write the contact sheet PNG to ``out`` (path or URL) atomically; returns ``out``."""
    sheet = contact_sheet(url, shard=shard, rows=rows, thumb=thumb)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_bytes(out, buf.getvalue())
    return out
