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
    model = torch.nn.Identity()
    model.input_kind = "image"  # the one attribute of the model contract a Recognizer reads
    return Recognizer(model, VOCAB, "fake")


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


def test_compact_latex_by_default_token_form_on_request(monkeypatch):
    rec = fake_decoder(monkeypatch, ["x", "^", "{", "2", "}", "+", "x"], ["x", "^", "{", "2", "}"])
    r = rec.recognize_image(image(), beam=2)
    assert r.latex == "x^{2}+x" and r.alternatives[1].latex == "x^{2}"
    assert r.latex_as("tokens") == "x ^ { 2 } + x"
    tokens = r.to_dict("tokens")
    assert tokens["latex"] == "x ^ { 2 } + x"
    assert [a["latex"] for a in tokens["alternatives"]] == ["x ^ { 2 } + x", "x ^ { 2 }"]
    assert r.to_dict()["alternatives"][1]["latex"] == "x^{2}"
    assert tokens["tokens"] == r.tokens
    with pytest.raises(ValueError, match="style"):
        r.latex_as("html")


def test_batch_of_prepared_inputs_matches_one_at_a_time(tmp_path):
    from serve_helpers import png_bytes, tiny_image_recognizer

    rec = tiny_image_recognizer()
    paths = []
    for i, size in enumerate([(120, 48), (260, 70), (90, 40)]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(size=size))
    for beam in (1, 2):
        one = [rec.recognize_file(p, beam=beam) for p in paths]
        batch = rec.recognize_prepared([rec.prepare_file(p) for p in paths], list("abc"), beam)
        assert [r.alternatives for r in batch] == [r.alternatives for r in one]
        assert [r.source for r in batch] == ["a", "b", "c"]


def test_shipped_examples_together_get_their_answers_alone():
    from pathlib import Path

    import hmer

    rec = Recognizer.load()  # the shipped default image model
    paths = sorted((Path(hmer.__file__).parent / "examples").glob("*.png"))
    assert len(paths) >= 5
    inputs = [rec.prepare_file(p) for p in paths]
    for beam in (1, 10):
        one = [rec.recognize_file(p, beam=beam) for p in paths]
        together = rec.recognize_prepared(inputs, [p.name for p in paths], beam)
        assert [[a.tokens for a in r.alternatives] for r in together] == [
            [a.tokens for a in r.alternatives] for r in one
        ]
        for a, b in zip(one, together, strict=True):  # the same up to rounding
            assert [x.score for x in a.alternatives] == pytest.approx(
                [x.score for x in b.alternatives], abs=1e-3
            )


def test_every_input_reaches_the_model_at_training_size():
    from serve_helpers import tiny_image_recognizer, tiny_stroke_recognizer

    from hmer.recognize import MAX_IMAGE_SIZE, MAX_SEQUENCE

    spread = [np.array(s, np.float32) for s in ([[0, 0], [1, 1]], [[5, 0], [6, 1]])]
    spread.append(np.array([[0, 0], [1000, 1000]], np.float32))  # once a 2000x2000 render
    dots = [np.array([[i * 3, 0], [i * 3 + 0.01, 0.01]], np.float32) for i in range(300)]
    far = [*dots, np.array([[0, 0], [900_000, 900_000]], np.float32)]
    image_rec, stroke_rec = tiny_image_recognizer(), tiny_stroke_recognizer()
    for traces in (spread, far):
        img = image_rec.prepare_ink(traces)
        assert img.shape[0] <= MAX_IMAGE_SIZE[0] and img.shape[1] <= MAX_IMAGE_SIZE[1]
        assert img.max() > 0  # the ink is drawn, only smaller
        assert len(stroke_rec.prepare_ink(traces)) <= MAX_SEQUENCE
    assert isinstance(image_rec.recognize_strokes(spread, beam=1).latex, str)


def test_a_cancelled_deadline_stops_decoding_at_once():
    import time

    from serve_helpers import tiny_image_recognizer

    from hmer.decoding import DecodingTimeout
    from hmer.interfaces.guard import CancellableDeadline

    rec = tiny_image_recognizer()
    deadline = CancellableDeadline(time.monotonic() + 3600)
    assert isinstance(rec.recognize_image(image(), beam=1, deadline=deadline).latex, str)
    deadline.cancel()
    with pytest.raises(DecodingTimeout):
        rec.recognize_image(image(), beam=2, deadline=deadline)


def test_mathml_of_caption_tokens():
    from hmer.recognize import latex_in

    out = latex_in(["\\frac", "{", "1", "}", "{", "x", "^", "{", "2", "}", "}"], "mathml")
    assert out.startswith("<math") and "<mfrac>" in out and "<msup>" in out
    assert "<mtext>" in latex_in(["\\frac", "{"], "mathml")  # unconvertible: shown as text
