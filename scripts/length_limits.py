"""Fit the decoding length limits of ``hmer.decoding.limits`` and count the truths they would cut.

Each training expression is made into the input a model reads (the render of ``hmer recognize``
for image models, point features for stroke models); its caption length plus the end token must
fit under the limit. The fitted line is the one of smallest mean over the training expressions
that no training expression exceeds (a linear program). The script prints that fit and, for the
limits the module uses (the lines there, times its margin, capped at ``--max-len``), how many
truths of the training, validation (the 500 held out, as training holds them out) and 2014 test
sets they cut, and by how much the nearest stays under::

    python scripts/length_limits.py          # about 2 CPU-minutes
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import linprog

from hmer.data.dataset import load_cached
from hmer.data.render import render_natural
from hmer.data.strokes import ink_features
from hmer.decoding.limits import IMAGE_LINE, MARGIN, STROKE_LINE, length_limit
from hmer.models.encoders import STRIDE
from hmer.recognize import MAX_IMAGE_SIZE, MAX_SEQUENCE
from hmer.training.config import DataConfig
from hmer.training.train import split_holdout


def extents(samples) -> dict[str, np.ndarray]:
    """Tokens + 1, frame columns and rows of the render, and points, of each sample."""
    rows = []
    for s in samples:
        img = render_natural(s.traces, max_size=MAX_IMAGE_SIZE)
        points = len(ink_features(s.traces, max_points=MAX_SEQUENCE))
        rows.append(
            (len(s.tokens) + 1, -(-img.shape[1] // STRIDE), -(-img.shape[0] // STRIDE), points)
        )
    a = np.array(rows, float)
    return {"length": a[:, 0], "columns": a[:, 1], "rows": a[:, 2], "points": a[:, 3]}


def fit(length: np.ndarray, features: list[np.ndarray]) -> np.ndarray:
    """Non-negative (a, b, ...) of least mean a + b*f1 + ... with no ``length`` above it."""
    x = np.stack([np.ones_like(length), *features], 1)
    res = linprog(x.mean(0), A_ub=-x, b_ub=-length, bounds=[(0, None)] * x.shape[1])
    if not res.success:
        raise RuntimeError(res.message)
    return res.x


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-len", type=int, default=200, help="the explicit cap decoding keeps")
    args = p.parse_args(argv)
    data = DataConfig()
    train, val = split_holdout(load_cached("train").samples, data.val_size, by=data.val_split)
    sets = {
        "train": extents(train),
        "val": extents(val),
        "2014": extents(load_cached("2014").samples),
    }
    t = sets["train"]
    image = fit(t["length"], [t["columns"], t["rows"]])
    strokes = fit(t["length"], [t["points"]])
    print(f"fit on {len(train)} training captions (a + b*columns + c*rows; a + b*points):")
    print(f"  image   {np.round(image, 3).tolist()}   in use {list(IMAGE_LINE)}")
    print(f"  strokes {np.round(strokes, 3).tolist()}   in use {list(STROKE_LINE)}")
    print(f"limits in use: margin {MARGIN}, capped at {args.max_len}")
    for kind in ("image", "strokes"):
        for name, e in sets.items():
            if kind == "image":
                extent = zip(e["columns"], e["rows"], strict=True)
            else:
                extent = ((n, 0.0) for n in e["points"])
            limit = np.array([min(args.max_len, length_limit(kind, c, r)) for c, r in extent])
            slack = limit - e["length"]
            capped = e["length"] > args.max_len
            print(
                f"  {kind:7} {name:5} {len(limit):5} truths: {int((slack < 0).sum())} cut "
                f"({int(capped.sum())} longer than the cap itself), the nearest of the others "
                f"{slack[~capped].min():+.0f} tokens under; mean limit {limit.mean():.0f} "
                f"(truth {e['length'].mean():.0f})"
            )


if __name__ == "__main__":
    main()
