"""Python API: recognize images, InkML files or pen strokes with a trained model.

>>> from hmer import Recognizer
>>> rec = Recognizer.load()                      # shipped default image model
>>> rec.recognize_file("equation.png").latex
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hmer.data.batching import BucketSpec
from hmer.data.images import IMAGE_SUFFIXES, prepare_image
from hmer.data.inkml import Ink, read_inkml, strokes_to_ink
from hmer.data.latex import detokenize, is_valid, repair
from hmer.data.render import render_natural
from hmer.data.strokes import StrokeSpec
from hmer.data.vocab import Vocab
from hmer.decoding import check_deadline, recognize_batch, recognize_inputs
from hmer.weights import load_any, weights_for

INK_SUFFIXES = {".inkml"}
# Every input is brought to the sizes training used before the model sees it: images (padding
# included) fit the largest bucket of hmer.data.batching.BucketSpec, point sequences the longest
# of hmer.data.strokes.StrokeSpec. This bounds the work of any one input.
MAX_IMAGE_SIZE = (BucketSpec.heights[-1], BucketSpec.widths[-1])
MAX_SEQUENCE = StrokeSpec.lengths[-1]


# Output styles: "latex" is compact LaTeX to paste (x^{2}), "tokens" the captions' and scorer's
# space-separated token form (x ^ { 2 }), "mathml" presentation MathML (for Word, browsers).
STYLES = ("latex", "tokens", "mathml")


def latex_in(tokens: list[str], style: str = "latex") -> str:
    """``tokens`` in an output style (see ``STYLES``)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    if style == "mathml":
        return mathml(tokens)
    return detokenize(tokens, compact=style == "latex")


def mathml(tokens: list[str]) -> str:
    """Presentation MathML of well-formed caption tokens (every 2014 test truth converts)."""
    from latex2mathml.converter import convert

    latex = detokenize(tokens, compact=True)
    try:
        return convert(latex)
    except Exception:  # noqa: BLE001 (the converter raises many types); keep the text visible
        text = latex.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f'<math xmlns="http://www.w3.org/1998/Math/MathML"><mtext>{text}</mtext></math>'


@dataclass
class Alternative:
    latex: str  # compact LaTeX; latex_as("tokens") gives the token form
    tokens: list[str]
    score: float  # confidence in (0, 1]: exp(mean token log-probability)

    def latex_as(self, style: str = "latex") -> str:
        """This hypothesis's LaTeX in an output style ("latex" or "tokens")."""
        return latex_in(self.tokens, style)


@dataclass
class Result:
    """What recognition gives for one input."""

    latex: str
    tokens: list[str]
    score: float
    alternatives: list[Alternative] = field(default_factory=list)
    model: str = ""
    time_ms: float = 0.0
    source: str = ""

    def latex_as(self, style: str = "latex") -> str:
        """The best hypothesis's LaTeX in an output style ("latex" or "tokens")."""
        return latex_in(self.tokens, style)

    def to_dict(self, style: str = "latex") -> dict:
        """A JSON-ready dict; ``style`` chooses how ``latex`` fields are written."""
        out = asdict(self)
        out["latex"] = self.latex_as(style)
        for d, alt in zip(out["alternatives"], self.alternatives, strict=True):
            d["latex"] = alt.latex_as(style)
        return out


