"""A corpus of hostile and broken inputs, and a runner that sends it through ``hmer serve``.

    python scripts/bad_inputs.py build DIR        # ~140 cases: DIR/files (images, InkML, odd
                                                  # files), DIR/json, DIR/cases.json
    python scripts/bad_inputs.py check DIR [--model M] [--beam 10]
        # start `hmer serve` on 127.0.0.1 (a tiny untrained model, or M), send every case once,
        # measure the wall time and the server's CPU seconds of each, print a summary

`hmer recognize DIR/files` runs the file cases through the command line. Each case says what is
expected: "result" (a recognition), "error" (a clear 4xx / an error line) or "any" (either, within
the bounds). Only 127.0.0.1 is ever contacted; every request has a timeout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HOST = "127.0.0.1"
NS = "http://www.w3.org/2003/InkML"
# Words that must never reach a user: internal class names and crash traces.
INTERNALS = (
    "Traceback",
    "UnidentifiedImageError",
    "DecompressionBombError",
    "EntitiesForbidden",
    "DTDForbidden",
    "ExternalReferenceForbidden",
    "ParseError",
    "RuntimeWarning",
    "Exception",
    "cannot convert float",
    "object has no attribute",
    "min() arg",
    "struct.error",
    "NoneType",
)


@dataclass
class Case:
    """One input: a file under ``files/`` or ``json/`` and how to send it over HTTP."""

    name: str
    path: str  # relative to the corpus folder
    expect: str  # "result", "error" or "any"
    send: str = "multipart"  # "multipart", "raw", "none" (CLI only)
    content_type: str = "image/png"
    filename: str | None = None  # multipart file name (default: the file's own)
    headers: dict = field(default_factory=dict)
    note: str = ""


# -- images ---------------------------------------------------------------------------------------
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def expression(size: tuple[int, int] = (220, 80), ink: int = 20, paper: int = 255) -> Image.Image:
    """A short handwritten-looking expression ("x + 1 =") in grayscale."""
    w, h = size
    img = Image.new("L", size, paper)
    d = ImageDraw.Draw(img)
    sx, sy = w / 220, h / 80
    for line in (
        [(15, 15), (45, 60)],
        [(45, 15), (15, 60)],
        [(65, 38), (100, 38)],
        [(82, 20), (82, 56)],
        [(120, 25), (130, 15), (130, 62)],
        [(150, 32), (185, 32)],
        [(150, 45), (185, 45)],
    ):
        d.line([(x * sx, y * sy) for x, y in line], fill=ink, width=max(2, round(4 * sy)))
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but whose data is a few bytes."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def fuzz(data: bytes, seed: int, flips: int = 12, keep: int = 16) -> bytes:
    """``data`` with ``flips`` random bytes changed after its first ``keep`` (the magic)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(min(keep, len(out) - 1), len(out))
        out[i] = rng.randrange(256)
    return bytes(out)


def dds_header(seed: int) -> bytes:
    """A DirectDraw Surface header with random fields and payload (a format hmer never reads)."""
    rng = random.Random(seed)
    return b"DDS " + (124).to_bytes(4, "little") + rng.randbytes(120) + rng.randbytes(400)


def spider_header(seed: int) -> bytes:
    """A SPIDER image header (float32 fields) with random values and payload."""
    rng = np.random.default_rng(seed)
    head = np.zeros(256, ">f4")
    head[[0, 1, 4, 11, 12]] = [1, 64, 1, 64, 1]  # nslice, nrow, iform, nsam, labrec
    head[rng.integers(0, 30, 8)] = rng.normal(0, 1e6, 8)
    return head.tobytes() + rng.bytes(2000)


