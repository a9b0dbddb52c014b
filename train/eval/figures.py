"""Figures of the evaluation report, drawn with Pillow (no plotting library needed).

Each function takes plain arrays and returns a ``PIL.Image``: ``retrieval_grid`` (query and
top-k, green/red frames for same/other material), ``selection_figure`` (query pixel,
similarity heat-map, thresholded selection), ``pca_figure`` (3 principal components of
patch features as RGB) and ``loss_curves`` (one panel per loss term, one colour per model).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (30, 160, 60)
RED = (210, 40, 40)
BLUE = (40, 90, 220)
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]
THUMB = 112


def _font(size: int = 13) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _thumb(arr: np.ndarray, size: int = THUMB) -> Image.Image:
    return Image.fromarray(np.asarray(arr, np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def wrap_label(text: str, width: int = 17) -> list[str]:
    """Break ``text`` into lines of at most ``width`` characters, after hyphens where it can
    (``painted-metal-0012-3fa9c1`` -> ``painted-metal-``, ``0012-3fa9c1``); nothing is cut.
    """
    parts = [p + "-" for p in text.split("-")]
    parts[-1] = parts[-1][:-1]
    lines: list[str] = []
    for part in parts:
        while len(part) > width:  # one word longer than a line: split it
            if lines and len(lines[-1]) < width:
                room = width - len(lines[-1])
                lines[-1], part = lines[-1] + part[:room], part[room:]
            else:
                lines.append(part[:width])
                part = part[width:]
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        elif part:
            lines.append(part)
    return lines or [""]


# ----------------------------------------------------------------------------- colour maps


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map ``values`` in [0, 1] (any shape) to a perceptually ordered blue-yellow-red ramp,
    ``(..., 3)`` uint8."""
    stops = np.array(
        [
            [0.05, 0.05, 0.35],
            [0.15, 0.35, 0.8],
            [0.2, 0.75, 0.75],
            [0.95, 0.9, 0.25],
            [0.8, 0.1, 0.1],
        ]
    )
    v = np.clip(np.asarray(values, np.float64), 0, 1) * (len(stops) - 1)
    lo = np.floor(v).astype(int).clip(0, len(stops) - 2)
    t = (v - lo)[..., None]
    return ((stops[lo] * (1 - t) + stops[lo + 1] * t) * 255).round().astype(np.uint8)


