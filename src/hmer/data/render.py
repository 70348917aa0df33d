"""Render pen ink to grayscale bitmaps: white ink on black, like the published offline data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hmer.data.inkml import Ink

# Median symbol size, in pixels, of the "natural" renders the models are trained on. The official
# CROHME offline bitmaps have symbols around 28 px; augmentation rescales around this value.
SYMBOL_PX = 24.0
MAX_SIDE = 2048


@dataclass
class RenderStyle:
    """How strokes are drawn: width in output pixels and whether edges are anti-aliased."""

    line_width: float = 3.0
    antialias: bool = True
    supersample: int = 3


def ink_symbol_size(traces: list[np.ndarray]) -> float:
    """Estimate the typical symbol size of ink: the median over traces of max(width, height).

    The same estimate on a bitmap is the median connected-component size, which is how bitmaps from
    other sources are brought to the scale the models were trained at.
    """
    ext = [float(np.ptp(t[:, :2], axis=0).max()) for t in traces if len(t)]
    ext = [e for e in ext if e > 0]
    if not ext:
        return 1.0
    return float(np.median(ext))


def _draw(
    traces: list[np.ndarray],
    width: int,
    height: int,
    style: RenderStyle,
    boxes: list[tuple[float, float, float, float]] | None = None,
) -> np.ndarray:
    ss = style.supersample if style.antialias else 1
    img = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(img)
    lw = max(1, round(style.line_width * ss))
    r = lw / 2
    for t in traces:
        pts = [(float(x) * ss, float(y) * ss) for x, y in t[:, :2]]
        if len(pts) == 1 or np.ptp(t[:, :2], axis=0).max() * ss < 0.5:
            x, y = pts[0]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        else:
            draw.line(pts, fill=255, width=lw, joint="curve")
            for x, y in (pts[0], pts[-1]):  # round caps
                draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    for x0, y0, x1, y1 in boxes or []:
        draw.rectangle([x0 * ss, y0 * ss, x1 * ss, y1 * ss], outline=128, width=max(1, ss))
    if ss > 1:
        img = img.resize((width, height), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def place_traces(
    traces: list[np.ndarray], scale: float, padding: tuple[int, int, int, int] | int
) -> tuple[list[np.ndarray], int, int]:
    """Scale traces and move them so their box starts at the (left, top) padding.

    ``padding`` is one int or (left, top, right, bottom). Returns the new traces and canvas size.
    """
    if isinstance(padding, int):
        padding = (padding,) * 4
    left, top, right, bottom = padding
    pts = np.concatenate([t[:, :2] for t in traces])
    lo = pts.min(axis=0)
    span = (pts.max(axis=0) - lo) * scale
    out = [(t[:, :2] - lo) * scale + np.array([left, top], np.float32) for t in traces]
    width = int(np.ceil(span[0])) + left + right + 1
    height = int(np.ceil(span[1])) + top + bottom + 1
    return out, width, height


def render_natural(
    traces: list[np.ndarray],
    symbol_px: float = SYMBOL_PX,
    padding: tuple[int, int, int, int] | int = 8,
    style: RenderStyle | None = None,
    boxes: list[list[int]] | None = None,
    max_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render at the natural scale: median symbol about ``symbol_px`` pixels, size follows the ink.

    ``boxes`` optionally lists trace-index groups (one per symbol) whose bounding boxes are drawn.
    With ``max_size`` (height, width), ink that would be larger is drawn smaller to fit, padding
    included, as training fits renders to its largest bucket; without it the longest side is at
    most ``MAX_SIDE``.
    """
    style = style or RenderStyle()
    scale = symbol_px / ink_symbol_size(traces)
    pts = np.concatenate([t[:, :2] for t in traces]).astype(np.float64)
    span = np.ptp(pts, axis=0) * scale
    pad = (padding,) * 4 if isinstance(padding, int) else padding
    if max_size is None:
        longest = float(span.max())
        if longest > MAX_SIDE - 64:  # runaway ink (e.g. a stray far-away dot): shrink to fit
            scale *= (MAX_SIDE - 64) / longest
    else:
        room_w = max_size[1] - pad[0] - pad[2] - 2
        room_h = max_size[0] - pad[1] - pad[3] - 2
        if room_w < 1 or room_h < 1:
            raise ValueError(f"max_size {max_size} leaves no room inside the padding")
        fit = min(1.0, room_w / max(float(span[0]), 1e-12), room_h / max(float(span[1]), 1e-12))
        scale *= fit
    placed, width, height = place_traces(traces, scale, pad)
    if max_size is not None:
        width, height = min(width, max_size[1]), min(height, max_size[0])
    return _draw(placed, width, height, style, _boxes(placed, boxes))


def render_fixed(
    traces: list[np.ndarray],
    size: tuple[int, int] = (128, 512),
    padding: int = 8,
    style: RenderStyle | None = None,
    boxes: list[list[int]] | None = None,
) -> np.ndarray:
    """Render into a fixed (height, width) canvas: scale = (size - 2 padding) / extent."""
    style = style or RenderStyle()
    height, width = size
    pts = np.concatenate([t[:, :2] for t in traces])
    span = np.maximum(np.ptp(pts, axis=0), 1e-6)
    scale = min((width - 2 * padding) / span[0], (height - 2 * padding) / span[1])
    placed, w, h = place_traces(traces, scale, padding)
    # centre the ink in the canvas
    shift = np.array([(width - w) / 2, (height - h) / 2], np.float32)
    placed = [t + shift for t in placed]
    return _draw(placed, width, height, style, _boxes(placed, boxes))


def _boxes(placed: list[np.ndarray], groups: list[list[int]] | None):
    if not groups:
        return None
    out = []
    for g in groups:
        pts = np.concatenate([placed[i] for i in g if 0 <= i < len(placed)])
        out.append((*pts.min(axis=0), *pts.max(axis=0)))
    return out


def symbol_groups(ink: Ink) -> list[list[int]]:
    """Trace-index groups of the symbols of ``ink`` (from its segmentation), for drawing boxes."""
    index = {tid: i for i, tid in enumerate(ink.trace_ids)}
    return [[index[t] for t in s.trace_ids if t in index] for s in ink.symbols if s.trace_ids]
