"""Dynamic int8 quantization of a model's linear layers, for faster CPU decoding."""

from __future__ import annotations

import warnings

import torch


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run in dynamic int8 (eval only).

    Convolutions (the encoder and coverage) stay fp32; the decoder's linear layers are where
    single-expression decoding spends its matrix time.
    """
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which needs torch.compile
        # to be fast on CPU; the eager dynamic quantization here still works and is measured.
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(model.eval(), {torch.nn.Linear}, torch.qint8)
    for attr in ("kind", "input_kind", "bidirectional"):
        if hasattr(model, attr):
            setattr(q, attr, getattr(model, attr))
    return q
