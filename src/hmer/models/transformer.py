"""Transformer family (CoMER, BTTR): image encoder, 2-D positions, the coverage Transformer decoder.

The decoder, its two-direction training and incremental decoding are
:class:`hmer.models.decoder.CoverageDecoderModel`, shared with the stroke family; this module
is the image front end.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hmer.models.base import Memory
from hmer.models.decoder import (  # noqa: F401  (the decoder's parts, where they used to be)
    CoverageDecoderModel,
    CoverageRefiner,
    DecoderLayer,
    _matmul_shared,
)
from hmer.models.encoders import build_encoder, downsample_mask, pad_to_stride
from hmer.models.positional import ImgPosEnc
from hmer.models.registry import register


@register("transformer")
class TransformerHMER(CoverageDecoderModel):
    """Image-to-LaTeX with a CNN encoder, 2-D positions and a coverage Transformer decoder.

    CoMER-style with coverage (the default); ``coverage=False`` gives BTTR.
    """

    input_kind = "image"

    def __init__(
        self,
        vocab_size: int,
        encoder: str = "densenet",
        encoder_cfg: dict | None = None,
        d_model: int = 256,
        nhead: int = 8,
        num_layers: int = 3,
        ffn: int = 1024,
        dropout: float = 0.3,
        coverage: bool = True,
        max_len: int = 200,
    ):
        cnn = build_encoder(encoder, **(encoder_cfg or {}))
        front = {
            "encoder": cnn,
            "feat_proj": nn.Conv2d(cnn.out_channels, d_model, 1),
            "img_pos": ImgPosEnc(d_model),
        }
        super().__init__(
            front, vocab_size, d_model, nhead, num_layers, ffn, dropout, coverage, max_len
        )

    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> Memory:
        """Images (B,1,H,W) with padding masks (B,H,W) -> memory for decoding."""
        images, masks = pad_to_stride(images, masks)
        feat = self.feat_proj(self.encoder(images))  # B, d, h, w
        fmask = downsample_mask(masks)
        b, d, h, w = feat.shape
        feat = self.img_pos(feat.permute(0, 2, 3, 1), fmask)
        feat = self.feat_norm(feat).reshape(b, h * w, d)
        return {"memory": feat, "mem_pad": fmask.reshape(b, h * w), "hw": (h, w)}
