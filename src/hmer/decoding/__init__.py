"""Decoding for every model family behind two calls: ``recognize_batch`` for a padded batch
(training's validation, benchmarks) and ``recognize_inputs`` for inputs encoded one by one (what
users get: the same answers whether their inputs are decoded alone or together)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hmer.decoding.ctc import ctc_beam_batch, ctc_greedy, ctc_prefix_beam_search
from hmer.decoding.limits import MAX_TOKENS, length_limits
from hmer.decoding.search import (
    DecodingTimeout,
    Hypothesis,
    beam_search,
    beam_search_batch,
    bidirectional_beam_search,
    check_deadline,
    greedy,
)
from hmer.models.base import CTCModel, Memory, Seq2SeqModel

__all__ = [
    "DecodingTimeout",
    "Hypothesis",
    "beam_search",
    "bidirectional_beam_search",
    "check_deadline",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "greedy",
    "length_limits",
    "recognize_batch",
    "recognize_inputs",
]


@torch.no_grad()
def recognize_batch(
    model: Seq2SeqModel | CTCModel,
    inputs: torch.Tensor,
    masks: torch.Tensor,
    beam: int = 10,
    max_len: int = MAX_TOKENS,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Decode a padded batch with the search that fits the model; n-best hypotheses per input,
    best first.

    ``beam <= 1`` gives greedy decoding (one hypothesis each). Otherwise CTC models get prefix
    beam search, bidirectional seq2seq models beam search in both directions with rescoring, and
    others (``model.bidirectional`` false) left-to-right beam search; every input of the batch
    in one search. Autoregressive decoding stops at each input's length limit (from its size,
    :func:`hmer.decoding.limits.length_limits`), at most ``max_len``. The encoder reads the
    padded batch, so an input's answer may differ slightly from its answer alone (see
    :func:`recognize_inputs`). The caller chooses ``model.eval()`` and any autocast. Past
    ``deadline`` (a ``time.monotonic()`` value) decoding stops with :class:`DecodingTimeout`.
    """
    if model.kind == "ctc":
        log_probs, lengths = model.ctc_log_probs(inputs, masks)
        if beam <= 1:
            return [[h] for h in ctc_greedy(log_probs, lengths, model.blank)]
        return ctc_beam_batch(log_probs, lengths, beam, model.blank)
    if model.kind != "seq2seq":
        raise ValueError(f"unknown model kind {model.kind!r}")
    check_deadline(deadline)
    limits = length_limits(model.input_kind, masks, max_len)
    return _decode(model, model.encode(inputs, masks), limits, beam, deadline)


@torch.no_grad()
def recognize_inputs(
    model: Seq2SeqModel | CTCModel,
    items: Sequence[tuple[torch.Tensor, torch.Tensor]],
    beam: int = 10,
    max_len: int = MAX_TOKENS,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Decode inputs of different sizes, each (input, mask) a batch of one, as
    :func:`recognize_batch` decodes each alone, and with the same answers.

    The encoder reads each input alone; a seq2seq model's decoder then reads their memories
    together (``model.join``: padded to the largest, the padding masked) when
    ``model.joins_inputs``, in one search. CTC models decode input by input.
    """
    if model.kind not in ("ctc", "seq2seq"):
        raise ValueError(f"unknown model kind {model.kind!r}")
    if model.kind == "ctc" or not model.joins_inputs:
        return [recognize_batch(model, x, m, beam, max_len, deadline)[0] for x, m in items]
    mems: list[Memory] = []
    limits: list[int] = []
    for x, m in items:
        check_deadline(deadline)
        mems.append(model.encode(x, m))
        limits += length_limits(model.input_kind, m, max_len)
    if not mems:
        return []
    return _decode(model, model.join(mems), limits, beam, deadline)


def _decode(
    model: Seq2SeqModel, mem: Memory, limits: list[int], beam: int, deadline: float | None
) -> list[list[Hypothesis]]:
    if beam <= 1:
        return [[h] for h in greedy(model, mem, len(limits), "l2r", limits, deadline)]
    return beam_search_batch(model, mem, beam, limits, deadline=deadline)
