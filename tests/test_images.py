"""Bitmap normalization: any polarity, stroke width or size comes out like the training renders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hmer.data.images import ImageError, normalize_bitmap
from hmer.data.render import SYMBOL_PX


def scribble(symbol: int, width: int, dark_ink: bool, antialias: bool = False) -> np.ndarray:
    """Five zig-zag 'symbols' of ``symbol`` px in a row, drawn with Pillow."""
    ss = 4 if antialias else 1
    img = Image.new("L", ((6 * symbol + 40) * ss, (symbol + 40) * ss), 0)
    pen = ImageDraw.Draw(img)
    for k in range(5):
        x0, y0 = 20 + k * (symbol + symbol // 5), 20
        pts = [(x0, y0), (x0 + symbol, y0 + symbol // 3), (x0, y0 + 2 * symbol // 3)]
        pts.append((x0 + symbol, y0 + symbol))
        pen.line([(x * ss, y * ss) for x, y in pts], fill=255, width=width * ss)
    if ss > 1:
        img = img.resize((img.width // ss, img.height // ss), Image.Resampling.LANCZOS)
    arr = np.asarray(img)
    return 255 - arr if dark_ink else arr


@pytest.mark.parametrize(
    "symbol,width,dark,aa",
    [(28, 3, False, False), (80, 1, False, False), (80, 6, True, False), (150, 4, True, True)],
)
def test_symbols_come_out_at_training_size(symbol, width, dark, aa):
    out = normalize_bitmap(scribble(symbol, width, dark, aa))
    assert out.dtype == np.uint8
    assert out[0].max() == 0 and out[:, 0].max() == 0  # black margin: white ink on black
    assert out.max() == 255
    ink_height = out.shape[0] - 16  # 8 px padding each side
    # 1-px aliased diagonals are 8-connected only: counted as one symbol each, not as specks
    assert 0.8 * SYMBOL_PX < ink_height < 2.0 * SYMBOL_PX


def test_blank_image_is_refused():
    with pytest.raises(ImageError, match="no ink"):
        normalize_bitmap(np.full((50, 80), 255, np.uint8))
