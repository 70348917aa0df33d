"""Fitting fusion's weight and temperature on cached n-best lists, and scoring each route.

:func:`collect` decodes samples once with a :class:`hmer.fusion.FusionRecognizer` and keeps each
one's pooled, rescored :class:`~hmer.decoding.fusion.Candidates`; everything after works on
those lists (saved with :func:`save_cases`), so a weight sweep never decodes again. Each route's
answer is what a user would get (:func:`hmer.recognize.ranked`: the best valid LaTeX, repaired
when none is valid): "image" and "strokes" rank only their own model's hypotheses by its own
score, as each model alone does; "fusion" ranks the whole pool by the fused score.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hmer.data.dataset import Sample
from hmer.data.files import atomic_open
from hmer.data.vocab import Vocab
from hmer.decoding.fusion import Candidates, FusionParams, softmax
from hmer.evaluation.metrics import score
from hmer.recognize import alternatives, ranked
from hmer.weights import ROUTES

WEIGHT_GRID = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 21))


@dataclass
class Case:
    """One expression's truth and pooled candidates; ``seen``: its formula is also among the
    models' training expressions (CROHME repeats formulas across writers, a test set hardly)."""

    id: str
    truth: list[str]
    cands: Candidates
    seen: bool = False


def collect(
    fusion,
    samples: Sequence[Sample],
    beam: int,
    progress: Callable[[int], None] | None = None,
    trained: Collection[tuple[str, ...]] = (),
) -> list[Case]:
    """Decode each sample's ink with ``fusion`` (a FusionRecognizer) at ``beam``; ``progress``
    is called with the number done, ``trained`` holds the training formulas (token tuples)."""
    cases = []
    for k, s in enumerate(samples, 1):
        cands = fusion.candidates(s.traces, beam)
        cases.append(Case(s.id, list(s.tokens), cands, tuple(s.tokens) in trained))
        if progress is not None:
            progress(k)
    return cases


def save_cases(path: str | Path, cases: list[Case], meta: dict) -> None:
    """Write cases as JSON (NaN scores, of a one-direction model, as null)."""

    def scores(a: np.ndarray) -> list:
        return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in a]

    rows = [
        {
            "id": c.id,
            "truth": c.truth,
            "seen": c.seen,
            "ids": c.cands.ids,
            "found_by": c.cands.found_by,
            "place": c.cands.place,
            "scores": {role: scores(a) for role, a in c.cands.scores.items()},
        }
        for c in cases
    ]
    with atomic_open(Path(path), "w", encoding="utf-8") as fh:
        json.dump({"meta": meta, "cases": rows}, fh)


def load_cases(path: str | Path) -> tuple[dict, list[Case]]:
    """(meta, cases) from :func:`save_cases`'s file."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))

    def scores(rows: list) -> np.ndarray:
        return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)

    cases = [
        Case(
            r["id"],
            r["truth"],
            Candidates(
                r["ids"],
                r["found_by"],
                {k: scores(v) for k, v in r["scores"].items()},
                r.get("place"),
            ),
            r.get("seen", False),
        )
        for r in raw["cases"]
    ]
    return raw["meta"], cases


def route_hypotheses(case: Case, route: str, params: FusionParams, beam: int) -> list:
    """The n-best list a route gives for ``case``, best first (as its recognizer returns it)."""
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}")
    if route == "fusion":
        return params.rank(case.cands.within(params.pool_depth), max(beam, 2))
    return case.cands.own(route, beam)


@dataclass
class Outcome:
    """A route's answers: tokens per expression, the confidence of each and whether it is
    exactly right."""

    predictions: dict[str, list[str]]
    confidences: np.ndarray
    correct: np.ndarray


def outcomes(
    cases: list[Case], route: str, params: FusionParams, vocab: Vocab, beam: int
) -> Outcome:
    """What ``route`` answers for each case, through the Recognizer's post-processing."""
    preds, conf, right = {}, [], []
    for c in cases:
        result = ranked(route_hypotheses(c, route, params, beam), vocab)
        preds[c.id] = result.tokens
        conf.append(result.score)
        right.append(result.tokens == c.truth)
    return Outcome(preds, np.asarray(conf, dtype=np.float64), np.asarray(right, dtype=bool))


