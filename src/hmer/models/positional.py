"""Sinusoidal positional encodings for token sequences and 2-D feature maps."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _sinusoid(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """pos (...,) -> (..., dim) interleaved sin/cos features."""
    freq = torch.exp(
        torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32)
        * (-math.log(temperature) / dim)
    )
    angles = pos.float().unsqueeze(-1) * freq
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)


class WordPosEnc(nn.Module):
    """Adds 1-D sinusoidal position features to token embeddings (B, T, d)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device)
        return x + _sinusoid(pos, self.d_model).to(x.dtype)


class ImgPosEnc(nn.Module):
    """Adds 2-D sinusoidal position features to feature maps (B, h, w, d), half for y, half for x.

    Positions are normalized to [0, 2 pi] over the unpadded area, as in CoMER.
    """

    def __init__(self, d_model: int):
        super().__init__()
        assert d_model % 4 == 0
        self.half = d_model // 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        not_mask = (~mask).float()
        y = not_mask.cumsum(1)
        xx = not_mask.cumsum(2)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * 2 * math.pi
        xx = xx / (xx[:, :, -1:] + eps) * 2 * math.pi
        pe = torch.cat([_sinusoid(y, self.half, 10000.0), _sinusoid(xx, self.half, 10000.0)], -1)
        return x + pe.to(x.dtype)
