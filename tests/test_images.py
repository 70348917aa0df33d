"""Bitmap normalization: any polarity, stroke width or size comes out like the training renders."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from hmer.data.images import (
    LINE_WIDTH_RANGE,
    MAX_SIZE,
    ImageError,
    load_gray,
    normalize_bitmap,
    prepare_image,
    stroke_width,
)
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


def test_other_tools_line_widths_come_out_in_the_training_range():
    # Symbols 24 px high drawn 1 px and 8 px wide (a hairline pen, a marker) leave normalization
    # within the renders' widths; a 3 px line, as hmer renders, is left as drawn.
    lo, hi = LINE_WIDTH_RANGE
    for width in (1, 8):
        raw = normalize_bitmap(scribble(24, width, False), line_widths=None)
        out = normalize_bitmap(scribble(24, width, False))
        assert not lo <= stroke_width(raw > 127) <= hi
        assert abs(stroke_width(out > 127) - 3.4) < abs(stroke_width(raw > 127) - 3.4)
    drawn = scribble(24, 3, False)
    assert np.array_equal(normalize_bitmap(drawn), normalize_bitmap(drawn, line_widths=None))


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


# -- hostile and odd images: a clear ImageError or a bounded result, nothing else ------------------
def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_specks_only_is_a_clear_error_not_a_crash():
    tiny = np.full((3, 3), 255, np.uint8)
    tiny[1, 1] = 0  # one dark pixel: a speck, which normalization drops
    with pytest.raises(ImageError, match="no ink"):
        prepare_image(_png(tiny), "specks.png")


@pytest.mark.parametrize("shape", [(1, 20000), (20000, 1), (1, 1), (2, 3)])
def test_degenerate_shapes_give_an_error_or_a_bounded_image(shape):
    arr = np.full(shape, 255, np.uint8)
    arr.flat[: max(1, arr.size // 3)] = 0
    try:
        out = prepare_image(_png(arr), "odd.png")
    except ImageError as exc:
        assert "odd.png" in str(exc)
    else:
        assert out.shape[0] <= MAX_SIZE[0] and out.shape[1] <= MAX_SIZE[1]


def test_noise_and_huge_ink_are_reduced_to_the_largest_training_bucket():
    from hmer.data.batching import BucketSpec

    assert (BucketSpec.heights[-1], BucketSpec.widths[-1]) == MAX_SIZE
    rng = np.random.default_rng(0)
    noise = np.where(rng.random((1500, 1500)) < 0.08, 0, 255).astype(np.uint8)  # ~180k specks
    wide = scribble(400, 12, dark_ink=True)  # 2440 px wide at 400 px symbols
    for arr in (noise, wide, np.tile(wide, (1, 4))):
        out = prepare_image(arr, "big")
        assert out.shape[0] <= MAX_SIZE[0] and out.shape[1] <= MAX_SIZE[1], out.shape


def test_sixteen_bit_grayscale_is_read_not_blank():
    ink = scribble(28, 3, dark_ink=True) < 128
    a16 = np.full(ink.shape, 65535, np.uint16)
    a16[ink] = 20000  # dark ink, but above 255: an 8-bit clip would make it all white
    gray = load_gray(_png(a16))
    assert gray.dtype == np.uint8 and gray[ink].max() < 100 and gray[~ink].min() > 200
    assert normalize_bitmap(gray).max() == 255
    with pytest.raises(ImageError, match="no ink"):
        prepare_image(_png(np.full((80, 220), 65535, np.uint16)))


@pytest.mark.parametrize(
    "data",
    [
        b"DDS " + (124).to_bytes(4, "little") + bytes(range(256)) * 3,
        np.zeros(256, ">f4").tobytes() + bytes(2000),  # SPIDER-like header
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # would run Ghostscript
        b"8BPS\x00\x01" + bytes(40),
        b"\x89PNG\r\n\x1a\n" + bytes(30),
        b"not an image at all",
    ],
)
def test_unsupported_or_broken_formats_are_refused_in_plain_words(data):
    with pytest.raises(ImageError) as info:
        load_gray(data, "up.png")
    message = str(info.value)
    assert message.startswith("up.png: ") and "Error" not in message and "(" in message


def test_truncated_and_fuzzed_images_only_raise_image_errors():
    import io
    import random

    buf = io.BytesIO()
    Image.fromarray(scribble(28, 3, dark_ink=True)).save(buf, "PNG")
    png = buf.getvalue()
    rng = random.Random(0)
    for k in range(40):
        data = bytearray(png[: rng.randrange(8, len(png))] if k % 2 else png)
        for _ in range(8):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        with contextlib.suppress(ImageError):
            prepare_image(bytes(data), "fuzz.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_and_device_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            load_gray(fifo)
        except ImageError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)  # reading a FIFO with no writer blocks forever
    assert outcome and "not a regular file" in outcome[0]
    if Path("/dev/zero").exists():
        with pytest.raises(ImageError, match="not a regular file"):
            load_gray("/dev/zero")
