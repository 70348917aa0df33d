"""The symbol classifier's network: a small VGG-style CNN from a square crop to symbol classes.

Not in the model registry (:mod:`hmer.models.registry`): the registry holds the expression
families, which implement the contract of :mod:`hmer.models.base` (a sequence loss over caption
tokens, ``encode``/``decode`` or CTC frames) that ``hmer train``, ``hmer recognize`` and config
checking rely on. A classifier of one symbol implements none of it; registered, it would pass a
``hmer train`` config check and then fail inside the training loop. Its releases carry
``FAMILY`` as their model name, which :func:`hmer.weights.build_model` refuses with a clear error.
"""

from __future__ import annotations

import torch
import torch.nn as nn

FAMILY = "symbol-cnn"


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SymbolCNN(nn.Module):
    """Three stages of two 3x3 convolutions (``width``, 2x, 4x channels), max-pooled between,
    then a 4x4 average pool (so any crop size works), dropout and a linear layer.

    The 4x4 grid, not a global pool, keeps where the ink is: a ``-`` fills the middle row only.
    """

    input_kind = "symbol"  # the manifest's kind for its releases

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.features = nn.Sequential(
            *_block(1, w),
            *_block(w, w),
            nn.MaxPool2d(2),
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 16, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images, ink about 1 on 0 -> (B, num_classes) logits."""
        return self.head(self.features(images))
