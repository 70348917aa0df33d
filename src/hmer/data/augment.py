"""Data augmentation of ink (points, before rendering) and bitmaps. Deterministic under a seed."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from hmer.data.images import normalize_bitmap
from hmer.data.render import RenderStyle, _draw, ink_symbol_size, place_traces


@dataclass
class InkAugment:
    """Random geometric changes of handwriting; each field is a range or a probability."""

    rotate_deg: float = 4.0
    shear: float = 0.15
    aspect: float = 0.15  # log-range of the x/y scale ratio
    stroke_shift: float = 0.04  # per-stroke offset, as a fraction of the symbol size
    stroke_scale: float = 0.06  # per-stroke scale jitter around its own centre
    point_noise: float = 0.01  # per-point noise, as a fraction of the symbol size
    # Writing-order noise, for models that read the trajectory (a bitmap does not show either):
    swap_p: float = 0.0  # chance that each pair of neighbouring strokes is written the other way
    reverse_p: float = 0.0  # chance that a stroke is drawn end to start
    drop_p: float = 0.0  # chance that each inner pen point is dropped (a sparser tablet)

    def __call__(self, traces: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        size = ink_symbol_size(traces)
        if self.swap_p > 0 or self.reverse_p > 0:
            traces = self._reorder(traces, rng)
        a = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        sh = rng.uniform(-self.shear, self.shear)
        ar = np.exp(rng.uniform(-self.aspect, self.aspect))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
        mat = rot @ np.array([[ar, sh], [0.0, 1.0]], np.float32)
        out = []
        for t in traces:
            p = t[:, :2].astype(np.float32)
            c = p.mean(axis=0)
            k = 1.0 + rng.uniform(-self.stroke_scale, self.stroke_scale)
            p = (p - c) * k + c + rng.normal(0, self.stroke_shift * size, 2).astype(np.float32)
            if self.point_noise > 0 and len(p) > 2:
                p = p + rng.normal(0, self.point_noise * size, p.shape).astype(np.float32)
            if self.drop_p > 0 and len(p) > 2:  # no draw at 0: seeded streams stay as they were
                keep = rng.random(len(p)) >= self.drop_p
                keep[[0, -1]] = True  # a stroke keeps its ends, so its extent
                p = p[keep]
            out.append(p @ mat.T)
        return out

    def _reorder(self, traces: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        traces = list(traces)
        for i in range(len(traces) - 1):
            if rng.random() < self.swap_p:
                traces[i], traces[i + 1] = traces[i + 1], traces[i]
        flip = rng.random(len(traces)) < self.reverse_p
        return [t[::-1] if f else t for t, f in zip(traces, flip, strict=True)]


def resample_trace(trace: np.ndarray, step: float) -> np.ndarray:
    """Resample a trace to points ``step`` apart along its path (keeps its end points)."""
    p = trace[:, :2]
    if len(p) < 2:
        return p.copy()
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    if dist[-1] <= step:
        return p[[0, -1]].copy()
    n = int(np.ceil(dist[-1] / step)) + 1
    at = np.linspace(0, dist[-1], n)
    return np.stack([np.interp(at, dist, p[:, 0]), np.interp(at, dist, p[:, 1])], 1).astype(
        np.float32
    )


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Stretch a white-on-black image to float32 with background near 0 and ink near 1.

    The background level is the median pixel (ink covers a small share of an expression), the ink
    level the median of the pixels in the upper half of the range: robust to noise and to faint or
    grey ink. The same stretch suits bitmaps from other sources at inference.
    """
    image = np.asarray(image)
    x = image.astype(np.float32)
    if x.size == 0:
        return x
    if np.issubdtype(image.dtype, np.integer):
        x = x / 255.0
    bg = float(np.median(x))
    top = float(x.max())
    if top - bg < 1e-3:  # blank image
        return np.zeros_like(x)
    ink = float(np.median(x[x >= bg + 0.5 * (top - bg)]))
    return np.clip((x - bg) / max(ink - bg, 1e-3), 0.0, 1.0).astype(np.float32)


