"""Which symbol is this? A loaded symbol classifier and its top-k LaTeX candidates.

One path serves ``hmer symbol``, ``POST /v1/symbol`` and the web page's symbol mode: ink (an
``.inkml`` file, whole, or drawn strokes) is rendered by :func:`hmer.data.symbols.render_symbol`,
a bitmap is fitted by :func:`hmer.data.symbols.symbol_bitmap`, and the network's softmax gives
the candidates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmer.data.inkml import read_inkml, strokes_to_ink
from hmer.data.symbols import render_symbol, symbol_bitmap
from hmer.models.symbols import FAMILY, SymbolCNN
from hmer.recognize import INK_SUFFIXES

TOP = 5


@dataclass
class Candidate:
    """A LaTeX command (caption token) and the classifier's confidence in it, in (0, 1]."""

    latex: str
    score: float


@dataclass
class SymbolResult:
    """The best candidates, most likely first, the model's name and its time in ms."""

    candidates: list[Candidate]
    model: str
    time_ms: float

    def to_dict(self) -> dict:
        return {
            "candidates": [{"latex": c.latex, "score": c.score} for c in self.candidates],
            "model": self.model,
            "time_ms": self.time_ms,
        }


class SymbolClassifier:
    """A symbol network with its classes and crop size, ready to classify ink or bitmaps."""

    input_kind = "symbol"

    def __init__(self, model: SymbolCNN, classes: list[str], size: int, name: str = "symbols"):
        if model.num_classes != len(classes):
            raise ValueError(f"{name}: {model.num_classes} outputs for {len(classes)} classes")
        self.model = model.eval()
        self.classes = list(classes)
        self.size = size
        self.name = name

    @classmethod
    def load(cls, path: str | Path | None = None) -> SymbolClassifier:
        """A release file (default: the shipped symbol classifier) or a training checkpoint
        (``.pt`` of ``hmer symbol-train``). Raises :class:`hmer.weights.WeightsError`."""
        from hmer.weights import WeightsError, default_weights, load_checkpoint, load_weights

        path = Path(path) if path else default_weights("symbol")
        if path.suffix == ".pt":
            ckpt = load_checkpoint(path)
            state, config, vocab = ckpt["model"], ckpt["config"].get("model", {}), ckpt["vocab"]
            name = path.parent.name
        else:
            state, meta = load_weights(path)
            config, vocab, name = meta["config"], meta["vocab"], path.stem
        if config.get("name") != FAMILY or not vocab:
            raise WeightsError(f"{path}: not a symbol classifier (hmer symbol-train makes them)")
        from hmer.training.symbols import build_network

        classes = json.loads(vocab)
        try:
            model = build_network(config, len(classes))
            model.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise WeightsError(f"{path}: symbol classifier weights do not fit ({exc})") from exc
        return cls(model, classes, int(config["size"]), name)

    # -- inputs ------------------------------------------------------------------------------
    def classify_square(self, square: np.ndarray, top: int = TOP) -> SymbolResult:
        """Candidates for one ``size`` x ``size`` uint8 crop, white ink on black."""
        t0 = time.perf_counter()
        x = torch.from_numpy(square.astype(np.float32) / 255.0)[None, None]
        with torch.inference_mode():
            probs = self.model(x).float().softmax(-1)[0]
        k = max(1, min(top, len(self.classes)))
        scores, ids = probs.topk(k)
        candidates = [
            Candidate(self.classes[int(i)], round(float(p), 4))
            for p, i in zip(scores, ids, strict=True)
        ]
        ms = round((time.perf_counter() - t0) * 1000, 2)
        return SymbolResult(candidates, self.name, ms)

    def classify_traces(self, traces: list[np.ndarray], top: int = TOP) -> SymbolResult:
        """Candidates for pen traces taken together as one symbol."""
        return self.classify_square(render_symbol(traces, self.size), top)

    def classify_strokes(self, strokes: list, top: int = TOP) -> SymbolResult:
        """Candidates for strokes given as lists of [x, y] or [x, y, t] points."""
        return self.classify_traces(strokes_to_ink(strokes).traces, top)

    def classify_image(self, data, source: str = "<image>", top: int = TOP) -> SymbolResult:
        """Candidates for a bitmap of one symbol (bytes, path or array)."""
        return self.classify_square(symbol_bitmap(data, self.size, source), top)

    def classify_file(self, path: str | Path, top: int = TOP) -> SymbolResult:
        """Candidates for an ``.inkml`` file (all its ink as one symbol) or an image file."""
        path = Path(path)
        if path.suffix.lower() in INK_SUFFIXES:
            return self.classify_traces(read_inkml(path).traces, top)
        return self.classify_image(path, str(path), top)