class Recognizer:
    """A loaded model with its vocabulary, ready to read inputs of its kind.

    Every ``recognize_*`` call takes an optional ``deadline`` (a ``time.monotonic()`` value);
    ``timeout_s`` caps each call's decoding as well. Past either, the call raises
    :class:`hmer.decoding.DecodingTimeout`. ``max_len``, when set, is the most tokens an
    attention model writes (``hmer recognize --max-len``; CTC output is bounded by its frames).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: Vocab,
        name: str = "model",
        beam: int = 10,
        timeout_s: float | None = None,
        max_len: int | None = None,
    ):
        self.model = model.eval()
        self.vocab = vocab
        self.name = name
        self.beam = beam
        self.timeout_s = timeout_s
        self.max_len = max_len
        self.input_kind = model.input_kind  # hmer.models.base: "image" or "strokes"
        # bf16 kernels are not faster for single-expression decoding; keep fp32 at inference.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, model: str | Path | None = None, input_kind: str = "image", beam: int = 10
    ) -> Recognizer:
        """Load a release file, a checkpoint, an ONNX export folder, or the shipped default for
        ``input_kind`` ("image"/"strokes"; :func:`hmer.weights.weights_for` with
        ``render_ink=False``: without a shipped stroke model, "strokes" is a ``WeightsError``, so
        that callers can tell whether one exists)."""
        path = weights_for(input_kind, model, render_ink=False)
        net, vocab, name = load_any(path)
        return cls(net, vocab, name, beam)

    # -- inputs ------------------------------------------------------------------------------
    def recognize_image(
        self,
        data,
        source: str = "<image>",
        beam: int | None = None,
        deadline: float | None = None,
    ) -> Result:
        """Recognize a bitmap (bytes, path, array or PIL image); needs an image model."""
        self._need("image", source)
        return self._run(
            prepare_image(data, source, max_size=MAX_IMAGE_SIZE), source, beam, deadline
        )

    def recognize_ink(
        self, ink: Ink, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize pen ink: rendered for an image model, as a trajectory for a stroke model."""
        return self._run(self.prepare_ink(ink.traces), ink.source, beam, deadline)

    def prepare_ink(self, traces: list[np.ndarray]) -> np.ndarray:
        """The bounded model input for pen traces: point features or a render."""
        if self.input_kind == "strokes":
            from hmer.data.strokes import ink_features

            return ink_features(traces, max_points=MAX_SEQUENCE)
        return render_natural(traces, max_size=MAX_IMAGE_SIZE)

    def recognize_strokes(
        self, strokes: list, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize strokes given as lists of [x, y] or [x, y, t] points."""
        return self.recognize_ink(strokes_to_ink(strokes), beam, deadline)

    def recognize_file(
        self, path: str | Path, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize an image file or an ``.inkml`` file."""
        path = Path(path)
        if path.suffix.lower() in INK_SUFFIXES:
            return self.recognize_ink(read_inkml(path), beam, deadline)
        return self.recognize_image(path, str(path), beam, deadline)

    # -- core --------------------------------------------------------------------------------
    def _deadline(self, deadline: float | None) -> float | None:
        """The earlier of the caller's deadline and this recognizer's own ``timeout_s``."""
        return deadline_within(deadline, self.timeout_s)

    def _limits(self) -> dict:
        """The decoding options this recognizer sets: a user's ``max_len``, else the default."""
        return {} if self.max_len is None else {"max_len": self.max_len}

    def _need(self, kind: str, source: str) -> None:
        if self.input_kind != kind:
            raise ValueError(f"{source}: model {self.name} reads {self.input_kind}, not {kind}")

    def _run(self, x: np.ndarray, source: str, beam: int | None, deadline: float | None) -> Result:
        t0 = time.perf_counter()
        beam = self.beam if beam is None else beam
        deadline = self._deadline(deadline)
        inputs, masks = self.as_batch(x)
        with self._lock, torch.inference_mode():
            hyps = recognize_batch(
                self.model, inputs, masks, beam=beam, deadline=deadline, **self._limits()
            )[0]
        ms = (time.perf_counter() - t0) * 1000
        return self.postprocess(hyps, source, ms)

    def as_batch(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of one from a prepared input (``prepare_ink``/``prepare_file``): the model's
        input tensor and its (empty) padding mask."""
        if self.input_kind == "image":
            inputs = torch.from_numpy(x.astype(np.float32) / 255.0)[None, None]
            return inputs, torch.zeros(1, *x.shape, dtype=torch.bool)
        inputs = torch.from_numpy(x.astype(np.float32))[None]
        return inputs, torch.zeros(1, x.shape[0], dtype=torch.bool)

    def postprocess(self, hyps: list, source: str = "", ms: float = 0.0) -> Result:
        """What a user is given for a decoded n-best list (best first): see :func:`ranked`."""
        return ranked(hyps, self.vocab, self.name, source, ms)

    # -- batches -----------------------------------------------------------------------------
    def prepare_file(self, path: str | Path) -> np.ndarray:
        """The model input that ``recognize_file`` would decode for an image or InkML file."""
        path = Path(path)
        if path.suffix.lower() in INK_SUFFIXES:
            return self.prepare_ink(read_inkml(path).traces)
        self._need("image", str(path))
        return prepare_image(path, str(path), max_size=MAX_IMAGE_SIZE)

    def recognize_prepared(
        self,
        inputs: list[np.ndarray],
        sources: list[str],
        beam: int | None = None,
        deadline: float | None = None,
    ) -> list[Result]:
        """Recognize inputs from ``prepare_file`` together, in order, with the answers each gets
        alone (:func:`hmer.decoding.recognize_inputs`: encoded one by one, decoded as one batch,
        greedy or beam). Inputs of similar size batch best; on a CPU batches speed up greedy
        decoding, not beam search (README). Each result's ``time_ms`` is its share of the batch's
        time.
        """
        if not inputs:
            return []
        t0 = time.perf_counter()
        beam = self.beam if beam is None else beam
        deadline = self._deadline(deadline)
        items = [self.as_batch(x) for x in inputs]
        with self._lock, torch.inference_mode():
            hyps = recognize_inputs(
                self.model, items, beam=beam, deadline=deadline, **self._limits()
            )
        ms = (time.perf_counter() - t0) * 1000 / len(inputs)
        return [self.postprocess(h, s, ms) for h, s in zip(hyps, sources, strict=True)]


def ranked(hyps: list, vocab: Vocab, model: str = "", source: str = "", ms: float = 0.0) -> Result:
    """What a user is given for a decoded n-best list (best first; each with ``ids`` and a
    ``confidence``): token strings, each made well-formed LaTeX when it is not (and then ranked
    after every valid one), duplicates merged. Evaluation scores this, so that it measures what
    users get."""
    order = [alt for _, alt in alternatives(hyps, vocab)]
    best = order[0] if order else Alternative("", [], 0.0)
    return Result(best.latex, best.tokens, best.score, order, model, round(ms, 1), source)


def alternatives(hyps: list, vocab: Vocab) -> list[tuple[int, Alternative]]:
    """:func:`ranked`'s alternatives, each with the index in ``hyps`` it comes from."""
    valid, repaired, seen = [], [], set()
    for i, h in enumerate(hyps):
        tokens = vocab.decode(h.ids)
        ok = is_valid(tokens)
        if not ok:  # pasted LaTeX must compile: smallest edits that make it well-formed
            tokens = repair(tokens)
        if tuple(tokens) in seen:
            continue
        seen.add(tuple(tokens))
        alt = Alternative(detokenize(tokens, compact=True), tokens, round(h.confidence, 4))
        (valid if ok else repaired).append((i, alt))
    # A hypothesis that was not valid LaTeX yields to every valid one.
    return valid + repaired


def deadline_within(deadline: float | None, timeout_s: float | None) -> float | None:
    """The earlier of ``deadline`` and ``timeout_s`` from now (``time.monotonic()`` values);
    raises :class:`hmer.decoding.DecodingTimeout` when it has passed already."""
    if timeout_s is not None:
        own = time.monotonic() + timeout_s
        deadline = own if deadline is None else min(deadline, own)
    check_deadline(deadline)
    return deadline


def input_kind_of(path: str | Path) -> str:
    """The kind of input a file holds: "strokes" for ``.inkml`` pen input, else "image"."""
    return "strokes" if Path(path).suffix.lower() in INK_SUFFIXES else "image"


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """Expand files and directories into the image/InkML files to recognize (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES | INK_SUFFIXES
            )
        else:
            out.append(p)
    return out
