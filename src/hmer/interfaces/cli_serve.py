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
        "--ink-route",
        choices=["image", "strokes", "fusion"],
        help="who reads drawings and InkML by default: the image model (rendered), the stroke "
        "model or both fused (default: the stroke model when one is loaded, else the shipped "
        "rule, today the image model); requests may ask for another route that is loaded",
    )
    p.add_argument(
        "--symbol-model",
        help="symbol classifier for /v1/symbol (default: the shipped one, if any; 'none': "
        "no symbol mode)",
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
    p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds one recognition may take; past it the request gets 503 (default 3)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients may use in the Host header besides the bound address "
        "(repeatable; '*' allows any). Default: the bound address, and the loopback names when "
        "it is a loopback address",
    )
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> dict:
    """The recognizers to serve: the given files, else the shipped defaults that exist."""
    from hmer.recognize import Recognizer
    from hmer.weights import WeightsError, shipped_weights, weights_for

    def load(kind: str, given: str | None, render_ink: bool = True) -> Recognizer | None:
        try:
            return Recognizer.load(weights_for(kind, given, render_ink=render_ink))
        except WeightsError:
            if given:
                raise
            return None  # none shipped (or unusable): served without it

    image = load("image", args.model)
    route = ink_route_of(args)
    if args.stroke_model == "none":
        if route in ("strokes", "fusion"):
            raise ValueError(f"--ink-route {route} needs a stroke model, not --stroke-model none")
        strokes = None
    else:
        # Only a stroke model of its own: without one, drawings go to the image model above.
        strokes = load("strokes", args.stroke_model, render_ink=False)
        if strokes is None and route in ("strokes", "fusion"):
            strokes = Recognizer.load(shipped_weights("strokes"), "strokes")
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


def ink_route_of(args: argparse.Namespace) -> str | None:
    """The route pen input takes: ``--ink-route``, else fusion when the shipped parameters make
    it the default (unless ``--stroke-model none`` leaves it no stroke model); None: the stroke
    model when one is loaded, else the image model."""
    from hmer.weights import ink_route

    if args.ink_route:
        return args.ink_route
    if args.stroke_model == "none":
        return None
    return "fusion" if ink_route() == "fusion" else None


def _load_symbols(given: str | None):
    """The symbol classifier to serve: ``given`` (a file, or "none"), else the shipped one."""
    from hmer.interfaces.api import load_default_symbols
    from hmer.symbol_classifier import SymbolClassifier

    if given == "none":
        return None
    return SymbolClassifier.load(given) if given else load_default_symbols()


def allowed_hosts(host: str, extra: list[str]) -> list[str] | None:
    """Host names the server answers to when bound to ``host`` (None: any).

    On a loopback address only the loopback names: a web page whose domain resolves to
    127.0.0.1 (DNS rebinding) is refused. On a wildcard address (0.0.0.0, ::) the names clients
    use cannot be known, so any is allowed unless ``extra`` lists them.
    """
    import ipaddress

    from hmer.interfaces.guard import LOOPBACK_HOSTS

    if "*" in extra:
        return None
    names = [host, *extra]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return [*names, *LOOPBACK_HOSTS] if host == "localhost" else names
    if ip.is_loopback:
        return [*names, *LOOPBACK_HOSTS]
    if ip.is_unspecified:
        return names if extra else None
    return names


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - the server extras are installed

        from hmer.interfaces.api import Limits, create_app
        from hmer.interfaces.server import serve_app
    except ImportError as exc:
        print(
            f"hmer serve needs the server extras: pip install 'hmer[serve]' ({exc})",
            file=sys.stderr,
        )
        return 1
    import torch

    from hmer.weights import WeightsError

    if args.max_upload_mb <= 0 or args.timeout <= 0:
        print("--max-upload-mb and --timeout must be positive", file=sys.stderr)
        return 2
    try:
        recs = _load(args)
        symbols = _load_symbols(args.symbol_model)
    except (WeightsError, OSError, ValueError, KeyError) as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return 1
    if not recs:
        print("no model to serve: none is shipped yet; pass --model PATH", file=sys.stderr)
        return 1
    cores = os.cpu_count() or 1
    workers = max(1, args.workers or min(4, cores))
    torch.set_num_threads(max(1, args.threads or cores // workers))
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_concurrency=workers,
        timeout_s=args.timeout,
    )
    try:
        app = create_app(
            recs,
            limits,
            allowed_hosts=allowed_hosts(args.host, args.allow_host),
            ink_route=ink_route_of(args),
            symbols=symbols,
        )
    except (WeightsError, ValueError) as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(f"{n} ({r.input_kind})" for n, r in recs.items())
    if symbols is not None:
        names += f", {symbols.name} (symbol)"
    print(f"hmer: serving {names} on http://{args.host}:{args.port}/", file=sys.stderr)

    serve_app(app, args.host, args.port, limit_concurrency=4 * limits.max_pending)
    return 0
