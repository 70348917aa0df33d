"""Sub-commands of the symbol classifier: ``symbol`` (classify) and ``symbol-train``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the symbol sub-commands to the ``hmer`` parser."""
    p = sub.add_parser(
        "symbol",
        help="which symbol is this? top LaTeX commands for an image or .inkml of one symbol",
        description="Classify one handwritten symbol: an image, or an .inkml file whose ink is "
        "taken as one symbol. Prints the most likely LaTeX commands with confidences.",
    )
    p.add_argument("path", help="an image file or an .inkml file")
    p.add_argument("--top", type=int, default=5, help="how many candidates (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument(
        "--model", help="a symbol release or checkpoint (default: the shipped classifier)"
    )
    p.set_defaults(func=cmd_symbol)

    p = sub.add_parser(
        "symbol-train",
        help="train the symbol classifier on symbols cut from the CROHME segmentation",
        description="Cut every segmented symbol of the CROHME training ink, render the crops "
        "once into a cache file, and train the classifier; the 500-expression hold-out of the "
        "expression models validates, the 2014 test symbols are scored once at the end. "
        "Export the result with: hmer export RUN_DIR/best.pt -o FILE.safetensors",
    )
    p.add_argument("config", nargs="?", help="a TOML file with a [symbols] table (optional)")
    p.add_argument("--run-dir", default="runs/symbols", help="checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--cache", help="crop cache file (default: in the hmer cache folder)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set size=48 --set max_minutes=20",
    )
    p.set_defaults(func=cmd_symbol_train)


def _err(msg: str) -> None:
    print(f"hmer: error: {msg}", file=sys.stderr)


def cmd_symbol(args: argparse.Namespace) -> int:
    from hmer.symbol_classifier import SymbolClassifier
    from hmer.weights import WeightsError

    if args.top < 1:
        _err("--top must be at least 1")
        return 2
    try:
        classifier = SymbolClassifier.load(args.model)
    except WeightsError as exc:
        _err(str(exc))
        return 1
    path = Path(args.path)
    if not path.exists():
        _err(f"{path}: no such file")
        return 1
    try:
        result = classifier.classify_file(path, args.top)
    except (ValueError, OSError) as exc:
        from hmer.interfaces.cli_model import _problem

        _err(_problem(path, exc))
        return 1
    if args.json:
        print(json.dumps({"path": str(path), **result.to_dict()}, ensure_ascii=False))
    else:
        for rank, c in enumerate(result.candidates, 1):
            print(f"{rank}. {c.latex:<12} {100 * c.score:5.1f}%")
    return 0


def cmd_symbol_train(args: argparse.Namespace) -> int:
    from hmer.training.config import ConfigError, read_config, symbol_config
    from hmer.training.symbols import crohme_crops, train_symbols

    try:
        cfg = symbol_config(read_config(args.config) if args.config else {}, args.set)
    except (ConfigError, OSError) as exc:
        print(f"hmer symbol-train: {exc}", file=sys.stderr)
        return 2
    try:
        crops = crohme_crops(cfg, Path(args.cache) if args.cache else None)
    except (OSError, ValueError) as exc:
        print(f"hmer symbol-train: cannot read the symbols: {exc}", file=sys.stderr)
        return 1
    print(
        f"{crops.train.shape[1]} training symbols x {crops.train.shape[0]} renders, "
        f"{len(crops.val)} held out, {len(crops.test)} test; {len(crops.classes)} classes"
    )
    if crops.skipped:
        total = sum(crops.skipped.values())
        print(f"skipped {total} symbols: {crops.skipped}")
    result = train_symbols(cfg, args.run_dir, crops, resume=args.resume)["result"]
    val, test = result["val"], result["test_2014"]
    print(
        f"done: {result['checkpoint']} (epoch {result['epoch']}): val top-1 "
        f"{val['top1']:.2f} top-5 {val['top5']:.2f}; 2014 test top-1 {test['top1']:.2f} "
        f"top-5 {test['top5']:.2f} ({test['n']} symbols); {args.run_dir}/result.json"
    )
    return 0
