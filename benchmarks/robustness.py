"""Accuracy of an image model on bitmaps drawn by another tool than its training renderer.

The CROHME 2014 test ink is drawn here with Pillow's line drawing (not hmer's renderer) in
styles that other tools and the published datasets use: binary white-on-black at ~28 px symbols
(like the official test bitmaps), whole expressions ~100 px high in either polarity, thin and
thick strokes, and a photo-like page (grey gradient paper, noise, JPEG). Each bitmap then goes
through the same path as ``hmer recognize photo.png`` (polarity detection, background
flattening, rescaling), so the table measures what a user with such images would get; the
milliseconds include that preparation (not the drawing), as in ``hmer evaluate``.

    python benchmarks/robustness.py                       # shipped image model, greedy, all 986
    python benchmarks/robustness.py --beam 10 --limit 300 --model runs/x/best.pt
    python benchmarks/robustness.py --write /tmp/crohme2014   # PNGs for `hmer recognize DIR`
    python benchmarks/robustness.py --write /tmp/styles --style 6px --style photo   # DIR/6px/...
    python benchmarks/robustness.py --style 6px --beam 10     # the reference and one style
    python benchmarks/robustness.py --split val.pkl --model a.pt   # choose changes on validation

Changes meant to close a style's gap are chosen with ``--split`` on validation ink (a pickle of
samples, as ``hmer evaluate --split`` takes), never on the 2014 test set the table reports.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hmer.data.render import ink_symbol_size
from hmer.evaluation.evaluate import evaluate
from hmer.recognize import Recognizer
from hmer.training.train import load_samples
from hmer.weights import load_any


@dataclass
class Style:
    key: str  # the name --style takes
    name: str
    symbol_px: float | None = None  # scale so the median symbol is this tall, or
    height_px: float | None = None  # scale so the whole expression is this tall
    line_width: int = 3
    antialias: bool = False
    dark_ink: bool = False  # black on white
    photo: bool = False
    margin: int = 12


STYLES = [
    Style(
        "official",
        "official-like: binary, white on black, 28 px symbols, 3 px lines",
        symbol_px=28,
    ),
    Style(
        "2px",
        "100 px high, black on white, 2 px antialiased",
        height_px=100,
        line_width=2,
        antialias=True,
        dark_ink=True,
    ),
    Style("1px", "100 px high, white on black, 1 px binary", height_px=100, line_width=1),
    Style(
        "6px", "100 px high, black on white, 6 px lines", height_px=100, line_width=6, dark_ink=True
    ),
    Style(
        "200px",
        "200 px high, black on white, 4 px antialiased",
        height_px=200,
        line_width=4,
        antialias=True,
        dark_ink=True,
    ),
    Style(
        "photo",
        "photo-like: 150 px high, grey gradient paper, noise, JPEG",
        height_px=150,
        line_width=3,
        antialias=True,
        dark_ink=True,
        photo=True,
    ),
]


def draw(traces: list[np.ndarray], style: Style, rng: np.random.Generator) -> np.ndarray:
    """Draw ink with Pillow in ``style``; returns an 8-bit grayscale bitmap."""
    pts = np.concatenate([t[:, :2] for t in traces])
    lo, hi = pts.min(0), pts.max(0)
    if style.symbol_px:
        scale = style.symbol_px / ink_symbol_size(traces)
    else:
        scale = style.height_px / max(hi[1] - lo[1], 1e-6)
    ss = 4 if style.antialias else 1  # supersampling factor
    w = int((hi[0] - lo[0]) * scale) + 2 * style.margin + 1
    h = int((hi[1] - lo[1]) * scale) + 2 * style.margin + 1
    img = Image.new("L", (w * ss, h * ss), 0)
    pen = ImageDraw.Draw(img)
    for t in traces:
        xy = [
            (
                (x - lo[0]) * scale * ss + style.margin * ss,
                (y - lo[1]) * scale * ss + style.margin * ss,
            )
            for x, y in t[:, :2]
        ]
        if len(xy) == 1:
            r = style.line_width * ss / 2
            pen.ellipse([xy[0][0] - r, xy[0][1] - r, xy[0][0] + r, xy[0][1] + r], fill=255)
        else:
            pen.line(xy, fill=255, width=style.line_width * ss, joint="curve")
    if ss > 1:
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(img, np.float32)
    if style.dark_ink:
        arr = 255.0 - arr
    if style.photo:
        paper = 200 + 40 * np.linspace(-1, 1, w)[None, :] * np.linspace(0.5, 1, h)[:, None]
        arr = paper * (arr / 255.0) + rng.normal(0, 8, arr.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=70)
        return np.asarray(Image.open(buf).convert("L"))
    return np.clip(arr, 0, 255).astype(np.uint8)


def save_preview(traces: list[np.ndarray], path: str) -> None:
    """One expression in every style, stacked on a mid-grey sheet."""
    rng = np.random.default_rng(0)
    tiles = [draw(traces, style, rng) for style in STYLES]
    width = max(t.shape[1] for t in tiles)
    sheet = np.full((sum(t.shape[0] + 8 for t in tiles), width), 128, np.uint8)
    y = 0
    for t in tiles:
        sheet[y : y + t.shape[0], : t.shape[1]] = t
        y += t.shape[0] + 8
    Image.fromarray(sheet).save(path)


def write_test_images(samples, out: Path, style: Style = STYLES[0]) -> None:
    """Bitmaps in ``style`` (official-like by default) and the caption-convention truth, for
    ``hmer recognize DIR``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in samples:
        Image.fromarray(draw(s.traces, style, rng)).save(out / f"{s.id}.png")
    (out / "truth.tsv").write_text("".join(f"{s.id}\t{' '.join(s.tokens)}\n" for s in samples))
    print(f"wrote {len(samples)} images ({style.key}) and truth.tsv to {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=".safetensors release or training .pt (default: shipped)")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="first N expressions (0 = all)")
    ap.add_argument(
        "--split", default="2014", help="CROHME split name or .pkl of samples (default 2014)"
    )
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--preview", help="write a PNG of one expression in every style, and stop")
    ap.add_argument(
        "--write",
        metavar="DIR",
        help="write the test set as PNGs (ID.png) and truth.tsv to DIR, and stop: official-like,"
        " or each --style in DIR/STYLE/",
    )
    ap.add_argument(
        "--style",
        action="append",
        choices=[s.key for s in STYLES],
        help="only this style (repeatable; default: every style in the table)",
    )
    args = ap.parse_args(argv)
    chosen = [s for s in STYLES if args.style is None or s.key in args.style]
    samples = load_samples(args.split)
    samples = samples[: args.limit] if args.limit else samples
    if args.preview:
        save_preview(samples[0].traces, args.preview)
        return
    if args.write:
        if args.style is None:
            write_test_images(samples, Path(args.write))
        else:
            for style in chosen:
                write_test_images(samples, Path(args.write) / style.key, style)
        return

    rec = Recognizer(*load_any(args.model))
    rows = [
        f"model `{rec.name}`, beam {args.beam}, {len(samples)} expressions of {args.split}",
        "",
        "| bitmap style | ExpRate | ≤1 | ≤2 | ms p50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    # hmer's own renderer, decoded directly: the reference the other rows are compared with
    styles: list[Style | None] = [None, *chosen]
    for style in styles:
        rng = np.random.default_rng(0)
        drawn = None
        if style is not None:
            drawn = lambda s, style=style, rng=rng: draw(s.traces, style, rng)  # noqa: E731
        m = evaluate(rec, samples, args.beam, draw=drawn)
        label = "hmer's renderer (training style; reference)" if style is None else style.name
        rates = m.metrics
        rows.append(
            f"| {label} | {rates['exprate']:.2f} | {rates['le1']:.2f} | {rates['le2']:.2f} "
            f"| {m.latency_ms(50):.0f} |"
        )
        print(rows[-1], flush=True)
    rows.append(f"\nmeasured {time.strftime('%Y-%m-%d')}")
    print("\n".join(rows))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