def image_cases() -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, expectation, note) for the image files."""
    rng = np.random.default_rng(0)
    good = expression()
    png = _encode(good, "PNG")
    out: dict[str, tuple[bytes, str, str]] = {}

    def add(name: str, data: bytes, expect: str, note: str = "") -> None:
        out[name] = (data, expect, note)

    add("ok_expression.png", png, "result", "valid control case")
    add("ok_inverted.png", _encode(Image.eval(good, lambda v: 255 - v), "PNG"), "result")
    add("ok_large_photo.jpg", _encode(expression((4000, 1450), 60, 200), "JPEG"), "result")
    add("ok_tall.png", _encode(expression((300, 4000)), "PNG"), "result")
    add("ok.bmp", _encode(good, "BMP"), "result")
    add("ok.gif", _encode(good.convert("P"), "GIF"), "result")
    add("ok.webp", _encode(good, "WEBP"), "result")
    add("ok.tif", _encode(good, "TIFF"), "result")
    add("ok.pgm", _encode(good, "PPM"), "result")
    add("ok_cmyk.jpg", _encode(good.convert("CMYK"), "JPEG"), "result")
    add("ok_progressive.jpg", _encode(good, "JPEG", progressive=True), "result")
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.eval(good, lambda v: 255 - v))
    add("ok_rgba_ink_only.png", _encode(rgba, "PNG"), "result", "ink only in the alpha channel")
    a16 = np.full((80, 220), 65535, np.uint16)
    a16[np.asarray(good) < 128] = 20000
    add("gray16_ink.png", _encode(Image.fromarray(a16), "PNG"), "result", "16-bit grayscale")
    add(
        "gray16_blank.png",
        _encode(Image.fromarray(np.full((80, 220), 65535, np.uint16)), "PNG"),
        "error",
    )
    f32 = np.where(np.asarray(good) < 128, 0.1, 0.9).astype(np.float32)
    f32[0, :5] = np.nan
    add("float_nan.tif", _encode(Image.fromarray(f32), "TIFF"), "any", "mode F with NaN")
    i32 = np.where(np.asarray(good) < 128, -(2**30), 2**30).astype(np.int32)
    add("int32.tif", _encode(Image.fromarray(i32), "TIFF"), "any", "mode I")
    add("blank_white.png", _encode(Image.new("L", (200, 80), 255), "PNG"), "error")
    add("blank_black.png", _encode(Image.new("L", (200, 80), 0), "PNG"), "error")
    clear = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    add("fully_transparent.png", _encode(clear, "PNG"), "error")
    tiny = np.full((3, 3), 255, np.uint8)
    tiny[1, 1] = 0
    add("one_dark_pixel_3x3.png", _encode(Image.fromarray(tiny), "PNG"), "error")
    add("one_pixel.png", _encode(Image.new("L", (1, 1), 0), "PNG"), "error")
    blob = np.full((50, 50), 255, np.uint8)
    blob[20:23, 20:23] = 0
    add("blob_3x3.png", _encode(Image.fromarray(blob), "PNG"), "any", "ink is one 3x3 speck")
    specks = np.full((200, 200), 255, np.uint8)
    specks[rng.integers(0, 200, 6), rng.integers(0, 200, 6)] = 0
    add("few_specks.png", _encode(Image.fromarray(specks), "PNG"), "any")
    row = np.full((1, 20000), 255, np.uint8)
    row[0, 100:400] = 0
    add("line_1x20000.png", _encode(Image.fromarray(row), "PNG"), "any")
    add("line_20000x1.png", _encode(Image.fromarray(row.T.copy()), "PNG"), "any")
    noise = np.where(rng.random((1500, 1500)) < 0.08, 0, 255).astype(np.uint8)
    add("salt_pepper_1500.png", _encode(Image.fromarray(noise), "PNG"), "any", "~180k specks")
    noise = np.where(rng.random((3000, 3000)) < 0.3, 0, 255).astype(np.uint8)
    add("salt_pepper_3000.jpg", _encode(Image.fromarray(noise), "JPEG", quality=40), "any")
    dots = np.full((1200, 1200), 255, np.uint8)
    dots[4::12, 4::12] = 0
    dots[5::12, 4::12] = 0
    dots[4::12, 5::12] = 0
    add("dot_grid_10000.png", _encode(Image.fromarray(dots), "PNG"), "any", "10,000 marks")
    checker = (np.indices((2000, 2000)).sum(0) % 2 * 255).astype(np.uint8)
    add("checkerboard_2000.png", _encode(Image.fromarray(checker), "PNG"), "any")
    gradient = np.tile(np.linspace(0, 255, 1000, dtype=np.float32), (400, 1)).astype(np.uint8)
    add("gradient.png", _encode(Image.fromarray(gradient), "PNG"), "any")
    add(
        "big_bilevel_6000.png",
        _encode(Image.new("1", (6000, 6000), 1), "PNG"),
        "error",
        "36 Mpx of white: over the server's pixel limit, blank for the CLI",
    )
    add("declares_30000x30000.png", png_declaring(30000, 30000), "error", "decompression bomb")
    add("declares_1x2000000000.png", png_declaring(1, 2_000_000_000), "error")
    add("declares_0x0.png", png_declaring(0, 0), "error")
    gif = _encode(good.convert("P"), "GIF")
    add("declares_65535_gif.gif", gif[:6] + b"\xff\xff\xff\xff" + gif[10:], "error")
    bmp = bytearray(_encode(good, "BMP"))
    bmp[18:26] = (60000).to_bytes(4, "little") + (60000).to_bytes(4, "little")
    add("declares_60000_bmp.bmp", bytes(bmp), "error")
    jpg = _encode(good, "JPEG")
    sof = jpg.find(b"\xff\xc0")
    huge = jpg[: sof + 5] + b"\xff\xf0\xff\xf0" + jpg[sof + 9 :]
    add("declares_65520_jpeg.jpg", huge, "error")
    for name, data in (
        ("png", png),
        ("jpeg", jpg),
        ("gif", gif),
        ("bmp", bytes(_encode(good, "BMP"))),
        ("tif", _encode(good, "TIFF")),
        ("webp", _encode(good, "WEBP")),
    ):
        add(f"truncated_{name}.{name}", data[: len(data) // 2], "any", "cut in half")
    add("header_only.png", png[:33], "error")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF
    add("bad_crc.png", bytes(bad_crc), "any")
    for seed in range(4):
        add(f"fuzzed_png_{seed}.png", fuzz(png, seed), "any")
    for seed in range(3):
        add(f"fuzzed_jpeg_{seed}.jpg", fuzz(jpg, seed), "any")
        add(f"fuzzed_tiff_{seed}.tif", fuzz(_encode(good, "TIFF"), seed, keep=8), "any")
    for seed in range(2):
        add(f"fuzzed_gif_{seed}.gif", fuzz(gif, seed), "any")
        add(f"fuzzed_bmp_{seed}.bmp", fuzz(bytes(_encode(good, "BMP")), seed), "any")
        add(f"fuzzed_webp_{seed}.webp", fuzz(_encode(good, "WEBP"), seed), "any")
    for seed in range(4):
        add(f"fuzzed_dds_{seed}.png", dds_header(seed), "error", "DDS, a format never decoded")
        add(f"fuzzed_spider_{seed}.png", spider_header(seed), "error", "SPIDER")
    add(
        "eps_header.png",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "error",
        "EPS: would run Ghostscript if decoded",
    )
    add("psd_header.png", b"8BPS\x00\x01" + bytes(40), "error")
    add("fits_header.png", b"SIMPLE  =                    T" + b" " * 2850, "error")
    add("ico.png", _encode(good.resize((32, 32)), "ICO"), "error")
    add("empty.png", b"", "error")
    add("random_bytes.png", rng.bytes(5000), "error")
    add("text.png", b"hello, this is not an image\n" * 20, "error")
    add("html.png", b"<html><body><img src=x onerror=alert(1)></body></html>", "error")
    add("svg.png", b'<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L9 9"/></svg>', "error")
    return out


# -- InkML ----------------------------------------------------------------------------------------
def _trace(points) -> str:
    return ", ".join(" ".join(f"{v:g}" for v in p) for p in points)


def inkml(traces, head: str = '<?xml version="1.0" encoding="UTF-8"?>\n') -> str:
    body = "".join(f'<trace id="{i}">{_trace(t)}</trace>\n' for i, t in enumerate(traces))
    return f'{head}<ink xmlns="{NS}">\n<annotation type="truth">$x$</annotation>\n{body}</ink>\n'


def x_plus_one() -> list[list[tuple[float, float]]]:
    t = np.linspace(0, 1, 10)

    def line(x0, y0, x1, y1):
        return [(x0 + (x1 - x0) * s, y0 + (y1 - y0) * s) for s in t]

    return [line(0, 0, 8, 10), line(8, 0, 0, 10), line(12, 5, 20, 5), line(16, 1, 16, 9)]


SPREAD = [[[0, 0], [1, 1]], [[5, 0], [6, 1]], [[0, 0], [1000, 1000]]]  # from the issue: 165 s once


def inkml_cases() -> dict[str, tuple[bytes, str, str]]:
    rng = np.random.default_rng(1)
    good = inkml(x_plus_one())
    out: dict[str, tuple[bytes, str, str]] = {}

    def add(name: str, data: bytes | str, expect: str, note: str = "") -> None:
        out[name] = (data.encode() if isinstance(data, str) else data, expect, note)

    add("ok.inkml", good, "result")
    bare = good.split("?>\n", 1)[1]
    add("utf16le_bom.inkml", "\ufeff".encode("utf-16-le") + bare.encode("utf-16-le"), "result")
    add("utf16be_bom.inkml", b"\xfe\xff" + bare.encode("utf-16-be"), "result")
    add(
        "utf16le_declared.inkml",
        ('<?xml version="1.0" encoding="UTF-16"?>\n' + bare).encode("utf-16-le"),
        "result",
    )
    add("utf8_bom.inkml", b"\xef\xbb\xbf" + good.encode(), "result")
    add("latin1.inkml", good.replace("$x$", "$x$ écrit").encode("latin-1"), "result")
    add(
        "declares_utf16_but_utf8.inkml",
        good.replace('encoding="UTF-8"', 'encoding="UTF-16"'),
        "result",
    )
    add(
        "entity_bomb.inkml",
        '<?xml version="1.0"?><!DOCTYPE ink [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
        '<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
        f'<ink xmlns="{NS}"><annotation type="truth">&d;</annotation>'
        "<trace>0 0, 1 1</trace></ink>",
        "error",
    )
    add(
        "xxe_file.inkml",
        '<?xml version="1.0"?><!DOCTYPE ink [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<ink><annotation type="truth">&x;</annotation><trace>0 0, 1 1</trace></ink>',
        "error",
    )
    add(
        "external_dtd.inkml",
        '<?xml version="1.0"?><!DOCTYPE ink SYSTEM "http://127.0.0.1:9/x.dtd"><ink>'
        "<trace>0 0, 1 1</trace></ink>",
        "error",
    )
    short = "".join(f"<trace>{i} 0, {i} 1</trace>" for i in range(100_000))
    add("traces_100k.inkml", f'<ink xmlns="{NS}">{short}</ink>', "error", "100,000 short traces")
    add(
        "traces_1000.inkml",
        inkml([rng.normal(0, 50, (20, 2)) for _ in range(1000)]),
        "any",
        "1,000 scribbles, at the trace limit",
    )
    add("points_200k.inkml", inkml([rng.normal(0, 50, (200_000, 2))]), "error")
    add("no_commas_1m_numbers.inkml", f"<ink><trace>{'1 2 ' * 500_000}</trace></ink>", "any")
    add("coords_1e39.inkml", inkml([[(0, 0), (1e39, 1)]]), "error", "overflows float32")
    add("coords_1e300.inkml", inkml([[(0, 0), (1e300, 1)]]), "error")
    add("coords_2e6.inkml", inkml([[(0, 0), (2e6, 1)]]), "error")
    add("nan_coords.inkml", f'<ink xmlns="{NS}"><trace>0 0, NaN 1, 2 2</trace></ink>', "error")
    add("inf_coords.inkml", f'<ink xmlns="{NS}"><trace>0 0, inf 1, 2 2</trace></ink>', "error")
    add(
        "huge_times.inkml", inkml([[(0, 0, 1e20), (5, 5, 1e20 + 10), (10, 0, 1e20 + 20)]]), "result"
    )
    add("times_1e39.inkml", inkml([[(0, 0, 1e39), (5, 5, 1e39)]]), "error")
    add("spread.inkml", inkml(SPREAD), "any", "tiny strokes and one long one")
    dots = [[(i * 1e-3, 0), (i * 1e-3 + 1e-7, 1e-7)] for i in range(400)]
    add("dots_and_far_stroke.inkml", inkml([*dots, [(0, 0), (1e6, 1e6)]]), "any")
    add("single_point.inkml", inkml([[(5, 5)]]), "any")
    add("same_point_100.inkml", inkml([[(5, 5), (5, 5)]] * 100), "any")
    add("negative_mixed.inkml", inkml([[(-5, -5), (-1, -9)], [(-3, 0, 7), (4, 4, 9)]]), "any")
    add("one_coordinate.inkml", f'<ink xmlns="{NS}"><trace>1, 2, 3</trace></ink>', "error")
    add(
        "no_traces.inkml",
        f'<ink xmlns="{NS}"><annotation type="truth">x</annotation></ink>',
        "error",
    )
    add("empty.inkml", b"", "error")
    add("whitespace.inkml", b"  \n\t \n", "error")
    add("truncated.inkml", good[: len(good) // 2], "error")
    add("binary.inkml", rng.bytes(3000), "error")
    add("png_as_inkml.inkml", _encode(expression(), "PNG"), "error")
    add("deep_nesting.inkml", "<a>" * 20_000 + "</a>" * 20_000, "error")
    add(
        "comments_cdata_pi.inkml",
        f'<?xml version="1.0"?><!-- c --><?pi x?><ink xmlns="{NS}"><trace><![CDATA[0 0, 5 5, '
        "10 0]]></trace><!-- c --></ink>",
        "result",
    )
    add("huge_attribute.inkml", f'<ink a="{"x" * 2_000_000}"><trace>0 0, 5 5</trace></ink>', "any")
    add("unclosed_cdata.inkml", "<ink><trace><![CDATA[0 0, 1 1</trace></ink>", "error")
    return out


# -- JSON strokes (HTTP only) ---------------------------------------------------------------------
def json_cases() -> dict[str, tuple[bytes, str, str]]:
    rng = np.random.default_rng(2)
    out: dict[str, tuple[bytes, str, str]] = {}

    def add(name: str, data: bytes | str | dict, expect: str, note: str = "") -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        out[name] = (data.encode() if isinstance(data, str) else data, expect, note)

    good = [[list(p) for p in t] for t in x_plus_one()]
    add("ok.json", {"strokes": good}, "result")
    add(
        "ok_times.json",
        {"strokes": [[[x, y, 1.7e12 + i] for i, (x, y) in enumerate(t)] for t in good]},
        "result",
    )
    add("spread_issue.json", {"strokes": SPREAD}, "any", "the 1.4 KB body that took 165 s")
    dots = [[[i * 3, 0], [i * 3 + 0.01, 0.01]] for i in range(400)]
    add("dots_and_far_stroke.json", {"strokes": [*dots, [[0, 0], [900_000, 900_000]]]}, "any")
    pts = rng.normal(0, 300, (50_000, 2)).round(1).tolist()
    add(
        "points_50000.json",
        {"strokes": [pts[i : i + 100] for i in range(0, 50_000, 100)]},
        "any",
        "at the point limit",
    )
    add("points_50001.json", {"strokes": [pts, [[0, 0]]]}, "error")
    add("strokes_501.json", {"strokes": [[[i, i]] for i in range(501)]}, "error")
    add("brackets_1m.json", b"[" * 1_000_000, "error")
    add("nesting_20000.json", b"[" * 20_000 + b"]" * 20_000, "error")
    add("nan.json", b'{"strokes": [[[0, NaN], [1, 1]]]}', "error")
    add("infinity.json", b'{"strokes": [[[0, 0], [Infinity, 1]]]}', "error")
    add("1e999.json", b'{"strokes": [[[0, 0], [1e999, 1]]]}', "error")
    add("int_1000_digits.json", b'{"strokes": [[[0, ' + b"9" * 1000 + b"]]]}", "error")
    add("int_5000_digits.json", b'{"strokes": [[[0, ' + b"9" * 5000 + b"]]]}", "error")
    add("long_decimals.json", b'{"strokes": [[[0.' + b"1" * 100_000 + b", 0], [5, 5]]]}", "any")
    add("strings.json", {"strokes": [[["0", "1"]]]}, "error")
    add("bools.json", {"strokes": [[[True, False]]]}, "error")
    add("null_strokes.json", {"strokes": None}, "error")
    add("empty_strokes.json", {"strokes": []}, "error")
    add("not_object.json", b"[1, 2, 3]", "error")
    add("empty_body.json", b"", "error")
    add("bad_utf8.json", b'{"strokes": "\xff\xfe"}', "error")
    add("truncated.json", b'{"strokes": [[[0, 0], [1', "error")
    add("beam_1000.json", {"strokes": good, "beam": 1000}, "error")
    add("beam_negative.json", {"strokes": good, "beam": -1}, "error")
    add("model_unknown.json", {"strokes": good, "model": "../../etc/passwd"}, "error")
    add("style_bad.json", {"strokes": good, "style": "<script>"}, "error")
    add("many_keys.json", {f"k{i}": i for i in range(100_000)}, "error")
    add("long_string.json", {"strokes": "x" * 3_000_000}, "error")
    add(
        "body_5mb.json",
        b'{"strokes": [[[0, 0]]], "pad": "' + b"x" * (5 << 20) + b'"}',
        "error",
        "over the JSON body limit",
    )
    return out


# -- building ------------------------------------------------------------------------------------
def build(folder: str | Path) -> list[Case]:
    """Write the corpus into ``folder`` (files/, json/, cases.json); returns its cases."""
    folder = Path(folder)
    files, jsons = folder / "files", folder / "json"
    files.mkdir(parents=True, exist_ok=True)
    jsons.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for name, (data, expect, note) in image_cases().items():
        (files / name).write_bytes(data)
        ctype = "image/png" if not name.endswith((".jpg", ".gif")) else "image/jpeg"
        cases.append(Case(name, f"files/{name}", expect, "multipart", ctype, note=note))
    for name, (data, expect, note) in inkml_cases().items():
        (files / name).write_bytes(data)
        cases.append(
            Case(name, f"files/{name}", expect, "multipart", "application/octet-stream", note=note)
        )
    for name, (data, expect, note) in json_cases().items():
        (jsons / name).write_bytes(data)
        cases.append(Case(name, f"json/{name}", expect, "raw", "application/json", note=note))
    # The same bytes sent in other ways.
    cases += [
        Case("inkml_raw_body", "files/ok.inkml", "result", "raw", "application/inkml+xml"),
        Case(
            "inkml_as_octets",
            "files/utf16le_bom.inkml",
            "result",
            "raw",
            "application/octet-stream",
        ),
        Case(
            "inkml_named_png",
            "files/ok.inkml",
            "result",
            filename="drawing.png",
            content_type="image/png",
            note="sniffed as XML",
        ),
        Case("image_raw_body", "files/ok_expression.png", "result", "raw", "image/png"),
        Case(
            "traversal_name", "files/ok_expression.png", "result", filename="../../../../etc/passwd"
        ),
        Case("long_name", "files/ok_expression.png", "any", filename="a" * 5000 + ".png"),
        Case("text_content_type", "files/ok_expression.png", "error", "raw", "text/plain"),
        Case(
            "wrong_host",
            "files/ok_expression.png",
            "error",
            "raw",
            "image/png",
            headers={"host": "attacker.example:8000"},
            note="DNS rebinding",
        ),
        Case(
            "cross_origin",
            "files/ok_expression.png",
            "error",
            headers={"origin": "https://attacker.example"},
            note="cross-site form post",
        ),
        Case(
            "cross_site_fetch",
            "json/ok.json",
            "error",
            "raw",
            "application/json",
            headers={"sec-fetch-site": "cross-site"},
        ),
        Case(
            "null_origin",
            "json/ok.json",
            "error",
            "raw",
            "application/json",
            headers={"origin": "null"},
        ),
    ]
    # Oversize and non-regular files.
    with open(files / "oversize_11mb.png", "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(11 * 1024 * 1024)  # sparse: costs no disk
    cases.append(Case("oversize_11mb.png", "files/oversize_11mb.png", "error"))
    (files / "folder.png").mkdir(exist_ok=True)
    cases.append(Case("folder.png", "files/folder.png", "error", "none"))
    if hasattr(os, "mkfifo"):
        fifo = files / "fifo.png"
        if not fifo.exists():
            os.mkfifo(fifo)
        cases.append(Case("fifo.png", "files/fifo.png", "error", "none", note="would block"))
        fifo = files / "fifo.inkml"
        if not fifo.exists():
            os.mkfifo(fifo)
        cases.append(Case("fifo.inkml", "files/fifo.inkml", "error", "none"))
    if Path("/dev/zero").exists():
        link = files / "dev_zero.png"
        if not link.is_symlink():
            link.symlink_to("/dev/zero")
        cases.append(Case("dev_zero.png", "files/dev_zero.png", "error", "none"))
    dangling = files / "dangling.inkml"
    if not dangling.is_symlink():
        dangling.symlink_to(folder / "nowhere.inkml")
    cases.append(Case("dangling.inkml", "files/dangling.inkml", "error", "none"))
    (folder / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1))
    return cases


def load_cases(folder: str | Path) -> list[Case]:
    return [Case(**c) for c in json.loads((Path(folder) / "cases.json").read_text())]


# -- sending --------------------------------------------------------------------------------------
def send(client, url: str, folder: Path, case: Case) -> tuple[int, dict | None, float]:
    """POST ``case`` to ``url``/v1/recognize; (status, JSON body or None, seconds)."""
    import httpx

    data = (folder / case.path).read_bytes()
    t0 = time.perf_counter()
    try:
        if case.send == "multipart":
            name = case.filename or Path(case.path).name
            files = {"file": (name, data, case.content_type)}
            r = client.post(url + "/v1/recognize", files=files, headers=case.headers)
        else:
            headers = {"content-type": case.content_type, **case.headers}
            r = client.post(url + "/v1/recognize", content=data, headers=headers)
    except httpx.HTTPError:
        return 0, None, time.perf_counter() - t0
    try:
        body = r.json()
    except ValueError:
        body = None
    return r.status_code, body, time.perf_counter() - t0


def problems(case: Case, status: int, body: dict | None) -> list[str]:
    """What is wrong with the answer to ``case`` (empty when it is acceptable)."""
    out = []
    if status == 0:
        out.append("no answer (connection failed or timed out)")
    elif status >= 500 and not (status == 503 and body and body.get("code") == "timeout"):
        out.append(f"server error {status}")
    if status == 200 and case.expect == "error":
        out.append("a result where an error was expected")
    if status not in (0, 200) and case.expect == "result":
        out.append(f"error {status} where a result was expected: {body}")
    if status and (not isinstance(body, dict) or ("detail" not in body and status != 200)):
        out.append(f"answer is not the JSON expected: {body!r:.200}")
    text = json.dumps(body)
    out += [f"internal detail {w!r} in the answer" for w in INTERNALS if w in text]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model: str | None,
    port: int,
    workers: int = 2,
    threads: int = 1,
    beam: int | None = None,
    timeout: float = 3.0,
) -> subprocess.Popen:
    """``hmer serve`` on 127.0.0.1:``port`` (the shipped models when ``model`` is None)."""
    cmd = [
        sys.executable,
        "-m",
        "hmer.cli",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
    ]
    if model:
        cmd += ["--model", model, "--stroke-model", "none"]
    if beam:
        cmd += ["--beam", str(beam)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives with the server; a full pipe would block it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def server_log(proc: subprocess.Popen) -> str:
    """What the server wrote to stderr so far."""
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read().decode(errors="replace")  # type: ignore[attr-defined]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {server_log(proc)[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tiny_model(path: Path) -> str:
    """Write a tiny untrained image model (what the tests serve) to ``path``."""
    import torch

    from hmer.data.vocab import Vocab
    from hmer.models import create_model
    from hmer.weights import save_release

    torch.manual_seed(0)
    cfg = {
        "name": "transformer",
        "encoder_cfg": {"growth": 4, "depth": 2},
        "d_model": 32,
        "nhead": 2,
        "num_layers": 1,
        "ffn": 64,
    }
    vocab = Vocab(["x", "+", "1", "2", "=", "\\frac", "{", "}"])
    model = create_model("transformer", len(vocab), **{k: v for k, v in cfg.items() if k != "name"})
    return str(save_release(model, cfg, vocab, path, fp16=False))


def check(
    folder: Path, model: str | None, beam: int | None, workers: int, threads: int, timeout: float
) -> dict:
    """Serve, send every case once (in order, one at a time), measure, stop; the report."""
    import httpx

    cases = [c for c in load_cases(folder) if c.send != "none"]
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start_server(model, port, workers, threads, beam, timeout)
    rows = []
    try:
        wait_ready(url, proc)
        with httpx.Client(timeout=60) as client:
            send(client, url, folder, Case("warm", "files/ok_expression.png", "result"))
            rss_start = rss_mb(proc.pid)
            peak = rss_start
            for case in cases:
                cpu0 = cpu_seconds(proc.pid)
                status, body, seconds = send(client, url, folder, case)
                cpu = cpu_seconds(proc.pid) - cpu0
                peak = max(peak, rss_mb(proc.pid))
                rows.append(
                    {
                        "case": case.name,
                        "status": status,
                        "seconds": round(seconds, 3),
                        "cpu_s": round(cpu, 2),
                        "code": (body or {}).get("code"),
                        "problems": problems(case, status, body),
                    }
                )
            alive = client.get(url + "/healthz").status_code == 200
            rss_end = rss_mb(proc.pid)
            crashes = server_log(proc).count("Traceback")
    finally:
        t0 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_s = time.monotonic() - t0
    worst = sorted(rows, key=lambda r: -r["cpu_s"])[:5]
    return {
        "server": model or "shipped models",
        "cases": len(rows),
        "results": sum(r["status"] == 200 for r in rows),
        "client_errors": sum(400 <= r["status"] < 500 for r in rows),
        "timeouts_503": sum(r["code"] == "timeout" for r in rows),
        "server_errors": sum(r["status"] >= 500 and r["code"] != "timeout" for r in rows),
        "no_answer": sum(r["status"] == 0 for r in rows),
        "problems": [f"{r['case']}: {p}" for r in rows for p in r["problems"]],
        "max_cpu_s": max(r["cpu_s"] for r in rows),
        "max_seconds": max(r["seconds"] for r in rows),
        "worst_cpu": [(r["case"], r["cpu_s"], r["status"]) for r in worst],
        "alive_after": alive,
        "tracebacks_in_server_log": crashes,
        "rss_mb": {"start": round(rss_start), "peak": round(peak), "end": round(rss_end)},
        "sigterm_exit_s": round(stop_s, 2),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the corpus")
    b.add_argument("folder")
    c = sub.add_parser("check", help="serve, send every case, report")
    c.add_argument("folder")
    c.add_argument("--model", help="model file (default: a tiny untrained one; 'shipped')")
    c.add_argument("--beam", type=int)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--timeout", type=float, default=3.0, help="server --timeout")
    c.add_argument("--json", action="store_true", help="the full report, every case, as JSON")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if args.command == "build":
        print(f"wrote {len(build(folder))} cases to {folder}")
        return 0
    if not (folder / "cases.json").exists():
        build(folder)
    model = args.model
    if model is None:
        model = tiny_model(folder / "tiny.safetensors")
    elif model == "shipped":
        model = None
    report = check(folder, model, args.beam, args.workers, args.threads, args.timeout)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        shown = {k: v for k, v in report.items() if k != "rows"}
        for key, value in shown.items():
            print(f"{key:>16}: {value}")
    return 1 if report["problems"] or not report["alive_after"] else 0


if __name__ == "__main__":
    sys.exit(main())