@dataclass
class ImageAugment:
    """Random changes of a rendered or scanned bitmap (uint8, white ink on black).

    Ranges are symmetric around no change; ``*_p`` fields are probabilities. The result is float32,
    normalized by :func:`normalize_intensity`, so ink is about 1 and background about 0.
    """

    rotate_deg: float = 3.0
    shear: float = 0.12
    scale: tuple[float, float] = (0.85, 1.15)  # overall size factor, drawn log-uniformly
    aspect: float = 0.12  # log-range of the x/y scale ratio
    padding: tuple[int, int] = (0, 12)  # extra margin per side, in output pixels
    stroke_p: float = 0.4  # chance to thicken or thin the strokes
    brightness: float = 0.35  # ink drawn at a level in [1 - brightness, 1]
    background: float = 0.25  # background lifted to a level in [0, background]
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.1)
    noise: float = 0.04  # std of additive Gaussian noise, drawn in [0, noise]
    max_side: int = 2048
    geometry: bool = True  # False keeps the image size (photometric changes only)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.asarray(image, dtype=np.float32) / 255.0
        if x.ndim != 2 or x.size == 0:
            raise ValueError("ImageAugment expects a non-empty 2-D grayscale image")
        x = self._stroke(x, rng)
        if self.geometry:
            x = self._geometry(x, rng)
        if rng.random() < self.blur_p:
            x = ndimage.gaussian_filter(x, float(rng.uniform(*self.blur_sigma)))
        ink = 1.0 - rng.uniform(0.0, self.brightness)
        bg = rng.uniform(0.0, self.background)
        x = bg + (ink - bg) * x
        x = x + rng.normal(0.0, rng.uniform(0.0, self.noise), x.shape).astype(np.float32)
        return normalize_intensity(np.clip(x, 0.0, 1.0))

    def _stroke(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.stroke_p:
            return x
        if rng.random() < 0.5:
            return ndimage.grey_dilation(x, size=(int(rng.integers(2, 4)),) * 2)
        thinner = ndimage.grey_erosion(x, size=(2, 2))
        # Thin strokes can vanish under erosion: keep it only when most of the ink survives.
        return thinner if thinner.sum() > 0.5 * x.sum() else x

    def _geometry(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        sh = rng.uniform(-self.shear, self.shear)
        s = np.exp(rng.uniform(*np.log(self.scale)))
        ar = np.exp(rng.uniform(-self.aspect, self.aspect))
        # Forward map in (row, col) coordinates: scale, then shear along x, then rotate.
        scale = np.diag([s / np.sqrt(ar), s * np.sqrt(ar)])
        shear = np.array([[1.0, 0.0], [sh, 1.0]])
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        fwd = rot @ shear @ scale
        h, w = x.shape
        pad = rng.integers(self.padding[0], self.padding[1] + 1, 4)  # top, bottom, left, right
        room = np.array([pad[0] + pad[1], pad[2] + pad[3]], float)
        box = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], float)
        extent = np.ptp(box @ fwd.T, axis=0) + 1
        fit = float(np.min((self.max_side - room) / extent))
        if fit < 1.0:  # too large: shrink rather than crop ink away
            fwd = fwd * fit
        corners = box @ fwd.T
        lo = corners.min(axis=0)
        size = np.ceil(corners.max(axis=0) - lo).astype(int) + 1
        out_h = int(min(size[0] + room[0], self.max_side))
        out_w = int(min(size[1] + room[1], self.max_side))
        inv = np.linalg.inv(fwd)
        # affine_transform maps output coordinates to input ones: in = inv @ (out - shift).
        shift = np.array([pad[0], pad[2]], float) - lo
        return ndimage.affine_transform(
            x, inv, offset=-inv @ shift, output_shape=(out_h, out_w), order=1, cval=0.0
        ).astype(np.float32)


