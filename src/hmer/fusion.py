"""Pen input read by the image model (rendered) and the stroke model together.

>>> from hmer.fusion import FusionRecognizer
>>> FusionRecognizer.load().recognize_file("equation.inkml").latex

Both models decode the ink (the image model the render ``hmer recognize`` makes of it), their
n-best lists are pooled and each hypothesis is rescored by both decoders in both directions
(:mod:`hmer.decoding.fusion`); the weights and temperature come from ``weights/fusion.json``,
fitted on the validation hold-out by ``benchmarks/fusion.py``, and so is the pool depth: how
many of each search list's best hypotheses are pooled (rescoring costs more than searching).
``beam=1`` is the greedy mode for live recognition: one greedy hypothesis from each model, both
rescored.

:func:`ink_recognizer` gives the reader of a route ("image", "strokes" or "fusion"), as
``hmer recognize --route`` uses it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmer.data.inkml import Ink, read_inkml, strokes_to_ink
from hmer.decoding.fusion import Candidates, FusionParams, direction_scores, pool, search_lists
from hmer.decoding.limits import MAX_TOKENS, length_limits
from hmer.decoding.search import Hypothesis
from hmer.models.base import Memory
from hmer.recognize import INK_SUFFIXES, Recognizer, Result, deadline_within, ranked
from hmer.weights import (
    FUSION_PARAMS,
    ROUTES,
    WeightsError,
    ink_route,
    sha256,
    shipped_weights,
    weights_for,
)

ROLES = ("image", "strokes")


def load_params(path: str | Path | None = None) -> FusionParams:
    """Fusion parameters from a JSON file (default: the shipped ``weights/fusion.json``; without
    one, equal weights at temperature 1)."""
    path = Path(path) if path is not None else FUSION_PARAMS
    if path == FUSION_PARAMS and not path.is_file():
        return FusionParams()
    try:
        return FusionParams.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: not a readable fusion parameter file ({exc})") from exc


class FusionRecognizer:
    """An image and a stroke :class:`~hmer.recognize.Recognizer` reading pen input together.

    Offers the pen-input calls of a Recognizer (``recognize_ink``, ``recognize_strokes``,
    ``recognize_file`` for ``.inkml``, ``prepare_file``/``recognize_prepared``) with the same
    ``deadline``/``timeout_s`` rules. Results' scores are the fused softmax confidences.
    ``max_len``, when set, is the most tokens each model writes (``hmer recognize --max-len``).
    ``concurrent=False`` runs the two models one after the other even with torch threads to
    share (same results, see ``candidates``).
    """

    input_kind = "strokes"  # what it reads: pen input

    def __init__(
        self,
        image: Recognizer,
        strokes: Recognizer,
        params: FusionParams | None = None,
        name: str | None = None,
        beam: int | None = None,
        timeout_s: float | None = None,
        max_len: int | None = None,
        concurrent: bool = True,
    ):
        if (image.input_kind, strokes.input_kind) != ROLES:
            raise ValueError("fusion needs an image model and a stroke model, in that order")
        for rec in (image, strokes):
            if rec.model.kind != "seq2seq":
                raise ValueError(f"fusion needs seq2seq models; {rec.name} is {rec.model.kind}")
        if image.vocab.itos != strokes.vocab.itos:
            raise ValueError(f"{image.name} and {strokes.name} have different vocabularies")
        self.recognizers = {"image": image, "strokes": strokes}
        self.params = params or FusionParams()
        self.name = name or f"{image.name}+{strokes.name}"
        self.vocab = image.vocab
        self.beam = image.beam if beam is None else beam
        self.timeout_s = timeout_s
        self.max_len = max_len
        self.paths: dict[str, Path] = {}  # the model files, when loaded from files
        self.concurrent = concurrent
        self._threads: RoleThreads | None = None  # made at the first concurrent call

    @classmethod
    def load(
        cls,
        image_model: str | Path | None = None,
        stroke_model: str | Path | None = None,
        params: str | Path | FusionParams | None = None,
        beam: int = 10,
    ) -> FusionRecognizer:
        """Load both models (default: the shipped ones, the stroke model whether or not it is
        the default reader of pen input) and the fusion parameters (default: the shipped file).

        Parameters fitted for other model files still load, with a warning.
        """
        paths = {
            "image": weights_for("image", image_model),
            "strokes": Path(stroke_model) if stroke_model else shipped_weights("strokes"),
        }
        recs = {role: Recognizer.load(p, role, beam) for role, p in paths.items()}
        if not isinstance(params, FusionParams):
            params = load_params(params)
            for role, p in paths.items():
                fitted = params.fitted.get(role, {}).get("sha256")
                if fitted and p.is_file() and sha256(p) != fitted:
                    warnings.warn(
                        f"fusion parameters were fitted for another {role} model than {p}; "
                        "refit them with benchmarks/fusion.py",
                        stacklevel=2,
                    )
        fusion = cls(recs["image"], recs["strokes"], params, beam=beam)
        fusion.paths = paths
        return fusion

    # -- inputs ------------------------------------------------------------------------------
    def recognize_ink(
        self, ink: Ink, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize pen ink with both models (``beam <= 1``: the greedy mode)."""
        t0 = time.perf_counter()
        beam = self.beam if beam is None else beam
        cands = self.candidates(ink.traces, beam, deadline)
        # Greedy mode keeps both hypotheses: an alternative costs nothing more there.
        hyps = self.params.rank(cands, max(beam, 2))
        ms = (time.perf_counter() - t0) * 1000
        return ranked(hyps, self.vocab, self.name, ink.source, ms)

    def recognize_strokes(
        self, strokes: list, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize strokes given as lists of [x, y] or [x, y, t] points."""
        return self.recognize_ink(strokes_to_ink(strokes), beam, deadline)

    def recognize_file(
        self, path: str | Path, beam: int | None = None, deadline: float | None = None
    ) -> Result:
        """Recognize an ``.inkml`` file."""
        return self.recognize_ink(self.prepare_file(path), beam, deadline)

    def prepare_file(self, path: str | Path) -> Ink:
        """The ink of an ``.inkml`` file (fusion reads pen input only)."""
        path = Path(path)
        if path.suffix.lower() not in INK_SUFFIXES:
            raise ValueError(f"{path}: fusion reads pen input (.inkml), not images")
        return read_inkml(path)

    def recognize_prepared(
        self,
        inputs: list[Ink],
        sources: list[str],
        beam: int | None = None,
        deadline: float | None = None,
    ) -> list[Result]:
        """Recognize inks from ``prepare_file`` one after another (fusion decodes no batches)."""
        out = []
        for ink, source in zip(inputs, sources, strict=True):
            out.append(self.recognize_ink(Ink(ink.traces, source=source), beam, deadline))
        return out

    # -- core --------------------------------------------------------------------------------
    def candidates(
        self, traces: list[np.ndarray], beam: int | None = None, deadline: float | None = None
    ) -> Candidates:
        """Both models' hypotheses for pen ``traces``, pooled, each scored by both models.

        The models work side by side (:class:`RoleThreads`) when torch has two threads or more
        and ``concurrent`` allows it; the numbers are those of one after the other.
        """
        beam = self.beam if beam is None else beam
        deadline = deadline_within(deadline, self.timeout_s)
        most = MAX_TOKENS if self.max_len is None else self.max_len
        recs = self.recognizers

        def search(role: str) -> tuple[Memory, list[list[Hypothesis]]]:
            rec = recs[role]  # the render or the point features are made on the role's thread too
            inputs, masks = rec.as_batch(rec.prepare_ink(traces))
            mem = rec.model.encode(inputs, masks)
            # Each model stops at its input's length limit, as it does alone (hmer.recognize).
            (limit,) = length_limits(rec.model.input_kind, masks, most)
            return mem, search_lists(rec.model, mem, beam, limit, deadline)

        def rescore(role: str) -> np.ndarray:
            mem, lists = found[role]
            return direction_scores(recs[role].model, mem, ids, deadline=deadline, lists=lists)

        # Both locks, always in this order: a Recognizer shared with other callers holds its own.
        with recs["image"]._lock, recs["strokes"]._lock:
            each = self._each_role()
            found = each(search)
            searched = {role: lists for role, (_, lists) in found.items()}
            ids, found_by, place = pool(searched, self.params.pool_depth)
            scores = each(rescore)
        return Candidates(ids, found_by, scores, place)

    def _each_role(self) -> Callable[[Callable[[str], Any]], dict[str, Any]]:
        """How ``candidates`` runs a step for both roles: on :class:`RoleThreads` with their
        shares of torch's threads, or one after the other in this thread (one torch thread, or
        ``concurrent=False``)."""
        threads = torch.get_num_threads()
        if not self.concurrent or threads < 2:
            return lambda fn: _in_inference_mode(fn, ROLES)
        if self._threads is None or self._threads.threads != threads:
            if self._threads is not None:
                self._threads.close()
            self._threads = RoleThreads(threads)
        return self._threads.run


class RoleThreads:
    """One worker thread per fusion role, each with its share of ``threads`` intra-op threads.

    PyTorch ops release the GIL, so the two models' searches (and rescoring passes) overlap;
    each model alone gains little from a second intra-op thread on these small decoder steps.
    A role always runs on its own thread, which keeps its torch thread setting.
    """

    def __init__(self, threads: int):
        self.threads = threads
        shares = {"image": threads - threads // 2, "strokes": threads // 2}
        self.pools = {
            role: ThreadPoolExecutor(1, f"hmer-fusion-{role}", torch.set_num_threads, (n,))
            for role, n in shares.items()
        }
        for done in [p.submit(int) for p in self.pools.values()]:
            done.result()  # the workers have set their shares...
        torch.set_num_threads(threads)  # ...which torch also takes as the default of new threads

    def run(self, fn: Callable[[str], Any]) -> dict[str, Any]:
        """``fn(role)`` for every role at once, in inference mode; waits for both, then raises
        the first role's error (a ``DecodingTimeout`` comes from each at its deadline check)."""
        futures = {
            role: p.submit(_in_inference_mode, fn, (role,)) for role, p in self.pools.items()
        }
        wait(futures.values())
        return {role: f.result()[role] for role, f in futures.items()}

    def close(self) -> None:
        for p in self.pools.values():
            p.shutdown(wait=True)


