"""The coverage Transformer decoder shared by the transformer (CoMER/BTTR) and stroke families.

Left-to-right targets start with <sos> and end with <eos>; right-to-left targets are the reversed
tokens, starting with <eos> and ending with <sos> (as in BTTR), so one decoder learns both
directions and each can rescore the other's hypotheses. With coverage (CoMER), each layer's
cross-attention is corrected by the attention it and the layer below paid at earlier steps.

:class:`CoverageDecoderModel` is everything after the encoder; a family subclasses it and
implements ``encode`` (memory (B,N,d), its padding (B,N), and ``hw``, the memory as an h x w map).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hmer.models.base import Memory
from hmer.models.encoders import join_maps
from hmer.models.positional import WordPosEnc, _sinusoid
from hmer.models.targets import EOS, LABEL_SMOOTHING, PAD, SOS, teacher_forcing, token_loss

# Attention maps the coverage refiner convolves at once on a CPU without autograd.
COVERAGE_CHUNK = 32


class CoverageRefiner(nn.Module):
    """CoMER's attention refinement: past attention (summed over earlier steps) lowers the scores
    of regions already read, through a small convolution over the 2-D attention maps."""

    def __init__(self, nhead: int, in_maps: int, channels: int = 32, kernel: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(in_maps, channels, kernel, padding=kernel // 2)
        self.proj = nn.Conv2d(channels, nhead, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(
        self, attn: torch.Tensor, mem_pad: torch.Tensor, hw: tuple[int, int]
    ) -> torch.Tensor:
        return self.from_coverage(attn.cumsum(2) - attn, mem_pad, hw)  # steps before t

    def from_coverage(
        self, cum: torch.Tensor, mem_pad: torch.Tensor, hw: tuple[int, int]
    ) -> torch.Tensor:
        """Score corrections (B, heads, T, L) from summed past attention (B, maps, T, L)."""
        b, c, t, n = cum.shape
        h, w = hw
        x = cum.transpose(1, 2).reshape(b * t, c, h, w)
        # One input read alone (recognition) has no padding: masking its maps would copy them
        # unchanged, a pass as costly as the step's other masking together. (Traced graphs keep
        # the mask: they must serve padded batches too.)
        pad = None
        if torch.compiler.is_compiling() or bool(mem_pad.any()):
            # mem_pad may have one row shared by all b (beams of one input): expand, don't copy.
            pad = _per_row(mem_pad, b).view(-1, 1, 1, h, w).expand(b, t, 1, h, w)
            pad = pad.reshape(b * t, 1, h, w)
        # Teacher-forced decoding on a CPU (rescoring: every hypothesis at every position) runs
        # 2-3 times faster a few maps at a time than as one large batch (to within 1e-7).
        # (Steps, t == 1, stay one batch: the ONNX export traces them with a dynamic b.)
        if t > 1 and x.device.type == "cpu" and not torch.is_grad_enabled():
            chunks = range(0, b * t, COVERAGE_CHUNK)
            x = torch.cat(
                [
                    self._refine(
                        x[i : i + COVERAGE_CHUNK],
                        None if pad is None else pad[i : i + COVERAGE_CHUNK],
                    )
                    for i in chunks
                ]
            )
        else:
            x = self._refine(x, pad)
        return x.view(b, t, -1, n).transpose(1, 2)

    def _refine(self, maps: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        x = F.relu(self.conv(maps))
        return self.proj(x if pad is None else x.masked_fill(pad, 0.0))


def _matmul_shared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a (N,heads,T,x) and b (B,heads,x,y), B dividing N: row n of ``a`` reads
    ``b[n // (N / B)]`` (each input's rows in one block).

    When several rows read one memory row (beams of an input), each block's rows are folded into
    T: a broadcast matmul would first copy ``b`` for every row.
    """
    n, h, t, x = a.shape
    inputs = b.shape[0]
    if inputs > 1 and inputs == n:  # (inputs > 1 first: ONNX export traces the shared case)
        return a @ b
    r = n // inputs
    out = a.view(inputs, r, h, t, x).transpose(1, 2).reshape(inputs, h, r * t, x) @ b
    return out.view(inputs, h, r, t, -1).transpose(1, 2).reshape(n, h, t, -1)


