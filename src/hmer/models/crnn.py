"""CRNN family: CNN features, height collapsed by attention pooling, BiLSTM over width, CTC loss.

The CTC blank is the padding id 0 (``<pad>`` never occurs in a target). ``<sos>`` and ``<eos>``
are never emitted: their log-probabilities are fixed to a large negative number.

A 2-D expression read as one left-to-right sequence loses structure (fractions, scripts), and its
LaTeX has more tokens than the image has symbol columns (``\\frac { a } { b }`` is 7 tokens over
about one symbol width). Each feature column (16 px) is therefore expanded into
``frames_per_column`` CTC frames before the BiLSTM, so that CTC has room to emit them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hmer.data.vocab import EOS_ID, PAD_ID, SOS_ID
from hmer.models.encoders import build_encoder, downsample_mask, pad_to_stride
from hmer.models.registry import register
from hmer.models.targets import LABEL_SMOOTHING

BLANK = PAD_ID  # <pad> never occurs in a target
_NEG = -1e4  # "impossible" score that stays finite in bf16 and in the CTC recursions


class HeightPool(nn.Module):
    """Collapse the height of a feature map with ``heads`` learned attention maps per column.

    Several heads keep coarse vertical information (top / middle / bottom of a fraction) that a
    plain mean over the height would lose; padding cells get no weight.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.score = nn.Conv2d(channels, heads, 1)

    def forward(self, feat: torch.Tensor, fmask: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w), padding (B,h,w) -> (B, w, heads*C)."""
        s = self.score(feat).float().masked_fill(fmask[:, None], _NEG)
        a = s.softmax(2).to(feat.dtype)  # over the height
        pooled = torch.einsum("bkhw,bchw->bwkc", a, feat)
        return pooled.flatten(2)


@register("crnn")
class CRNN(nn.Module):
    """Image-to-LaTeX by CTC: a CNN or ResNet encoder, attention height pooling and a BiLSTM.

    ``encoder="resnet"`` (optionally with ``encoder_cfg.freeze_stages``) gives the ResNet-18 one.
    """

    kind = "ctc"
    input_kind = "image"
    bidirectional = False
    blank = BLANK

    def __init__(
        self,
        vocab_size: int,
        encoder: str = "cnn",
        encoder_cfg: dict | None = None,
        hidden: int = 256,
        lstm_layers: int = 2,
        pool_heads: int = 4,
        frames_per_column: int = 3,
        dropout: float = 0.2,
    ):
        super().__init__()
        if encoder not in ("cnn", "resnet"):
            raise ValueError("crnn supports the 'cnn' and 'resnet' encoders")
        self.encoder = build_encoder(encoder, **(encoder_cfg or {}))
        c = self.encoder.out_channels
        self.pool = HeightPool(c, pool_heads)
        self.col_proj = nn.Linear(pool_heads * c, hidden)
        self.frames = frames_per_column
        self.expand = nn.Linear(hidden, frames_per_column * hidden)
        self.rnn = nn.LSTM(
            hidden,
            hidden // 2,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * (hidden // 2), vocab_size)
        self.vocab_size = vocab_size
        self.freeze_stages = int((encoder_cfg or {}).get("freeze_stages", 0))

    def train(self, mode: bool = True) -> CRNN:
        """Train mode, except frozen encoder stages whose batch-norm statistics must not drift."""
        super().train(mode)
        if mode and self.freeze_stages:
            for module in [self.encoder.stem, *self.encoder.stages[: self.freeze_stages]]:
                module.eval()
        return self

    def ctc_log_probs(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B,1,H,W), padding (B,H,W) -> float log-probs (T,B,V) and frame counts (B,)."""
        images, masks = pad_to_stride(images, masks)
        feat = self.encoder(images)
        fmask = downsample_mask(masks)
        b, _, _, w = feat.shape
        cols = F.relu(self.col_proj(self.pool(feat, fmask)))  # B, w, hidden
        x = self.expand(cols).view(b, w * self.frames, -1)
        lengths = (~fmask).any(1).sum(1).clamp(min=1) * self.frames
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])
        logits = self.head(self.drop(y)).float()
        special = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        special[[SOS_ID, EOS_ID]] = True
        logits = logits.masked_fill(special, _NEG)
        return logits.log_softmax(-1).transpose(0, 1), lengths

    def forward(
        self, images, masks, tokens, label_smoothing: float = LABEL_SMOOTHING
    ) -> torch.Tensor:
        """CTC loss per target token, averaged over the batch (``label_smoothing`` is unused)."""
        return self.loss(images, masks, tokens)

    def loss(
        self, images: torch.Tensor, masks: torch.Tensor, tokens: list[list[int]]
    ) -> torch.Tensor:
        log_probs, lengths = self.ctc_log_probs(images, masks)
        targets = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long)
        target_lengths = torch.tensor([len(seq) for seq in tokens], dtype=torch.long)
        # zero_infinity: a target longer than its frames (needs T >= L + repeats) adds no NaN
        return F.ctc_loss(
            log_probs,
            targets,
            lengths.cpu(),
            target_lengths,
            blank=BLANK,
            reduction="mean",
            zero_infinity=True,
        )
