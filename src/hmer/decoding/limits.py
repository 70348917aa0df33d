"""How many tokens decoding may write for one input, from the size of that input.

A hypothesis that never writes its end token runs to the length limit; with one fixed limit (200
tokens) every input pays for the longest. The captions an input can hold grow with its ink, and
hmer brings ink to one scale before a model reads it (renders and bitmaps with symbols of about
``SYMBOL_PX``, points resampled at a fraction of the symbol size), so the limit is a line in the
input's extent: for images in the encoder's frames (``STRIDE``-pixel columns and rows), for point
sequences in points. The lines are the tightest above every training caption (fitted by
``scripts/length_limits.py``, which also counts the validation and 2014 test truths they would
cut), times ``MARGIN`` for writers and layouts the training set lacks.
"""

from __future__ import annotations

import math

import torch

from hmer.models.encoders import STRIDE

# Tokens (end token included) before MARGIN: a + b * columns + c * rows of frames (images), or
# a + b * points (point sequences). Fitted on the CROHME training captions minus the 500 held
# out for validation.
IMAGE_LINE = (0.0, 1.211, 3.316)
STROKE_LINE = (4.169, 0.113)
# At 1.0 no training caption is cut, but 4 of the 986 CROHME 2014 test truths are (images; ink:
# 2); at 1.5, 2 (one of them longer than 200 tokens); at 2.0 none.
MARGIN = 2.0
# The most tokens any decode writes, whatever its input's size.
MAX_TOKENS = 200


def length_limit(input_kind: str, columns: float, rows: float = 0.0) -> int:
    """The limit for an input of ``columns`` x ``rows`` frames (image) or ``columns`` points."""
    if input_kind == "image":
        a, b, c = IMAGE_LINE
        line = a + b * columns + c * rows
    elif input_kind == "strokes":
        a, b = STROKE_LINE
        line = a + b * columns
    else:
        raise ValueError(f"unknown input kind {input_kind!r}")
    return math.ceil(MARGIN * line)


def length_limits(input_kind: str, masks: torch.Tensor, max_len: int) -> list[int]:
    """Each input's limit (at most ``max_len``) from its unpadded extent in ``masks`` (True at
    padding: (B,H,W) for images, (B,N) for point sequences)."""
    valid = ~masks
    if input_kind == "image":
        columns = (valid.any(1).sum(-1) + STRIDE - 1) // STRIDE
        rows = (valid.any(2).sum(-1) + STRIDE - 1) // STRIDE
        extents = zip(columns.tolist(), rows.tolist(), strict=True)
    else:
        extents = ((n, 0) for n in valid.sum(-1).tolist())
    return [min(max_len, length_limit(input_kind, c, r)) for c, r in extents]
