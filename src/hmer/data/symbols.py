"""Single symbols: cut from segmented ink, labelled with caption tokens, drawn as small bitmaps.

A CROHME ``<traceGroup>`` names the traces of one symbol and its label (``\\alpha``, ``\\lt``,
``COMMA``...). :func:`symbol_token` maps the label to the caption token it stands for, the way the
captions are normalized (:func:`hmer.data.latex.normalize_tokens`); :func:`cut_symbols` cuts an
expression into labelled stroke groups. :func:`render_symbol` draws strokes, and
:func:`symbol_bitmap` brings a user's bitmap, into the fixed-size, aspect-preserving, white-on-black
square the symbol classifier reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from hmer.data.images import load_gray, normalize_bitmap, stroke_width
from hmer.data.inkml import Ink
from hmer.data.latex import normalize_tokens
from hmer.data.render import RenderStyle, render_fixed

# Labels some CROHME files spell as words instead of the LaTeX the captions use.
SYMBOL_NAMES = {"COMMA": ","}
PADDING = 2  # pixels of margin around the symbol in a crop of 32; scaled with the crop size
LINE_WIDTH = 3.0  # stroke width of a crop of 32 at inference (training draws 1.5 to 4)


@dataclass
class SymbolInk:
    """One segmented symbol: its caption token and its strokes (x, y; y down)."""

    token: str
    strokes: list[np.ndarray]


def symbol_token(label: str, tokens: Collection[str]) -> str | None:
    """The caption token a traceGroup label stands for, or None if it is not one of ``tokens``.

    ``\\lt`` becomes ``<``, ``\\ne`` ``\\neq``, ``COMMA`` ``,``; a label that normalizes to
    several tokens (or none) is not a symbol.
    """
    label = label.strip()
    label = SYMBOL_NAMES.get(label, label)
    norm = normalize_tokens(label)
    return norm[0] if len(norm) == 1 and norm[0] in tokens else None


def cut_symbols(ink: Ink, tokens: Collection[str]) -> tuple[list[SymbolInk], Counter]:
    """The labelled symbols of a segmented expression, and a count of the labels skipped.

    A label that is not a token of ``tokens`` is counted under its own spelling; a group that
    names no trace of the file is counted as ``"<no traces>"``.
    """
    index = {tid: i for i, tid in enumerate(ink.trace_ids)}
    out, skipped = [], Counter()
    for sym in ink.symbols:
        strokes = [ink.traces[index[t]][:, :2] for t in sym.trace_ids if t in index]
        token = symbol_token(sym.label, tokens)
        if token is None:
            skipped[sym.label] += 1
        elif not strokes:
            skipped["<no traces>"] += 1
        else:
            out.append(SymbolInk(token, strokes))
    return out, skipped


def inference_style(size: int) -> RenderStyle:
    """How strokes are drawn for classification: the middle of the training line widths."""
    return RenderStyle(line_width=LINE_WIDTH * size / 32, antialias=True)


def render_symbol(
    strokes: list[np.ndarray], size: int = 32, style: RenderStyle | None = None
) -> np.ndarray:
    """Strokes as a ``size`` x ``size`` uint8 square, white on black: the symbol's box scaled to
    fill the square (less a margin) with its aspect ratio kept, centred."""
    pad = max(1, round(PADDING * size / 32))
    return render_fixed(strokes, (size, size), pad, style or inference_style(size))


def symbol_bitmap(data, size: int = 32, source: str = "<image>") -> np.ndarray:
    """A user's image of one symbol (bytes, path, array) as the classifier's square.

    The ink is found as for expressions (either polarity, uneven light flattened), cropped,
    thickened where its strokes would be thinner than the renders' after the resize, and fitted
    into the square like :func:`render_symbol`. Raises :class:`hmer.data.images.ImageError` for
    unreadable or blank images.
    """
    # Drawn a few times larger than the square, so the fit below averages detail away, not in.
    crop = normalize_bitmap(
        load_gray(data, source), 4.0 * size, source, (8 * size, 8 * size), line_widths=None
    )
    crop = crop[8:-8, 8:-8]  # normalize_bitmap's padding
    pad = max(1, round(PADDING * size / 32))
    scale = (size - 2 * pad) / max(crop.shape)
    want = inference_style(size).line_width / scale  # stroke width wanted before the resize
    have = stroke_width(crop > 127)
    if have < want:
        grow = int(round(want - have))
        if grow > 0:  # padded first: the thicker strokes reach past the tight crop
            crop = ndimage.grey_dilation(np.pad(crop, grow), size=(grow + 1, grow + 1))
    h, w = crop.shape
    scale = (size - 2 * pad) / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.Resampling.BOX))
    top = small.max()
    if top > 0:  # stroke cores at full white, as in the renders
        small = np.clip(small.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    out = np.zeros((size, size), np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out
