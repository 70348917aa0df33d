"""Where a model looked for each token it wrote (``hmer explain``), for every family.

Attention models (:class:`~hmer.models.base.Seq2SeqModel`) decode greedily, then read the
decoder's attention over the memory at each step, the end token included. CTC models have no
attention: their explanation is the alignment, the frames that emitted each token (with their
probabilities), spread over the feature columns those frames were read from.

:func:`activation_maps` shows, for any image family, how strongly each stage of the CNN encoder
responds across the image (``hmer explain --activations``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hmer.decoding.limits import MAX_TOKENS, length_limits
from hmer.decoding.search import greedy
from hmer.models.base import CTCModel, ImageEncoder, Seq2SeqModel
from hmer.models.encoders import STRIDE, pad_to_stride


@dataclass
class Explanation:
    """Decoded ids and one weight map per step over the memory laid out as (h, w).

    ``kind`` is "attention" (one map per token and one for the end token) or "alignment" (CTC:
    one map per token).
    """

    ids: list[int]
    maps: np.ndarray  # (steps, h, w), float32
    kind: str


@torch.no_grad()
def explain(
    model: Seq2SeqModel | CTCModel, inputs: torch.Tensor, masks: torch.Tensor
) -> Explanation:
    """Explain the greedy reading of ONE input (batch of 1) of the model's input kind."""
    if inputs.shape[0] != 1:
        raise ValueError("explain reads one input at a time")
    if model.kind == "ctc":
        return _alignment(model, inputs, masks)
    mem = model.encode(inputs, masks)
    (hyp,) = greedy(model, mem, 1, max_len=length_limits(model.input_kind, masks, MAX_TOKENS))
    start, _ = model.start_tokens("l2r")
    tgt = torch.tensor([[start, *hyp.ids]], device=inputs.device)
    h, w = mem["hw"]
    att = model.attention(mem, tgt)[0].float()  # (T, h*w)
    return Explanation(hyp.ids, att.reshape(-1, h, w).cpu().numpy(), "attention")


def _alignment(model: CTCModel, inputs: torch.Tensor, masks: torch.Tensor) -> Explanation:
    log_probs, lengths = model.ctc_log_probs(inputs, masks)
    lp = log_probs[: int(lengths[0]), 0].float()
    best_lp, best = lp.max(-1)
    path = best.tolist()
    # Feature map of the stride-16 encoder; frames are its columns, each expanded in order.
    h, w = (math.ceil(s / STRIDE) for s in inputs.shape[-2:])
    per_column = max(1, log_probs.shape[0] // w)
    ids: list[int] = []
    maps: list[np.ndarray] = []
    for t, c in enumerate(path):
        if c == model.blank:
            continue
        if t == 0 or c != path[t - 1]:  # a new label; a repeat without blank continues it
            ids.append(c)
            maps.append(np.zeros((h, w), np.float32))
        maps[-1][:, min(w - 1, t // per_column)] += float(best_lp[t].exp())
    stacked = np.stack(maps) if maps else np.zeros((0, h, w), np.float32)
    return Explanation(ids, stacked, "alignment")


@torch.no_grad()
def activation_maps(
    model: Seq2SeqModel | CTCModel, inputs: torch.Tensor, masks: torch.Tensor
) -> list[tuple[str, np.ndarray]]:
    """(stage name, (h, w) map) for each stage of an image model's CNN encoder, shallow first:
    the mean absolute activation over the stage's channels, for ONE input (batch of 1), padded
    to the encoder's stride as every family pads it."""
    if model.input_kind != "image":
        raise ValueError(f"activation maps are for image models; this one reads {model.input_kind}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError("activation maps need the PyTorch model (a release or a checkpoint)")
    if inputs.shape[0] != 1:
        raise ValueError("explain reads one input at a time")
    encoder: ImageEncoder = model.encoder
    images, _ = pad_to_stride(inputs, masks)
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _in, out, name=name: seen.append((name, out)))
        for name, module in encoder.named_stages()
    ]
    try:
        encoder(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [(name, out[0].float().abs().mean(0).cpu().numpy()) for name, out in seen]
