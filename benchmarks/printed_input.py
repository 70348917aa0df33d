"""Printed formulas as input: the truths to render, and scores per font family.

The shipped models never saw printed renders, so any font measures how they read a pasted
screenshot of a typeset formula. Two sets of CROHME-vocabulary formulas the models did not train
on: the random validation hold-out of the training captions (``hmer.training.train.
split_holdout`` with the training defaults, the 500 the shipped models were selected on but not
trained on) and im2latex test formulas whose caption tokens are all in the vocabulary
(``hmer.synthesis.generate.read_im2latex``).

    python benchmarks/printed_input.py truths OUT           # OUT/holdout.tsv, OUT/im2latex.tsv
    hmer data render-latex OUT/holdout.tsv -o OUT/holdout --seed 1 --quiet
    hmer recognize OUT/holdout --format tsv --beam 1 > OUT/holdout.pred.tsv
    python benchmarks/printed_input.py by-font OUT/holdout.pred.tsv OUT/holdout --holdout

With ``truths --ink`` the hold-out's own handwriting is rendered too (OUT/holdout-ink, as
training renders ink), to score the same expressions written and printed.

``by-font`` scores a prediction file against the render folder's captions.tsv, in all and per
font of its styles.tsv (ExpRate, within 1 and 2 edits), and says how many truths also occur as
training captions (CROHME repeats formulas across writers, so a random hold-out shares many).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hmer.data.dataset import (
    Sample,
    Split,
    default_data_dir,
    read_captions,
    read_tsv,
    render_split,
    write_tsv,
)
from hmer.data.printed import FONTS


def holdout() -> tuple[list[Sample], set[tuple[str, ...]]]:
    """The validation hold-out of the default training config, and the token sequences of the
    expressions that stayed in training."""
    from hmer.training.config import DataConfig
    from hmer.training.train import load_samples, split_holdout

    dc = DataConfig()
    train, val = split_holdout(load_samples(dc.train), dc.val_size, by=dc.val_split)
    return val, {tuple(s.tokens) for s in train}


def cmd_truths(args: argparse.Namespace) -> None:
    from hmer.data.vocab import SPECIALS, Vocab
    from hmer.synthesis.generate import read_im2latex

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held, _ = holdout()
    write_tsv(out / "holdout.tsv", ((s.id, " ".join(s.tokens)) for s in held))
    if args.ink:  # the same expressions as handwriting, rendered as training renders them
        ink = out / "holdout-ink"
        render_split(Split("holdout", held), ink, progress=False)
        write_tsv(ink / "captions.tsv", ((s.id, " ".join(s.tokens)) for s in held))
        print(f"{ink}/: the hold-out's handwriting, rendered from its ink")
    data_dir = default_data_dir()
    vocab = set(Vocab.from_dictionary(data_dir / "dictionary.txt").itos[len(SPECIALS) :])
    path = data_dir.parent / "formulas" / "im2latex100k_test.formulas.norm.txt"
    forms, reasons = read_im2latex([path], vocab)
    keep = sorted(np.random.default_rng(args.seed).permutation(len(forms))[: args.im2latex])
    write_tsv(out / "im2latex.tsv", ((f"im2latex-{i}", " ".join(forms[i])) for i in keep))
    total = len(forms) + sum(reasons.values())
    print(f"{out}/holdout.tsv: {len(held)} hold-out captions")
    print(
        f"{out}/im2latex.tsv: {len(keep)} of the {len(forms)} in-vocabulary im2latex test "
        f"formulas (of {total})"
    )


def cmd_by_font(args: argparse.Namespace) -> dict:
    from hmer.data.latex import tokenize
    from hmer.evaluation.metrics import score

    folder = Path(args.renders)
    truths = read_captions(folder / "captions.tsv")
    styles = read_tsv(folder / "styles.tsv")[0] if (folder / "styles.tsv").exists() else {}
    preds, errors = read_tsv(args.pred, tokenize)
    for msg in errors:
        print(f"warning: {msg}")
    groups = {"all": list(truths)}
    for font in FONTS:
        groups[font] = [k for k in truths if styles.get(k, [""])[0] == font]
    if args.holdout:
        _, trained = holdout()
        groups["formula also in training"] = [k for k in truths if tuple(truths[k]) in trained]
        groups["formula not in training"] = [k for k in truths if tuple(truths[k]) not in trained]
    rows = {}
    print(f"{'set':26s} {'n':>5s} {'ExpRate':>8s} {'<=1':>6s} {'<=2':>6s}")
    for name, ids in groups.items():
        if not ids:
            continue
        r = score(preds, {k: truths[k] for k in ids})
        rows[name] = {"n": r["n"], "exprate": r["exprate"], "le1": r["le1"], "le2": r["le2"]}
        print(f"{name:26s} {r['n']:5d} {r['exprate']:8.1f} {r['le1']:6.1f} {r['le2']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("truths", help="write the hold-out and im2latex caption files")
    t.add_argument("out")
    t.add_argument("--im2latex", type=int, default=300, help="im2latex formulas (default 300)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ink", action="store_true", help="also OUT/holdout-ink/: its handwriting")
    t.set_defaults(func=cmd_truths)
    s = sub.add_parser("by-font", help="score predictions in all and per font family")
    s.add_argument("pred", help="hmer recognize --format tsv output")
    s.add_argument("renders", help="the hmer data render-latex folder")
    s.add_argument("--holdout", action="store_true", help="also split by formula seen in training")
    s.add_argument("--json", help="also write the table as JSON here")
    s.set_defaults(func=cmd_by_font)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
