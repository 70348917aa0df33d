"""Stroke (online) family: the pen trajectory as a point sequence (as in TAP), CoMER decoder.

Point features (``hmer.data.strokes.ink_features``) go through strided 1-D convolutions (local
shape, and fewer positions for the decoder to attend to) and a Transformer or BiGRU context
encoder. The decoder is the transformer family's coverage decoder
(:class:`hmer.models.decoder.CoverageDecoderModel`), trained in both directions; its coverage
refiner reads the 1-D memory as a feature map of height 1 (hw = (1, N)).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hmer.data.strokes import N_FEATURES
from hmer.models.base import Memory
from hmer.models.decoder import CoverageDecoderModel
from hmer.models.positional import WordPosEnc
from hmer.models.registry import register


class ConvBlock(nn.Module):
    """Conv1d -> LayerNorm over channels -> GELU, with padded positions kept at zero."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(cout)
        self.drop = nn.Dropout(dropout)
        self.stride = stride

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,C,N), padding (B,N) -> (B,C',ceil(N/stride)) and its padding."""
        y = self.conv(x)
        mask = mask[:, :: self.stride]
        y = self.drop(F.gelu(self.norm(y.transpose(1, 2)))).transpose(1, 2)
        return y.masked_fill(mask[:, None], 0.0), mask


class StrokeEncoder(nn.Module):
    """Point features (B,N,F) -> memory (B,n,d) with n = N / prod(strides)."""

    def __init__(
        self,
        in_features: int = N_FEATURES,
        d_model: int = 256,
        channels: tuple[int, ...] = (128, 256),
        kernel: int = 5,
        strides: tuple[int, ...] = (2, 2),
        context: str = "transformer",
        layers: int = 4,
        nhead: int = 8,
        ffn: int = 1024,
        dropout: float = 0.2,
    ):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("one stride per convolution channel count")
        blocks, c = [], in_features
        for w, s in zip(channels, strides, strict=True):
            blocks.append(ConvBlock(c, w, kernel, s, dropout))
            c = w
        self.convs = nn.ModuleList(blocks)
        self.proj = nn.Linear(c, d_model)
        self.context = context
        if context == "transformer":
            self.pos = WordPosEnc(d_model)
            layer = nn.TransformerEncoderLayer(
                d_model, nhead, ffn, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.rnn = None
            self.transformer = nn.TransformerEncoder(
                layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
            )
        elif context == "gru":
            self.transformer = None
            self.rnn = nn.GRU(
                d_model,
                d_model // 2,
                num_layers=layers,
                batch_first=True,
                bidirectional=True,
                dropout=dropout if layers > 1 else 0.0,
            )
        else:
            raise ValueError(f"unknown stroke context encoder {context!r} (transformer or gru)")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.masked_fill(mask[..., None], 0.0).transpose(1, 2)
        for block in self.convs:
            x, mask = block(x, mask)
        x = self.proj(x.transpose(1, 2))
        if self.transformer is not None:
            x = self.transformer(self.pos(x), src_key_padding_mask=mask)
        else:
            lengths = (~mask).sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y = self.rnn(packed)[0]
            x, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return x, mask


@register("strokes")
class StrokeHMER(CoverageDecoderModel):
    """Point sequences to LaTeX: stroke encoder + the coverage Transformer decoder.

    ``context="gru"`` gives a TAP-like BiGRU context encoder instead of the Transformer one. The
    decoder's parameters carry the image model's names, so ``--init-partial`` can take it from
    a released image model.
    """

    input_kind = "strokes"

    def __init__(
        self,
        vocab_size: int,
        in_features: int = N_FEATURES,
        conv_channels: tuple[int, ...] = (128, 256),
        conv_kernel: int = 5,
        conv_strides: tuple[int, ...] = (2, 2),
        context: str = "transformer",
        context_layers: int = 4,
        context_ffn: int | None = None,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 3,
        ffn: int = 1024,
        dropout: float = 0.3,
        coverage: bool = True,
        max_len: int = 200,
    ):
        encoder = StrokeEncoder(
            in_features,
            d_model,
            tuple(conv_channels),
            conv_kernel,
            tuple(conv_strides),
            context,
            context_layers,
            nhead,
            context_ffn or ffn,
            dropout,
        )
        super().__init__(
            {"encoder": encoder},
            vocab_size,
            d_model,
            nhead,
            num_layers,
            ffn,
            dropout,
            coverage,
            max_len,
        )

    def encode(self, inputs: torch.Tensor, masks: torch.Tensor) -> Memory:
        """Point features (B,N,F) with padding masks (B,N) -> memory for decoding."""
        feat, mask = self.encoder(inputs, masks)
        feat = self.feat_norm(feat)
        return {"memory": feat, "mem_pad": mask, "hw": (1, feat.shape[1])}
