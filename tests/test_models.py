"""Every model family: a tiny instance learns three tiny expressions, and its decoding is sound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hmer.decoding import recognize_batch
from hmer.decoding.ctc import ctc_greedy, ctc_prefix_beam_search
from hmer.decoding.search import beam_search, bidirectional_beam_search, greedy
from hmer.models import create_model, list_models

PAD, SOS, EOS = 0, 1, 2
CNN = {"widths": [8, 16, 16, 16], "dropout": 0.0}
DEC = {"d_model": 32, "nhead": 4, "num_layers": 2, "ffn": 64, "dropout": 0.0}
GRU = {"ann_dim": 32, "embed_dim": 32, "hidden": 32, "attn_dim": 32, "dropout": 0.0}
TINY_DENSENET = {"growth": 4, "depth": 2, "dropout": 0.0}

FAMILIES = {
    "comer": ("transformer", {"encoder": "densenet", "encoder_cfg": TINY_DENSENET, **DEC}),
    "bttr": ("transformer", {"encoder": "cnn", "encoder_cfg": CNN, "coverage": False, **DEC}),
    "crnn": (
        "crnn",
        {
            "encoder_cfg": CNN,
            "hidden": 32,
            "lstm_layers": 1,
            "frames_per_column": 2,
            "dropout": 0.0,
        },
    ),
    "crnn-resnet": (
        "crnn",
        {
            "encoder": "resnet",
            "encoder_cfg": {**CNN, "freeze_stages": 1},
            "hidden": 32,
            "lstm_layers": 1,
            "frames_per_column": 2,
            "dropout": 0.0,
        },
    ),
    "seq2seq": ("seq2seq", {"encoder_cfg": CNN, **GRU}),
    "wap": ("seq2seq", {"encoder_cfg": CNN, "coverage": True, "cov_channels": 8, **GRU}),
    "densewap": (
        "seq2seq",
        {
            "encoder": "densenet",
            "encoder_cfg": TINY_DENSENET,
            "coverage": True,
            "cov_channels": 8,
            **GRU,
        },
    ),
    "strokes": ("strokes", {"conv_channels": [16, 32], "context_layers": 1, **DEC}),
    "strokes-gru": (
        "strokes",
        {"conv_channels": [16, 32], "context": "gru", "context_layers": 1, **DEC},
    ),
}


def build(name: str, vocab_size: int):
    family, cfg = FAMILIES[name]
    return create_model(family, vocab_size, **cfg)


def fit(model, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch["inputs"], batch["masks"], batch["tokens"], 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def check_hyps(hyps, batch_size: int, vocab_size: int, beam: int) -> None:
    assert len(hyps) == batch_size
    for nbest in hyps:
        assert 1 <= len(nbest) <= max(beam, 1)
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.ids) for h in nbest}) == len(nbest)  # no duplicates
        for h in nbest:
            assert all(isinstance(i, int) and 0 < i < vocab_size and i != EOS for i in h.ids)
            assert math.isfinite(h.logprob) and math.isfinite(h.score)
            assert 0.0 < h.confidence <= 1.0


def test_registry_lists_families():
    assert {"transformer", "crnn", "seq2seq", "strokes"} <= set(list_models())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_learns_and_decodes(name, vocab, image_batch, stroke_batch):
    model = build(name, len(vocab))
    batch = stroke_batch if model.input_kind == "strokes" else image_batch
    frozen = {}
    if name == "crnn-resnet":
        frozen = {k: v.clone() for k, v in model.encoder.stem.state_dict().items()}
        frozen |= {f"s0.{k}": v.clone() for k, v in model.encoder.stages[0].state_dict().items()}

    losses = fit(model, batch, steps=40 if model.kind == "ctc" else 30)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses

    if frozen:  # weights and batch-norm statistics of frozen stages did not move
        now = model.encoder.stem.state_dict()
        now |= {f"s0.{k}": v for k, v in model.encoder.stages[0].state_dict().items()}
        assert all(torch.equal(frozen[k], now[k]) for k in frozen)
        assert any(p.requires_grad for p in model.encoder.stages[1].parameters())

    model.eval()
    b, v = len(batch["ids"]), len(vocab)
    g = recognize_batch(model, batch["inputs"], batch["masks"], beam=1, max_len=12)
    check_hyps(g, b, v, 1)
    nbest = recognize_batch(model, batch["inputs"], batch["masks"], beam=3, max_len=12)
    check_hyps(nbest, b, v, 3)
    if model.input_kind == "strokes":  # no batch norm: eval mode reads what training saw
        assert [h[0].ids for h in g] == batch["tokens"]
        assert [h[0].ids for h in nbest] == batch["tokens"]


@pytest.mark.parametrize("name", ["bttr", "wap", "strokes"])
def test_beam_one_never_below_greedy(name, vocab, image_batch, stroke_batch):
    """Without length normalization, a beam of one follows the greedy path and also keeps every
    hypothesis that ended on the way, so what it returns is at least as probable as greedy's."""
    model = build(name, len(vocab)).eval()  # untrained: uncertain, so paths diverge
    batch = stroke_batch if model.input_kind == "strokes" else image_batch
    with torch.no_grad():
        mem = model.encode(batch["inputs"], batch["masks"])
        for i, g in enumerate(greedy(model, mem, len(batch["ids"]), max_len=8)):
            (h,) = beam_search(
                model, model.select(mem, torch.tensor([i])), 1, max_len=8, length_penalty=0.0
            )
            assert h.logprob >= g.logprob - 1e-4


