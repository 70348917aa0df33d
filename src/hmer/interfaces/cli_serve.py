"""``hmer serve``: the web page and HTTP API on a local port."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``hmer serve`` to the ``hmer`` parser."""
    p = sub.add_parser(
        "serve",
        help="run the web page and HTTP API",
        description="Serve the drawing page at / and the API at /v1 (docs at /docs).",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model", help="image (or stroke) model file (default: the shipped one)")
    p.add_argument(
        "--stroke-model",
        help="stroke model for drawn ink (default: the shipped one, if any; 'none', or "
        "no stroke model: drawings are rendered and read by the image model)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest request body in MB (default 10)"
    )
    p.add_argument("--beam", type=int, default=None, help="default beam width")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="inputs recognized at once (default: min(4, CPU cores))",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per recognition (default: CPU cores / workers)",
    )
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> dict:
    """The recognizers to serve: the given files, else the shipped defaults that exist."""
    from hmer.recognize import Recognizer
    from hmer.weights import WeightsError

    def shipped(kind: str):
        try:
            return Recognizer.load(None, kind)
        except WeightsError:
            return None

    image = Recognizer.load(args.model) if args.model else shipped("image")
    if args.stroke_model == "none":
        strokes = None
    else:
        strokes = Recognizer.load(args.stroke_model) if args.stroke_model else shipped("strokes")
    recs: dict = {}
    for rec in (image, strokes):
        if rec is None:
            continue
        name, n = rec.name, 2
        while name in recs:
            name, n = f"{rec.name}-{n}", n + 1
        rec.name = name
        if args.beam:
            rec.beam = args.beam
        recs[name] = rec
    return recs


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from hmer.interfaces.api import Limits, create_app
    except ImportError as exc:
        print(
            f"hmer serve needs the server extras: pip install 'hmer[serve]' ({exc})",
            file=sys.stderr,
        )
        return 1
    import torch

    from hmer.weights import WeightsError

    if args.max_upload_mb <= 0:
        print("--max-upload-mb must be positive", file=sys.stderr)
        return 2
    try:
        recs = _load(args)
    except (WeightsError, OSError, ValueError, KeyError) as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return 1
    if not recs:
        print("no model to serve: none is shipped yet; pass --model PATH", file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    workers = max(1, args.workers or min(4, cores))
    torch.set_num_threads(max(1, args.threads or cores // workers))
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_concurrency=workers)
    app = create_app(recs, limits)
    names = ", ".join(f"{n} ({r.input_kind})" for n, r in recs.items())
    print(f"hmer: serving {names} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
