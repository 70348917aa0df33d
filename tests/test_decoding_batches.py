"""Length limits from the input's size, and several inputs decoded at once as each alone."""

from __future__ import annotations

import pytest
import torch
from test_models import build

from hmer.data.render import render_natural
from hmer.data.strokes import N_FEATURES, ink_features
from hmer.decoding import length_limits, recognize_batch, recognize_inputs
from hmer.decoding.limits import length_limit
from hmer.models.encoders import STRIDE

PAD, SOS, EOS = 0, 1, 2
VOCAB = 12


def test_limits_follow_the_unpadded_extent_up_to_the_cap():
    masks = torch.ones(3, 64, 320, dtype=torch.bool)  # True: padding
    masks[0, :40, :100] = False
    masks[1] = False
    masks[2, :10, :10] = False
    limits = length_limits("image", masks, 200)
    frames = [(7, 3), (320 // STRIDE, 64 // STRIDE), (1, 1)]  # columns, rows, rounded up
    assert limits == [length_limit("image", c, r) for c, r in frames]
    assert limits[1] > limits[0] > limits[2] > 0
    assert length_limits("image", masks, 20) == [min(20, n) for n in limits]
    points = torch.ones(2, 500, dtype=torch.bool)
    points[0, :100] = False
    points[1] = False
    assert length_limits("strokes", points, 1000) == [
        length_limit("strokes", 100),
        length_limit("strokes", 500),
    ]
    with pytest.raises(ValueError, match="input kind"):
        length_limit("audio", 3)


def test_limits_hold_the_captions_of_the_sample_inks(samples):
    for s in samples:
        img = render_natural(s.traces)
        columns, rows = (-(-n // STRIDE) for n in img.shape[::-1])
        assert length_limit("image", columns, rows) > len(s.tokens)
        assert length_limit("strokes", len(ink_features(s.traces))) > len(s.tokens)


def _model(name: str, ends: bool):
    torch.manual_seed(0)
    model = build(name, VOCAB).eval()
    for p in model.parameters():  # untrained coverage starts at zero: make it matter
        p.data.add_(0.05 * torch.randn_like(p))
    if not ends:  # neither direction's end token is ever likely: every search runs to its limit
        model.head.bias.data[[SOS, EOS]] = -1e4
    return model


def _items(input_kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inputs of different sizes (and so different length limits), each a batch of one."""
    rng = torch.Generator().manual_seed(0)
    items = []
    if input_kind == "strokes":
        for n in (20, 64, 41):
            x = torch.randn(1, n, N_FEATURES, generator=rng)
            items.append((x, torch.zeros(1, n, dtype=torch.bool)))
    else:
        for h, w in ((16, 16), (20, 70), (40, 33)):
            x = (torch.rand(1, 1, h, w, generator=rng) > 0.7).float()
            items.append((x, torch.zeros(1, h, w, dtype=torch.bool)))
    return items


@pytest.mark.parametrize("name", ["comer", "bttr", "wap", "strokes"])
@pytest.mark.parametrize("ends", [True, False], ids=["ends", "runs-to-its-limit"])
def test_inputs_decoded_together_get_their_answers_alone(name, ends):
    model = _model(name, ends)
    items = _items(model.input_kind)
    limits = [length_limits(model.input_kind, m, 200)[0] for _, m in items]
    assert len(set(limits)) == len(limits)  # each input stops at its own limit
    for beam in (1, 3):
        alone = [recognize_batch(model, x, m, beam)[0] for x, m in items]
        together = recognize_inputs(model, items, beam)
        assert [[h.ids for h in n] for n in together] == [[h.ids for h in n] for n in alone]
        for a, b in zip(alone, together, strict=True):
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
        for nbest, limit in zip(together, limits, strict=True):
            assert all(len(h.ids) <= limit for h in nbest)
            if not ends:  # no end token: every hypothesis is as long as its input allows
                assert {len(h.ids) for h in nbest} == {limit}, (beam, limit)
    assert recognize_inputs(model, [], 3) == []


def test_a_padded_batch_stops_each_input_at_its_own_limit():
    model = _model("comer", ends=False)
    x = torch.rand(3, 1, 40, 100)
    masks = torch.ones(3, 40, 100, dtype=torch.bool)
    for i, (h, w) in enumerate(((40, 100), (16, 30), (30, 60))):
        masks[i, :h, :w] = False
    limits = length_limits("image", masks, 200)
    for beam in (1, 2):
        got = recognize_batch(model, x * ~masks[:, None], masks, beam)
        assert [len(n[0].ids) for n in got] == limits
    assert [len(n[0].ids) for n in recognize_batch(model, x, masks, 1, max_len=5)] == [5] * 3
