"""``hmer synth``: synthetic handwritten training formulas, made of real CROHME training glyphs
(``--method glyphs``) or translated from printed renders by a trained GAN (``--method gan``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SOURCES = ("im2latex", "crohme", "both")
METHODS = ("glyphs", "gan")


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``hmer`` parser."""
    p = sub.add_parser(
        "synth",
        help="write synthetic handwritten formulas (training data to mix in)",
        description="--method glyphs (default): lay out LaTeX formulas and write them with real "
        "handwritten glyphs cut from the CROHME training ink; the output pickle is a hmer Split "
        "of Samples. --method gan: translate the printed renders of --printed (the captions.tsv "
        "of hmer data render-latex) with a trained generator (--generator, from hmer gan "
        "train) into OUT/ID.png and OUT/captions.tsv. Either output is extra training data "
        "(data.extra_train; the .pkl, or OUT/captions.tsv).",
    )
    p.add_argument("--method", choices=METHODS, default="glyphs", help="how (default glyphs)")
    p.add_argument("--count", type=int, default=1000, help="samples to write (default 1000)")
    p.add_argument(
        "--out",
        required=True,
        help="output .pkl file, or a folder (then synth-<source>-<count>-s<seed>.pkl inside); "
        "--method gan: the output folder",
    )
    p.add_argument("--generator", help="--method gan: the generator (RUN_DIR/last.pt)")
    p.add_argument("--printed", help="--method gan: captions.tsv of printed renders to translate")
    p.add_argument("--source", choices=SOURCES, default="both", help="formula source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--preview",
        help="write a PNG grid of rendered samples with their LaTeX (--method gan: each "
        "printed input beside its generated output)",
    )
    p.add_argument("--preview-count", type=int, default=24)
    p.add_argument("--inkml", action="store_true", help="also write one InkML file per sample")
    p.add_argument(
        "--formulas",
        nargs="+",
        help="space-tokenized LaTeX files, one formula a line (default: the im2latex files)",
    )
    p.add_argument(
        "--substitute",
        action="store_true",
        help="keep im2latex formulas whose letters/Greek are outside the vocabulary by swapping "
        "them for vocabulary symbols (and dropping accents and font changes)",
    )
    p.add_argument("--max-tokens", type=int, default=60)
    p.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="CAPTIONS",
        help="--method glyphs: drop generated formulas equal to a caption of these files "
        "(ID<TAB>tokens, e.g. the test sets' caption files)",
    )
    p.add_argument(
        "--exclude-holdout",
        type=int,
        default=0,
        metavar="N",
        help="also drop the formulas of the training set's N-expression validation hold-out "
        "(data.val_size) that no training expression has, so validation keeps measuring "
        "unseen formulas",
    )
    p.add_argument(
        "--holdout-by",
        choices=("random", "formula"),
        default="random",
        help="how that hold-out is drawn (data.val_split; default random)",
    )
    p.add_argument("--data-dir", help="CROHME folder (dictionary, captions); default: auto")
    p.add_argument("--train-inkml", help="training InkML folder or archive for the glyph bank")
    p.add_argument("--rebuild-bank", action="store_true", help="rebuild the cached glyph bank")
    p.set_defaults(func=run)


