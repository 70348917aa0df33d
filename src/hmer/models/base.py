"""The contract between model families and the rest of hmer.

Training, decoding, recognition and explanation use a model only through these declarations;
each family in the registry implements one of the two kinds. Nothing is probed with ``getattr``
fallbacks: a new family states every attribute here, or it is not a family.

* :class:`Seq2SeqModel` (``kind = "seq2seq"``): an encoder whose :data:`Memory` an
  autoregressive decoder reads (transformer, seq2seq, strokes). Decoding may also use the
  optional :class:`IncrementalDecoder` methods (one position per step instead of the prefix).
* :class:`CTCModel` (``kind = "ctc"``): per-frame label log-probabilities (crnn).

Token ids are those of :mod:`hmer.data.vocab` (``PAD_ID`` is also the CTC blank). The PyTorch
image families keep their CNN as ``encoder``, an :class:`ImageEncoder` (whose stages
``hmer explain --activations`` shows).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch

# What ``encode`` returns and the searches pass back to ``select``/``step``/``decode``. Decoding
# reads only ``memory`` (B, N, d): its batch size and device. Families keep what their decoder
# needs beside it; the attention families keep ``mem_pad`` (B, N) padding and ``hw``, the
# memory's (height, width) as a feature map ((1, N) for point sequences).
Memory = dict[str, Any]

Kind = Literal["seq2seq", "ctc"]
InputKind = Literal["image", "strokes"]


class ImageEncoder(Protocol):
    """A CNN from images (B,1,H,W) to features (B,C,H/16,W/16) (:mod:`hmer.models.encoders`)."""

    out_channels: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def named_stages(self) -> list[tuple[str, torch.nn.Module]]:
        """(name, module) of each stage, input side first: the modules whose outputs are the
        successive feature maps."""
        ...


class HMERModel(Protocol):
    """What every family declares and implements."""

    kind: Kind
    input_kind: InputKind  # "image": (B,1,H,W) in [0,1] + (B,H,W) padding; "strokes": (B,N,F)
    vocab_size: int

    def forward(
        self,
        inputs: torch.Tensor,
        masks: torch.Tensor,
        tokens: list[list[int]],
        label_smoothing: float = ...,
    ) -> torch.Tensor:
        """The training loss of a batch (``masks`` True at padding, ``tokens`` without
        start/end ids)."""
        ...

    def eval(self) -> HMERModel: ...


class Seq2SeqModel(HMERModel, Protocol):
    """An encoder and an autoregressive decoder over its memory."""

    bidirectional: bool  # also decodes right to left (beam search rescores with both)
    joins_inputs: bool  # ``join`` takes several memories (else inputs decode one at a time)

    def encode(self, inputs: torch.Tensor, masks: torch.Tensor) -> Memory:
        """Inputs and padding masks -> the decoder's memory, one row per input."""
        ...

    def select(self, mem: Memory, index: torch.Tensor) -> Memory:
        """The memory rows in ``index`` order."""
        ...

    def join(self, mems: list[Memory]) -> Memory:
        """Memories of separately encoded inputs as one batch, which decoding reads as it reads
        each of them alone (each padded to the largest, the padding masked)."""
        ...

    def start_tokens(self, direction: str) -> tuple[int, int]:
        """(start, end) ids of "l2r" or "r2l" decoding."""
        ...

    def decode(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B,T,V) for decoder inputs ``tgt`` (B,T); ``mem`` has B rows, or
        one row that every sequence reads."""
        ...

    def step(self, mem: Memory, prefix: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N,V) of the token after each prefix (N,t)."""
        ...

    def attention(self, mem: Memory, tgt: torch.Tensor) -> torch.Tensor:
        """Where each teacher-forced step reads the memory: (B,T,N) weights summing to 1 over N
        (for ``hmer explain``)."""
        ...


@runtime_checkable
class IncrementalDecoder(Protocol):
    """Optional: decoding that carries a state, so each step costs one position."""

    def decoder_state(self, mem: Memory) -> dict:
        """The state for decoding the rows of ``mem``."""
        ...

    def step_state(self, last: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Log-probabilities (N,V) after feeding the newest tokens ``last`` (N,)."""
        ...

    def reorder_state(
        self, state: dict, rows: torch.Tensor, inputs: torch.Tensor | None = None
    ) -> dict:
        """The state rows in ``rows`` order (the beams that survive). The state's N rows read a
        memory of B inputs in B blocks of N / B rows; ``rows`` keeps every row in its block, and
        with ``inputs`` (input indices) only those inputs' blocks, whose memory alone stays."""
        ...


class CTCModel(HMERModel, Protocol):
    """Frame-wise label probabilities, decoded by collapsing repeats and dropping blanks."""

    blank: int

    def ctc_log_probs(
        self, inputs: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float log-probabilities (T,B,V) and the valid frame count of each input (B,)."""
        ...


def model_device(model: Any) -> torch.device:
    """The device holding a model's parameters (the CPU for one without any, e.g. ONNX)."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")