def test_beam_one_equals_greedy_when_confident(vocab, stroke_batch):
    model = build("strokes", len(vocab))
    fit(model, stroke_batch, steps=30)
    model.eval()
    inputs, masks = stroke_batch["inputs"], stroke_batch["masks"]
    with torch.no_grad():
        mem = model.encode(inputs, masks)
        greedy_hyps = greedy(model, mem, len(stroke_batch["ids"]), max_len=8)
        for i, g in enumerate(greedy_hyps):
            (h,) = beam_search(
                model, model.select(mem, torch.tensor([i])), 1, max_len=8, length_penalty=0.0
            )
            assert h.ids == g.ids == stroke_batch["tokens"][i]
            assert h.logprob == pytest.approx(g.logprob, abs=1e-4)
    via_dispatch = recognize_batch(model, inputs, masks, beam=1, max_len=8)
    assert [n[0].ids for n in via_dispatch] == [g.ids for g in greedy_hyps]


def test_nbest_sorted_and_bidirectional_rescoring(vocab, image_batch):
    model = build("bttr", len(vocab)).eval()
    with torch.no_grad():
        mem = model.encode(image_batch["inputs"], image_batch["masks"])
        mem = model.select(mem, torch.tensor([0]))
        for hyps in (
            beam_search(model, mem, beam=5, max_len=6),
            beam_search(model, mem, beam=5, direction="r2l", max_len=6),
            bidirectional_beam_search(model, mem, beam=5, max_len=6),
        ):
            assert 1 <= len(hyps) <= 5
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True)


def test_seq2seq_cached_steps_match_teacher_forcing(vocab, image_batch):
    """Stepping token by token (reusing cached states, rows reordered as in beam search) gives
    the teacher-forced log-probabilities."""
    model = build("wap", len(vocab)).eval()
    tgt = torch.tensor([[SOS, 4, 5, 6, 7], [SOS, 6, 6, 4, 8], [SOS, 8, 5, 4, 4]])
    with torch.no_grad():
        mem = model.encode(image_batch["inputs"], image_batch["masks"])
        want = model.decode(mem, tgt).log_softmax(-1)
        order = torch.tensor([2, 0, 1])
        sel = model.select(mem, order)
        for t in range(1, tgt.shape[1] + 1):
            got = model.step(sel, tgt[order, :t])
            torch.testing.assert_close(got, want[order, t - 1], atol=1e-5, rtol=1e-4)
    assert len(mem["cache"]) == 3 * tgt.shape[1]  # every step after the first was incremental


def _labelling_logprobs(probs: np.ndarray, blank: int = 0) -> dict[tuple[int, ...], float]:
    """Exact log P(labelling) by summing every alignment path (brute force)."""
    t, v = probs.shape
    total: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(v), repeat=t):
        p = float(np.prod([probs[i, c] for i, c in enumerate(path)]))
        lab = tuple(c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1]))
        total[lab] = total.get(lab, 0.0) + p
    return {k: math.log(p) for k, p in total.items()}


def test_ctc_prefix_beam_known_answer():
    # Two frames, blank most likely in each: the best path is empty, but "a" has more paths.
    probs = np.array([[0.4, 0.35, 0.25], [0.4, 0.35, 0.25]])
    lp = torch.tensor(np.log(probs), dtype=torch.float32)
    (g,) = ctc_greedy(lp[:, None], torch.tensor([2]))
    assert g.ids == [] and g.logprob == pytest.approx(math.log(0.16), abs=1e-5)
    hyps = ctc_prefix_beam_search(lp, beam=10)
    assert hyps[0].ids == [1]
    # P("a") = aa + a_ + _a = 0.1225 + 0.14 + 0.14
    assert hyps[0].logprob == pytest.approx(math.log(0.4025), abs=1e-5)
    exact = _labelling_logprobs(probs)
    assert {tuple(h.ids) for h in hyps} == set(exact)  # small enough for the beam to be exact
    for h in hyps:
        assert h.logprob == pytest.approx(exact[tuple(h.ids)], abs=1e-5)


def test_ctc_prefix_beam_matches_brute_force():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=5)  # 5 frames, blank + 2 labels
    exact = sorted(_labelling_logprobs(probs).items(), key=lambda kv: -kv[1])
    hyps = ctc_prefix_beam_search(torch.tensor(np.log(probs)), beam=50, prune=-1e9)
    assert [tuple(h.ids) for h in hyps[:5]] == [k for k, _ in exact[:5]]
    for h, (_, want) in zip(hyps, exact, strict=False):
        assert h.logprob == pytest.approx(want, abs=1e-6)
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)


def test_ctc_greedy_collapses_repeats_and_blanks():
    path = [1, 1, 0, 1, 2, 2, 0, 0]
    lp = torch.full((len(path), 1, 3), math.log(0.1))
    for t, c in enumerate(path):
        lp[t, 0, c] = math.log(0.8)
    (h,) = ctc_greedy(lp, torch.tensor([len(path)]))
    assert h.ids == [1, 1, 2]
    assert h.logprob == pytest.approx(len(path) * math.log(0.8), abs=1e-4)
    (short,) = ctc_greedy(lp, torch.tensor([3]))  # frames past the length are ignored
    assert short.ids == [1]
