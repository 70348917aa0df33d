"""Read user bitmaps (scans, photos, renders by other tools) and bring them to the training look:
white ink on black, cropped, with symbols at the scale the image models were trained at."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from hmer.data.render import SYMBOL_PX

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
# Median connected-component size of training renders, relative to SYMBOL_PX (measured on CROHME
# renders: strokes of one symbol often touch, and the line width adds to each component).
CC_RATIO = 1.2
MAX_SIDE = 1600


class ImageError(ValueError):
    """An image that cannot be used; the message names the source."""


def load_gray(
    data: bytes | str | Path | np.ndarray | Image.Image, source: str = "<image>"
) -> np.ndarray:
    """Decode an image to 8-bit grayscale, transparent areas shown on white.

    Refuses files over ``MAX_BYTES`` and images over ``MAX_PIXELS`` (decompression bombs).
    """
    if isinstance(data, np.ndarray):
        arr = data
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=2)
        if arr.ndim != 2 or arr.size == 0:
            raise ImageError(f"{source}: expected a 2-D grayscale or RGB array")
        if arr.dtype != np.uint8:
            hi = float(arr.max()) if arr.size else 1.0
            arr = np.clip(arr * (255.0 if hi <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return arr
    if isinstance(data, (str, Path)):
        path = Path(data)
        source = str(path)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise ImageError(f"{source}: file larger than {MAX_BYTES // (1024 * 1024)} MB")
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise ImageError(f"{source}: file larger than {MAX_BYTES // (1024 * 1024)} MB")
        if not data:
            raise ImageError(f"{source}: empty file")
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"{source}: image of {img.width}x{img.height} pixels is too large")
            img.load()
        except (
            UnidentifiedImageError,
            OSError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
        ) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"{source}: not a readable image ({type(exc).__name__})") from exc
    else:
        img = data
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def _otsu(values: np.ndarray) -> float:
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    w0 = np.cumsum(hist)
    m = np.cumsum(hist * np.arange(256))
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m[-1] * w0 / total - m) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


def normalize_bitmap(
    gray: np.ndarray, symbol_px: float = SYMBOL_PX, source: str = "<image>"
) -> np.ndarray:
    """Grayscale bitmap -> uint8 white-ink-on-black crop with symbols at about ``symbol_px``.

    Works for either polarity; uneven lighting (phone photos) is flattened first. Raises
    :class:`ImageError` when no ink is found.
    """
    img = gray.astype(np.float32)
    if np.median(img) > 127:  # dark ink on light paper
        img = 255.0 - img
    # Flatten the background: a grey opening larger than a stroke removes the ink and leaves the
    # slowly varying paper/lighting, which is then subtracted.
    small = max(1, int(round(max(img.shape) / 400)))
    bg = ndimage.grey_opening(img[::small, ::small], size=(15, 15))
    bg = ndimage.uniform_filter(bg, 15)
    if small > 1:
        bg = np.kron(bg, np.ones((small, small), np.float32))[: img.shape[0], : img.shape[1]]
    img = np.clip(img - bg, 0, None)
    if img.max() < 20:
        raise ImageError(f"{source}: no ink found (blank image)")
    img8 = np.clip(img * (255.0 / img.max()), 0, 255).astype(np.uint8)
    ink = img8 > max(_otsu(img8), 40)
    labels, n = ndimage.label(ink, structure=np.ones((3, 3)))  # 1-px diagonal lines connect
    if n == 0:
        raise ImageError(f"{source}: no ink found (blank image)")
    boxes = ndimage.find_objects(labels)
    areas = ndimage.sum_labels(ink, labels, index=np.arange(1, n + 1))
    keep = areas >= max(3, 0.002 * areas.max())  # drop specks of noise
    sizes = np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes])
    sizes = sizes[keep]
    kept = [b for b, k in zip(boxes, keep, strict=True) if k]
    y0 = min(b[0].start for b in kept)
    y1 = max(b[0].stop for b in kept)
    x0 = min(b[1].start for b in kept)
    x1 = max(b[1].stop for b in kept)
    mask = np.isin(labels, np.flatnonzero(keep) + 1)
    # Ink intensities, with everything off the kept components set to black.
    crop = np.where(mask, img8, 0)[y0:y1, x0:x1]
    scale = CC_RATIO * symbol_px / max(float(np.median(sizes)), 1.0)
    h, w = crop.shape
    scale = min(scale, MAX_SIDE / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.asarray(
        Image.fromarray(crop).resize(
            (nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
        )
    )
    # Stretch so the stroke cores reach full white, as in the renders.
    hi = np.percentile(out[out > 0], 90) if (out > 0).any() else 255
    out = np.clip(out.astype(np.float32) * (255.0 / max(hi, 1)), 0, 255).astype(np.uint8)
    return np.pad(out, 8)


def prepare_image(data, source: str = "<image>", symbol_px: float = SYMBOL_PX) -> np.ndarray:
    """Load and normalize an image for the image models (uint8, white ink on black)."""
    return normalize_bitmap(load_gray(data, source), symbol_px, source)
