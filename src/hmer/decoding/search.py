"""Greedy and beam search for autoregressive models, with bidirectional rescoring.

Models implement :class:`hmer.models.base.Seq2SeqModel` (``encode``, ``select``, ``step``,
``decode``, ``start_tokens``); those that also implement
:class:`~hmer.models.base.IncrementalDecoder` are stepped one position at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hmer.data.vocab import PAD_ID as PAD
from hmer.models.base import IncrementalDecoder, Memory, Seq2SeqModel


class DecodingTimeout(TimeoutError):
    """Decoding ran past its deadline (a ``time.monotonic()`` value) and was stopped."""


def check_deadline(deadline: float | None) -> None:
    """Raise :class:`DecodingTimeout` once ``time.monotonic()`` has passed ``deadline``."""
    if deadline is not None and time.monotonic() > deadline:
        raise DecodingTimeout("decoding took longer than its time budget")


@dataclass
class Hypothesis:
    """A decoded token-id sequence (without start/end tokens) and its scores."""

    ids: list[int]
    logprob: float  # total log-probability, end token included
    score: float  # ranking score (length-normalized, rescored when bidirectional)

    @property
    def confidence(self) -> float:
        """exp(mean token log-probability): a number in (0, 1] a user can read."""
        return float(torch.tensor(self.logprob / (len(self.ids) + 1)).exp())


class _Stepper:
    """Next-token log-probabilities for growing prefixes: incremental when the model keeps a
    decoding state (``decoder_state``/``step_state``/``reorder_state``), else from the whole
    prefix."""

    def __init__(self, model: Seq2SeqModel, mem: Memory):
        self.model, self.mem = model, mem
        incremental = isinstance(model, IncrementalDecoder)
        self.state = model.decoder_state(mem) if incremental else None

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.state is None:
            n = prefix.shape[0]
            if self.mem["memory"].shape[0] != n:  # one input, several beams
                index = torch.zeros(n, dtype=torch.long, device=prefix.device)
                return self.model.step(self.model.select(self.mem, index), prefix)
            return self.model.step(self.mem, prefix)
        lp, self.state = self.model.step_state(prefix[:, -1], self.state)
        return lp

    def keep(self, rows: torch.Tensor) -> None:
        """Continue only the prefixes in ``rows`` (in that order)."""
        if self.state is not None:
            self.state = self.model.reorder_state(self.state, rows)


@torch.no_grad()
def greedy(
    model: Seq2SeqModel,
    mem: Memory,
    batch: int,
    direction: str = "l2r",
    max_len: int = 200,
    deadline: float | None = None,
) -> list[Hypothesis]:
    """Greedy decoding of ``batch`` inputs sharing one encoded ``mem``, stopped at ``deadline``."""
    start, end = model.start_tokens(direction)
    dev = mem["memory"].device
    prefix = torch.full((batch, 1), start, dtype=torch.long, device=dev)
    logp = torch.zeros(batch, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    step = _Stepper(model, mem)
    for _ in range(max_len):
        check_deadline(deadline)
        lp = step(prefix)
        lp[:, PAD] = float("-inf")  # never emitted by a trained model; keep untrained ones sane
        lp[:, start] = float("-inf")
        best_lp, best = lp.max(-1)
        best = torch.where(done, torch.full_like(best, PAD), best)
        logp = logp + torch.where(done, torch.zeros_like(best_lp), best_lp)
        prefix = torch.cat([prefix, best[:, None]], 1)
        done = done | (best == end)
        if done.all():
            break
    out = []
    for row, lp in zip(prefix[:, 1:].tolist(), logp.tolist(), strict=True):
        ids = row[: row.index(end)] if end in row else [i for i in row if i != PAD]
        if direction == "r2l":
            ids = ids[::-1]
        out.append(Hypothesis(ids, lp, lp / (len(ids) + 1)))
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    mem: Memory,
    beam: int = 10,
    direction: str = "l2r",
    max_len: int = 200,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[Hypothesis]:
    """Beam search for ONE input (``mem`` of batch 1); returns finished hypotheses, best first.

    Scores are log-probabilities divided by (length + 1) ** ``length_penalty``. Past
    ``deadline`` (``time.monotonic()``) it raises :class:`DecodingTimeout`.
    """
    (hyps,) = grouped_beam_search(model, mem, (direction,), beam, max_len, length_penalty, deadline)
    return hyps


@torch.no_grad()
def grouped_beam_search(
    model: Seq2SeqModel,
    mem: Memory,
    directions: tuple[str, ...] = ("l2r", "r2l"),
    beam: int = 10,
    max_len: int = 200,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Independent beam searches of ONE input, one per direction, run as one batch.

    Each direction (group) keeps ``beam`` rows; all rows go through the decoder together, so a
    step costs one decoder call however many directions there are. Rows that are not (or no
    longer) live carry a score of -inf. A group stops once no live row can beat its worst kept
    finished hypothesis. Returns each group's hypotheses, best first.
    """
    g_n, k_n = len(directions), beam
    ends = [model.start_tokens(d) for d in directions]
    dev = mem["memory"].device
    starts = torch.tensor([s for s, _ in ends], device=dev).repeat_interleave(k_n)
    prefixes = starts[:, None]
    scores = torch.full((g_n, k_n), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live row per group to begin with
    finished: list[list[Hypothesis]] = [[] for _ in directions]
    done = [False] * g_n
    step = _Stepper(model, mem)
    for t in range(max_len):
        check_deadline(deadline)
        lp = step(prefixes)
        lp[torch.arange(len(starts), device=dev), starts] = float("-inf")
        lp[:, PAD] = float("-inf")
        vocab = lp.shape[1]
        total = (scores.reshape(-1, 1) + lp).view(g_n, k_n * vocab)
        top, idx = total.topk(min(2 * k_n, k_n * vocab), dim=1)
        rows, toks, new_scores = [], [], []
        for g, direction in enumerate(directions):
            keep: list[tuple[int, int, float]] = []
            if not done[g]:
                end = ends[g][1]
                for s, i in zip(top[g].tolist(), idx[g].tolist(), strict=True):
                    if s == float("-inf"):
                        break
                    row, tok = g * k_n + i // vocab, i % vocab
                    if tok == end:
                        ids = prefixes[row, 1:].tolist()
                        if direction == "r2l":
                            ids = ids[::-1]
                        finished[g].append(Hypothesis(ids, s, s / (len(ids) + 1) ** length_penalty))
                    elif len(keep) < k_n:
                        keep.append((row, tok, s))
                if len(finished[g]) >= k_n:
                    finished[g].sort(key=lambda h: -h.score)
                    finished[g] = finished[g][:k_n]
                    best_live = max((s for *_, s in keep), default=float("-inf"))
                    if best_live / (t + 2) ** length_penalty < finished[g][-1].score:
                        keep = []
                done[g] = not keep
            # Dead rows keep the group's shape: any row of the group, scored -inf.
            keep += [(g * k_n, PAD, float("-inf"))] * (k_n - len(keep))
            for row, tok, s in keep:
                rows.append(row)
                toks.append(tok)
                new_scores.append(s)
        if all(done):
            break
        rows_t = torch.tensor(rows, device=dev)
        prefixes = torch.cat([prefixes[rows_t], torch.tensor(toks, device=dev)[:, None]], 1)
        step.keep(rows_t)
        scores = torch.tensor(new_scores, device=dev).view(g_n, k_n)
    out = []
    for g, direction in enumerate(directions):
        if not finished[g]:  # ran out of length: keep the live beams as they are
            for k in range(k_n):
                s = float(scores[g, k])
                if s == float("-inf"):
                    continue
                row = prefixes[g * k_n + k, 1:].tolist()
                ids = row[::-1] if direction == "r2l" else row
                finished[g].append(Hypothesis(ids, s, s / (len(ids) + 1) ** length_penalty))
        finished[g].sort(key=lambda h: -h.score)
        out.append(finished[g][:k_n])
    return out


@torch.no_grad()
def sequence_logprob(
    model: Seq2SeqModel, mem: Memory, hyps: list[list[int]], direction: str
) -> list[float]:
    """Log-probability of each full token sequence (left-to-right ids) read in ``direction``.

    ``mem`` is one input's (batch 1): every sequence reads that one memory row.
    """
    if not hyps:
        return []
    start, end = model.start_tokens(direction)
    seqs = [h if direction == "l2r" else h[::-1] for h in hyps]
    t = max(len(s) for s in seqs) + 1
    dev = mem["memory"].device
    tgt_in = torch.full((len(seqs), t), PAD, dtype=torch.long, device=dev)
    tgt_out = torch.full((len(seqs), t), PAD, dtype=torch.long, device=dev)
    for i, s in enumerate(seqs):
        tgt_in[i, : len(s) + 1] = torch.tensor([start, *s])
        tgt_out[i, : len(s) + 1] = torch.tensor([*s, end])
    lp = model.decode(mem, tgt_in).float().log_softmax(-1)  # one memory row, read by every seq
    tok_lp = lp.gather(-1, tgt_out.clamp(min=0)[..., None])[..., 0]
    return (tok_lp * (tgt_out != PAD)).sum(1).tolist()


@torch.no_grad()
def bidirectional_beam_search(
    model: Seq2SeqModel,
    mem: Memory,
    beam: int = 10,
    max_len: int = 200,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[Hypothesis]:
    """Beam search in both directions, each hypothesis rescored by the opposite direction.

    The final score is the mean of both directions' length-normalized log-probabilities.
    """
    pool: dict[tuple[int, ...], Hypothesis] = {}
    both = grouped_beam_search(model, mem, ("l2r", "r2l"), beam, max_len, length_penalty, deadline)
    for hyps in both:
        for h in hyps:
            pool.setdefault(tuple(h.ids), h)
    ids = [list(k) for k in pool]
    l2r = sequence_logprob(model, mem, ids, "l2r")
    r2l = sequence_logprob(model, mem, ids, "r2l")
    out = []
    for seq, a, b in zip(ids, l2r, r2l, strict=True):
        norm = (len(seq) + 1) ** length_penalty
        out.append(Hypothesis(seq, (a + b) / 2, (a + b) / 2 / norm))
    out.sort(key=lambda h: -h.score)
    return out[:beam]