def route_metrics(
    cases: list[Case], route: str, params: FusionParams, vocab: Vocab, beam: int
) -> dict:
    """:func:`hmer.evaluation.metrics.score` of a route's answers (exact tokens), and the
    expected calibration error of its confidences in percentage points."""
    out = outcomes(cases, route, params, vocab, beam)
    metrics = score(out.predictions, {c.id: c.truth for c in cases}, normalize="none")
    metrics["ece"] = round(100 * expected_calibration_error(out.confidences, out.correct), 2)
    return metrics


def fit_strokes_weight(
    cases: list[Case],
    vocab: Vocab,
    beam: int,
    grid: Sequence[float] = WEIGHT_GRID,
    base: FusionParams | None = None,
) -> tuple[float, dict[float, float]]:
    """The stroke model's weight of highest fused ExpRate on ``cases`` (the middle one of a run
    of equally good weights), and the ExpRate of every weight in ``grid``."""
    base = base or FusionParams()
    table = {}
    for w in grid:
        params = FusionParams(w, base.temperature)
        table[float(w)] = 100.0 * float(
            outcomes(cases, "fusion", params, vocab, beam).correct.mean()
        )
    top = max(table.values())
    best = [w for w, r in table.items() if r == top]
    return best[len(best) // 2], table


def fit_pool_depth(
    cases: list[Case], vocab: Vocab, beam: int, params: FusionParams
) -> tuple[int | None, dict[int, float]]:
    """The smallest pool depth (:attr:`FusionParams.pool_depth`) whose fused ExpRate on
    ``cases`` equals the whole pool's (``None`` when no smaller one does), and the ExpRate of
    every depth from 1 to ``beam``."""
    table = {}
    for depth in range(1, beam + 1):
        at = replace(params, pool_depth=depth)
        table[depth] = 100.0 * float(outcomes(cases, "fusion", at, vocab, beam).correct.mean())
    whole = table[beam]
    return next((d for d, r in table.items() if r >= whole and d < beam), None), table


def cross_validated_exprate(
    cases: list[Case], vocab: Vocab, beam: int, folds: int = 2, base: FusionParams | None = None
) -> float:
    """Fused ExpRate where each case's stroke weight was fitted on the other folds only (cases
    dealt round-robin): an estimate of the fitted fusion on new expressions, free of the
    optimism of fitting and scoring on the same cases."""
    right = 0
    for k in range(folds):
        held = [c for i, c in enumerate(cases) if i % folds == k]
        rest = [c for i, c in enumerate(cases) if i % folds != k]
        weight, _ = fit_strokes_weight(rest, vocab, beam, base=base)
        right += int(outcomes(held, "fusion", FusionParams(weight), vocab, beam).correct.sum())
    return 100.0 * right / max(len(cases), 1)


def paired(
    cases: list[Case], first: str, second: str, params: FusionParams, vocab: Vocab, beam: int
) -> dict[str, int]:
    """How many cases two routes get right: both, only ``first``, only ``second``, neither."""
    a = outcomes(cases, first, params, vocab, beam).correct
    b = outcomes(cases, second, params, vocab, beam).correct
    return {
        "both": int((a & b).sum()),
        f"only_{first}": int((a & ~b).sum()),
        f"only_{second}": int((~a & b).sum()),
        "neither": int((~a & ~b).sum()),
    }


def fit_temperature(cases: list[Case], params: FusionParams, vocab: Vocab, beam: int) -> float:
    """The softmax temperature that minimizes the log loss of each answer's confidence against
    its exactness. The ranking, hence each answer, does not depend on the temperature: only the
    answer's softmax share over its pool does."""
    from scipy.optimize import minimize_scalar

    rows = []
    for c in cases:
        fused = params.fuse(c.cands)
        order = np.argsort(-fused, kind="stable")  # the order of FusionParams.rank
        chosen = alternatives(route_hypotheses(c, "fusion", params, beam), vocab)
        index, alt = chosen[0]
        rows.append((fused, int(order[index]), alt.tokens == c.truth))

    def loss(log_t: float) -> float:
        total = 0.0
        for fused, index, right in rows:
            p = float(np.clip(softmax(fused, float(np.exp(log_t)))[index], 1e-6, 1 - 1e-6))
            total -= np.log(p) if right else np.log1p(-p)
        return total / max(len(rows), 1)

    best = minimize_scalar(loss, bounds=(np.log(1e-3), np.log(1e2)), method="bounded")
    return float(np.exp(best.x))


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    """Expected calibration error: over ``bins`` equal-width confidence bins, the gap between
    mean confidence and accuracy, weighted by the share of answers in the bin (0 to 1)."""
    conf = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    if not len(conf):
        return 0.0
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - right[inside].mean())
    return float(total)
