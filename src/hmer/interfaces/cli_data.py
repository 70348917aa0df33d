"""``hmer data ...`` (prepare, stats, render, augment-grid, check-normalization) and ``hmer score``.

Every command reports bad input as one line naming the file on stderr, goes on with the rest of a
batch, and exits non-zero when anything failed. ``HMER_DEBUG=1`` shows tracebacks instead.
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
    CROHME_SPLITS,
    KNOWN_DEFECTS,
    Split,
    cache_path,
    default_cache_dir,
    default_data_dir,
    find_source,
    load_cached,
    prepare_split,
)
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


def _split_source(spec: str, data_dir: Path) -> tuple[str, Path, Path | None]:
    if "=" in spec:
        name, path = spec.split("=", 1)
        source = Path(path).expanduser()
    elif spec in CROHME_SPLITS:
        return (spec, *find_source(spec, data_dir))
    else:  # a bare path: name it after the folder or archive
        source = Path(spec).expanduser()
        name = source.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or archive")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{spec}: bad split name {name!r}")
    captions = data_dir / f"{name}_caption.txt"
    return name, source, captions if captions.exists() else None


def _report_errors(split: Split) -> int:
    """Print the split's read errors; returns how many are not known defects."""
    failed = 0
    for msg in split.errors:
        stem = msg.split(":", 2)[1] if msg.count(":") >= 2 else msg.split(":", 1)[0]
        known = KNOWN_DEFECTS.get(stem.strip())
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
            name, source, captions = _split_source(spec, data_dir)
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


class WriteError(OSError):
    """An output file that cannot be written; the message names it."""


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    from hmer.data.files import atomic_open

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:  # never leave half-written files that a rerun would skip
            Image.fromarray(image).save(fh, format="PNG")
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _render_split(split: Split, out_dir: Path, force: bool, progress: bool) -> int:
    from tqdm import tqdm

    from hmer.data.render import render_natural

    failed = written = 0
    for sample in tqdm(split.samples, desc=f"render {split.name}", disable=not progress):
        path = out_dir / f"{sample.id}.png"
        if path.exists() and not force:
            continue
        try:
            _save_png(render_natural(sample.traces), path)
            written += 1
        except WriteError as exc:
            _err(str(exc))
            failed += 1
        except ValueError as exc:
            _err(f"{split.name}:{sample.id}: cannot render ({exc})")
            failed += 1
    print(
        f"{split.name}: {written} images written, {len(split.samples) - written - failed} "
        f"already there -> {out_dir}"
    )
    return failed


# ---------------------------------------------------------------------------------------------
# stats


def _load_split(name: str, data_dir: Path | None, cache_dir: Path | None) -> Split:
    path = cache_path(name, cache_dir)
    try:
        if name in CROHME_SPLITS:
            return load_cached(name, data_dir, cache_dir)
        if not path.exists():
            raise FileNotFoundError(
                f"split {name!r} is not prepared ({path} missing): run "
                f"hmer data prepare --splits {name}=PATH"
            )
        with open(path, "rb") as fh:
            split = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: unreadable cache file ({exc}); rebuild it with hmer data prepare --force"
        ) from exc
    if not isinstance(split, Split):
        raise ValueError(f"{path}: not a prepared split; rebuild it with hmer data prepare --force")
    return split


def histogram(values: list[int], width: int = 50, bin_size: int = 0) -> list[str]:
    """Text histogram lines ``lo-hi  count  ####``."""
    if not values:
        return ["(empty)"]
    top = max(values)
    bin_size = bin_size or max(1, math.ceil((top + 1) / 20))
    counts = Counter(v // bin_size for v in values)
    peak = max(counts.values())
    lines = []
    for b in range(top // bin_size + 1):
        c = counts.get(b, 0)
        bar = "#" * max(1 if c else 0, round(width * c / peak))
        lines.append(f"{b * bin_size:4d}-{(b + 1) * bin_size - 1:<4d} {c:6d}  {bar}")
    return lines


def cmd_stats(args: argparse.Namespace) -> int:
    split = _load_split(args.split, args.data_dir, args.cache_dir)
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
            _save_png(image, out)
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


def augment_grid(
    samples: list,
    n: int,
    variants: int,
    seed: int,
    cell: tuple[int, int] = (128, 384),
    photo_p: float = 0.0,
) -> np.ndarray:
    """Rows of [clean render, ``variants`` augmented versions] for ``n`` random samples, uint8.

    Images keep their pixel size (so scale jitter shows) unless too big for a cell. Each
    augmented version is what an epoch of training shows the model (``EpochBatches.image``: ink
    and render augmentation, and photometric changes for a ``photo_p`` share, as
    ``data.photo_p``); version ``c`` is epoch ``c`` of a run seeded with ``seed``.
    """
    from PIL import Image, ImageDraw

    from hmer.data.batching import BucketSpec, EpochBatches, draw_plan, plan_render
    from hmer.data.vocab import Vocab

    spec = BucketSpec()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), size=min(n, len(samples)), replace=False)
    rows = [samples[int(i)] for i in chosen]
    epochs = [
        EpochBatches(rows, Vocab([]), spec, epoch, seed, shuffle=False, photo_p=photo_p)
        for epoch in range(1, variants + 1)
    ]
    ch, cw = cell
    label_h, gap = 14, 2
    cols = variants + 1
    grid_h = len(chosen) * (ch + label_h + gap) + gap
    grid = np.full((grid_h, cols * (cw + gap) + gap), 60, np.uint8)
    draw_labels = []
    for r, sample in enumerate(rows):
        top = gap + r * (ch + label_h + gap)
        draw_labels.append((top, f"{sample.id}: {' '.join(sample.tokens)}"))
        for c in range(cols):
            if c == 0:
                img = draw_plan(plan_render(sample.traces, None, spec)).astype(np.float32) / 255
            else:
                img = epochs[c - 1].image(r)
            pic = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
            f = min(1.0, ch / pic.height, cw / pic.width)
            pic = pic.resize(
                (max(1, int(pic.width * f)), max(1, int(pic.height * f))), Image.Resampling.BILINEAR
            )
            left = gap + c * (cw + gap)
            cell_img = np.zeros((ch, cw), np.uint8)
            cell_img[: pic.height, : pic.width] = np.asarray(pic)
            grid[top + label_h : top + label_h + ch, left : left + cw] = cell_img
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for top, text in draw_labels:
        draw.text((gap + 2, top + 1), text[:160], fill=255)
    return np.asarray(canvas)


