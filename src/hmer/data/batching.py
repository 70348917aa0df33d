"""Turn samples into padded image batches of a few fixed shapes.

On this CPU a convolution with a shape not seen before costs seconds to prepare, so every batch is
padded to one of a small set of (height, width) buckets with a fixed batch size per bucket. An
epoch is planned up front from a seed: the same (seed, epoch) always gives the same batches with
the same augmentation, which is what makes ``--resume`` continue exactly.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch

from hmer.data.augment import ForeignRender, ImageAugment, InkAugment
from hmer.data.dataset import Sample
from hmer.data.images import ImageError
from hmer.data.render import SYMBOL_PX, RenderStyle, _draw, ink_symbol_size, place_traces
from hmer.data.vocab import Vocab


@dataclass
class BucketSpec:
    heights: tuple[int, ...] = tuple(range(64, 257, 32))
    widths: tuple[int, ...] = tuple(range(128, 1025, 64))
    pixels_per_batch: int = 16 * 96 * 320
    max_batch: int = 32
    min_batch: int = 2

    def bucket(self, height: int, width: int) -> tuple[int, int]:
        h = next((b for b in self.heights if b >= height), self.heights[-1])
        w = next((b for b in self.widths if b >= width), self.widths[-1])
        return h, w

    def batch_size(self, h: int, w: int) -> int:
        return int(np.clip(self.pixels_per_batch // (h * w), self.min_batch, self.max_batch))


@dataclass
class RenderAugment:
    """Random rendering choices: symbol size, line width, anti-aliasing, margins."""

    scale: tuple[float, float] = (0.7, 1.4)
    line_width: tuple[float, float] = (1.5, 4.0)
    antialias_p: float = 0.5
    padding: tuple[int, int] = (2, 16)


@dataclass
class Plan:
    """How one sample is drawn: placed traces, canvas size and stroke style."""

    traces: list[np.ndarray]
    width: int
    height: int
    style: RenderStyle


def plan_render(
    traces: list[np.ndarray],
    rng: np.random.Generator | None,
    spec: BucketSpec,
    ink_aug: InkAugment | None = None,
    render_aug: RenderAugment | None = None,
) -> Plan:
    """Decide how to draw a sample (with augmentation when ``rng`` is given), without drawing."""
    if rng is not None and ink_aug is not None:
        traces = ink_aug(traces, rng)
    symbol_px = SYMBOL_PX
    style = RenderStyle()
    padding: int | tuple[int, int, int, int] = 8
    if rng is not None and render_aug is not None:
        lo, hi = np.log(render_aug.scale)
        symbol_px *= float(np.exp(rng.uniform(lo, hi)))
        style = RenderStyle(
            line_width=float(rng.uniform(*render_aug.line_width)),
            antialias=bool(rng.random() < render_aug.antialias_p),
        )
        padding = tuple(
            int(v) for v in rng.integers(render_aug.padding[0], render_aug.padding[1] + 1, 4)
        )
    scale = symbol_px / ink_symbol_size(traces)
    placed, width, height = place_traces(traces, scale, padding)
    max_h, max_w = spec.heights[-1], spec.widths[-1]
    if height > max_h or width > max_w:  # too big for the largest bucket: shrink to fit
        f = min((max_h - 2) / height, (max_w - 2) / width)
        placed, width, height = place_traces(traces, scale * f, 4)
        width, height = min(width, max_w), min(height, max_h)
    return Plan(placed, width, height, style)


def draw_plan(plan: Plan) -> np.ndarray:
    return _draw(plan.traces, plan.width, plan.height, plan.style)


class BucketedEpoch(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches of one epoch (for a DataLoader worker).

    Subclasses say which bucket a sample falls in (``bucket_of``) and how many samples a batch of
    a bucket holds (``bucket_size``); the epoch plan is the same for both kinds of input.
    """

    samples: list[Sample]
    seed: int
    epoch: int
    augment: bool

    def _rng(self, index: int) -> np.random.Generator | None:
        if not self.augment:
            return None
        return np.random.default_rng([self.seed, self.epoch, index])

    def bucket_of(self, index: int) -> Hashable:
        raise NotImplementedError

    def bucket_size(self, key: Hashable) -> int:
        raise NotImplementedError

    def _plan(self, shuffle: bool, rank: int, world: int) -> list[tuple[Hashable, list[int]]]:
        order = np.arange(len(self.samples))
        if shuffle:
            np.random.default_rng([self.seed, self.epoch, 10**6]).shuffle(order)
        open_: dict[Hashable, list[int]] = {}
        batches = []
        for i in order:
            key = self.bucket_of(int(i))
            items = open_.setdefault(key, [])
            items.append(int(i))
            if len(items) == self.bucket_size(key):
                batches.append((key, items))
                open_[key] = []
        for key, items in open_.items():  # fill the last batch of a bucket by repeating its items
            if items:
                n = self.bucket_size(key) if shuffle else len(items)
                batches.append((key, (items * n)[:n]))
        if world > 1:  # every rank gets the same number of batches
            per = len(batches) // world
            batches = batches[rank * per : (rank + 1) * per]
        return batches

    def __len__(self) -> int:
        return len(self.batches)


