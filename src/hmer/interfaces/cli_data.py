"""``hmer data ...`` (prepare, stats, vocab, render, render-latex, augment-grid,
check-normalization) and ``hmer score``.

Every command reports bad input as one line naming the file on stderr, goes on with the rest of a
batch, and exits non-zero when anything failed. ``HMER_DEBUG=1`` shows tracebacks instead. The
work is the library's (``hmer.data.dataset``, ``hmer.data.batching.augment_grid``,
``hmer.evaluation``); this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pickle
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hmer.data.dataset import (
    Split,
    cache_path,
    default_cache_dir,
    default_data_dir,
    known_defect,
    load_prepared,
    prepare_split,
    render_split,
    split_source,
)
from hmer.data.files import WriteError, save_png
from hmer.data.printed import FONTS, PADDINGS, SIZES
from hmer.evaluation.metrics import NORMALIZATIONS

EXIT_FAILED = 1


def _err(msg: str) -> None:
    print(f"hmer: error: {msg}", file=sys.stderr, flush=True)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn an unexpected exception into a one-line error and a non-zero exit code."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BrokenPipeError:  # output piped into head & co.: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILED
        except Exception as exc:
            if os.environ.get("HMER_DEBUG"):
                raise
            _err(str(exc) or type(exc).__name__)
            return EXIT_FAILED

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hmer data ...`` and ``hmer score`` to the ``hmer`` parser."""
    data = sub.add_parser("data", help="prepare, inspect, render and augment the training data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    def dirs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            type=Path,
            help="CROHME folder (default: $HMER_DATA or ../shared/data/crohme)",
        )
        p.add_argument(
            "--cache-dir", type=Path, help="cache folder (default: $HMER_CACHE or ~/.cache/hmer)"
        )

    p = dsub.add_parser(
        "prepare",
        help="read InkML into the cache (idempotent)",
        description="Read CROHME splits into the cache. A split is a CROHME name (train, 2014), "
        "found in --data-dir as the .tar.gz or its extracted folder, or NAME=PATH for any folder "
        "or .tar.gz of InkML. Tokens come from the caption file when there is one "
        "(NAME_caption.txt in --data-dir), otherwise from the normalized InkML truth.",
    )
    dirs(p)
    p.add_argument("--splits", nargs="+", default=["train", "2014"], metavar="SPLIT")
    p.add_argument(
        "--render",
        nargs="*",
        metavar="SPLIT",
        help="also write natural renders "
        "CACHE/images/SPLIT/ID.png (default: the prepared splits other than train)",
    )
    p.add_argument("--force", action="store_true", help="rebuild cached splits and images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_guarded(cmd_prepare))

    p = dsub.add_parser("stats", help="counts, vocabulary and length histogram of a split")
    dirs(p)
    p.add_argument("--split", default="train")
    p.add_argument("--top", type=int, default=0, help="show only the N most frequent tokens")
    p.set_defaults(func=_guarded(cmd_stats))

    p = dsub.add_parser(
        "vocab",
        help="build a vocabulary (JSON token list) from caption files",
        description="Read ID<TAB>LaTeX caption files (plain LaTeX or space-tokenized; "
        r"\text{...} keeps one token per character, ~ for a space) and write the tokens they use, "
        "most frequent first, as the JSON list that hmer train --vocab and a config's vocab take.",
    )
    p.add_argument("captions", nargs="+", type=Path, metavar="CAPTIONS.tsv")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="VOCAB.json")
    p.add_argument(
        "--min-count", type=int, default=1, help="leave out tokens seen fewer times (default 1)"
    )
    p.set_defaults(func=_guarded(cmd_vocab))

    p = dsub.add_parser("render", help="render InkML files to PNG (white ink on black)")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.inkml")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output .png (one input) or folder (default: NAME.png in the current folder)",
    )
    p.add_argument(
        "--mode",
        choices=["natural", "fixed"],
        help="natural: size follows the ink (default); fixed: fit into --size",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="canvas of fixed mode (default 128 512); implies --mode fixed",
    )
    p.add_argument("--line-width", type=float, default=3.0, help="stroke width in pixels")
    p.add_argument("--no-antialias", action="store_true")
    p.add_argument("--boxes", action="store_true", help="draw the symbol segmentation boxes")
    p.set_defaults(func=_guarded(cmd_render))

    p = dsub.add_parser("augment-grid", help="PNG grid of augmented training images, to look at")
    dirs(p)
    p.add_argument("--split", default="train")
    p.add_argument("-n", type=int, default=16, help="number of expressions (rows)")
    p.add_argument("--variants", type=int, default=3, help="augmented versions per expression")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--photo-p",
        type=float,
        default=None,
        help="share of renders that also get photometric changes, as data.photo_p in a "
        "training config (default: the training default)",
    )
    p.add_argument(
        "--foreign-p",
        type=float,
        default=None,
        help="share of the ink drawn in other tools' styles and normalized as at recognition, as "
        "data.foreign_p (default: the training default)",
    )
    p.add_argument(
        "--foreign-line-ratio",
        type=float,
        default=0.0,
        help="foreign styles' pen width up to this share of the symbol height, as "
        "data.foreign_line_ratio (default 0: 1-7 px)",
    )
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_guarded(cmd_augment_grid))

    p = dsub.add_parser(
        "check-normalization",
        help="how often normalized raw InkML truths equal "
        "the published captions, and why the others differ",
    )
    dirs(p)
    p.add_argument("--splits", nargs="+", default=["train", "2014"], metavar="SPLIT")
    p.add_argument("--examples", type=int, default=2, help="examples shown per class")
    p.add_argument(
        "--min",
        type=float,
        default=0.0,
        metavar="PCT",
        help="exit non-zero when a split is below PCT percent",
    )
    p.set_defaults(func=_guarded(cmd_check_normalization))

    p = dsub.add_parser(
        "render-latex",
        help="typeset LaTeX formulas as printed PNGs (KaTeX in headless Chromium)",
        description="Typeset each formula of CAPTIONS (ID<TAB>space-separated LaTeX tokens, as "
        "the CROHME caption files) with KaTeX in headless Chromium, in a font, size and padding "
        "drawn per formula from --seed: the default math italic or \\mathrm, \\mathit, "
        "\\mathbf, \\mathsf, \\mathtt; 16-50 px; 0-15 px (the range of Springstein et "
        "al.'s GAN paper). Writes DIR/ID.png (dark ink on white), DIR/captions.tsv (ID<TAB>"
        "tokens of those rendered, a caption file that hmer score and the caption reader take) "
        "and DIR/styles.tsv (ID<TAB>font size padding). KaTeX was measured against matplotlib's "
        "mathtext (benchmarks/printed_renderers.py): it renders all 8,835 CROHME training "
        "captions (mathtext 98.4%: no \\limits) and 96.9% of 2,000 im2latex formulas "
        "(mathtext 84.5%), at least as fast, and is already vendored for the web page. Needs "
        "Chromium and Playwright: scripts/setup-browser.sh. A formula that fails gets one error "
        "line; the others go on.",
    )
    p.add_argument("captions", type=Path, metavar="CAPTIONS")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument(
        "--lines",
        action="store_true",
        help="CAPTIONS holds one formula a line without ids (im2latex files): ids NAME-LINE",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the style draws (default 0)")
    p.add_argument(
        "--fonts",
        nargs="+",
        choices=FONTS,
        default=list(FONTS),
        metavar="FONT",
        help=f"fonts to draw from (default all: {' '.join(FONTS)})",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs=2,
        default=list(SIZES),
        metavar=("LO", "HI"),
        help="font sizes in px, inclusive (default %(default)s)",
    )
    p.add_argument(
        "--paddings",
        type=int,
        nargs=2,
        default=list(PADDINGS),
        metavar=("LO", "HI"),
        help="white margins in px, inclusive (default %(default)s)",
    )
    p.add_argument("--limit", type=int, default=0, help="only the first N formulas")
    p.add_argument("--batch", type=int, default=64, help="formulas typeset per page")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_guarded(cmd_render_latex))

    p = sub.add_parser(
        "score",
        help="score predictions against truths (ExpRate, WER, CER, BLEU-4...)",
        description="Both files hold ID<TAB>LaTeX lines (space-tokenized or plain LaTeX). By "
        "default tokens are compared exactly as written, the convention of the published "
        "systems; a prediction id ID_0 (official offline bitmaps) is matched to truth ID.",
    )
    p.add_argument("pred", type=Path, metavar="PRED.tsv")
    p.add_argument("truth", type=Path, metavar="TRUTH.tsv")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="none: exact tokens (default, the field's convention); equivalent: also map "
        "equivalent spellings of well-formed LaTeX; full: rewrite malformed sequences too",
    )
    p.set_defaults(func=_guarded(cmd_score))


