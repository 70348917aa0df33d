"""Tiny InkML documents written by the tests themselves (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n<ink xmlns="http://www.w3.org/2003/InkML">\n'


def _trace_text(points: np.ndarray) -> str:
    return ", ".join(" ".join(f"{v:g}" for v in p) for p in points)


def make_inkml(
    traces: list[np.ndarray], truth: str | None = "$x+1$", symbols: list[tuple[str, list[int]]] = ()
) -> str:
    """An InkML document with ``traces``, a truth annotation and optional symbol groups."""
    parts = [HEADER]
    if truth is not None:
        parts.append(f'<annotation type="truth">{truth}</annotation>\n')
    for i, t in enumerate(traces):
        parts.append(f'<trace id="{i}">{_trace_text(t)}</trace>\n')
    if symbols:
        parts.append("<traceGroup><annotation type='truth'>Segmentation</annotation>\n")
        for label, ids in symbols:
            parts.append(f"<traceGroup><annotation type='truth'>{label}</annotation>")
            parts.extend(f"<traceView traceDataRef='{i}'/>" for i in ids)
            parts.append("</traceGroup>\n")
        parts.append("</traceGroup>\n")
    parts.append("</ink>\n")
    return "".join(parts)


def x_plus_one() -> tuple[list[np.ndarray], list[tuple[str, list[int]]]]:
    """Strokes of "x + 1" and their segmentation."""
    t = np.linspace(0, 1, 10)[:, None]

    def line(x0, y0, x1, y1):
        return np.hstack([x0 + (x1 - x0) * t, y0 + (y1 - y0) * t])

    traces = [
        line(0, 0, 8, 10),
        line(8, 0, 0, 10),
        line(12, 5, 20, 5),
        line(16, 1, 16, 9),
        line(26, 0, 26, 10),
    ]
    return traces, [("x", [0, 1]), ("+", [2, 3]), ("1", [4])]


def write_inkml(path: Path, truth: str | None = "$x+1$", segmented: bool = True) -> Path:
    traces, symbols = x_plus_one()
    path.write_text(make_inkml(traces, truth, symbols if segmented else ()), encoding="utf-8")
    return path


ENTITY_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE ink [\n<!ENTITY a "aaaaaaaaaa">\n'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">\n]>\n'
    '<ink xmlns="http://www.w3.org/2003/InkML"><annotation type="truth">&c;</annotation>'
    '<trace id="0">0 0, 1 1</trace></ink>\n'
)

EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE ink [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    '<ink><annotation type="truth">&x;</annotation><trace id="0">0 0, 1 1</trace></ink>\n'
)
