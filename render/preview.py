"""Contact sheet of a dataset: one row per material sample, its V views side by side.

    phieat-render preview out/tiny -o out/tiny-preview.png   # samples from across the shards
    phieat-render preview out/tiny --shard 3 --rows 16 -o out/tiny-shard3.png

The sheet is a PNG (written to a temporary name, then renamed) with the sample key at the
start of each row, so a glance shows whether views of one material differ in shape, light
and pose while the material stays the same. Without a shard number the rows come from shards
spread evenly over the index, so a sheet shows many materials, not the first shard's few.
Without an output path the sheet goes to ``out/<dataset>-preview.png`` (``out/`` is where
the project's outputs live and what git ignores).
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from phieat.schema import IMAGE_FORMATS, INDEX_NAME, SchemaError, validate_index, validate_sample
from render import storage
from render.build import resolve_dataset_url
from render.verify import iter_tar_samples, shard_name_problem

LABEL_WIDTH = 200
DEFAULT_DIR = "out"


def default_output(url: str) -> str:
    """Where a sheet goes when no path is given: ``out/<dataset>-preview.png``."""
    version_url = resolve_dataset_url(url)
    index = storage.read_json(storage.join(version_url, INDEX_NAME))
    name = index.get("dataset", "dataset") if isinstance(index, dict) else "dataset"
    return f"{DEFAULT_DIR}/{name}-preview.png"


def _thumb(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("I;16", "I", "F"):
            img = img.point(lambda v: v / 256).convert("L")
        return img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def _spread(count: int, rows: int) -> list[int]:
    """Up to ``rows`` shard numbers spread evenly over ``count`` shards (first and last in)."""
    if count <= rows:
        return list(range(count))
    if rows == 1:
        return [0]
    return sorted({round(i * (count - 1) / (rows - 1)) for i in range(rows)})


def _read_samples(
    version_url: str, names: list[str], rows: int, views: int, fmt: str, url: str
) -> list[tuple[str, list[bytes]]]:
    """``(key, [view bytes])`` of up to ``rows`` samples, ``ceil(rows / len(names))`` from
    each shard in turn; a damaged sample is a ``SchemaError`` naming shard and key."""
    ext = IMAGE_FORMATS[fmt]
    per_shard = max(1, math.ceil(rows / max(1, len(names))))
    samples: list[tuple[str, list[bytes]]] = []
    for name in names:
        taken = 0
        for key, members in iter_tar_samples(storage.join(version_url, name)):
            if taken >= per_shard or len(samples) >= rows:
                break
            try:
                validate_sample({"__key__": key, **members}, image_format=fmt)
                images = [members[f"view{v}.{ext}"] for v in range(views)]
            except (ValueError, KeyError) as exc:  # SchemaError, undecodable text, no view
                reason = f"no member {exc}" if isinstance(exc, KeyError) else str(exc)
                raise SchemaError(
                    f"{name}: sample {key!r} is damaged ({reason}); "
                    f"'phieat-render verify {url}' lists every problem"
                ) from exc
            samples.append((key, images))
            taken += 1
        if len(samples) >= rows:
            break
    return samples


def contact_sheet(
    url: str, shard: int | None = None, rows: int = 12, thumb: int = 128
) -> Image.Image:
    """Build the sheet of the dataset at ``url``: rows from shard number ``shard`` only, or
    (``None``) from shards spread over the whole index."""
    version_url = resolve_dataset_url(url)
    index = storage.read_json(storage.join(version_url, INDEX_NAME))
    validate_index(index, f"{version_url}/{INDEX_NAME}")
    shards = index["shards"]
    if not shards:
        raise SchemaError(f"{version_url}/{INDEX_NAME} lists no shards: nothing to preview")
    for entry in shards:
        refused = shard_name_problem(entry["name"])
        if refused:
            raise SchemaError(f"{version_url}/{INDEX_NAME}: {refused}")
    if shard is not None and not 0 <= shard < len(shards):
        raise SchemaError(f"--shard {shard} is out of range: the index lists {len(shards)} shards")
    if rows < 1:
        raise SchemaError(f"--rows must be >= 1, got {rows}")
    views = index["views_per_sample"]
    if IMAGE_FORMATS[index["image_format"]] == "exr":
        raise SchemaError("preview shows 8/16-bit images; this dataset stores linear EXR views")
    chosen = [shard] if shard is not None else _spread(len(shards), rows)
    names = [shards[i]["name"] for i in chosen]
    samples = _read_samples(version_url, names, rows, views, index["image_format"], url)
    pad = 4
    width = LABEL_WIDTH + views * (thumb + pad) + pad
    height = max(1, len(samples)) * (thumb + pad) + pad + 20
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    where = names[0] if len(names) == 1 else f"{len(names)} of {len(shards)} shards"
    draw.text((pad, 4), f"{index['dataset']} {index['version']} {where}", fill=(230, 230, 230))
    for r, (key, images) in enumerate(samples):
        y = 20 + pad + r * (thumb + pad)
        draw.text((pad, y + thumb // 2 - 6), key[: LABEL_WIDTH // 6], fill=(230, 230, 230))
        for v, data in enumerate(images):
            try:
                image = _thumb(data, thumb)
            except (OSError, ValueError, SyntaxError) as exc:
                raise SchemaError(f"sample {key!r}: view {v} cannot be decoded ({exc})") from exc
            sheet.paste(image, (LABEL_WIDTH + pad + v * (thumb + pad), y))
    return sheet


def write_preview(
    url: str,
    out: str | None = None,
    shard: int | None = None,
    rows: int = 12,
    thumb: int = 128,
) -> str:
    """Write the contact sheet PNG to ``out`` (path or URL; default ``out/<dataset>-preview.png``)
    atomically; returns the path written."""
    sheet = contact_sheet(url, shard=shard, rows=rows, thumb=thumb)
    out = out or default_output(url)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    storage.write_bytes(out, buf.getvalue())
    return out
