"""Recognizer post-processing: what users paste must be well-formed LaTeX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hmer.recognize as recognize_mod
from hmer.data.latex import is_valid
from hmer.data.vocab import Vocab
from hmer.decoding.search import Hypothesis
from hmer.recognize import Recognizer

VOCAB = Vocab(["x", "^", "{", "}", "2", "+"])


def fake_decoder(monkeypatch, *sequences: list[str]) -> Recognizer:
    """A Recognizer whose decoder returns ``sequences`` as its n-best list, best first."""
    hyps = [
        Hypothesis(VOCAB.encode(s), -0.1 * (k + 1), -0.1 * (k + 1)) for k, s in enumerate(sequences)
    ]
    monkeypatch.setattr(recognize_mod, "recognize_batch", lambda *a, **k: [hyps])
    return Recognizer(torch.nn.Identity(), VOCAB, "fake")


def image() -> np.ndarray:
    img = np.zeros((40, 60), np.uint8)
    img[10:30, 20:24] = 255
    return img


def test_invalid_best_yields_to_valid_alternative(monkeypatch):
    rec = fake_decoder(monkeypatch, ["x", "^", "{", "2"], ["x", "^", "{", "2", "}"])
    r = rec.recognize_image(image(), beam=2)
    assert r.tokens == ["x", "^", "{", "2", "}"]
    assert [a.tokens for a in r.alternatives][0] == r.tokens


@pytest.mark.parametrize(
    "seq", [["x", "^", "{", "2"], ["x", "}", "+", "2"], ["^", "{", "2", "}"], ["x", "^", "{", "}"]]
)
def test_no_valid_hypothesis_is_repaired(monkeypatch, seq):
    assert not is_valid(seq)
    r = fake_decoder(monkeypatch, seq).recognize_image(image(), beam=1)
    assert is_valid(r.tokens) and r.tokens
    assert all(is_valid(a.tokens) for a in r.alternatives)


def test_duplicates_after_repair_are_merged(monkeypatch):
    rec = fake_decoder(monkeypatch, ["x", "+", "2"], ["x", "+", "2", "}"], ["x", "}", "+", "2"])
    assert [a.tokens for a in rec.recognize_image(image(), beam=3).alternatives] == [
        ["x", "+", "2"]
    ]


def test_deadline_stops_decoding():
    import time

    from serve_helpers import tiny_image_recognizer

    from hmer.decoding import DecodingTimeout

    rec = tiny_image_recognizer()
    with pytest.raises(DecodingTimeout):
        rec.recognize_image(image(), beam=3, deadline=time.monotonic() - 1)
    rec.timeout_s = 0.0
    with pytest.raises(DecodingTimeout):
        rec.recognize_image(image(), beam=1)
    rec.timeout_s = None
    assert isinstance(rec.recognize_image(image(), beam=1).latex, str)
