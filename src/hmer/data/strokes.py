"""Pen trajectories as feature sequences, batched like the image batches.

Ink is resampled at a fixed spacing relative to its symbol size (so the sequence length follows
the amount of writing, not the tablet's sampling rate), and each point gets the features listed in
``FEATURES``. ``StrokeBatches`` plans an epoch exactly like ``EpochBatches``: the same
(seed, epoch, index) gives the same ink augmentation, and sequences are padded to a few fixed
lengths, so that convolutions see few distinct shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hmer.data.augment import InkAugment, resample_trace
from hmer.data.batching import BucketedEpoch, BucketSpec, RenderAugment
from hmer.data.dataset import Sample
from hmer.data.render import ink_symbol_size
from hmer.data.vocab import Vocab

FEATURES = (
    "x",  # from the ink's left edge, in symbol sizes
    "y",  # from the ink's median height, in symbol sizes (down is positive)
    "cos",  # writing direction into this point (0 at a stroke's first point)
    "sin",
    "air_dx",  # pen-up jump into a stroke's first point, in symbol sizes (0 elsewhere)
    "air_dy",
    "pen_down",  # reached with the pen down (continues a stroke)
    "pen_up",  # reached with the pen up (first point of a stroke)
    "stroke_end",  # last point of a stroke
)
N_FEATURES = len(FEATURES)
SPACING = 0.1  # resampling step, as a fraction of the ink's symbol size
_MAX_JUMP = 5.0  # pen-up jumps are clipped: a stray far-away dot should not dominate the scale


def ink_features(
    traces: list[np.ndarray], spacing: float = SPACING, max_points: int | None = None
) -> np.ndarray:
    """Pen traces -> float32 (N, ``N_FEATURES``) point features (see ``FEATURES``).

    With ``max_points``, ink too long for it is resampled more coarsely until it fits (and cut
    only if single-point strokes alone exceed it).
    """
    traces = [t[:, :2].astype(np.float32) for t in traces if len(t)]
    if not traces:
        return np.zeros((1, N_FEATURES), np.float32)
    size = ink_symbol_size(traces)
    step = spacing * size
    if max_points is not None:
        # Ink whose path is far longer than its symbols (a stray long stroke among dots) would
        # resample into an unbounded number of points: start at a step that fits.
        path = sum(float(np.linalg.norm(np.diff(t, axis=0), axis=1).sum()) for t in traces)
        room = max(1, max_points - len(traces))
        if path / step > 4 * room:
            step = path / room
    for _ in range(8):
        parts = [resample_trace(t, step) for t in traces]
        n = sum(len(p) for p in parts)
        if max_points is None or n <= max_points:
            break
        step *= 1.05 * n / max_points
    pts = np.concatenate(parts).astype(np.float64)
    first = np.zeros(len(pts), bool)
    first[np.cumsum([0, *[len(p) for p in parts[:-1]]])] = True
    last = np.roll(first, -1)
    last[-1] = True

    feats = np.zeros((len(pts), N_FEATURES), np.float32)
    feats[:, 0] = (pts[:, 0] - pts[:, 0].min()) / size
    feats[:, 1] = (pts[:, 1] - np.median(pts[:, 1])) / size
    delta = np.diff(pts, axis=0, prepend=pts[:1]) / size
    dist = np.linalg.norm(delta, axis=1)
    inside = ~first & (dist > 0)
    feats[inside, 2:4] = delta[inside] / dist[inside, None]
    feats[first, 4:6] = np.clip(delta[first], -_MAX_JUMP, _MAX_JUMP)
    feats[:, 6] = ~first
    feats[:, 7] = first
    feats[:, 8] = last
    if max_points is not None and len(feats) > max_points:
        feats = feats[:max_points]
    return feats


def pad_points(
    features: list[np.ndarray], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack point features into a zero-padded (B, length, F) batch and its (B, length) padding
    mask (True = padding); ``length`` defaults to the longest sequence."""
    length = length or max(len(f) for f in features)
    inputs = np.zeros((len(features), length, N_FEATURES), np.float32)
    masks = np.ones((len(features), length), bool)
    for j, f in enumerate(features):
        inputs[j, : len(f)] = f
        masks[j, : len(f)] = False
    return torch.from_numpy(inputs), torch.from_numpy(masks)


@dataclass
class StrokeSpec:
    """Length buckets and batch sizes for point sequences."""

    lengths: tuple[int, ...] = (128, 256, 384, 512, 768, 1024)
    points_per_batch: int = 16 * 384
    max_batch: int = 32
    min_batch: int = 2
    spacing: float = SPACING

    def bucket(self, n: int) -> int:
        return next((b for b in self.lengths if b >= n), self.lengths[-1])

    def batch_size(self, length: int) -> int:
        return int(np.clip(self.points_per_batch // length, self.min_batch, self.max_batch))

    @classmethod
    def from_bucket_spec(cls, spec: BucketSpec) -> StrokeSpec:
        """A budget matched to an image spec: the default 16 images of 96x320 -> 16 x 384 points."""
        return cls(
            points_per_batch=max(1, spec.pixels_per_batch // 80),
            max_batch=spec.max_batch,
            min_batch=spec.min_batch,
        )


class StrokeBatches(BucketedEpoch):
    """Map-style dataset whose items are whole batches of point sequences of one epoch.

    Same constructor and batch dict as ``EpochBatches``: "inputs" (B,N,F) float, "masks" (B,N)
    with True = padding, "tokens", "ids". ``spec`` may be a ``StrokeSpec`` or an image
    ``BucketSpec`` (converted by ``StrokeSpec.from_bucket_spec``); ``render_aug`` is unused.
    """

    def __init__(
        self,
        samples: list[Sample],
        vocab: Vocab,
        spec: BucketSpec | StrokeSpec,
        epoch: int,
        seed: int,
        augment: bool = True,
        ink_aug: InkAugment | None = None,
        render_aug: RenderAugment | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ):
        self.samples, self.vocab = samples, vocab
        self.spec = spec if isinstance(spec, StrokeSpec) else StrokeSpec.from_bucket_spec(spec)
        self.augment = augment
        self.ink_aug = ink_aug or InkAugment()
        self.seed, self.epoch = seed, epoch
        self.batches = self._plan(shuffle, rank, world)

    def features(self, index: int) -> np.ndarray:
        """Point features of sample ``index`` as this epoch draws them (augmented if enabled)."""
        traces = [t for t in self.samples[index].traces if len(t)]
        rng = self._rng(index)
        if rng is not None and traces:
            traces = self.ink_aug(traces, rng)
        return ink_features(traces, self.spec.spacing, self.spec.lengths[-1])

    def bucket_of(self, index: int) -> int:
        return self.spec.bucket(len(self.features(index)))

    def bucket_size(self, key: int) -> int:
        return self.spec.batch_size(key)

    def __getitem__(self, k: int) -> dict:
        length, items = self.batches[k]
        inputs, masks = pad_points([self.features(i) for i in items], length)
        return {
            "inputs": inputs,
            "masks": masks,
            "tokens": [self.vocab.encode(self.samples[i].tokens) for i in items],
            "ids": [self.samples[i].id for i in items],
        }
