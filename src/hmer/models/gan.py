"""The self-attention GAN that turns printed formula renders into handwriting-like images
(after Springstein, Müller-Budack and Ewerth, "Unsupervised Training Data Generation of
Handwritten Formulas using Generative Adversarial Networks with Self-Attention").

Images are the image models' convention, scaled: one channel, ink about 1 on 0 (white on black).
Domain 0 is printed, domain 1 handwritten. The generator is a residual encoder (4 downsampling
blocks) and decoder (4 upsampling blocks) whose batch norms take their scale and shift from an
embedding of [noise, target domain], with one self-attention layer in the decoder; the
discriminator is 4 residual downsampling blocks with one self-attention layer and a projection
head on the domain. Every convolution and linear layer is spectrally normalized (SAGAN), so
both networks are Lipschitz-bounded, which keeps hinge-loss training stable at small batches.

These networks stay out of the model registry: they implement none of the ``models/base.py``
recognition contract.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

GENERATOR = "gan-generator"
DOMAINS = ("printed", "handwritten")
PRINTED, HANDWRITTEN = 0, 1
INPUT_EPS = 0.02  # input_skip: pure black/white input maps to logits of about -+3.9, not inf
BLOCKS = 4  # down- and upsampling blocks: image sides must be multiples of 2**BLOCKS


def sn_conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


def sn_linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    return spectral_norm(nn.Linear(cin, cout, bias=bias))


class SelfAttention(nn.Module):
    """SAGAN self-attention over all positions: queries and keys at C/8 channels, values at C/2,
    added back through a learned gate that starts at 0 (the layer starts as the identity)."""

    def __init__(self, ch: int):
        super().__init__()
        self.q = sn_conv(ch, max(1, ch // 8), 1)
        self.k = sn_conv(ch, max(1, ch // 8), 1)
        self.v = sn_conv(ch, max(1, ch // 2), 1)
        self.out = sn_conv(max(1, ch // 2), ch, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        k = self.k(x).flatten(2)  # (B, C/8, HW)
        v = self.v(x).flatten(2)  # (B, C/2, HW)
        attn = torch.softmax(q @ k, dim=-1)  # (B, HW, HW)
        y = (v @ attn.transpose(1, 2)).view(b, -1, h, w)
        return x + self.gamma * self.out(y)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose per-channel scale and shift are linear in a condition vector (BigGAN):
    ``gamma = 1 + W_g c``, ``beta = W_b c``, with ``c`` the embedding of [noise, domain]."""

    def __init__(self, ch: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = sn_linear(cond_dim, ch, bias=False)
        self.bias = sn_linear(cond_dim, ch, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma = 1 + self.gain(cond)[:, :, None, None]
        beta = self.bias(cond)[:, :, None, None]
        return self.bn(x) * gamma + beta


class GBlock(nn.Module):
    """Residual block of the generator: CBN-ReLU-conv twice, resampled by ``mode`` ("down":
    average pooling after, "up": nearest upsampling before), with a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, cond_dim: int, mode: str):
        super().__init__()
        self.mode = mode
        self.bn1 = ConditionalBatchNorm(cin, cond_dim)
        self.conv1 = sn_conv(cin, cout)
        self.bn2 = ConditionalBatchNorm(cout, cond_dim)
        self.conv2 = sn_conv(cout, cout)
        self.skip = sn_conv(cin, cout, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.mode == "down" else F.interpolate(x, scale_factor=2.0)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, cond))
        if self.mode == "up":
            h, x = self._resample(h), self._resample(x)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        s = self.skip(x)
        if self.mode == "down":
            h, s = self._resample(h), self._resample(s)
        return h + s


def widths(channels: int, max_mult: int = 8) -> list[int]:
    """Channels after the stem and each of the BLOCKS downsampling stages: doubling, capped."""
    return [channels * min(2**i, max_mult) for i in range(BLOCKS + 1)]


class Generator(nn.Module):
    """Printed image (B,1,H,W) in [0,1], noise (B,z_dim), target domain (B,) -> image in [0,1].

    The decoder adds the encoder's feature map of the same resolution before each upsampling
    block (a residual U-Net): the layout of the formula (where each symbol is) reaches the output
    directly and the blocks only change how strokes look. Self-attention (``self_attention``)
    sits after the first decoder block, at 1/8 resolution, where it is cheap and lets distant
    parts of a formula agree on one writing style. H and W must be multiples of 16.

    With ``input_skip`` the output is ``sigmoid(logit(input) + gain * residual)`` with ``gain``
    starting at 0, so the generator starts as the identity: a CPU-sized run need not spend its
    first thousand steps learning to copy a black background and can spend them on the style.
    """

    def __init__(
        self,
        channels: int = 16,
        z_dim: int = 32,
        embed_dim: int = 32,
        self_attention: bool = True,
        input_skip: bool = False,
        num_domains: int = len(DOMAINS),
    ):
        super().__init__()
        self.z_dim = z_dim
        # False for generators trained before the option (their checkpoints do not name it).
        self.input_gain = nn.Parameter(torch.zeros(1)) if input_skip else None
        self.domain = nn.Embedding(num_domains, embed_dim)
        cond_dim = z_dim + embed_dim
        ch = widths(channels)
        self.stem = sn_conv(1, ch[0])
        self.down = nn.ModuleList(GBlock(ch[i], ch[i + 1], cond_dim, "down") for i in range(BLOCKS))
        self.up = nn.ModuleList(
            GBlock(ch[i + 1], ch[i], cond_dim, "up") for i in reversed(range(BLOCKS))
        )
        self.attention = SelfAttention(ch[BLOCKS - 1]) if self_attention else None
        self.out_bn = ConditionalBatchNorm(ch[0], cond_dim)
        self.out = sn_conv(ch[0], 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2**BLOCKS or w % 2**BLOCKS:
            raise ValueError(f"image sides must be multiples of {2**BLOCKS}, not {h}x{w}")
        cond = torch.cat([z, self.domain(domain)], dim=1)
        feats = [self.stem(x * 2 - 1)]  # centred input
        for block in self.down:
            feats.append(block(feats[-1], cond))
        y = feats.pop()
        for k, block in enumerate(self.up):
            y = block(y, cond)
            if k == 0 and self.attention is not None:
                y = self.attention(y)
            y = y + feats.pop()
        residual = self.out(F.relu(self.out_bn(y, cond)))
        if self.input_gain is None:
            return torch.sigmoid(residual)
        return torch.sigmoid(torch.logit(x, eps=INPUT_EPS) + self.input_gain * residual)


class DBlock(nn.Module):
    """Residual block of the discriminator: (ReLU-)conv-ReLU-conv, average pooled, 1x1
    shortcut; the first block takes the image itself, so it has no leading ReLU."""

    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = sn_conv(cin, cout)
        self.conv2 = sn_conv(cout, cout)
        self.skip = sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + self.skip(F.avg_pool2d(x, 2))


class Discriminator(nn.Module):
    """Image (B,1,H,W) and its domain (B,) -> one score each (higher: real).

    Four residual downsampling blocks, self-attention after the second (1/4 resolution), then
    the projection head of Miyato and Koyama: ``psi(h) + <embed(domain), h>`` over the summed
    features ``h``, so one network judges "real printed" and "real handwritten" apart.
    """

    def __init__(
        self, channels: int = 16, self_attention: bool = True, num_domains: int = len(DOMAINS)
    ):
        super().__init__()
        ch = widths(channels)
        self.blocks = nn.ModuleList(
            DBlock(1 if i == 0 else ch[i], ch[i + 1], first=i == 0) for i in range(BLOCKS)
        )
        self.attention = SelfAttention(ch[2]) if self_attention else None
        self.psi = sn_linear(ch[BLOCKS], 1)
        self.embed = spectral_norm(nn.Embedding(num_domains, ch[BLOCKS]))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = x * 2 - 1
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 1 and self.attention is not None:
                h = self.attention(h)
        h = F.relu(h).sum(dim=(2, 3))
        return self.psi(h).squeeze(1) + (self.embed(domain) * h).sum(dim=1)


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real scores pushed above 1, fake scores below -1."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_hinge_loss(fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: raise the discriminator's scores of its images."""
    return -fake.mean()


def build_generator(config: dict) -> Generator:
    """The generator a checkpoint's ``model`` config describes (see :func:`generator_config`)."""
    if config.get("name") != GENERATOR:
        raise ValueError(f"not a GAN generator config: model name {config.get('name')!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return Generator(**kwargs)


def generator_config(**kwargs: object) -> dict:
    """The plain-data description a checkpoint keeps to rebuild its generator: the
    :class:`Generator` keyword arguments, named."""
    return {"name": GENERATOR, **kwargs}