class EpochBatches(BucketedEpoch):
    """One epoch of rendered, augmented image batches padded to bucket shapes.

    With ``photo_p`` > 0 that share of the renders also gets photometric changes (thicker or
    thinner strokes, blur, faint ink, lifted background, noise) so that bitmaps drawn by other
    tools or photographed look like something seen in training. With ``foreign_p`` > 0 that share
    of the ink is instead drawn in another tool's style and normalized as recognition normalizes a
    bitmap (:class:`ForeignRender`, whose ``line_ratio`` is ``foreign_line_ratio``). Samples that
    hold an ``image`` (a user's bitmaps) are shown as they are, with the same share of
    photometric changes.
    """

    def __init__(
        self,
        samples: list[Sample],
        vocab: Vocab,
        spec: BucketSpec,
        epoch: int,
        seed: int,
        augment: bool = True,
        ink_aug: InkAugment | None = None,
        render_aug: RenderAugment | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        photo_p: float = 0.0,
        foreign_p: float = 0.0,
        foreign_line_ratio: float = 0.0,
    ):
        self.samples, self.vocab, self.spec = samples, vocab, spec
        self.augment = augment
        self.ink_aug = ink_aug or InkAugment()
        self.render_aug = render_aug or RenderAugment()
        self.photo_p = photo_p
        self.photo_aug = ImageAugment(geometry=False)
        self.foreign_p = foreign_p
        self.foreign = ForeignRender(line_ratio=foreign_line_ratio)
        self.seed, self.epoch = seed, epoch
        self.batches = self._plan(shuffle, rank, world)

    def _render_plan(self, index: int) -> Plan:
        return plan_render(
            self.samples[index].traces, self._rng(index), self.spec, self.ink_aug, self.render_aug
        )

    def bucket_of(self, index: int) -> tuple[int, int]:
        bitmap = self.samples[index].image
        if bitmap is not None:
            return self.spec.bucket(*bitmap.shape)
        p = self._render_plan(index)
        return self.spec.bucket(p.height, p.width)

    def bucket_size(self, key: tuple[int, int]) -> int:
        return self.spec.batch_size(*key)

    def image(self, index: int) -> np.ndarray:
        """Sample ``index`` as this epoch shows it to the model: float32, ink about 1, unpadded."""
        img = self.samples[index].image
        if img is None:
            plan = self._render_plan(index)
            img = self._foreign(index, plan) if self.augment and self.foreign_p > 0 else None
            if img is None:
                img = draw_plan(plan)
        if self.augment and self.photo_p > 0:
            # A stream of its own: the render plan (and so the buckets) stays as it was.
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            if rng.random() < self.photo_p:
                return self.photo_aug(img, rng)  # takes the uint8 render, gives float32
        return img.astype(np.float32) / 255.0

    def _foreign(self, index: int, plan: Plan) -> np.ndarray | None:
        """For a ``foreign_p`` share of samples, the augmented ink as recognition would see another
        tool's drawing of it, fitted to the planned render's bucket; otherwise None."""
        rng = np.random.default_rng([self.seed, self.epoch, index, 2])
        if rng.random() >= self.foreign_p:
            return None
        try:
            return self.foreign(plan.traces, rng, self.spec.bucket(plan.height, plan.width))
        except ImageError:  # nothing left that reads as ink (a lone dot drawn faint): plain render
            return None

    def __getitem__(self, k: int) -> dict:
        (h, w), items = self.batches[k]
        images = np.zeros((len(items), 1, h, w), np.float32)
        masks = np.ones((len(items), h, w), bool)  # True = padding
        for j, i in enumerate(items):
            img = self.image(i)
            ih, iw = img.shape
            images[j, 0, :ih, :iw] = img
            masks[j, :ih, :iw] = False
        tokens = [self.vocab.encode(self.samples[i].tokens) for i in items]
        return {
            "inputs": torch.from_numpy(images),
            "masks": torch.from_numpy(masks),
            "tokens": tokens,
            "ids": [self.samples[i].id for i in items],
        }


