"""Pictures for people: training curves and per-token attention maps, drawn with Pillow, and
text histograms."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _panel(
    draw: ImageDraw.ImageDraw,
    box,
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str,
):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    draw.text((x1 - 80, y1 + 4), xlabel, fill=(0, 0, 0))
    pts = [p for s in series.values() for p in s]
    if not pts:
        return
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    xmin, xmax = float(xs.min()), float(xs.max()) or 1.0
    ymin, ymax = float(ys.min()), float(ys.max())
    if ymax - ymin < 1e-9:
        ymax = ymin + 1.0
    draw.text((x0 - 44, y0), f"{ymax:.3g}", fill=(0, 0, 0))
    draw.text((x0 - 44, y1 - 10), f"{ymin:.3g}", fill=(0, 0, 0))
    draw.text((x0, y1 + 4), f"{xmin:.3g}", fill=(0, 0, 0))
    draw.text((x1 - 30, y1 - 12), f"{xmax:.3g}", fill=(0, 0, 0))
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        xy = [
            (
                x0 + (x - xmin) / max(xmax - xmin, 1e-9) * (x1 - x0),
                y1 - (y - ymin) / (ymax - ymin) * (y1 - y0),
            )
            for x, y in s
        ]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy if len(xy) < 40 else []:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((x0 + 8, y0 + 6 + 12 * k), name, fill=color)


def _number(cell: str | None) -> float | None:
    # eval.csv rows of runs from before loss, WER and CER were logged have no such cells
    return float(cell) if cell not in (None, "") else None


def training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot a run's losses (log.csv, and eval.csv's per split), ExpRate per split, and WER and
    CER per split (eval.csv) against CPU-hours to PNG."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    losses: dict[str, list] = {"train loss": []}
    rates: dict[str, list] = {}
    errors: dict[str, list] = {}
    if (run_dir / "log.csv").exists():
        with open(run_dir / "log.csv", newline="") as fh:
            losses["train loss"] = [
                (float(r["cpu_hours"]), float(r["loss"])) for r in csv.DictReader(fh)
            ]
    if (run_dir / "eval.csv").exists():
        with open(run_dir / "eval.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                x, split = float(r["cpu_hours"]), r["split"]
                rates.setdefault(f"{split} ExpRate %", []).append((x, float(r["exprate"])))
                for key, series, name in [
                    ("loss", losses, f"{split} loss"),
                    ("wer", errors, f"{split} WER %"),
                    ("cer", errors, f"{split} CER %"),
                ]:
                    value = _number(r.get(key))
                    if value is not None:
                        series.setdefault(name, []).append((x, value))
    img = Image.new("RGB", (1320, 380), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, (60, 30, 430, 330), losses, "loss", "CPU-hours")
    _panel(draw, (500, 30, 870, 330), rates, "ExpRate (greedy)", "CPU-hours")
    _panel(draw, (940, 30, 1310, 330), errors, "WER and CER (greedy)", "CPU-hours")
    img.save(out)
    return out


def attention_grid(
    image: np.ndarray, maps: list[np.ndarray], tokens: list[str], columns: int = 4
) -> Image.Image:
    """Overlay one attention map (h, w) per output token on the input image, in a labelled grid."""
    h, w = image.shape
    base = Image.fromarray(image).convert("RGB")
    cells = []
    for att, tok in zip(maps, tokens, strict=True):
        a = att / max(float(att.max()), 1e-9)
        heat = Image.fromarray((a * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        red = Image.merge("RGB", (heat, Image.new("L", (w, h), 0), Image.new("L", (w, h), 0)))
        cell = Image.blend(base, red, 0.55)
        canvas = Image.new("RGB", (w, h + 16), "white")
        canvas.paste(cell, (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), tok, fill=(0, 0, 0))
        cells.append(canvas)
    rows = (len(cells) + columns - 1) // columns or 1
    grid = Image.new("RGB", (columns * (w + 4), rows * (h + 20)), "white")
    for i, c in enumerate(cells):
        grid.paste(c, ((i % columns) * (w + 4), (i // columns) * (h + 20)))
    return grid


def stack(images: list[Image.Image], gap: int = 8) -> Image.Image:
    """Images one below the other on white, left-aligned."""
    height = sum(i.height for i in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (max(i.width for i in images), height), "white")
    top = 0
    for i in images:
        out.paste(i, (0, top))
        top += i.height + gap
    return out


def stroke_attention_images(
    features: np.ndarray, maps: np.ndarray, px: float = 32.0, pad: int = 8
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The pen trajectory of point ``features`` (``hmer.data.strokes.FEATURES``) drawn at ``px``
    pixels per symbol size, and one heat image per map of ``maps`` (steps, 1, n): each point
    takes the weight of the memory position that covers it (the n positions split the points
    evenly, as the encoder's strided convolutions do)."""
    xy = features[:, :2].astype(np.float64)
    xy = (xy - xy.min(0)) * px + pad
    w, h = (int(np.ceil(v)) + pad + 1 for v in xy.max(0))
    base = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(base)
    down = features[:, 6] > 0.5
    for i in range(1, len(xy)):
        if down[i]:
            draw.line([tuple(xy[i - 1]), tuple(xy[i])], fill=255, width=2)
    n_points, n_mem = len(xy), maps.shape[-1]
    cover = np.minimum(n_mem - 1, np.arange(n_points) * n_mem // n_points)
    heats = []
    for m in maps.reshape(len(maps), -1):
        weights = m[cover] / max(float(m.max()), 1e-9)
        heat = np.zeros((h, w), np.float32)
        for (x, y), a in zip(xy.astype(int), weights, strict=True):
            cell = heat[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5]
            np.maximum(cell, a, out=cell)  # a point's square; overlaps keep the stronger
        heats.append(heat)
    return np.asarray(base), heats


def histogram(values: list[int], width: int = 50, bin_size: int = 0) -> list[str]:
    """Text histogram lines ``lo-hi  count  ####``."""
    if not values:
        return ["(empty)"]
    top = max(values)
    bin_size = bin_size or max(1, math.ceil((top + 1) / 20))
    counts = Counter(v // bin_size for v in values)
    peak = max(counts.values())
    lines = []
    for b in range(top // bin_size + 1):
        c = counts.get(b, 0)
        bar = "#" * max(1 if c else 0, round(width * c / peak))
        lines.append(f"{b * bin_size:4d}-{(b + 1) * bin_size - 1:<4d} {c:6d}  {bar}")
    return lines