def _in_inference_mode(fn: Callable[[str], Any], roles: tuple[str, ...]) -> dict[str, Any]:
    """``fn(role)`` for each of ``roles`` in order, in inference mode (a per-thread setting)."""
    with torch.inference_mode():
        return {role: fn(role) for role in roles}


def ink_recognizer(
    route: str | None = None,
    model: str | Path | None = None,
    stroke_model: str | Path | None = None,
    beam: int = 10,
) -> Recognizer | FusionRecognizer:
    """The reader of pen input for ``route`` ("image", "strokes", "fusion"; default
    :func:`hmer.weights.ink_route`).

    ``model`` is the image model of the "image" and "fusion" routes, ``stroke_model`` the stroke
    model of "strokes" (where ``model`` may give it too) and "fusion"; defaults: the shipped
    ones. Without a route, a given ``model`` reads the ink whatever its kind, as
    ``hmer recognize --model`` always has.
    """
    if route is None:
        if model is not None:
            return Recognizer.load(model, beam=beam)
        route = ink_route()
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; choose from {', '.join(ROUTES)}")
    if route == "fusion":
        return FusionRecognizer.load(model, stroke_model, beam=beam)
    if route == "image":
        rec = Recognizer.load(weights_for("image", model), "image", beam)
    else:
        path = stroke_model or model or shipped_weights("strokes")
        rec = Recognizer.load(path, "strokes", beam)
    if rec.input_kind != route:
        raise ValueError(
            f"the {route} route needs a model that reads {route}: {rec.name} reads {rec.input_kind}"
        )
    return rec
