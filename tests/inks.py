"""Tiny made-up handwriting for tests: glyph polylines written side by side."""

from __future__ import annotations

import numpy as np

# Glyphs as polylines in a unit box (y down); one list of strokes per token.
GLYPHS = {
    "x": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "+": [[(0, 0.5), (1, 0.5)], [(0.5, 0), (0.5, 1)]],
    "1": [[(0.2, 0.2), (0.5, 0), (0.5, 1)]],
    "-": [[(0, 0.5), (1, 0.5)]],
    "2": [[(0, 0.25), (0.5, 0), (1, 0.25), (0, 1), (1, 1)]],
}
EXPRESSIONS = [["x", "+", "1"], ["1", "-", "x"], ["2", "+", "x"]]


def write(tokens: list[str], scale: float = 50.0) -> list[np.ndarray]:
    """Pen traces of ``tokens`` written left to right, densified like tablet samples."""
    traces = []
    for i, tok in enumerate(tokens):
        for line in GLYPHS[tok]:
            pts = []
            for (x0, y0), (x1, y1) in zip(line[:-1], line[1:], strict=True):
                for a in np.linspace(0, 1, 8, endpoint=False):
                    pts.append((x0 + a * (x1 - x0), y0 + a * (y1 - y0)))
            pts.append(line[-1])
            traces.append((np.array(pts, np.float32) + [1.4 * i, 0]) * scale)
    return traces
