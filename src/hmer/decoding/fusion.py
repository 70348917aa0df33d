"""Fusion of two seq2seq models reading one input: pooled n-best lists, rescored by both.

Each model searches on its own (beam search in every direction it was trained on, or greedy
left to right); the hypotheses of all its lists are pooled with the other model's, duplicates
dropped, and every distinct hypothesis is scored by both models' decoders, teacher-forced, in
each trained direction (a model's own search already gave the score of each hypothesis it
finished in the direction it searched: that score is reused, not decoded again). A model's
score of a hypothesis is the mean over its directions of the log-probability divided by
(length + 1), which is exactly how :func:`hmer.decoding.search.bidirectional_beam_search` ranks
its own hypotheses; the fused score is a weighted sum of the two models' scores
(:class:`FusionParams`), and the confidences are a softmax of the fused scores over the pool at
a fitted temperature.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from hmer.decoding.limits import MAX_TOKENS
from hmer.decoding.search import (
    Hypothesis,
    check_deadline,
    greedy,
    grouped_beam_search,
    searched_logprobs,
    sequence_logprob,
)
from hmer.models.base import Memory, Seq2SeqModel

DIRECTIONS = ("l2r", "r2l")


def search_lists(
    model: Seq2SeqModel,
    mem: Memory,
    beam: int,
    max_len: int = MAX_TOKENS,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """One input's (``mem`` of batch 1) hypothesis lists before any rescoring: beam search in
    each direction the model was trained on, or for ``beam <= 1`` one greedy left-to-right
    hypothesis."""
    if beam <= 1:
        return [greedy(model, mem, 1, "l2r", max_len, deadline)]
    directions = DIRECTIONS if model.bidirectional else DIRECTIONS[:1]
    return grouped_beam_search(model, mem, directions, beam, max_len, deadline=deadline)


def direction_scores(
    model: Seq2SeqModel,
    mem: Memory,
    seqs: list[list[int]],
    length_penalty: float = 1.0,
    deadline: float | None = None,
    lists: list[list[Hypothesis]] | None = None,
) -> np.ndarray:
    """(n, 2) teacher-forced log-probabilities of ``seqs`` (left-to-right ids) read left to right
    and right to left, each divided by (length + 1) ** ``length_penalty``; the right-to-left
    column is NaN for a model trained in one direction only. ``lists``, the model's own
    :func:`search_lists` for this input, give the values its searches already computed."""
    out = np.full((len(seqs), len(DIRECTIONS)), np.nan)
    norm = np.array([(len(s) + 1) ** length_penalty for s in seqs], dtype=np.float64)
    searched = [searched_logprobs(hyps) for hyps in lists or []]
    for j, direction in enumerate(DIRECTIONS if model.bidirectional else DIRECTIONS[:1]):
        check_deadline(deadline)
        known = searched[j] if j < len(searched) else None
        out[:, j] = np.asarray(sequence_logprob(model, mem, seqs, direction, known)) / norm
    return out


def model_score(scores: np.ndarray) -> np.ndarray:
    """A model's score of each hypothesis from its :func:`direction_scores`: the mean over the
    directions it was trained on."""
    return np.nanmean(scores, axis=-1)


@dataclass
class Candidates:
    """One input's pooled hypotheses: distinct id sequences (left to right), which models'
    searches found each, and every model's :func:`direction_scores` of every one."""

    ids: list[list[int]]
    found_by: list[list[str]]
    scores: dict[str, np.ndarray]  # model role ("image", "strokes") -> (n, 2)
    place: list[int] | None = None  # best place of each in the search lists that found it

    def within(self, depth: int | None) -> Candidates:
        """The candidates a pool of depth ``depth`` holds (see :func:`pool`): those among the
        best ``depth`` of some search list (all for ``None``)."""
        if depth is None:
            return self
        if self.place is None:
            raise ValueError("these candidates do not record their places in the search lists")
        keep = [i for i, r in enumerate(self.place) if r < depth]
        return Candidates(
            [self.ids[i] for i in keep],
            [self.found_by[i] for i in keep],
            {role: a[keep] for role, a in self.scores.items()},
            [self.place[i] for i in keep],
        )

    def own(self, role: str, beam: int) -> list[Hypothesis]:
        """What ``role``'s model alone gives: its own hypotheses ranked by its own score, the
        best ``beam`` (as :func:`hmer.decoding.recognize_batch` would return them)."""
        score = model_score(self.scores[role])
        keep = [i for i, f in enumerate(self.found_by) if role in f]
        keep.sort(key=lambda i: -score[i])
        return [self._hyp(i, float(score[i])) for i in keep[: max(beam, 1)]]

    def _hyp(self, i: int, score: float) -> Hypothesis:
        return Hypothesis(list(self.ids[i]), score * (len(self.ids[i]) + 1), score)


