"""Read user bitmaps (scans, photos, renders by other tools) and bring them to the training look:
white ink on black, cropped, with symbols at the scale the image models were trained at.

Every image is reduced to bounded work: only common formats are decoded, huge images are shrunk
before normalization, at most ``MAX_COMPONENTS`` marks are considered, and the result fits
``max_size`` (by default the largest training bucket).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from hmer.data.files import read_regular_file
from hmer.data.render import SYMBOL_PX

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
# Larger images are shrunk (box filter) before normalization: a formula needs far fewer pixels
# than this once its symbols are brought to SYMBOL_PX, and the flattening filters scale with it.
WORK_PIXELS = 4_000_000
# Median connected-component size of training renders, relative to SYMBOL_PX (measured on CROHME
# renders: strokes of one symbol often touch, and the line width adds to each component).
CC_RATIO = 1.2
# The largest render training used (hmer.data.batching.BucketSpec: heights to 256, widths to 1024).
MAX_SIZE = (256, 1024)
PADDING = 8
# Stroke widths of the training renders, as ``stroke_width`` estimates them (10th to 90th
# percentile 2.3-4.3 on CROHME 2014 renders); bitmaps outside are thickened or thinned.
LINE_WIDTH_RANGE = (2.3, 4.5)
# A formula has at most a few hundred marks; beyond that, only the largest are kept (noise).
MAX_COMPONENTS = 1000
# Formats a user image may be in: decoders for the others (DDS, SPIDER, EPS, FITS...) are never
# run on untrusted bytes.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# File names that hold images of those formats (what hmer recognize and a dataset's folder read).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


# Damaged files make Pillow's decoders warn (and go on); the damage is reported to the user as an
# ImageError, so the warnings would only be noise on stderr.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.\w+ImagePlugin")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image that cannot be used; the message names the source."""