LINE_RATIO_MIN = 0.025  # a 1-px pen on 40-px symbols, as thin as robustness.py's 1-px style


def valid_line_ratio(value: float) -> bool:
    """Whether ``value`` can be :class:`ForeignRender`'s ``line_ratio``: 0 (off), or above
    ``LINE_RATIO_MIN`` up to 1."""
    return value == 0 or LINE_RATIO_MIN < value <= 1


@dataclass
class ForeignRender:
    """Ink drawn as other tools and cameras draw it, then read back the way recognition reads a
    bitmap (:func:`hmer.data.images.normalize_bitmap`), so that training sees what recognition
    makes of such inputs: 1-px to 7-px lines, binary or smooth edges, any size, either polarity,
    photo-like paper. The ranges span the styles of ``benchmarks/robustness.py``.

    With ``line_ratio`` > 0 the pen width is instead a share of the drawn median symbol height,
    log-uniform from ``LINE_RATIO_MIN`` to ``line_ratio``: a thick marker on small glyphs fills
    their loops, which a width in pixels drawn whatever the size seldom shows.
    """

    symbol_px: tuple[float, float] = (14.0, 48.0)  # median symbol size (half the draws), or
    height_px: tuple[float, float] = (60.0, 220.0)  # height of the whole expression
    line_width: tuple[float, float] = (1.0, 7.0)
    antialias_p: float = 0.5
    dark_ink_p: float = 0.5  # dark ink on light paper (else light on dark)
    photo_p: float = 0.3  # uneven paper, sensor noise and JPEG
    max_side: int = 2048
    line_ratio: float = 0.0

    def draw(self, traces: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The ink as a uint8 grayscale bitmap in a random foreign style."""
        pts = np.concatenate([t[:, :2] for t in traces])
        span = np.maximum(np.ptp(pts, axis=0), 1e-6)
        symbol = ink_symbol_size(traces)
        if rng.random() < 0.5:
            scale = float(rng.uniform(*self.symbol_px)) / symbol
        else:
            scale = float(rng.uniform(*self.height_px)) / float(span[1])
        scale = min(scale, (self.max_side - 40) / float(span.max()))
        placed, w, h = place_traces(traces, scale, int(rng.integers(2, 21)))
        if self.line_ratio > 0:
            ratio = np.exp(rng.uniform(np.log(LINE_RATIO_MIN), np.log(self.line_ratio)))
            line_width = max(1.0, float(ratio * symbol * scale))
        else:
            line_width = float(rng.uniform(*self.line_width))
        style = RenderStyle(
            line_width=line_width,
            antialias=bool(rng.random() < self.antialias_p),
        )
        x = _draw(placed, w, h, style).astype(np.float32) / 255.0
        if rng.random() < self.dark_ink_p:
            paper, ink = rng.uniform(150, 255), rng.uniform(0, 90)
        else:
            paper, ink = rng.uniform(0, 80), rng.uniform(160, 255)
        if rng.random() >= self.photo_p:
            return np.clip(paper + (ink - paper) * x, 0, 255).astype(np.uint8)
        # Uneven lighting: a tilted plane of +-40 grey levels over the page.
        gx, gy = rng.uniform(-40, 40, 2)
        ramp = gx * np.linspace(-1, 1, w)[None, :] + gy * np.linspace(-1, 1, h)[:, None]
        out = paper + ramp + (ink - paper) * x
        out += rng.normal(0.0, rng.uniform(2, 12), out.shape)
        return _jpeg(np.clip(out, 0, 255).astype(np.uint8), int(rng.integers(50, 91)))

    def __call__(
        self, traces: list[np.ndarray], rng: np.random.Generator, max_size: tuple[int, int]
    ) -> np.ndarray:
        """Draw in a foreign style and normalize as recognition does: uint8, white ink on black,
        at most ``max_size``. Raises :class:`hmer.data.images.ImageError` when no ink survives."""
        return normalize_bitmap(self.draw(traces, rng), max_size=max_size)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))
