"""Write the shipped examples: synthetic handwriting of a fixed list of formulas, with their truths.

The formulas were fixed before any was recognized, to cover the usual structures (powers,
fractions, roots, sums, limits, integrals, Greek letters, functions); each is written once with
seed 0 by ``hmer.synthesis`` from glyphs of the CROHME training writers, and none is dropped or
redrawn for how the model reads it. Needs the CROHME training ink (for the glyph bank)::

    python scripts/make_examples.py     # -> src/hmer/examples/NN-name.png and truth.tsv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from hmer.data.inkml import read_inkml
from hmer.data.latex import normalize_tokens
from hmer.data.render import render_natural
from hmer.synthesis.generate import synthesize
from hmer.synthesis.glyphs import load_bank

OUT = Path(__file__).resolve().parents[1] / "src" / "hmer" / "examples"
FORMULAS = {  # name: caption tokens (the scoring convention)
    "circle": r"x ^ { 2 } + y ^ { 2 } = r ^ { 2 }",
    "mean": r"\frac { a + b } { 2 }",
    "root": r"\sqrt { x + 1 }",
    "gauss": r"\sum _ { i = 1 } ^ { n } i = \frac { n ( n + 1 ) } { 2 }",
    "euler": r"e ^ { i \pi } + 1 = 0",
    "pythagoras": r"\sin ^ { 2 } \theta + \cos ^ { 2 } \theta = 1",
    "limit": r"\lim _ { x \rightarrow 0 } \frac { \sin x } { x } = 1",
    "integral": r"\int _ { 0 } ^ { 1 } x d x = \frac { 1 } { 2 }",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--train-inkml", help="training InkML folder or archive for the glyph bank")
    args = p.parse_args()
    bank = load_bank(args.train_inkml)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (name, caption) in enumerate(FORMULAS.items(), 1):
        tokens = caption.split()
        ink = synthesize(tokens, bank, np.random.default_rng(0))
        # Dark ink on white paper, as a scan or a photo of a page would be.
        image = 255 - render_natural(ink.traces)
        stem = f"{k:02d}-{name}"
        Image.fromarray(image).save(args.out / f"{stem}.png", optimize=True)
        rows.append(f"{stem}\t{caption}\n")
    # The first shipped example (example.png, drawn from example.inkml) keeps its place.
    first = read_inkml(OUT / "example.inkml").truth.strip("$ ")
    rows.insert(0, f"example\t{' '.join(normalize_tokens(first))}\n")
    (args.out / "truth.tsv").write_text("".join(rows))
    print(f"wrote {len(rows)} examples and truth.tsv to {args.out}")


if __name__ == "__main__":
    main()
