"""The one evaluation path, used by training, ``hmer evaluate`` and the benchmarks.

A sample goes the way a user's input goes: its ink becomes the model's input as ``hmer recognize``
makes it (a render, or point features for a stroke model; or a bitmap another tool drew; a
user's image sample is already prepared as ``hmer recognize`` prepares its file), is
decoded by :func:`hmer.decoding.recognize_batch`, gets the Recognizer's post-processing (the best
valid LaTeX, repaired when no hypothesis is valid), and is scored by
:func:`hmer.evaluation.metrics.score` (exact tokens by default: the field's convention).

Two ways to run it. :func:`evaluate` reads one expression at a time, as a user of
``hmer recognize`` waits for it (its latency is measured). :func:`evaluate_batched` decodes padded
batches of the training buckets' shapes, whose kernels a training process has prepared already:
training's cheap greedy validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hmer.data.batching import BucketSpec, pad_images
from hmer.data.dataset import Sample
from hmer.data.inkml import Ink
from hmer.data.strokes import StrokeSpec, pad_points
from hmer.decoding import recognize_batch
from hmer.decoding.limits import MAX_TOKENS
from hmer.evaluation.metrics import score
from hmer.models.base import model_device
from hmer.recognize import Recognizer


@dataclass
class Evaluation:
    """Scores (:func:`~hmer.evaluation.metrics.score`'s dict), and per-expression predictions,
    truths and milliseconds (for batches: each expression's share of its batch)."""

    metrics: dict
    predictions: dict[str, list[str]] = field(default_factory=dict)
    truths: dict[str, list[str]] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)

    def rows(self) -> list[str]:
        """``ID<TAB>prediction<TAB>truth`` lines, tokens space-separated, in sample order."""
        return [
            f"{k}\t{' '.join(self.predictions.get(k, []))}\t{' '.join(t)}"
            for k, t in self.truths.items()
        ]

    def latency_ms(self, q: float = 50) -> float:
        """A percentile of the per-expression milliseconds."""
        return round(float(np.percentile(list(self.ms.values()), q)), 1) if self.ms else 0.0


def _model_input(recognizer: Recognizer, sample: Sample) -> np.ndarray:
    """The model input of ``sample``: its prepared image, or its ink made the recognizer's way."""
    if sample.image is None:
        return recognizer.prepare_ink(sample.traces)
    if recognizer.input_kind != "image":
        raise ValueError(f"{sample.id}: an image, and model {recognizer.name} reads pen strokes")
    return sample.image


def _scored(samples: Sequence[Sample], preds: dict, ms: dict, normalize: str) -> Evaluation:
    truths = {s.id: list(s.tokens) for s in samples}
    return Evaluation(score(preds, truths, normalize=normalize), preds, truths, ms)


def evaluate(
    recognizer: Recognizer,
    samples: Sequence[Sample],
    beam: int = 10,
    normalize: str = "none",
    draw: Callable[[Sample], np.ndarray] | None = None,
) -> Evaluation:
    """Recognize each sample on its own, as ``hmer recognize`` does, and score the results.

    The ink is rendered (or made point features) by the recognizer; with ``draw`` an image
    model reads the bitmap ``draw(sample)`` instead, through the path of an image file
    (polarity, background, rescaling). Times include that preparation (not the drawing), as a
    user waits for it.
    """
    preds, ms = {}, {}
    for s in samples:
        bitmap = None if draw is None else draw(s)  # made before the clock starts
        t0 = time.perf_counter()
        if s.image is not None and bitmap is None:
            result = recognizer.recognize_prepared([_model_input(recognizer, s)], [s.id], beam)[0]
        elif bitmap is None:
            result = recognizer.recognize_ink(Ink(s.traces, source=s.id), beam=beam)
        else:
            result = recognizer.recognize_image(bitmap, s.id, beam=beam)
        ms[s.id] = 1000 * (time.perf_counter() - t0)
        preds[s.id] = result.tokens
    return _scored(samples, preds, ms, normalize)


def evaluate_batched(
    recognizer: Recognizer,
    samples: Sequence[Sample],
    spec: BucketSpec | None = None,
    beam: int = 1,
    normalize: str = "none",
    max_len: int = MAX_TOKENS,
) -> Evaluation:
    """Recognize the samples in batches padded to ``spec``'s bucket shapes, and score them.

    Inputs are made as in :func:`evaluate`; each bucket's batches hold as many inputs as a
    training batch of that bucket, so no shape is new to a process that trained with ``spec``.
    The caller chooses any autocast.
    """
    spec = spec or BucketSpec()
    strokes = recognizer.input_kind == "strokes"
    stroke_spec = StrokeSpec.from_bucket_spec(spec)
    inputs = {s.id: _model_input(recognizer, s) for s in samples}
    buckets: dict[object, list[str]] = {}
    for s in samples:  # sample order within each bucket, as an unshuffled training epoch
        x = inputs[s.id]
        key = stroke_spec.bucket(len(x)) if strokes else spec.bucket(*x.shape)
        buckets.setdefault(key, []).append(s.id)
    preds, ms = {}, {}
    device = model_device(recognizer.model)  # a model training on a GPU validates there
    for key, ids in buckets.items():
        size = stroke_spec.batch_size(key) if strokes else spec.batch_size(*key)
        for k in range(0, len(ids), size):
            chunk = ids[k : k + size]
            t0 = time.perf_counter()
            if strokes:
                x, masks = pad_points([inputs[i] for i in chunk], key)
            else:
                x, masks = pad_images([inputs[i] for i in chunk], spec)
                x = x.contiguous(memory_format=torch.channels_last)  # as training's batches
            x, masks = x.to(device), masks.to(device)
            with torch.inference_mode():
                hyps = recognize_batch(recognizer.model, x, masks, beam=beam, max_len=max_len)
            share = 1000 * (time.perf_counter() - t0) / len(chunk)
            for i, nbest in zip(chunk, hyps, strict=True):
                preds[i] = recognizer.postprocess(nbest, i).tokens
                ms[i] = share
    order = [s.id for s in samples]
    return _scored(samples, {i: preds[i] for i in order}, {i: ms[i] for i in order}, normalize)