def pca_rgb(patches: np.ndarray) -> np.ndarray:
    """``(B, h, w, D)`` patch features -> ``(B, h, w, 3)`` uint8: the first three principal
    components (fit jointly over all B images), each stretched to its 2-98 percentiles."""
    b, h, w, d = patches.shape
    x = patches.reshape(-1, d).astype(np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comp = x @ vt[:3].T
    if comp.shape[1] < 3:
        comp = np.pad(comp, ((0, 0), (0, 3 - comp.shape[1])))
    lo, hi = np.percentile(comp, 2, axis=0), np.percentile(comp, 98, axis=0)
    rgb = (comp - lo) / np.maximum(hi - lo, 1e-9)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(b, h, w, 3)


# ----------------------------------------------------------------------------- figures


def _framed(img: Image.Image, colour: tuple[int, int, int], width: int = 5) -> Image.Image:
    out = Image.new("RGB", (img.width + 2 * width, img.height + 2 * width), colour)
    out.paste(img, (width, width))
    return out


def retrieval_grid(
    images: np.ndarray, labels: np.ndarray, correct: np.ndarray, title: str
) -> Image.Image:
    """``images`` ``(Q, 1+K, H, W, 3)``: each row a query then its top-K; ``labels``
    ``(Q, 1+K)`` material ids ('' = empty slot); ``correct`` ``(Q, K)`` bool."""
    q, cols = images.shape[:2]
    font, small = _font(15), _font(12)
    wrapped = [[wrap_label(str(t)) for t in row] for row in labels]
    n_lines = max((len(w) for row in wrapped for w in row), default=1)
    cell_w, cell_h, pad, head = THUMB + 10, THUMB + 10 + 4 + 14 * n_lines, 8, 50
    gap = 16  # between the query column and the results
    width = pad * 2 + cols * (cell_w + 4) + gap
    canvas = Image.new("RGB", (width, head + q * (cell_h + 6) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 6), title, fill="black", font=font)
    legend = "query (blue)  |  top-5 by cosine similarity: green = same material, red = different"
    draw.text((pad, 26), legend, fill=(70, 70, 70), font=small)
    for r in range(q):
        y = head + r * (cell_h + 6)
        for c in range(cols):
            if not labels[r, c]:
                continue
            x = pad + c * (cell_w + 4) + (gap if c else 0)
            colour = BLUE if c == 0 else (GREEN if correct[r, c - 1] else RED)
            canvas.paste(_framed(_thumb(images[r, c]), colour), (x, y))
            for k, line in enumerate(wrapped[r][c]):
                draw.text((x + 2, y + THUMB + 11 + 14 * k), line, fill="black", font=small)
    return canvas


def selection_figure(
    images: np.ndarray, queries: np.ndarray, sims: np.ndarray, threshold: float, title: str
) -> Image.Image:
    """Rows of (image with the query pixel, similarity heat-map over the image, selection).

    ``images`` ``(S, H, W, 3)``; ``queries`` ``(S, 2)`` (y, x); ``sims`` ``(S, H, W)``."""
    s = images.shape[0]
    font, small = _font(15), _font(12)
    size, pad, head = 160, 8, 48
    width = pad + 3 * (size + pad)
    canvas = Image.new("RGB", (width, head + s * (size + pad) + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 6), title, fill="black", font=font)
    columns = ("image + query pixel", "similarity (min..max per map)", f"cos >= {threshold:.2f}")
    for c, text in enumerate(columns):
        draw.text((pad + c * (size + pad), 28), text, fill=(70, 70, 70), font=small)
    for r in range(s):
        y = head + r * (size + pad)
        img = images[r].astype(np.float64)
        scale = size / img.shape[0]
        base = Image.fromarray(images[r]).resize((size, size), Image.Resampling.BILINEAR)
        marked = base.copy()
        d = ImageDraw.Draw(marked)
        qy, qx = (queries[r] + 0.5) * scale
        d.ellipse((qx - 6, qy - 6, qx + 6, qy + 6), outline=(255, 255, 255), width=3)
        d.ellipse((qx - 4, qy - 4, qx + 4, qy + 4), outline=(0, 0, 0), width=2)
        lo, hi = float(sims[r].min()), float(sims[r].max())
        heat = heat_colours((sims[r] - lo) / max(hi - lo, 1e-6)).astype(np.float64)
        overlay = (0.35 * img + 0.65 * heat).round().astype(np.uint8)
        sel = sims[r] >= threshold
        tint = img.copy()
        tint[sel] = 0.5 * img[sel] + 0.5 * np.array(GREEN)
        tint[~sel] *= 0.35
        canvas.paste(marked, (pad, y))
        for c, arr in ((1, overlay), (2, tint.round().astype(np.uint8))):
            canvas.paste(
                Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR),
                (pad + c * (size + pad), y),
            )
    # colour bar for the heat-map
    bar = heat_colours(np.linspace(0, 1, size)[None, :].repeat(8, 0))
    yb = head + s * (size + pad) + 4
    xb = pad + size + pad
    canvas.paste(Image.fromarray(bar), (xb, yb))
    draw.text((xb - 30, yb - 4), "min", fill=(70, 70, 70), font=small)
    draw.text((xb + size + 4, yb - 4), "max", fill=(70, 70, 70), font=small)
    return canvas