def _out_path(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.suffix == ".pkl":
        return out
    return out / f"synth-{args.source}-{args.count}-s{args.seed}.pkl"


def run_gan(args: argparse.Namespace) -> int:
    from hmer.synthesis.gan import CAPTIONS, GeneratorError, synthesize

    if not args.generator or not args.printed:
        print("error: --method gan needs --generator FILE and --printed TSV", file=sys.stderr)
        return 2
    if args.count < 0:
        print("error: --count must not be negative", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        report = synthesize(
            args.generator,
            args.printed,
            args.out,
            args.count,
            args.seed,
            grid=args.preview,
            grid_count=args.preview_count,
        )
    except GeneratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: printed images: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    print(f"generated {len(report.written)} images in {seconds:.1f} s")
    for message in report.skipped[:5]:
        print(f"  skipped {message}")
    if not report.written:
        print("error: nothing generated", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out) / CAPTIONS} (data.extra_train takes it)")
    if report.grid:
        print(f"wrote preview {report.grid}")
    return 0


def _excluded_formulas(args: argparse.Namespace, data_dir: Path) -> set[tuple[str, ...]]:
    """Formulas generation must not write: those of ``--exclude`` files and of the unseen part
    of the validation hold-out (``--exclude-holdout``)."""
    from hmer.data.dataset import load_cached, read_captions

    banned = {tuple(t) for path in args.exclude for t in read_captions(path).values()}
    if args.exclude_holdout:
        from hmer.training.train import unseen_formulas

        train = load_cached("train", data_dir).samples
        banned |= unseen_formulas(train, args.exclude_holdout, by=args.holdout_by)
    return banned


def run(args: argparse.Namespace) -> int:
    if args.method == "gan":
        return run_gan(args)
    from hmer.data.dataset import Split, default_data_dir, read_captions, save_atomic
    from hmer.data.vocab import SPECIALS, Vocab
    from hmer.synthesis.generate import generate, preview_grid, read_im2latex, to_inkml
    from hmer.synthesis.glyphs import load_bank

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    dictionary = data_dir / "dictionary.txt"
    if not dictionary.exists():
        print(f"error: {dictionary} not found (set --data-dir or HMER_DATA)", file=sys.stderr)
        return 2
    vocab = set(Vocab.from_dictionary(dictionary).itos[len(SPECIALS) :])

    t0 = time.perf_counter()
    bank = load_bank(args.train_inkml, rebuild=args.rebuild_bank)
    sizes = bank.sizes()
    print(
        f"glyph bank: {sum(sizes.values())} glyphs of {len(sizes)} labels "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    drawable = bank.tokens()
    lacking = sorted(
        t for t in vocab - drawable if t not in ("{", "}", "^", "_", r"\frac", r"\limits")
    )
    if lacking:
        print(f"  no glyphs for: {' '.join(lacking)}")

    sources: dict[str, list[list[str]]] = {}
    if args.source in ("im2latex", "both"):
        paths = args.formulas or sorted((data_dir.parent / "formulas").glob("*.txt"))
        if not paths:
            print("error: no formula files (use --formulas)", file=sys.stderr)
            return 2
        forms, reasons = read_im2latex(paths, vocab, args.max_tokens, args.substitute)
        total = len(forms) + sum(reasons.values())
        share = 100 * len(forms) / max(total, 1)
        print(f"im2latex: {len(forms)} of {total} formulas kept ({share:.1f}%)")
        for why, n in reasons.most_common(6):
            print(f"  {n:6d}  {why}")
        sources["im2latex"] = forms
    if args.source in ("crohme", "both"):
        captions = read_captions(data_dir / "train_caption.txt")
        sources["crohme"] = [t for t in captions.values() if t and len(t) <= args.max_tokens]
        print(f"crohme: {len(sources['crohme'])} training captions")

    try:
        banned = _excluded_formulas(args, data_dir)
    except (OSError, ValueError) as exc:
        print(f"error: --exclude: {exc}", file=sys.stderr)
        return 2

    samples, report, inks = generate(sources, args.count, bank, args.seed, with_symbols=args.inkml)
    rate = report.made / max(report.seconds, 1e-9)
    print(
        f"generated {report.made} samples in {report.seconds:.1f} s ({rate:.0f}/s); "
        f"skipped {sum(report.skipped.values())} formulas"
    )
    for why, n in report.skipped.most_common(5):
        print(f"  {n:6d}  {why}")
    if banned:
        keep = [i for i, s in enumerate(samples) if tuple(s.tokens) not in banned]
        print(f"dropped {len(samples) - len(keep)} samples whose formula is excluded")
        samples = [samples[i] for i in keep]
        inks = [inks[i] for i in keep] if inks else inks
    if not samples:
        print("error: nothing generated", file=sys.stderr)
        return 1

    out = _out_path(args)
    save_atomic(out, Split(f"synth-{args.source}", samples))
    print(f"wrote {out}")
    if args.inkml:
        folder = out.with_suffix("")
        folder = folder.parent / f"{folder.name}_inkml"
        folder.mkdir(parents=True, exist_ok=True)
        for sample, ink in zip(samples, inks, strict=True):
            (folder / f"{sample.id}.inkml").write_text(to_inkml(sample, ink.symbols), "utf-8")
        print(f"wrote {len(samples)} InkML files to {folder}")
    if args.preview:
        path = preview_grid(samples[: args.preview_count], args.preview)
        print(f"wrote preview {path}")
    return 0
