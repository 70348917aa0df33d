"""Helpers for the API and web tests: tiny untrained models and a live server on loopback."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import torch
from PIL import Image, ImageDraw

from hmer.data.vocab import Vocab
from hmer.models import create_model
from hmer.recognize import Recognizer

TOKENS = ["x", "+", "1", "2", "=", "\\frac", "{", "}"]


def tiny_image_recognizer(name: str = "tiny", beam: int = 2) -> Recognizer:
    """An untrained, very small image model: fast, its answers are arbitrary token strings."""
    torch.manual_seed(0)
    vocab = Vocab(TOKENS)
    model = create_model(
        "transformer",
        len(vocab),
        encoder_cfg={"growth": 4, "depth": 2},
        d_model=32,
        nhead=2,
        num_layers=1,
        ffn=64,
    )
    return Recognizer(model, vocab, name, beam=beam)


def tiny_stroke_recognizer(name: str = "tiny-strokes", beam: int = 2) -> Recognizer:
    """An untrained, very small stroke model."""
    torch.manual_seed(0)
    vocab = Vocab(TOKENS)
    model = create_model(
        "strokes",
        len(vocab),
        conv_channels=(16, 32),
        context_layers=1,
        d_model=32,
        nhead=2,
        num_layers=1,
        ffn=64,
    )
    return Recognizer(model, vocab, name, beam=beam)


def png_bytes(blank: bool = False, size: tuple[int, int] = (120, 48)) -> bytes:
    """A small PNG: dark "x + 1"-like marks on white, or an all-white page."""
    img = Image.new("L", size, 255)
    if not blank:
        d = ImageDraw.Draw(img)
        d.line([(10, 10), (30, 38)], fill=0, width=3)
        d.line([(30, 10), (10, 38)], fill=0, width=3)
        d.line([(45, 24), (70, 24)], fill=0, width=3)
        d.line([(57, 12), (57, 36)], fill=0, width=3)
        d.line([(90, 10), (90, 38)], fill=0, width=3)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


STROKES = [
    [[0, 0], [10, 12], [20, 24]],
    [[20, 0], [10, 12], [0, 24]],
    [[35, 12], [55, 12]],
    [[45, 2], [45, 22]],
]


def local_client(app, **kwargs):
    """A TestClient that talks to ``app`` as a client on this machine does (Host 127.0.0.1)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1", **kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


TINY_IMAGE_CFG = {
    "name": "transformer",
    "encoder_cfg": {"growth": 4, "depth": 2},
    "d_model": 32,
    "nhead": 2,
    "num_layers": 1,
    "ffn": 64,
}


def tiny_image_release(path) -> str:
    """Save the tiny image model as a release file (for ``--model`` on the command line)."""
    from hmer.weights import save_release

    rec = tiny_image_recognizer()
    return str(save_release(rec.model, TINY_IMAGE_CFG, rec.vocab, path, fp16=False))