def pad_images(
    images: list[np.ndarray], spec: BucketSpec | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 images (ink high) into a zero-padded float batch and its padding mask."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    if spec is not None:
        h, w = spec.bucket(h, w)
        h, w = max(h, max(i.shape[0] for i in images)), max(w, max(i.shape[1] for i in images))
    x = torch.zeros(len(images), 1, h, w)
    mask = torch.ones(len(images), h, w, dtype=torch.bool)
    for j, img in enumerate(images):
        x[j, 0, : img.shape[0], : img.shape[1]] = torch.from_numpy(img.astype(np.float32) / 255.0)
        mask[j, : img.shape[0], : img.shape[1]] = False
    return x, mask


def augment_grid(
    samples: list[Sample],
    n: int,
    variants: int,
    seed: int,
    cell: tuple[int, int] = (128, 384),
    photo_p: float = 0.0,
    foreign_p: float = 0.0,
    foreign_line_ratio: float = 0.0,
) -> np.ndarray:
    """Rows of [clean render, ``variants`` augmented versions] for ``n`` random samples, uint8.

    Images keep their pixel size (so scale jitter shows) unless too big for a cell. Each
    augmented version is what an epoch of training shows the model (``EpochBatches.image``: ink
    and render augmentation, photometric changes for a ``photo_p`` share and foreign styles for a
    ``foreign_p`` share, as ``data.photo_p``, ``data.foreign_p`` and ``data.foreign_line_ratio``);
    version ``c`` is epoch ``c`` of a run seeded with ``seed``.
    """
    from PIL import Image, ImageDraw

    spec = BucketSpec()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    rows = [samples[int(i)] for i in chosen]
    epochs = [
        EpochBatches(
            rows,
            Vocab([]),
            spec,
            epoch,
            seed,
            shuffle=False,
            photo_p=photo_p,
            foreign_p=foreign_p,
            foreign_line_ratio=foreign_line_ratio,
        )
        for epoch in range(1, variants + 1)
    ]
    ch, cw = cell
    label_h, gap = 14, 2
    cols = variants + 1
    grid_h = len(chosen) * (ch + label_h + gap) + gap
    grid = np.full((grid_h, cols * (cw + gap) + gap), 60, np.uint8)
    draw_labels = []
    for r, sample in enumerate(rows):
        top = gap + r * (ch + label_h + gap)
        draw_labels.append((top, f"{sample.id}: {' '.join(sample.tokens)}"))
        for c in range(cols):
            if c == 0:
                img = draw_plan(plan_render(sample.traces, None, spec)).astype(np.float32) / 255
            else:
                img = epochs[c - 1].image(r)
            pic = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
            f = min(1.0, ch / pic.height, cw / pic.width)
            pic = pic.resize(
                (max(1, int(pic.width * f)), max(1, int(pic.height * f))), Image.Resampling.BILINEAR
            )
            left = gap + c * (cw + gap)
            cell_img = np.zeros((ch, cw), np.uint8)
            cell_img[: pic.height, : pic.width] = np.asarray(pic)
            grid[top + label_h : top + label_h + ch, left : left + cw] = cell_img
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for top, text in draw_labels:
        draw.text((gap + 2, top + 1), text[:160], fill=255)
    return np.asarray(canvas)
