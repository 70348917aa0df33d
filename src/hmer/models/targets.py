"""Teacher-forcing targets and their loss, shared by the autoregressive decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hmer.data.vocab import EOS_ID as EOS
from hmer.data.vocab import PAD_ID as PAD
from hmer.data.vocab import SOS_ID as SOS

__all__ = ["EOS", "LABEL_SMOOTHING", "PAD", "SOS", "teacher_forcing", "token_loss"]

# The one default of label smoothing, for the models' losses and the training config: what the
# shipped configs train with.
LABEL_SMOOTHING = 0.1


def teacher_forcing(
    seqs_in: list[list[int]], seqs_out: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and targets padded with PAD to a length rounded up to a multiple of 8
    (few distinct shapes, so this CPU's kernels are prepared few times)."""
    t = (max(len(s) for s in seqs_in) + 7) // 8 * 8
    tgt_in = torch.full((len(seqs_in), t), PAD, dtype=torch.long, device=device)
    tgt_out = torch.full((len(seqs_in), t), PAD, dtype=torch.long, device=device)
    for i, (a, b) in enumerate(zip(seqs_in, seqs_out, strict=True)):
        tgt_in[i, : len(a)] = torch.tensor(a)
        tgt_out[i, : len(b)] = torch.tensor(b)
    return tgt_in, tgt_out


def token_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over non-padding target tokens."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
    )
