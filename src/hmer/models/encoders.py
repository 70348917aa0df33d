"""Image encoders: bitmaps (B, 1, H, W) to feature maps at output stride 16.

Each names its stages (``named_stages()``: the modules whose outputs are its successive feature
maps), which ``hmer explain --activations`` shows.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIDE = 16


def pad_to_stride(x: torch.Tensor, mask: torch.Tensor, stride: int = STRIDE):
    """Pad images (and their padding mask) on the bottom/right to a multiple of ``stride``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        mask = F.pad(mask, (0, pw, 0, ph), value=True)
    return x, mask


def downsample_mask(mask: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Feature-map padding mask: a cell is padding when its whole input patch is padding."""
    pooled = -F.max_pool2d(-mask.float().unsqueeze(1), stride)  # min-pool: all padding
    return pooled.squeeze(1).bool()


def join_maps(mems: list[dict], fields: tuple[str, ...] = ("memory",)) -> dict:
    """Memories of separately encoded inputs as one batch, padded to the largest map.

    Each memory's ``fields`` (B,h*w,...) and its ``mem_pad`` (B,h*w) are laid out on its
    ``hw`` = (h, w) map and padded to the largest (H, W), ``mem_pad`` True in the padding. Attention
    never reads padded cells, so decoding the batch reads what decoding each input alone reads.
    """
    rows = max(m["hw"][0] for m in mems)
    cols = max(m["hw"][1] for m in mems)
    out: dict = {"hw": (rows, cols)}
    for name in (*fields, "mem_pad"):
        parts = []
        for m in mems:
            (h, w), x = m["hw"], m[name]
            grid = x.new_full((x.shape[0], rows, cols, *x.shape[2:]), name == "mem_pad")
            grid[:, :h, :w] = x.view(x.shape[0], h, w, *x.shape[2:])
            parts.append(grid.flatten(1, 2))
        out[name] = torch.cat(parts)
    return out


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, growth: int, dropout: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, x):
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        if self.dropout:
            y = F.dropout(y, self.dropout, self.training)
        return torch.cat([x, y], 1)


class _Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2, ceil_mode=True)


class DenseNetEncoder(nn.Module):
    """DenseNet-B as in DenseWAP/BTTR/CoMER: stem (stride 4), three dense blocks."""

    def __init__(
        self, growth: int = 24, depth: int = 16, reduction: float = 0.5, dropout: float = 0.2
    ):
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(1, c, 7, stride=2, padding=3, bias=False)
        self.stem_norm = nn.BatchNorm2d(c)
        layers: list[nn.Module] = []
        for block in range(3):
            for _ in range(depth):
                layers.append(_Bottleneck(c, growth, dropout))
                c += growth
            if block < 2:
                cout = int(math.floor(c * reduction))
                layers.append(_Transition(c, cout))
                c = cout
        self.blocks = nn.Sequential(*layers)
        self.out_norm = nn.BatchNorm2d(c)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_norm(self.stem(x)))
        x = F.max_pool2d(x, 2, ceil_mode=True)
        return F.relu(self.out_norm(self.blocks(x)))

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """The stem, the first two dense blocks (after their transitions) and the last block."""
        transitions = [m for m in self.blocks if isinstance(m, _Transition)]
        named = [("block 1", transitions[0]), ("block 2", transitions[1])]
        return [("stem", self.stem_norm), *named, ("block 3", self.out_norm)]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNetEncoder(nn.Module):
    """ResNet-18-style encoder (two basic blocks per stage) at output stride 16.

    ``freeze_stages`` keeps the stem and the first N stages fixed, for fine-tuning from weights.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 256),
        dropout: float = 0.1,
        freeze_stages: int = 0,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stride = 2 if i in (1, 2) else 1
            stages.append(nn.Sequential(_BasicBlock(c, w, stride), _BasicBlock(w, w, 1)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout2d(dropout)
        self.out_channels = c
        for module in [self.stem, *self.stages[:freeze_stages]] if freeze_stages else []:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.dropout(x)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """The stem and each residual stage."""
        return [("stem", self.stem), *((f"stage {i + 1}", s) for i, s in enumerate(self.stages))]


class CNNEncoder(nn.Module):
    """A plain VGG-like CNN (conv-BN-ReLU, max-pooling), the classic CRNN/WAP front end."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c = w
        layers.append(nn.Dropout2d(dropout))
        self.net = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """Each width's block, after its pooling."""
        pools = [m for m in self.net if isinstance(m, nn.MaxPool2d)]
        return [(f"block {i + 1}", m) for i, m in enumerate(pools)]


def build_encoder(kind: str, **kw) -> nn.Module:
    """Encoder by name: ``densenet``, ``resnet`` or ``cnn``."""
    kinds = {"densenet": DenseNetEncoder, "resnet": ResNetEncoder, "cnn": CNNEncoder}
    if kind not in kinds:
        raise KeyError(f"unknown encoder {kind!r}; known: {', '.join(kinds)}")
    return kinds[kind](**kw)