def pool(
    lists: dict[str, list[list[Hypothesis]]], depth: int | None = None
) -> tuple[list[list[int]], list[list[str]], list[int]]:
    """Distinct id sequences over every model's lists (each list's best ``depth``, all for
    ``None``), in first-seen order, with the roles of the models whose search found each and
    its best place in those lists (0: the top of a list)."""
    index: dict[tuple[int, ...], int] = {}
    ids: list[list[int]] = []
    found_by: list[list[str]] = []
    place: list[int] = []
    for role, per_direction in lists.items():
        for hyps in per_direction:
            for k, h in enumerate(hyps[:depth]):
                key = tuple(h.ids)
                if key not in index:
                    index[key] = len(ids)
                    ids.append(list(h.ids))
                    found_by.append([])
                    place.append(k)
                i = index[key]
                if role not in found_by[i]:
                    found_by[i].append(role)
                place[i] = min(place[i], k)
    return ids, found_by, place


@dataclass
class FusedHypothesis(Hypothesis):
    """A pooled hypothesis ranked by the fused score; its confidence is its softmax share."""

    probability: float = 0.0

    @property
    def confidence(self) -> float:
        return self.probability


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax of ``scores`` / ``temperature``."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


@dataclass
class FusionParams:
    """How two models' scores are combined: ``strokes_weight`` * stroke model score +
    (1 - ``strokes_weight``) * image model score, confidences a softmax at ``temperature``.

    ``pool_depth`` pools only the best ``pool_depth`` hypotheses of each search list (all for
    ``None``): rescoring every pooled hypothesis by both models costs more than the searches,
    and the low places of a beam hardly ever win.

    ``default_for_ink`` makes fusion the reader of pen input when nothing else is asked
    (:func:`hmer.weights.ink_route`); ``fitted`` records how the numbers were chosen.
    """

    strokes_weight: float = 0.5
    temperature: float = 1.0
    default_for_ink: bool = False
    fitted: dict = field(default_factory=dict)
    pool_depth: int | None = None

    def __post_init__(self) -> None:
        if self.pool_depth is not None and not (
            isinstance(self.pool_depth, int) and self.pool_depth >= 1
        ):
            raise ValueError(f"pool_depth must be a positive integer, not {self.pool_depth}")
        if not 0.0 <= self.strokes_weight <= 1.0:
            raise ValueError(f"strokes_weight must be in [0, 1], not {self.strokes_weight}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")

    def fuse(self, cands: Candidates) -> np.ndarray:
        """The fused score of each candidate."""
        w = self.strokes_weight
        image, strokes = model_score(cands.scores["image"]), model_score(cands.scores["strokes"])
        return (1.0 - w) * image + w * strokes

    def rank(self, cands: Candidates, keep: int) -> list[FusedHypothesis]:
        """The best ``keep`` candidates by fused score, each with its softmax share of the whole
        pool as confidence."""
        fused = self.fuse(cands)
        probs = softmax(fused, self.temperature)
        order = np.argsort(-fused, kind="stable")[: max(keep, 1)]
        out = []
        for i in order:
            ids, s = list(cands.ids[i]), float(fused[i])
            out.append(FusedHypothesis(ids, s * (len(ids) + 1), s, probability=float(probs[i])))
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FusionParams:
        raw = json.loads(text)
        known = {"strokes_weight", "temperature", "default_for_ink", "fitted", "pool_depth"}
        if not isinstance(raw, dict) or not set(raw) <= known:
            raise ValueError(f"fusion parameters must be an object with keys {sorted(known)}")
        return cls(**raw)