def cmd_augment_grid(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= 256 or not 0 <= args.variants <= 16:
        _err("-n must be 1..256 and --variants 0..16")
        return 2
    split = _load_split(args.split, args.data_dir, args.cache_dir)
    if not split.samples:
        _err(f"split {args.split} has no samples")
        return EXIT_FAILED
    from hmer.training.config import DataConfig

    photo_p = DataConfig().photo_p if args.photo_p is None else args.photo_p
    if not 0.0 <= photo_p <= 1.0:
        _err("--photo-p must be between 0 and 1")
        return 2
    grid = augment_grid(split.samples, args.n, args.variants, args.seed, photo_p=photo_p)
    _save_png(grid, args.output)
    rows = min(args.n, len(split.samples))
    print(
        f"wrote {args.output} ({grid.shape[1]}x{grid.shape[0]}): {rows} expressions, clean "
        f"render then {args.variants} versions each as training epochs draw them "
        f"(photometric changes on {photo_p:.0%})"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# check-normalization


def cmd_check_normalization(args: argparse.Namespace) -> int:
    from hmer.data.latex import check_normalization, format_report

    failed = 0
    for name in args.splits:
        try:
            split = _load_split(name, args.data_dir, args.cache_dir)
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
# score


def read_tsv(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Read ``ID<TAB>LaTeX`` lines into id -> tokens; returns them and one message per bad line."""
    from hmer.data.latex import tokenize

    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return {}, [f"{path}: cannot read ({exc.strerror or exc})"]
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    rows: dict[str, list[str]] = {}
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            errors.append(f"{path}:{lineno}: no TAB between id and LaTeX")
            continue
        key, _, latex = line.partition("\t")
        key = key.strip()
        if not key:
            errors.append(f"{path}:{lineno}: empty id")
            continue
        if key in rows:
            errors.append(f"{path}:{lineno}: duplicate id {key!r} (the later line is used)")
        rows[key] = tokenize(latex)
    if not rows and not errors:
        errors.append(f"{path}: no ID<TAB>LaTeX lines")
    return rows, errors


def format_scores(result: dict) -> str:
    """The text table of ``hmer score``."""
    n = result["n"]
    lines = [
        f"{'normalization':<22s} {result['normalization']}",
        f"{'expressions':<22s} {n}",
        f"{'exact matches':<22s} {result['exact']}",
        f"{'ExpRate %':<22s} {result['exprate']:.2f}",
        f"{'<=1 error %':<22s} {result['le1']:.2f}",
        f"{'<=2 errors %':<22s} {result['le2']:.2f}",
        f"{'WER % (tokens)':<22s} {result['wer']:.2f}",
        f"{'CER % (characters)':<22s} {result['cer']:.2f}",
        f"{'BLEU-4':<22s} {result['bleu4']:.2f}",
        f"{'edit score %':<22s} {result['edit_score']:.2f}",
        f"{'missing predictions':<22s} {result['n_missing']}",
        f"{'predictions w/o truth':<22s} {result['n_extra']}",
    ]
    if result["n_matched_without_0"]:
        lines.append(f"{'matched as ID_0':<22s} {result['n_matched_without_0']}")
    if result["missing"]:
        shown = ", ".join(result["missing"][:10])
        more = f" (+{len(result['missing']) - 10} more)" if len(result["missing"]) > 10 else ""
        lines.append(f"missing: {shown}{more}")
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace) -> int:
    from hmer.evaluation.metrics import score

    preds, errors = read_tsv(args.pred)
    truths, truth_errors = read_tsv(args.truth)
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
