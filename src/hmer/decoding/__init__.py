"""Decoding for every model family behind one call, ``recognize_batch``."""

from __future__ import annotations

import torch

from hmer.decoding.ctc import ctc_beam_batch, ctc_greedy, ctc_prefix_beam_search
from hmer.decoding.search import (
    DecodingTimeout,
    Hypothesis,
    beam_search,
    bidirectional_beam_search,
    check_deadline,
    greedy,
)
from hmer.models.base import CTCModel, Seq2SeqModel

__all__ = [
    "DecodingTimeout",
    "Hypothesis",
    "beam_search",
    "bidirectional_beam_search",
    "check_deadline",
    "ctc_greedy",
    "ctc_prefix_beam_search",
    "greedy",
    "recognize_batch",
]


@torch.no_grad()
def recognize_batch(
    model: Seq2SeqModel | CTCModel,
    inputs: torch.Tensor,
    masks: torch.Tensor,
    beam: int = 10,
    max_len: int = 200,
    deadline: float | None = None,
) -> list[list[Hypothesis]]:
    """Decode a batch with the search that fits the model; n-best hypotheses per input, best first.

    ``beam <= 1`` gives greedy decoding (one hypothesis each). Otherwise CTC models get prefix
    beam search, bidirectional seq2seq models beam search in both directions with rescoring, and
    others (``model.bidirectional`` false) left-to-right beam search. The caller chooses
    ``model.eval()`` and any autocast. Past ``deadline`` (a ``time.monotonic()`` value) decoding
    stops with :class:`DecodingTimeout`.
    """
    if model.kind == "ctc":
        log_probs, lengths = model.ctc_log_probs(inputs, masks)
        if beam <= 1:
            return [[h] for h in ctc_greedy(log_probs, lengths, model.blank)]
        return ctc_beam_batch(log_probs, lengths, beam, model.blank)
    if model.kind != "seq2seq":
        raise ValueError(f"unknown model kind {model.kind!r}")
    check_deadline(deadline)
    mem = model.encode(inputs, masks)
    n = inputs.shape[0]
    if beam <= 1:
        return [[h] for h in greedy(model, mem, n, "l2r", max_len, deadline)]
    out = []
    for i in range(n):
        one = model.select(mem, torch.tensor([i], device=inputs.device))
        if model.bidirectional:
            out.append(bidirectional_beam_search(model, one, beam, max_len, deadline=deadline))
        else:
            out.append(beam_search(model, one, beam, "l2r", max_len, deadline=deadline))
    return out
