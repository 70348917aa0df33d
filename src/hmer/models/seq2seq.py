"""Attention seq2seq family: CNN encoder + GRU decoder with Bahdanau (additive) attention.

``coverage=True`` gives WAP: the attention energy also sees a convolution of the coverage vector
(the sum of all past attention maps), so regions already read are not read again.
``encoder="densenet"`` (with coverage) gives DenseWAP. The decoder follows WAP's conditional GRU:
a first GRU reads the previous token, attention is computed from its state, and a second GRU
reads the attended context. Decoding is left-to-right only (``bidirectional = False``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hmer.models.base import Memory
from hmer.models.encoders import build_encoder, downsample_mask, join_maps, pad_to_stride
from hmer.models.registry import register
from hmer.models.targets import EOS, LABEL_SMOOTHING, SOS, teacher_forcing, token_loss


class GRUCell(nn.Module):
    """A GRU cell built from ``nn.Linear`` so that bf16 autocast applies to its matmuls; the state
    itself is kept in float32."""

    def __init__(self, n_in: int, n_hidden: int):
        super().__init__()
        self.ih = nn.Linear(n_in, 3 * n_hidden)
        self.hh = nn.Linear(n_hidden, 3 * n_hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        ir, iz, in_ = self.ih(x).float().chunk(3, -1)
        hr, hz, hn = self.hh(h).float().chunk(3, -1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h.float()


class AdditiveAttention(nn.Module):
    """Bahdanau attention over a flattened feature map, optionally with WAP's coverage term."""

    def __init__(
        self, hidden: int, attn_dim: int, coverage: bool, cov_channels: int, cov_kernel: int
    ):
        super().__init__()
        self.query = nn.Linear(hidden, attn_dim, bias=False)
        self.energy = nn.Linear(attn_dim, 1)
        self.cov_conv = self.cov_proj = None
        if coverage:
            self.cov_conv = nn.Conv2d(1, cov_channels, cov_kernel, padding=cov_kernel // 2)
            self.cov_proj = nn.Linear(cov_channels, attn_dim, bias=False)

    def forward(self, state, keys, mem_pad, hw, cov):
        """State (N,H), keys (N,n,A), padding (N,n), coverage (N,n) or None -> weights (N,n)."""
        e = keys + self.query(state)[:, None]
        if self.cov_conv is not None:
            n, h, w = cov.shape[0], *hw
            f = self.cov_conv(cov.view(n, 1, h, w).to(keys.dtype))  # N, q, h, w
            e = e + self.cov_proj(f.flatten(2).transpose(1, 2))
        scores = self.energy(torch.tanh(e)).squeeze(-1).float()
        return scores.masked_fill(mem_pad, float("-inf")).softmax(-1)


@register("seq2seq")
class Seq2SeqHMER(nn.Module):
    """Image-to-LaTeX with a CNN encoder and a GRU decoder attending over the feature map.

    ``coverage=True`` gives WAP, and with ``encoder="densenet"`` DenseWAP.
    """

    kind = "seq2seq"
    input_kind = "image"
    bidirectional = False
    joins_inputs = True

    def __init__(
        self,
        vocab_size: int,
        encoder: str = "cnn",
        encoder_cfg: dict | None = None,
        ann_dim: int = 256,
        embed_dim: int = 256,
        hidden: int = 256,
        attn_dim: int = 256,
        coverage: bool = False,
        cov_channels: int = 32,
        cov_kernel: int = 7,
        dropout: float = 0.2,
        max_len: int = 200,
    ):
        super().__init__()
        self.encoder = build_encoder(encoder, **(encoder_cfg or {}))
        self.ann_proj = nn.Conv2d(self.encoder.out_channels, ann_dim, 1)
        self.key_proj = nn.Linear(ann_dim, attn_dim)
        self.init_state = nn.Linear(ann_dim, hidden)
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.gru1 = GRUCell(embed_dim, hidden)
        self.attn = AdditiveAttention(hidden, attn_dim, coverage, cov_channels, cov_kernel)
        self.gru2 = GRUCell(ann_dim, hidden)
        self.out_e = nn.Linear(embed_dim, embed_dim)
        self.out_s = nn.Linear(hidden, embed_dim, bias=False)
        self.out_c = nn.Linear(ann_dim, embed_dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, vocab_size)
        self.coverage = coverage
        self.max_len = max_len
        self.vocab_size = vocab_size

    # -- encoder -----------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, masks: torch.Tensor) -> Memory:
        """Images (B,1,H,W) with padding masks (B,H,W) -> memory for decoding.

        The memory carries a cache of decoder states keyed by (input row, prefix) that ``step``
        uses to advance one token at a time; ``select`` shares it between row selections.
        """
        images, masks = pad_to_stride(images, masks)
        feat = self.ann_proj(self.encoder(images))  # B, A, h, w
        fmask = downsample_mask(masks)
        b, a, h, w = feat.shape
        memory = feat.flatten(2).transpose(1, 2)  # B, n, A
        mem_pad = fmask.reshape(b, h * w)
        return {
            "memory": memory,
            "keys": self.key_proj(memory),
            "mem_pad": mem_pad,
            "hw": (h, w),
            "rows": torch.arange(b),
            "cache": {},
        }

    def select(self, mem: Memory, index: torch.Tensor) -> Memory:
        """Memory rows in ``index`` order (for batching hypotheses)."""
        out = {k: mem[k][index] for k in ("memory", "keys", "mem_pad")}
        cpu_index = index.cpu()
        return {**out, "hw": mem["hw"], "rows": mem["rows"][cpu_index], "cache": mem["cache"]}

    def join(self, mems: list[Memory]) -> Memory:
        """Memories of separately encoded inputs as one batch (see ``join_maps``)."""
        out = join_maps(mems, ("memory", "keys"))
        return {**out, "rows": torch.arange(len(out["memory"])), "cache": {}}

    # -- decoder -----------------------------------------------------------------------------
    def _start(self, mem: Memory) -> tuple[torch.Tensor, torch.Tensor | None]:
        valid = (~mem["mem_pad"]).unsqueeze(-1).to(mem["memory"].dtype)
        mean = (mem["memory"] * valid).sum(1) / valid.sum(1).clamp(min=1)
        state = torch.tanh(self.init_state(mean)).float()
        cov = torch.zeros(mem["mem_pad"].shape, device=state.device) if self.coverage else None
        return state, cov

    def _advance(
        self, mem: Memory, prev: torch.Tensor, state: torch.Tensor, cov: torch.Tensor | None
    ):
        """One decoder step from token ids ``prev`` (N,): logits (N,V), new state and coverage,
        and the attention weights (N,n) it read the memory with."""
        e = self.embed(prev)
        s_hat = self.gru1(e, state)
        alpha = self.attn(s_hat, mem["keys"], mem["mem_pad"], mem["hw"], cov)
        ctx = torch.bmm(alpha[:, None].to(mem["memory"].dtype), mem["memory"])[:, 0]
        state = self.gru2(ctx, s_hat)
        out = torch.tanh(self.out_e(e) + self.out_s(state) + self.out_c(ctx))
        logits = self.head(self.drop(out))
        return logits, state, (cov + alpha if cov is not None else None), alpha

    def _teacher_forced(self, mem: Memory, tgt: torch.Tensor):
        state, cov = self._start(mem)
        logits, alphas = [], []
        for t in range(tgt.shape[1]):
            out, state, cov, alpha = self._advance(mem, tgt[:, t], state, cov)
            logits.append(out)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)

    def decode(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B,T,V) for input tokens ``tgt`` (B,T)."""
        return self._teacher_forced(mem, tgt)[0]

    def attention(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """The attention weights (B,T,n) of each teacher-forced step."""
        return self._teacher_forced(mem, tgt)[1]

    def step(self, mem: Memory, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N,V) of the next token after each prefix (N,t).

        Without gradients, states of earlier calls are reused when every row's prefix minus its
        last token was stepped before; otherwise the whole prefix is recomputed.
        """
        cache = mem["cache"] if not torch.is_grad_enabled() else None
        rows = mem["rows"].tolist()
        toks = prefix.tolist()
        keys = [(r, tuple(p[:-1])) for r, p in zip(rows, toks, strict=True)]
        if cache is not None and prefix.shape[1] > 1 and all(k in cache for k in keys):
            state = torch.stack([cache[k][0] for k in keys])
            cov = torch.stack([cache[k][1] for k in keys]) if self.coverage else None
            logits, state, cov, _ = self._advance(mem, prefix[:, -1], state, cov)
        else:
            state, cov = self._start(mem)
            for t in range(prefix.shape[1]):
                logits, state, cov, _ = self._advance(mem, prefix[:, t], state, cov)
        if cache is not None:
            for i, (r, p) in enumerate(zip(rows, toks, strict=True)):
                cache[(r, tuple(p))] = (state[i], cov[i] if cov is not None else None)
        return logits.float().log_softmax(-1)

    def start_tokens(self, direction: str) -> tuple[int, int]:
        """(start, end) token ids; this decoder only reads left to right."""
        if direction != "l2r":
            raise ValueError("seq2seq models decode left-to-right only")
        return SOS, EOS

    # -- training ----------------------------------------------------------------------------
    def forward(
        self, images, masks, tokens, label_smoothing: float = LABEL_SMOOTHING
    ) -> torch.Tensor:
        """Training loss (so that DistributedDataParallel can wrap the model)."""
        return self.loss(images, masks, tokens, label_smoothing)

    def loss(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        tokens: list[list[int]],
        label_smoothing: float = LABEL_SMOOTHING,
    ) -> torch.Tensor:
        """Left-to-right cross-entropy with teacher forcing."""
        mem = self.encode(images, masks)
        seqs = [seq[: self.max_len - 1] for seq in tokens]
        tgt_in, tgt_out = teacher_forcing(
            [[SOS, *s] for s in seqs], [[*s, EOS] for s in seqs], images.device
        )
        return token_loss(self.decode(mem, tgt_in), tgt_out, label_smoothing)