def _per_row(mem_pad: torch.Tensor, n: int) -> torch.Tensor:
    """Memory padding (B,L) for N rows in B blocks (one row shared by all stays one row)."""
    if mem_pad.shape[0] in (1, n):
        return mem_pad
    return mem_pad.repeat_interleave(n // mem_pad.shape[0], 0)


class DecoderLayer(nn.Module):
    """Pre-norm Transformer decoder layer whose cross-attention exposes and refines its weights."""

    def __init__(self, d: int, nhead: int, ffn: int, dropout: float, coverage: bool, first: bool):
        super().__init__()
        self.nhead = nhead
        self.self_attn = nn.MultiheadAttention(d, nhead, dropout=dropout, batch_first=True)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d)
        )
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        # self coverage from this layer, cross coverage from the layer below (none for the first)
        self.arm = CoverageRefiner(nhead, nhead if first else 2 * nhead) if coverage else None

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = memory.shape
        k, v = self.kv(memory).view(b, n, 2, self.nhead, d // self.nhead).permute(2, 0, 3, 1, 4)
        return k, v

    def _cross_scores(self, h, k, mem_pad, prev_attn):
        """Cross-attention scores (B,heads,T,N) of queries ``h`` over the memory keys ``k``, and
        the attention maps the coverage refiner reads (None without coverage)."""
        b, t, d = h.shape
        q = self.q(h).view(b, t, self.nhead, d // self.nhead).transpose(1, 2)
        scores = _matmul_shared(q, k.transpose(-1, -2)).float() / math.sqrt(d // self.nhead)
        scores = scores.masked_fill(_per_row(mem_pad, b)[:, None, None, :], float("-inf"))
        if self.arm is None:
            return scores, None
        raw = scores.softmax(-1)
        return scores, raw if prev_attn is None else torch.cat([prev_attn, raw], 1)

    @staticmethod
    def _read(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention-weighted memory values, heads merged: (B,T,d)."""
        ctx = _matmul_shared(attn.to(v.dtype), v)  # B, heads, T, d/heads
        b, _, t, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, t, -1)

    def forward(self, x, kv, mem_pad, hw, causal, tgt_pad, prev_attn):
        h = self.norm1(x)
        sa = self.self_attn(h, h, h, attn_mask=causal, key_padding_mask=tgt_pad, need_weights=False)
        x = x + self.drop(sa[0])
        scores, maps = self._cross_scores(self.norm2(x), kv[0], mem_pad, prev_attn)
        if maps is not None:
            scores = scores - self.arm(maps, mem_pad, hw).float()
        attn = scores.softmax(-1)
        x = x + self.drop(self.out(self._read(self.drop(attn), kv[1])))
        x = x + self.drop(self.ffn(self.norm3(x)))
        return x, attn

    def _self_attend(self, h: torch.Tensor, cache: dict) -> torch.Tensor:
        """``self_attn`` of one new position (N,1,d) over itself and the earlier ones, whose keys
        and values ``cache`` keeps ("k", "v": (N,heads,t,d/heads)): each position is projected
        once, not again at every later step."""
        n, _, d = h.shape
        sa = self.self_attn
        q, k, v = F.linear(h, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
        q, k, v = (z.view(n, 1, self.nhead, d // self.nhead).transpose(1, 2) for z in (q, k, v))
        if cache.get("k") is not None:
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
        cache["k"], cache["v"] = k, v
        ctx = F.scaled_dot_product_attention(q, k, v)
        return sa.out_proj(ctx.transpose(1, 2).reshape(n, 1, d))

    def step(self, x, kv, mem_pad, hw, cache: dict, prev_attn):
        """One new position (N,1,d) given this layer's ``cache`` of earlier ones (eval only)."""
        x = x + self._self_attend(self.norm1(x), cache)
        scores, maps = self._cross_scores(self.norm2(x), kv[0], mem_pad, prev_attn)
        if maps is not None:
            cov = cache.get("cov")
            if cov is None:
                cov = torch.zeros_like(maps)
            scores = scores - self.arm.from_coverage(cov, mem_pad, hw).float()
            cache["cov"] = cov + maps
        attn = scores.softmax(-1)
        x = x + self.out(self._read(attn, kv[1]))
        return x + self.ffn(self.norm3(x)), attn


class CoverageDecoderModel(nn.Module):
    """Everything of a family after its encoder: the coverage Transformer decoder, its incremental
    decoding, two-direction training. Subclasses implement ``encode`` (and ``input_kind``).

    The encoder's modules are built by the subclass and given, in order, to ``__init__``, which
    registers them before building the decoder: parameter names, their order (which optimizer
    states in checkpoints follow) and the order of random initialization stay those of the
    released weights.
    """

    kind = "seq2seq"
    bidirectional = True
    joins_inputs = True

    def __init__(
        self,
        encoder_modules: dict[str, nn.Module],
        vocab_size: int,
        d_model: int,
        nhead: int,
        num_layers: int,
        ffn: int,
        dropout: float,
        coverage: bool,
        max_len: int,
    ):
        super().__init__()
        for name, module in encoder_modules.items():
            setattr(self, name, module)
        self.feat_norm = nn.LayerNorm(d_model)  # normalizes the encoder's memory
        self.embed = nn.Embedding(vocab_size, d_model)
        self.word_pos = WordPosEnc(d_model)
        self.embed_norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, ffn, dropout, coverage, first=i == 0)
            for i in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.max_len = max_len
        self.vocab_size = vocab_size

    def encode(self, inputs: torch.Tensor, masks: torch.Tensor) -> Memory:
        """Inputs and padding masks -> {"memory", "mem_pad", "hw"} (see the module docstring)."""
        raise NotImplementedError

    def select(self, mem: Memory, index: torch.Tensor) -> Memory:
        """Memory rows in ``index`` order (for batching hypotheses)."""
        return {"memory": mem["memory"][index], "mem_pad": mem["mem_pad"][index], "hw": mem["hw"]}

    def join(self, mems: list[Memory]) -> Memory:
        """Memories of separately encoded inputs as one batch (see ``join_maps``)."""
        return join_maps(mems)

    # -- decoder -----------------------------------------------------------------------------
    def _layers(self, mem: Memory, tgt: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B,T,d) for input tokens ``tgt``, and each layer's cross-attention
        (B,heads,T,N)."""
        t = tgt.shape[1]
        x = self.embed_norm(self.word_pos(self.embed(tgt)))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tgt.device), 1)
        tgt_pad = tgt == PAD
        prev, attns = None, []
        for layer in self.layers:
            kv = layer.memory_kv(mem["memory"])
            x, prev = layer(x, kv, mem["mem_pad"], mem["hw"], causal, tgt_pad, prev)
            attns.append(prev)
        return x, attns

    def decode(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B,T,V) for input tokens ``tgt`` (B,T).

        ``mem`` has B rows, or one row that all B sequences read (hypotheses of one input).
        """
        return self.head(self.final_norm(self._layers(mem, tgt)[0]))

    def attention(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """The last layer's cross-attention, averaged over heads: (B,T,N)."""
        return self._layers(mem, tgt)[1][-1].mean(1)

    def step(self, mem: Memory, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N,V) of the next token after each prefix (N,t)."""
        return self.decode(mem, prefix)[:, -1].float().log_softmax(-1)

    # -- incremental decoding: each step costs one position, not the whole prefix ------------
    def decoder_state(self, mem: Memory) -> dict:
        """Decoding state for the rows of ``mem``: memory keys/values and per-layer caches."""
        return {
            "kv": [layer.memory_kv(mem["memory"]) for layer in self.layers],
            "mem_pad": mem["mem_pad"],
            "hw": mem["hw"],
            "layers": [{} for _ in self.layers],
            "t": 0,
        }

    def step_state(self, last: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Log-probabilities (N,V) after feeding the newest tokens ``last`` (N,)."""
        pos = torch.tensor([state["t"]], device=last.device)
        x = self.embed(last[:, None]) + _sinusoid(pos, self.embed.embedding_dim)
        x = self.embed_norm(x)
        prev = None
        for layer, kv, cache in zip(self.layers, state["kv"], state["layers"], strict=True):
            x, prev = layer.step(x, kv, state["mem_pad"], state["hw"], cache, prev)
        state["t"] += 1
        return self.head(self.final_norm(x))[:, -1].float().log_softmax(-1), state

    @staticmethod
    def reorder_state(state: dict, rows: torch.Tensor, inputs: torch.Tensor | None = None) -> dict:
        """Keep the state rows in ``rows`` order (beams that survived), and with ``inputs`` only
        those inputs' memory.

        Memory keys/values stay one row per input that its block of beams reads: copying them
        per beam at every step cost more than the decoder itself.
        """
        out = {**state, "layers": [{k: v[rows] for k, v in c.items()} for c in state["layers"]]}
        if inputs is not None:
            out["kv"] = [(k[inputs], v[inputs]) for k, v in state["kv"]]
            out["mem_pad"] = state["mem_pad"][inputs]
        return out

    def start_tokens(self, direction: str) -> tuple[int, int]:
        """(start, end) token ids of a direction: "l2r" or "r2l"."""
        return (SOS, EOS) if direction == "l2r" else (EOS, SOS)

    # -- training ----------------------------------------------------------------------------
    def forward(
        self, inputs, masks, tokens, label_smoothing: float = LABEL_SMOOTHING
    ) -> torch.Tensor:
        """Training loss (so that DistributedDataParallel can wrap the model)."""
        return self.loss(inputs, masks, tokens, label_smoothing)

    def loss(
        self,
        inputs: torch.Tensor,
        masks: torch.Tensor,
        tokens: list[list[int]],
        label_smoothing: float = LABEL_SMOOTHING,
    ) -> torch.Tensor:
        """Cross-entropy over both directions (teacher forcing)."""
        mem = self.encode(inputs, masks)
        seqs_in, seqs_out = [], []
        for direction in ("l2r", "r2l"):
            start, end = self.start_tokens(direction)
            for seq in tokens:
                seq = seq[: self.max_len - 1]
                s = seq if direction == "l2r" else seq[::-1]
                seqs_in.append([start, *s])
                seqs_out.append([*s, end])
        tgt_in, tgt_out = teacher_forcing(seqs_in, seqs_out, inputs.device)
        both = torch.arange(len(tokens), device=inputs.device).repeat(2)
        logits = self.decode(self.select(mem, both), tgt_in)
        return token_loss(logits, tgt_out, label_smoothing)