def pca_figure(
    images: np.ndarray, patches: np.ndarray, title: str, per_row: int = 3
) -> Image.Image:
    """Pairs of (image, PCA of its patch features as RGB); ``patches`` ``(B, h, w, D)``."""
    b = images.shape[0]
    rgb = pca_rgb(patches)
    font, small = _font(15), _font(12)
    size, pad, head = 128, 8, 48
    pair_w = 2 * size + 4 * pad
    rows = math.ceil(b / per_row)
    canvas = Image.new(
        "RGB", (pad + min(b, per_row) * pair_w, head + rows * (size + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 6), title, fill="black", font=font)
    note = "each pair: view | first 3 principal components of its patch features as RGB"
    draw.text((pad, 28), note, fill=(70, 70, 70), font=small)
    for i in range(b):
        x = pad + (i % per_row) * pair_w
        y = head + (i // per_row) * (size + pad)
        canvas.paste(_thumb(images[i], size), (x, y))
        canvas.paste(_thumb(rgb[i], size), (x + size + pad // 2, y))
    return canvas


# ----------------------------------------------------------------------------- loss curves


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}"
    return f"{round(v, 6):g}"


def loss_curves(runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> Image.Image:
    """Small multiples: one panel per loss term, one colour per model (``runs[model][term]``)."""
    terms = sorted({t for r in runs.values() for t in r}, key=lambda t: (not _is_total(t), t))
    cols = min(3, max(1, len(terms)))
    rows = math.ceil(len(terms) / cols)
    pw, ph, pad = 330, 210, 12
    font, small = _font(15), _font(12)
    width = pad + cols * (pw + pad)
    # Legend entries after the title, wrapping onto further lines so that none is cut off.
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, lx, ly = [], pad + 380, 9
    for name in runs:
        step = 30 + int(measure.textlength(name, font=small)) + 12
        if lx + step > width and lx > pad:
            lx, ly = pad, ly + 18
        entries.append((lx, ly, name))
        lx += step
    head = ly + 31
    canvas = Image.new("RGB", (width, head + rows * (ph + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (pad, 8), "training losses (from each model's metrics.jsonl)", fill="black", font=font
    )
    for i, (lx, ly, name) in enumerate(entries):
        colour = PALETTE[i % len(PALETTE)]
        draw.line((lx, ly + 8, lx + 18, ly + 8), fill=colour, width=3)
        draw.text((lx + 22, ly), name, fill="black", font=small)
    for t, term in enumerate(terms):
        x0 = pad + (t % cols) * (pw + pad)
        y0 = head + (t // cols) * (ph + pad)
        left, right, top, bottom = x0 + 48, x0 + pw - 8, y0 + 22, y0 + ph - 26
        draw.rectangle((x0, y0, x0 + pw, y0 + ph), outline=(210, 210, 210))
        draw.text((x0 + 6, y0 + 4), term, fill="black", font=small)
        pts = [runs[m][term] for m in runs if term in runs[m]]
        xs = np.concatenate([p[0] for p in pts])
        ys = np.concatenate([p[1] for p in pts])
        xmin, xmax = float(xs.min()), float(xs.max())
        ymin, ymax = float(ys.min()), float(ys.max())
        if xmax == xmin:
            xmax = xmin + 1
        if ymax == ymin:
            ymin, ymax = ymin - 0.5, ymax + 0.5
        margin = 0.05 * (ymax - ymin)
        ymin, ymax = ymin - margin, ymax + margin

        def sx(v: float, a=xmin, b=xmax, lo=left, hi=right) -> float:
            return lo + (v - a) / (b - a) * (hi - lo)

        def sy(v: float, a=ymin, b=ymax, lo=bottom, hi=top) -> float:
            return lo - (v - a) / (b - a) * (lo - hi)

        for tick in _nice_ticks(ymin, ymax):
            yy = sy(tick)
            draw.line((left, yy, right, yy), fill=(235, 235, 235))
            draw.text((x0 + 4, yy - 7), _fmt(tick), fill=(90, 90, 90), font=small)
        for tick in _nice_ticks(xmin, xmax):
            xx = sx(tick)
            draw.line((xx, bottom, xx, bottom + 4), fill=(90, 90, 90))
            label = _fmt(tick)
            draw.text(
                (xx - draw.textlength(label, font=small) / 2, bottom + 6),
                label,
                fill=(90, 90, 90),
                font=small,
            )
        draw.line((left, top, left, bottom), fill=(90, 90, 90))
        draw.line((left, bottom, right, bottom), fill=(90, 90, 90))
        draw.text((right - 26, y0 + 4), "step", fill=(120, 120, 120), font=small)
        for i, model in enumerate(runs):
            if term not in runs[model]:
                continue
            steps, vals = runs[model][term]
            steps, vals = _smooth(steps, vals)
            line = [(sx(a), sy(b)) for a, b in zip(steps, vals, strict=True)]
            colour = PALETTE[i % len(PALETTE)]
            if len(line) == 1:
                x, y = line[0]
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
            else:
                draw.line(line, fill=colour, width=2)
    return canvas


def _is_total(term: str) -> bool:
    return "total" in term.lower() or term.lower() in ("loss", "train/loss")


def _smooth(steps: np.ndarray, vals: np.ndarray, max_points: int = 300) -> tuple:
    """Average into at most ``max_points`` bins so long logs stay readable."""
    order = np.argsort(steps, kind="stable")
    steps, vals = steps[order], vals[order]
    if steps.size <= max_points:
        return steps, vals
    bins = np.array_split(np.arange(steps.size), max_points)
    return np.array([steps[b].mean() for b in bins]), np.array([vals[b].mean() for b in bins])
