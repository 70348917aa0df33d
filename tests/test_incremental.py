"""Incremental (cached) decoding must agree with decoding the whole prefix."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hmer.decoding.search import (
    beam_search,
    greedy,
    grouped_beam_search,
    rescore_both_ways,
    searched_logprobs,
    sequence_logprob,
)
from hmer.models import create_model

TINY = {
    "encoder_cfg": {"growth": 4, "depth": 2},
    "d_model": 32,
    "nhead": 2,
    "num_layers": 2,
    "ffn": 64,
}


class _NoCache:
    """The same model seen without its incremental-state methods."""

    def __init__(self, model):
        self.m = model

    def __getattr__(self, name):
        if name in ("decoder_state", "step_state", "reorder_state"):
            raise AttributeError(name)
        return getattr(self.m, name)


def _model(coverage: bool):
    torch.manual_seed(0)
    model = create_model("transformer", 12, coverage=coverage, **TINY).eval()
    for p in model.parameters():  # untrained coverage starts at zero: make it matter
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def test_step_state_matches_full_decode():
    for coverage in (True, False):
        model = _model(coverage)
        x = torch.rand(2, 1, 48, 96)
        mem = model.encode(x, torch.zeros(2, 48, 96, dtype=torch.bool))
        tgt = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 9, 4, 4, 6, 5]])
        full = model.decode(mem, tgt).float().log_softmax(-1)
        state = model.decoder_state(mem)
        for t in range(tgt.shape[1]):
            lp, state = model.step_state(tgt[:, t], state)
            assert torch.allclose(lp, full[:, t], atol=1e-4), (coverage, t)


def test_cached_search_equals_uncached_search():
    model = _model(True)
    x = torch.rand(1, 1, 48, 96)
    with torch.no_grad():
        mem = model.encode(x, torch.zeros(1, 48, 96, dtype=torch.bool))
        a = greedy(model, mem, 1, max_len=12)[0]
        b = greedy(_NoCache(model), mem, 1, max_len=12)[0]
        assert a.ids == b.ids and abs(a.logprob - b.logprob) < 1e-3
        for direction in ("l2r", "r2l"):
            fa = beam_search(model, mem, 4, direction, max_len=12)
            fb = beam_search(_NoCache(model), mem, 4, direction, max_len=12)
            assert [h.ids for h in fa] == [h.ids for h in fb]


def test_both_directions_in_one_batch_equal_separate_searches():
    model = _model(True)
    with torch.no_grad():
        mem = model.encode(torch.rand(1, 1, 48, 96), torch.zeros(1, 48, 96, dtype=torch.bool))
        l2r, r2l = grouped_beam_search(model, mem, ("l2r", "r2l"), beam=4, max_len=12)
        for direction, got in (("l2r", l2r), ("r2l", r2l)):
            alone = beam_search(_NoCache(model), mem, 4, direction, max_len=12)
            assert [h.ids for h in got] == [h.ids for h in alone]
            for a, b in zip(got, alone, strict=True):
                assert abs(a.score - b.score) < 1e-4


def test_one_shared_memory_row_equals_copied_rows():
    # Hypotheses of one input read one memory row by broadcasting, without copying it per row.
    model = _model(True)
    with torch.no_grad():
        mem = model.encode(torch.rand(1, 1, 48, 96), torch.zeros(1, 48, 96, dtype=torch.bool))
        tgt = torch.tensor([[1, 5, 6, 7], [1, 9, 4, 4], [1, 3, 3, 8]])
        copied = model.select(mem, torch.zeros(3, dtype=torch.long))
        assert torch.allclose(model.decode(mem, tgt), model.decode(copied, tgt), atol=1e-5)


def test_coverage_without_padding_skips_the_mask_with_the_same_numbers(monkeypatch):
    from hmer.models.decoder import CoverageRefiner

    torch.manual_seed(0)
    arm = CoverageRefiner(nhead=2, in_maps=4).eval()
    for p in arm.parameters():  # the projection starts at zero: make it matter
        p.data.add_(0.1 * torch.randn_like(p))
    cum = torch.rand(3, 4, 5, 6 * 7)  # (B, maps, T, L) over a 6 x 7 memory
    none = torch.zeros(1, 42, dtype=torch.bool)
    some = none.clone()
    some[0, -7:] = True  # the last row is padding
    with torch.inference_mode():
        fast = arm.from_coverage(cum, none, (6, 7))
        masked = arm.from_coverage(cum, some, (6, 7))
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as traced: masks
        assert torch.equal(arm.from_coverage(cum, none, (6, 7)), fast)  # bit for bit
        assert torch.equal(arm.from_coverage(cum, some, (6, 7)), masked)
    assert not torch.equal(fast, masked)  # padding is still masked


def test_stopped_groups_leave_the_batch():
    # Left-to-right ends early (its end token made likely), right-to-left never ends (its end
    # token made unlikely) and runs to its input's length limit: each stopped group leaves the
    # batch, and every group's hypotheses are those of its search alone.
    model = _model(True)
    model.head.bias.data[1] = -1e4  # <sos>, the right-to-left end token
    model.head.bias.data[2] += 4  # <eos>, the left-to-right end token
    sizes, limits = ((32, 48), (48, 96), (32, 80)), [6, 11, 8]
    with torch.no_grad():
        mems = [
            model.encode(torch.rand(1, 1, h, w), torch.zeros(1, h, w, dtype=torch.bool))
            for h, w in sizes
        ]
        rows, memory_rows = [], []
        step_state = model.step_state

        def counting(last, state):
            rows.append(len(last))
            memory_rows.append(state["kv"][0][0].shape[0])
            return step_state(last, state)

        model.step_state = counting
        got = grouped_beam_search(model, model.join(mems), ("l2r", "r2l"), 3, limits)
        del model.step_state
        for i, (mem, limit) in enumerate(zip(mems, limits, strict=True)):
            for j, direction in enumerate(("l2r", "r2l")):
                alone = beam_search(model, mem, 3, direction, max_len=limit)
                assert [h.ids for h in got[2 * i + j]] == [h.ids for h in alone]
                assert [h.score for h in got[2 * i + j]] == pytest.approx(
                    [h.score for h in alone], abs=1e-4
                )
    assert all(len(h.ids) == limit for i, limit in enumerate(limits) for h in got[2 * i + 1])
    # Right to left alone from when left to right has stopped: 3 rows per live input.
    # Each step decodes 3 rows per live group: left to right stops early, input by input.
    assert rows[0] == 18 and rows == sorted(rows, reverse=True) and len(rows) == max(limits)
    assert rows[limits[0]] < 12 and rows[-1] == 3  # at the end: input 1's right to left
    # Inputs with unequal numbers of live groups read one memory row per group.
    assert any(m > 3 for m in memory_rows) and memory_rows[-1] == 1


def test_rescoring_reuses_each_searchs_log_probabilities_and_decodes_the_rest():
    # A search's total log-probability of a hypothesis it finished is what teacher forcing in
    # that direction computes; rescoring decodes only the other direction's hypotheses.
    model = _model(True)
    with torch.no_grad():
        mem = model.encode(torch.rand(1, 1, 48, 96), torch.zeros(1, 48, 96, dtype=torch.bool))
        lists = grouped_beam_search(model, mem, ("l2r", "r2l"), beam=4, max_len=12)
        for direction, hyps in zip(("l2r", "r2l"), lists, strict=True):
            known = searched_logprobs(hyps)
            assert known and all(h.complete for h in hyps if tuple(h.ids) in known)
            forced = sequence_logprob(model, mem, [list(k) for k in known], direction)
            assert forced == pytest.approx(list(known.values()), abs=1e-4)
        decoded = []
        forward = model.decode
        model.decode = lambda m, tgt: decoded.append(len(tgt)) or forward(m, tgt)
        reused = rescore_both_ways(model, mem, lists, beam=8)
        del model.decode
        unknown = [[replace(h, complete=False) for h in hyps] for hyps in lists]
        full = rescore_both_ways(model, mem, unknown, beam=8)  # every one decoded both ways
    distinct = {tuple(h.ids) for hyps in lists for h in hyps}
    assert sum(decoded) == 2 * len(distinct) - sum(map(len, map(searched_logprobs, lists)))
    assert [h.ids for h in reused] == [h.ids for h in full]
    assert [h.score for h in reused] == pytest.approx([h.score for h in full], abs=1e-4)


def test_hypotheses_stopped_at_the_length_limit_are_not_reused():
    # Without the end token their search total is not the sequence's log-probability.
    model = _model(True)
    model.head.bias.data[2] = -1e4  # <eos> never: every left-to-right row runs to the limit
    with torch.no_grad():
        mem = model.encode(torch.rand(1, 1, 48, 96), torch.zeros(1, 48, 96, dtype=torch.bool))
        (hyps,) = grouped_beam_search(model, mem, ("l2r",), beam=3, max_len=5)
        (one,) = greedy(model, mem, 1, max_len=5)
    assert hyps and not any(h.complete for h in hyps) and not one.complete
    assert searched_logprobs([*hyps, one]) == {}