# ---------------------------------------------------------------------------------------------
# prepare


def _report_errors(split: Split) -> int:
    """Print the split's read errors; returns how many are not known defects."""
    failed = 0
    for msg in split.errors:
        known = known_defect(msg)
        if known:
            print(f"hmer: skipped {msg} ({known})", file=sys.stderr)
        else:
            _err(msg)
            failed += 1
    return failed


def cmd_prepare(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    cache_dir = args.cache_dir or default_cache_dir()
    failed = 0
    prepared: dict[str, Split] = {}
    for spec in args.splits:
        try:
            name, source, captions = split_source(spec, data_dir)
            split, built = prepare_split(
                name, source, captions, cache_dir, args.force, progress=not args.quiet
            )
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            _err(f"split {spec}: {exc}")
            failed += 1
            continue
        failed += _report_errors(split)
        origin = f"captions {captions.name}" if captions else "normalized InkML truth"
        state = "built" if built else "already cached"
        print(
            f"{name}: {len(split.samples)} expressions, {len(split.errors)} skipped "
            f"({origin}) -> {cache_path(name, cache_dir)} [{state}]"
        )
        prepared[name] = split
    if args.render is not None:
        names = args.render or [n for n in prepared if n != "train"]
        for name in names:
            if name not in prepared:
                _err(f"--render {name}: split not prepared in this run (add it to --splits)")
                failed += 1
                continue
            failed += _render_split(
                prepared[name], cache_dir / "images" / name, args.force, not args.quiet
            )
    return EXIT_FAILED if failed else 0


def _render_split(split: Split, out_dir: Path, force: bool, progress: bool) -> int:
    written, errors = render_split(split, out_dir, force, progress)
    for msg in errors:
        _err(msg)
    print(
        f"{split.name}: {written} images written, {len(split.samples) - written - len(errors)} "
        f"already there -> {out_dir}"
    )
    return len(errors)


# ---------------------------------------------------------------------------------------------
# stats


def cmd_stats(args: argparse.Namespace) -> int:
    from hmer.evaluation.plots import histogram

    split = load_prepared(args.split, args.data_dir, args.cache_dir)
    lengths = [len(s.tokens) for s in split.samples]
    strokes = [len(s.traces) for s in split.samples]
    vocab = Counter(t for s in split.samples for t in s.tokens)
    print(f"split {split.name}: {len(split.samples)} expressions, {len(split.errors)} skipped")
    if not split.samples:
        return 0
    print(
        f"tokens: {sum(lengths)} in all, {len(vocab)} distinct; per expression mean "
        f"{np.mean(lengths):.1f}, median {np.median(lengths):.0f}, max {max(lengths)}"
    )
    print(
        f"strokes: per expression mean {np.mean(strokes):.1f}, median "
        f"{np.median(strokes):.0f}, max {max(strokes)}"
    )
    rows = vocab.most_common(args.top or None)
    print(f"\nvocabulary ({'top ' + str(args.top) if args.top else 'all'}, by count):")
    cells = [f"{tok:>10s} {count:6d}" for tok, count in rows]
    for i in range(0, len(cells), 5):
        print("  ".join(cells[i : i + 5]))
    print("\nsequence length (tokens):")
    print("\n".join(histogram(lengths)))
    return 0


# ---------------------------------------------------------------------------------------------
# vocab


def cmd_vocab(args: argparse.Namespace) -> int:
    from hmer.data.dataset import caption_tokens, read_tsv
    from hmer.data.files import atomic_open
    from hmer.data.vocab import SPECIALS

    if args.min_count < 1:
        _err("--min-count must be at least 1")
        return 2
    counts: Counter = Counter()
    failed = n = 0
    for path in args.captions:
        rows, errors = read_tsv(path, caption_tokens)
        for msg in errors:
            _err(msg)
        failed += len(errors)
        n += len(rows)
        for tokens in rows.values():
            counts.update(tokens)
    if failed:
        _err(f"{failed} problems in the caption files: no vocabulary written")
        return EXIT_FAILED
    reserved = [t for t in counts if t in SPECIALS]
    if reserved:
        _err(f"captions use reserved tokens {', '.join(reserved)}")
        return EXIT_FAILED
    kept = [t for t, c in counts.items() if c >= args.min_count]
    kept.sort(key=lambda t: (-counts[t], t))
    with atomic_open(args.output, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(kept, ensure_ascii=False) + "\n")
    left = len(counts) - len(kept)
    note = f", {left} seen fewer than {args.min_count} times left out" if left else ""
    print(f"wrote {args.output}: {len(kept)} tokens from {n} captions{note}")
    return 0


# ---------------------------------------------------------------------------------------------
# render


def cmd_render(args: argparse.Namespace) -> int:
    from hmer.data.inkml import InkMLError, read_inkml
    from hmer.data.render import RenderStyle, render_fixed, render_natural, symbol_groups

    mode = args.mode or ("fixed" if args.size else "natural")
    if mode == "natural" and args.size:
        _err("--size applies to --mode fixed only")
        return 2
    if not math.isfinite(args.line_width) or not 0.1 <= args.line_width <= 50:
        _err("--line-width must be between 0.1 and 50 pixels")
        return 2
    if args.size and not all(8 <= v <= 4096 for v in args.size):
        _err("--size values must be between 8 and 4096 pixels")
        return 2
    style = RenderStyle(line_width=args.line_width, antialias=not args.no_antialias)
    to_dir = len(args.files) > 1 or (args.output is not None and args.output.suffix != ".png")
    failed = 0
    for path in args.files:
        try:
            ink = read_inkml(path)
            boxes = symbol_groups(ink) if args.boxes else None
            if args.boxes and not boxes:
                print(f"hmer: note: {path}: no symbol segmentation, no boxes", file=sys.stderr)
            if mode == "fixed":
                image = render_fixed(
                    ink.traces, tuple(args.size or (128, 512)), style=style, boxes=boxes
                )
            else:
                image = render_natural(ink.traces, style=style, boxes=boxes)
            if to_dir:
                out = (args.output or Path.cwd()) / f"{path.stem}.png"
            else:
                out = args.output or Path.cwd() / f"{path.stem}.png"
            save_png(image, out)
            print(f"{path} -> {out} ({image.shape[1]}x{image.shape[0]})")
        except (InkMLError, WriteError) as exc:  # their messages name the file
            _err(str(exc))
            failed += 1
        except (OSError, ValueError) as exc:
            _err(f"{path}: {exc}")
            failed += 1
    return EXIT_FAILED if failed else 0


# ---------------------------------------------------------------------------------------------
# augment-grid


def cmd_augment_grid(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= 256 or not 0 <= args.variants <= 16:
        _err("-n must be 1..256 and --variants 0..16")
        return 2
    split = load_prepared(args.split, args.data_dir, args.cache_dir)
    if not split.samples:
        _err(f"split {args.split} has no samples")
        return EXIT_FAILED
    from hmer.data.batching import augment_grid
    from hmer.training.config import DataConfig

    photo_p = DataConfig().photo_p if args.photo_p is None else args.photo_p
    foreign_p = DataConfig().foreign_p if args.foreign_p is None else args.foreign_p
    for flag, value in (("--photo-p", photo_p), ("--foreign-p", foreign_p)):
        if not 0.0 <= value <= 1.0:
            _err(f"{flag} must be between 0 and 1")
            return 2
    from hmer.data.augment import LINE_RATIO_MIN, valid_line_ratio

    if not valid_line_ratio(args.foreign_line_ratio):
        _err(f"--foreign-line-ratio must be 0, or above {LINE_RATIO_MIN} up to 1")
        return 2
    grid = augment_grid(
        split.samples,
        args.n,
        args.variants,
        args.seed,
        photo_p=photo_p,
        foreign_p=foreign_p,
        foreign_line_ratio=args.foreign_line_ratio,
    )
    save_png(grid, args.output)
    rows = min(args.n, len(split.samples))
    print(
        f"wrote {args.output} ({grid.shape[1]}x{grid.shape[0]}): {rows} expressions, clean "
        f"render then {args.variants} versions each as training epochs draw them "
        f"(photometric changes on {photo_p:.0%}, foreign styles on {foreign_p:.0%})"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# check-normalization


def cmd_check_normalization(args: argparse.Namespace) -> int:
    from hmer.data.latex import check_normalization, format_report

    failed = 0
    for name in args.splits:
        try:
            split = load_prepared(name, args.data_dir, args.cache_dir)
        except (OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
            _err(f"split {name}: {exc}")
            failed += 1
            continue
        pairs = [(s.id, s.truth, s.tokens) for s in split.samples]
        report = check_normalization(pairs, max_examples=args.examples)
        print(format_report(name, report, examples=args.examples > 0))
        written = check_normalization(pairs, max_examples=0, canonical=False)
        print(
            f"  (keeping the written ^/_ order instead: {written.exact}/{written.total}, "
            f"{written.percent:.2f}%)"
        )
        if report.percent < args.min:
            _err(f"split {name}: {report.percent:.2f}% is below --min {args.min}")
            failed += 1
    return EXIT_FAILED if failed else 0


# ---------------------------------------------------------------------------------------------
# render-latex


def _read_formulas(path: Path, lines: bool) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(id, tokens) formulas of a caption file, or of a one-formula-a-line file."""
    from hmer.data.dataset import read_tsv

    if not lines:
        rows, errors = read_tsv(path)
        return list(rows.items()), errors
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return [], [f"{path}: cannot read ({exc.strerror or exc})"]
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    name = path.name.split(".")[0]
    formulas = [
        (f"{name}-{i}", line.split()) for i, line in enumerate(text.splitlines(), 1) if line.strip()
    ]
    return formulas, [] if formulas else [f"{path}: no formulas"]


def cmd_render_latex(args: argparse.Namespace) -> int:
    from hmer.data.printed import KatexRenderer, random_styles, render_to_folder

    if args.limit < 0 or not 1 <= args.batch <= 1000:
        _err("--limit must be >= 0 and --batch 1..1000")
        return 2
    try:
        random_styles(0, args.seed, args.fonts, args.sizes, args.paddings)  # checks the ranges
    except ValueError as exc:
        _err(str(exc))
        return 2
    formulas, errors = _read_formulas(args.captions, args.lines)
    for msg in errors:
        _err(msg)
    formulas = formulas[: args.limit or None]
    if not formulas:
        return EXIT_FAILED
    styles = random_styles(len(formulas), args.seed, args.fonts, args.sizes, args.paddings)
    with KatexRenderer() as renderer:
        report = render_to_folder(
            formulas, args.output, styles, renderer, args.batch, progress=not args.quiet
        )
    for msg in report.errors:
        _err(f"{args.captions}: {msg}")
    rate = len(formulas) / max(report.seconds, 1e-9)
    print(
        f"rendered {len(report.written)} of {len(formulas)} formulas in {report.seconds:.1f} s "
        f"({rate:.0f}/s) -> {args.output}/ID.png, captions.tsv, styles.tsv"
    )
    return EXIT_FAILED if errors or report.errors else 0


# ---------------------------------------------------------------------------------------------
# score


def cmd_score(args: argparse.Namespace) -> int:
    from hmer.data.dataset import read_tsv
    from hmer.data.latex import tokenize
    from hmer.evaluation.metrics import format_scores, score

    preds, errors = read_tsv(args.pred, tokenize)
    truths, truth_errors = read_tsv(args.truth, tokenize)
    errors += truth_errors
    for msg in errors:
        _err(msg)
    if not truths:
        return EXIT_FAILED
    result = score(preds, truths, normalize=args.normalize)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_scores(result))
    return EXIT_FAILED if errors else 0