def _to_gray(img: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit "L", transparent areas shown on white, 16-bit and float images
    scaled to their range (``convert("L")`` would clip them to white)."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0  # full 16-bit range: a blank page stays blank
        elif img.mode == "F" and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0  # the usual range of float images
        elif lo >= 0 and hi <= 255:
            lo, hi = 0.0, 255.0
        scaled = (arr - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    return img.convert("L")


def _decode(data: bytes, source: str) -> Image.Image:
    """Decode bytes of a supported format into an 8-bit grayscale image of bounded size."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{source}: image has too many pixels") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for unknown data
        raise ImageError(
            f"{source}: not a readable image (supported: PNG, JPEG, BMP, GIF, TIFF, WebP, PNM)"
        ) from exc
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{source}: image of {w}x{h} pixels is too large")
    if w < 1 or h < 1:
        raise ImageError(f"{source}: image has no pixels")
    factor = math.ceil(math.sqrt(w * h / WORK_PIXELS))
    try:
        if factor > 1 and img.format == "JPEG":
            img.draft("L", (w // factor, h // factor))  # decode at a reduced scale: cheap
        img.load()
        gray = _to_gray(img)
        factor = math.ceil(math.sqrt(gray.width * gray.height / WORK_PIXELS))
        if factor > 1:
            gray = gray.reduce(factor)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{source}: image has too many pixels") from exc
    except MemoryError as exc:
        raise ImageError(f"{source}: image too large to decode") from exc
    except Exception as exc:  # noqa: BLE001 - damaged data fails deep inside the decoders
        raise ImageError(f"{source}: damaged or truncated image data") from exc
    return gray


def load_gray(
    data: bytes | str | Path | np.ndarray | Image.Image, source: str = "<image>"
) -> np.ndarray:
    """Decode an image to 8-bit grayscale, transparent areas shown on white.

    Refuses files over ``MAX_BYTES``, images over ``MAX_PIXELS`` (decompression bombs), formats
    other than ``FORMATS`` and files that are not regular files; images over ``WORK_PIXELS`` are
    shrunk.
    """
    if isinstance(data, np.ndarray):
        arr = data
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=2)
        if arr.ndim != 2 or arr.size == 0:
            raise ImageError(f"{source}: expected a 2-D grayscale or RGB array")
        if arr.size > MAX_PIXELS:
            raise ImageError(f"{source}: array of {arr.shape[1]}x{arr.shape[0]} is too large")
        if arr.dtype != np.uint8:
            arr = np.asarray(arr, dtype=np.float64)
            arr = np.where(np.isfinite(arr), arr, 0.0)
            hi = float(arr.max())
            arr = np.clip(arr * (255.0 if hi <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return arr
    if isinstance(data, (str, Path)):
        path = Path(data)
        source = str(path)
        try:
            data = read_regular_file(path, MAX_BYTES)
        except ValueError as exc:
            raise ImageError(str(exc)) from exc
        except OSError as exc:
            raise ImageError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > MAX_BYTES:
            raise ImageError(f"{source}: file larger than {MAX_BYTES // (1024 * 1024)} MB")
        if not data:
            raise ImageError(f"{source}: empty file")
        img = _decode(data, source)
    elif isinstance(data, Image.Image):
        if data.width * data.height > MAX_PIXELS:
            raise ImageError(f"{source}: image of {data.width}x{data.height} pixels is too large")
        img = _to_gray(data)
    else:
        raise ImageError(f"{source}: expected image bytes, a path, an array or a PIL image")
    return np.asarray(img, dtype=np.uint8)


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


def stroke_width(ink: np.ndarray) -> float:
    """About how many pixels wide the strokes of a boolean ink mask are (area / half boundary;
    a 1-px line reads 2)."""
    boundary = ink & ~ndimage.binary_erosion(ink)
    return 2.0 * float(ink.sum()) / max(1.0, float(boundary.sum()))


def even_stroke_width(
    img: np.ndarray, width_range: tuple[float, float] | None = LINE_WIDTH_RANGE
) -> np.ndarray:
    """Thicken strokes thinner than ``width_range`` by a pixel, or thin thicker ones towards its
    middle, so that other tools' 1-px or 6-px lines reach the model at widths it trained on
    (``img``: uint8 white ink on black; ``width_range`` None: unchanged)."""
    if width_range is None:
        return img
    lo, hi = width_range
    width = stroke_width(img > 127)
    if width > hi:
        # An erosion of k+1 pixels takes k off the width; thinner strokes of the same image are
        # kept by never taking more than half the estimate.
        k = min(int(round(width - (lo + hi) / 2)), int(width / 2))
        if k > 0:
            img = ndimage.grey_erosion(img, size=(k + 1, k + 1))
    elif width < lo:
        img = ndimage.grey_dilation(img, size=(2, 2))
    return img


def normalize_bitmap(
    gray: np.ndarray,
    symbol_px: float = SYMBOL_PX,
    source: str = "<image>",
    max_size: tuple[int, int] = MAX_SIZE,
    line_widths: tuple[float, float] | None = LINE_WIDTH_RANGE,
) -> np.ndarray:
    """Grayscale bitmap -> uint8 white-ink-on-black crop with symbols at about ``symbol_px`` and
    strokes within ``line_widths`` (:func:`even_stroke_width`; None: as drawn).

    Works for either polarity; uneven lighting (phone photos) is flattened first. The result,
    padding included, is at most ``max_size`` (height, width): larger ink is shrunk to fit, as
    training shrinks renders to its largest bucket. Raises :class:`ImageError` when no ink is
    found.
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
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = areas >= max(3, 0.002 * areas.max())  # drop specks of noise
    if not keep.any():
        raise ImageError(f"{source}: no ink found (only a few specks)")
    kept_ids = np.flatnonzero(keep)
    if len(kept_ids) > MAX_COMPONENTS:  # a noise field, not a formula: keep the largest marks
        kept_ids = np.sort(kept_ids[np.argsort(-areas[kept_ids], kind="stable")[:MAX_COMPONENTS]])
    # Number the kept components 1..k so that boxes are found for them only.
    remap = np.zeros(n + 1, np.int32)
    remap[kept_ids + 1] = np.arange(1, len(kept_ids) + 1)
    labels = remap[labels]
    boxes = ndimage.find_objects(labels)
    sizes = np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes])
    y0 = min(b[0].start for b in boxes)
    y1 = max(b[0].stop for b in boxes)
    x0 = min(b[1].start for b in boxes)
    x1 = max(b[1].stop for b in boxes)
    # Ink intensities, with everything off the kept components set to black.
    crop = np.where(labels[y0:y1, x0:x1] > 0, img8[y0:y1, x0:x1], 0).astype(np.uint8)
    h, w = crop.shape
    max_h, max_w = max_size
    scale = CC_RATIO * symbol_px / max(float(np.median(sizes)), 1.0)
    scale = min(scale, (max_h - 2 * PADDING) / h, (max_w - 2 * PADDING) / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.asarray(
        Image.fromarray(crop).resize(
            (nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR
        )
    )
    # Stretch so the stroke cores reach full white, as in the renders.
    hi = np.percentile(out[out > 0], 90) if (out > 0).any() else 255
    out = np.clip(out.astype(np.float32) * (255.0 / max(hi, 1)), 0, 255).astype(np.uint8)
    return np.pad(even_stroke_width(out, line_widths), PADDING)


def prepare_image(
    data,
    source: str = "<image>",
    symbol_px: float = SYMBOL_PX,
    max_size: tuple[int, int] = MAX_SIZE,
) -> np.ndarray:
    """Load and normalize an image for the image models (uint8, white ink on black, at most
    ``max_size``)."""
    return normalize_bitmap(load_gray(data, source), symbol_px, source, max_size)
