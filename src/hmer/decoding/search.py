"""Greedy and beam search for autoregressive models, with bidirectional rescoring.

Models implement :class:`hmer.models.base.Seq2SeqModel` (``encode``, ``select``, ``step``,
``decode``, ``start_tokens``); those that also implement
:class:`~hmer.models.base.IncrementalDecoder` are stepped one position at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hmer.data.vocab import PAD_ID as PAD
from hmer.decoding.limits import MAX_TOKENS
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
    logprob: float  # total log-probability, end token included when complete
    score: float  # ranking score (length-normalized, rescored when bidirectional)
    complete: bool = True  # False: stopped at the length limit before the end token

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
            n, inputs = prefix.shape[0], self.mem["memory"].shape[0]
            if inputs != n:  # each input's rows (beams) in one block, in input order
                index = torch.arange(inputs, device=prefix.device).repeat_interleave(n // inputs)
                return self.model.step(self.model.select(self.mem, index), prefix)
            return self.model.step(self.mem, prefix)
        lp, self.state = self.model.step_state(prefix[:, -1], self.state)
        return lp

    def keep(self, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> None:
        """Continue only the prefixes in ``rows`` (in that order; each from its own input's
        block), and with ``inputs`` only those inputs (the blocks ``rows`` keeps)."""
        if self.state is not None:
            self.state = self.model.reorder_state(self.state, rows, inputs)
        elif inputs is not None:
            self.mem = self.model.select(self.mem, inputs)


def _per_input(max_len: int | Sequence[int], inputs: int) -> list[int]:
    """One length limit per input: ``max_len`` for all, or ``max_len`` given per input."""
    if isinstance(max_len, int):
        return [max_len] * inputs
    if len(max_len) != inputs:
        raise ValueError(f"{len(max_len)} length limits for {inputs} inputs")
    return list(max_len)


@torch.no_grad()
def greedy(
    model: Seq2SeqModel,
    mem: Memory,
    batch: int,
    direction: str = "l2r",
    max_len: int | Sequence[int] = MAX_TOKENS,
    deadline: float | None = None,
) -> list[Hypothesis]:
    """Greedy decoding of the ``batch`` inputs of ``mem``, stopped at ``deadline``.

    ``max_len`` bounds the tokens written (the end token included), for all inputs or per input.
    """
    start, end = model.start_tokens(direction)
    dev = mem["memory"].device
    limits = _per_input(max_len, batch)
    limit = torch.tensor(limits, device=dev)
    prefix = torch.full((batch, 1), start, dtype=torch.long, device=dev)
    logp = torch.zeros(batch, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    step = _Stepper(model, mem)
    for t in range(max(limits, default=0)):
        done = done | (limit <= t)  # out of length: stops as it is
        if done.all():
            break
        check_deadline(deadline)
        lp = step(prefix)
        lp[:, PAD] = float("-inf")  # never emitted by a trained model; keep untrained ones sane
        lp[:, start] = float("-inf")
        best_lp, best = lp.max(-1)
        best = torch.where(done, torch.full_like(best, PAD), best)
        logp = logp + torch.where(done, torch.zeros_like(best_lp), best_lp)
        prefix = torch.cat([prefix, best[:, None]], 1)
        done = done | (best == end)
    out = []
    for row, lp in zip(prefix[:, 1:].tolist(), logp.tolist(), strict=True):
        ids = row[: row.index(end)] if end in row else [i for i in row if i != PAD]
        if direction == "r2l":
            ids = ids[::-1]
        out.append(Hypothesis(ids, lp, lp / (len(ids) + 1), complete=end in row))
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    mem: Memory,
    beam: int = 10,
    direction: str = "l2r",
    max_len: int = MAX_TOKENS,
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
    max_len: int | Sequence[int] = MAX_TOKENS,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Independent beam searches, one per input of ``mem`` and direction, run as one batch.

    Each (input, direction) group keeps ``beam`` rows; all rows go through the decoder together,
    so a step costs one decoder call however many groups there are. Rows that are not (yet)
    live carry a score of -inf. A group stops once no live row can beat its worst kept
    finished hypothesis, or at its input's length limit (``max_len``: one for all inputs or one
    per input), where its live rows become its hypotheses if none finished; a stopped group
    leaves the batch. Returns each group's hypotheses, best first:
    input by input, each input's directions in ``directions`` order.
    """
    d_n, k_n = len(directions), beam
    inputs = mem["memory"].shape[0]
    limits = [n for n in _per_input(max_len, inputs) for _ in directions]
    group_dirs = list(directions) * inputs
    ends = [model.start_tokens(d) for d in group_dirs]
    finished: list[list[Hypothesis]] = [[] for _ in group_dirs]
    done = [False] * len(group_dirs)
    # The batch holds the live groups: ``groups[q]`` is the group of batch group q, whose rows
    # are q * beam ... q * beam + beam - 1, and group g reads input g // d_n. ``blocks`` are the
    # inputs of the decoder state's memory rows, each read by an equal block of rows in order.
    groups = list(range(len(group_dirs)))
    blocks = list(range(inputs))
    dev = mem["memory"].device
    starts = torch.tensor([s for s, _ in ends], device=dev).repeat_interleave(k_n)
    prefixes = starts[:, None]
    scores = torch.full((len(groups), k_n), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live row per group to begin with
    step = _Stepper(model, mem)

    def live(q: int) -> list[Hypothesis]:
        """Batch group ``q``'s live rows as they stand, as hypotheses."""
        out = []
        for k, s in enumerate(scores[q].tolist()):
            if s > float("-inf"):
                row = prefixes[q * k_n + k, 1:].tolist()
                ids = row[::-1] if group_dirs[groups[q]] == "r2l" else row
                h = Hypothesis(ids, s, s / (len(ids) + 1) ** length_penalty, complete=False)
                out.append(h)
        return out

    def regroup(stay: list[int], rows: torch.Tensor) -> None:
        """Continue with batch groups ``stay`` (rows ``rows``, ``beam`` per group, in order):
        stopped groups leave the batch, so that no decoder step is spent on them."""
        nonlocal groups, blocks, starts
        changed = len(stay) < len(groups)
        if changed:
            groups = [groups[q] for q in stay]
            starts = starts.view(-1, k_n)[torch.tensor(stay, device=dev)].reshape(-1)
        per_input = [g // d_n for g in groups]
        counts = {a: per_input.count(a) for a in per_input}
        # One memory row per input while its groups are equally many, else one per group.
        new = list(counts) if len(set(counts.values())) == 1 else per_input
        index = None
        if new != blocks:
            where = {a: i for i, a in enumerate(blocks)}
            index = torch.tensor([where[a] for a in new], device=dev)
            blocks = new
        step.keep(rows, index)

    for t in range(max(limits, default=0)):
        for q, g in enumerate(groups):
            if t >= limits[g]:  # out of length: keep the live rows as they are
                finished[g] = finished[g] or live(q)
                done[g] = True
        if all(done):
            break
        if any(done[g] for g in groups):
            stay = [q for q, g in enumerate(groups) if not done[g]]
            rows = torch.tensor([q * k_n + k for q in stay for k in range(k_n)], device=dev)
            prefixes, scores = prefixes[rows], scores[torch.tensor(stay, device=dev)]
            regroup(stay, rows)
        check_deadline(deadline)
        lp = step(prefixes)
        lp[torch.arange(len(starts), device=dev), starts] = float("-inf")
        lp[:, PAD] = float("-inf")
        vocab = lp.shape[1]
        total = (scores.reshape(-1, 1) + lp).view(len(groups), k_n * vocab)
        top, idx = total.topk(min(2 * k_n, k_n * vocab), dim=1)
        kept: list[tuple[int, int, float]] = []
        stay = []
        for q, (g, top_q, idx_q) in enumerate(zip(groups, top.tolist(), idx.tolist(), strict=True)):
            keep: list[tuple[int, int, float]] = []
            for s, i in zip(top_q, idx_q, strict=True):
                if s == float("-inf"):
                    break
                row, tok = q * k_n + i // vocab, i % vocab
                if tok == ends[g][1]:
                    ids = prefixes[row, 1:].tolist()
                    if group_dirs[g] == "r2l":
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
            if keep:
                stay.append(q)
                # Rows that are not live keep the group's shape: any row of it, scored -inf.
                kept += keep + [(q * k_n, PAD, float("-inf"))] * (k_n - len(keep))
        if all(done):
            break
        rows = torch.tensor([r for r, _, _ in kept], device=dev)
        toks = torch.tensor([tok for _, tok, _ in kept], device=dev)
        prefixes = torch.cat([prefixes[rows], toks[:, None]], 1)
        scores = torch.tensor([s for *_, s in kept], device=dev).view(-1, k_n)
        regroup(stay, rows)
    out = []
    for g in range(len(group_dirs)):
        if not finished[g] and g in groups:  # ran out of length: the live rows as they are
            finished[g] = live(groups.index(g))
        finished[g].sort(key=lambda h: -h.score)
        out.append(finished[g][:k_n])
    return out


def searched_logprobs(hyps: Sequence[Hypothesis]) -> dict[tuple[int, ...], float]:
    """The total log-probabilities a search in one direction computed for its complete
    hypotheses (those it did not stop at the length limit), by id sequence: what
    :func:`sequence_logprob` in that direction would compute again (to float rounding)."""
    return {tuple(h.ids): h.logprob for h in hyps if h.complete}


@torch.no_grad()
def sequence_logprob(
    model: Seq2SeqModel,
    mem: Memory,
    hyps: list[list[int]],
    direction: str,
    known: dict[tuple[int, ...], float] | None = None,
) -> list[float]:
    """Log-probability of each full token sequence (left-to-right ids) read in ``direction``.

    ``mem`` is one input's (batch 1): every sequence reads that one memory row. Sequences in
    ``known`` (:func:`searched_logprobs` of a search in ``direction``) take its value and are
    not decoded again: rescoring a beam's hypotheses then costs half.
    """
    known = known or {}
    todo = [k for k in dict.fromkeys(map(tuple, hyps)) if k not in known]
    lps = _teacher_forced_logprob(model, mem, [list(k) for k in todo], direction)
    decoded = dict(zip(todo, lps, strict=True))
    return [known[k] if k in known else decoded[k] for k in map(tuple, hyps)]


def _teacher_forced_logprob(
    model: Seq2SeqModel, mem: Memory, hyps: list[list[int]], direction: str
) -> list[float]:
    """:func:`sequence_logprob` by one teacher-forced decode of all ``hyps``."""
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
    max_len: int = MAX_TOKENS,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[Hypothesis]:
    """Beam search of ONE input in both directions, each hypothesis rescored by the opposite
    direction.

    The final score is the mean of both directions' length-normalized log-probabilities.
    """
    both = grouped_beam_search(model, mem, ("l2r", "r2l"), beam, max_len, length_penalty, deadline)
    return rescore_both_ways(model, mem, both, beam, length_penalty)


@torch.no_grad()
def rescore_both_ways(
    model: Seq2SeqModel,
    mem: Memory,
    lists: Sequence[list[Hypothesis]],
    beam: int = 10,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """ONE input's distinct hypotheses (``mem`` of batch 1) from its left-to-right and
    right-to-left searches (``lists``, in that order), each scored by the mean of both
    directions' length-normalized log-probabilities; the best ``beam``, best first. A search's
    own log-probabilities of its hypotheses are reused (:func:`searched_logprobs`)."""
    ids = [list(k) for k in dict.fromkeys(tuple(h.ids) for hyps in lists for h in hyps)]
    forward, backward = (searched_logprobs(hyps) for hyps in lists)
    l2r = sequence_logprob(model, mem, ids, "l2r", forward)
    r2l = sequence_logprob(model, mem, ids, "r2l", backward)
    out = []
    for seq, a, b in zip(ids, l2r, r2l, strict=True):
        norm = (len(seq) + 1) ** length_penalty
        out.append(Hypothesis(list(seq), (a + b) / 2, (a + b) / 2 / norm))
    out.sort(key=lambda h: -h.score)
    return out[:beam]


@torch.no_grad()
def beam_search_batch(
    model: Seq2SeqModel,
    mem: Memory,
    beam: int = 10,
    max_len: int | Sequence[int] = MAX_TOKENS,
    length_penalty: float = 1.0,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """The beam search the model calls for (both directions with rescoring when
    ``model.bidirectional``, else left to right) of every input of ``mem`` in one batch;
    ``max_len`` for all inputs or per input. Each input's hypotheses, best first."""
    if not model.bidirectional:
        return grouped_beam_search(model, mem, ("l2r",), beam, max_len, length_penalty, deadline)
    groups = grouped_beam_search(
        model, mem, ("l2r", "r2l"), beam, max_len, length_penalty, deadline
    )
    out = []
    for i in range(len(groups) // 2):
        one = model.select(mem, torch.tensor([i], device=mem["memory"].device))
        out.append(rescore_both_ways(model, one, groups[2 * i : 2 * i + 2], beam, length_penalty))
    return out
