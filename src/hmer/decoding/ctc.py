"""CTC decoding: best-path (greedy) and prefix beam search over (T, V) frame log-probabilities.

Scores of CTC hypotheses are not length-normalized: the prefix beam's ``logprob`` estimates the
total probability of the label sequence (summed over its alignments), a proper distribution over
sequences of any length, so it ranks them directly. Greedy gives the best single path's
log-probability, a lower bound of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hmer.decoding.search import Hypothesis

_NEG_INF = float("-inf")


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _add(table: dict, prefix: tuple[int, ...], slot: int, value: float) -> None:
    if value == _NEG_INF:  # an impossible alignment (a repeat with no blank yet) adds no prefix
        return
    cell = table.setdefault(prefix, [_NEG_INF, _NEG_INF])
    cell[slot] = _logaddexp(cell[slot], value)


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[Hypothesis]:
    """Best path per input of log-probs (T,B,V) with frame counts (B,): repeats merged, blanks
    dropped."""
    best_lp, best = log_probs.float().max(-1)  # T, B
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = best[:n, b].tolist()
        ids = [c for k, c in enumerate(path) if c != blank and (k == 0 or c != path[k - 1])]
        lp = float(best_lp[:n, b].sum())
        out.append(Hypothesis(ids, lp, lp))
    return out


def ctc_prefix_beam_search(
    log_probs: torch.Tensor | np.ndarray, beam: int = 10, blank: int = 0, prune: float = -12.0
) -> list[Hypothesis]:
    """Prefix beam search over one input's log-probs (T,V); n-best hypotheses, best first.

    Each prefix keeps two log-probabilities: of its alignments ending in a blank and ending in
    its last label, since only the first may be extended by a repeat of that label. Per frame,
    only labels with log-prob above ``prune`` (and at most ``beam`` of them) are tried.
    """
    lp = log_probs.detach().float().cpu().numpy() if torch.is_tensor(log_probs) else log_probs
    lp = np.asarray(lp, np.float64)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, _NEG_INF)}  # (blank, label)
    for row in lp:
        order = np.argsort(-row)[: beam + 1].tolist()
        frame = row.tolist()  # Python floats: much faster than NumPy scalars in this loop
        cands = [c for c in order if c != blank and frame[c] > prune][:beam]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pl) in beams.items():
            total = _logaddexp(pb, pl)
            _add(nxt, prefix, 0, total + frame[blank])
            if prefix:  # the last label repeated without a blank collapses into the same prefix
                _add(nxt, prefix, 1, pl + frame[prefix[-1]])
            for c in cands:
                # a repeat of the last label is a new label only after a blank
                _add(nxt, (*prefix, c), 1, (pb if prefix and c == prefix[-1] else total) + frame[c])
        ranked = sorted(nxt.items(), key=lambda kv: -_logaddexp(*kv[1]))[:beam]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    out = [Hypothesis(list(k), _logaddexp(*v), _logaddexp(*v)) for k, v in beams.items()]
    out.sort(key=lambda h: -h.score)
    return out


def ctc_beam_batch(
    log_probs: torch.Tensor, lengths: torch.Tensor, beam: int = 10, blank: int = 0
) -> list[list[Hypothesis]]:
    """Prefix beam search for every input of log-probs (T,B,V) with frame counts (B,)."""
    lp = log_probs.detach().float().cpu().numpy()
    return [ctc_prefix_beam_search(lp[:n, b], beam, blank) for b, n in enumerate(lengths.tolist())]
