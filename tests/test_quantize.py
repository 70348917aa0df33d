"""Dynamic int8 quantization keeps a model usable by the same decoding."""

from __future__ import annotations

import numpy as np
import torch
from serve_helpers import tiny_image_recognizer

from hmer.models.quantize import quantize_int8
from hmer.recognize import Recognizer


def test_int8_model_decodes_with_the_same_interface():
    rec = tiny_image_recognizer(beam=2)
    q = quantize_int8(rec.model)
    dynamic = [m for m in q.modules() if "quantized.dynamic" in type(m).__module__]
    assert dynamic and not any(type(m) is torch.nn.Linear for m in q.modules())
    assert any(type(m) is torch.nn.Linear for m in rec.model.modules())  # original untouched
    img = np.zeros((40, 90), np.uint8)
    img[10:30, 20:24] = 255
    qrec = Recognizer(q, rec.vocab, "q", beam=2)
    for beam in (1, 2):
        out = qrec.recognize_image(img, beam=beam)
        assert out.alternatives and all(0 < a.score <= 1 for a in out.alternatives)
    with torch.no_grad():  # int8 rounding moves log-probabilities a little, not wholesale
        x = torch.from_numpy(img / 255.0).float()[None, None]
        m = torch.zeros(1, 40, 90, dtype=torch.bool)
        tgt = torch.tensor([[1, 4, 5, 6]])
        a = rec.model.decode(rec.model.encode(x, m), tgt).log_softmax(-1)
        b = q.decode(q.encode(x, m), tgt).log_softmax(-1)
        assert (a - b).abs().max() < 0.5
