"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from hmer.evaluation.metrics import bleu, cer, edit_distance, edit_score, exprate, score, wer


def _t(text: str) -> list[str]:
    return text.split()


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a", "b"]) == 2
    assert edit_distance(_t("x ^ { 2 }"), _t("x _ { 2 }")) == 1
    assert edit_distance(_t("a b c"), _t("a b c")) == 0


def test_exprate():
    preds = [_t("a b"), _t("a c"), _t("x y z"), []]
    truths = [_t("a b"), _t("a b"), _t("x"), _t("q")]
    # distances 0, 1, 2, 1
    assert exprate(preds, truths) == {"exprate": 25.0, "le1": 75.0, "le2": 100.0}
    assert exprate([], []) == {"exprate": 0.0, "le1": 0.0, "le2": 0.0}


def test_wer_and_cer():
    preds = [_t("a b c"), _t(r"\sin x")]
    truths = [_t("a b d e"), _t(r"\sin x")]
    # token distances 2 + 0 over truth lengths 4 + 2
    assert wer(preds, truths) == pytest.approx(100 * 2 / 6)
    # characters: "abc" vs "abde" -> 2 edits; "\sinx" equal; truth characters 4 + 5
    assert cer(preds, truths) == pytest.approx(100 * 2 / 9)
    assert wer([[]], [[]]) == 0.0


def test_edit_score():
    preds = [_t("a b c"), _t("a"), []]
    truths = [_t("a b d e"), _t("a"), []]
    # 1 - 2/4, 1 - 0/1, empty vs empty counts as equal
    assert edit_score(preds, truths) == pytest.approx(100 * (0.5 + 1 + 1) / 3)


def test_bleu_hand_computed():
    # precisions 4/5, 3/4, 2/3, 1/2, same length so no brevity penalty
    value = bleu([_t("a b c d e")], [_t("a b c d f")])
    assert value == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # all n-grams match but the candidate is shorter: brevity penalty exp(1 - 5/4)
    assert bleu([_t("a b c d")], [_t("a b c d e")]) == pytest.approx(100 * math.exp(-0.25))
    assert bleu([_t("a b c d")], [_t("a b c d")]) == pytest.approx(100.0)
    # clipping: "a a a a" against "a b c d" matches only one "a"; no 2-gram match -> 0
    assert bleu([_t("a a a a")], [_t("a b c d")]) == 0.0
    assert bleu([[]], [_t("a")]) == 0.0


def test_bleu_is_pooled_over_the_corpus():
    preds = [_t("a b c d"), _t("x y")]
    truths = [_t("a b c d"), _t("x z")]
    # 1-grams 5/6, 2-grams 3/4, 3-grams 2/2, 4-grams 1/1; lengths equal
    expected = 100 * (5 / 6 * 3 / 4 * 1 * 1) ** 0.25
    assert bleu(preds, truths) == pytest.approx(expected)


def test_score_counts_missing_and_extra():
    truths = {"a": _t("x ^ { 2 }"), "b": _t("1 + 1"), "c": _t("y")}
    preds = {"a": _t("x ^ { 2 }"), "b": _t("1 + 2"), "z": _t("q")}
    result = score(preds, truths)
    assert result["n"] == 3
    assert result["exact"] == 1
    assert result["exprate"] == pytest.approx(100 / 3)
    assert result["le1"] == 100.0  # "b" is one edit off; missing "c" is one token away
    assert result["missing"] == ["c"] and result["n_missing"] == 1
    assert result["extra"] == ["z"] and result["n_extra"] == 1
    assert result["wer"] == pytest.approx(100 * 2 / 9)
    for key in ("cer", "bleu4", "edit_score"):
        assert 0.0 <= result[key] <= 100.0
    perfect = score(truths, truths)
    assert perfect["exprate"] == 100.0 and perfect["wer"] == 0.0 and perfect["bleu4"] == 100.0
    assert perfect["edit_score"] == 100.0 and perfect["cer"] == 0.0


CAPTIONS = [
    r"x ^ { 2 } + y ^ { 2 } = 1",
    r"\frac { 1 } { 2 } + \frac { 1 } { q } = 1",
    r"\sqrt { a + b } \leq \sqrt { a } + \sqrt { b }",
    r"\sum _ { i = 1 } ^ { n } i = \frac { n ( n + 1 ) } { 2 }",
    r"\int _ { 0 } ^ { 1 } f ( x ) d x",
    r"\lim _ { x \rightarrow 0 } \frac { \sin x } { x } = 1",
    r"a _ { n + 1 } = a _ { n } + d",
    r"e ^ { i \pi } + 1 = 0",
    r"\log _ { 2 } 8 = 3",
    r"( a + b ) ^ { 2 } = a ^ { 2 } + 2 a b + b ^ { 2 }",
]


def _independent_distance(a: tuple, b: tuple) -> int:
    # Plain recursive Levenshtein, written apart from metrics.edit_distance on purpose.
    from functools import cache

    @cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def _perturbed_file() -> tuple[dict, dict]:
    """A fixed file of predictions: each caption with 0-3 random token edits (often malformed)."""
    import random

    rng = random.Random(18)
    pool = ["{", "}", "^", "_", "x", "1", "z", r"\frac", "+", "p"]
    truths, preds = {}, {}
    for k in range(200):
        truth = CAPTIONS[k % len(CAPTIONS)].split()
        pred = list(truth)
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            i = rng.randrange(len(pred) + 1)
            op = rng.choice(["del", "ins", "sub"]) if pred else "ins"
            if op == "del" and i < len(pred):
                del pred[i]
            elif op == "sub" and i < len(pred):
                pred[i] = rng.choice(pool)
            else:
                pred.insert(i, rng.choice(pool))
        truths[f"e{k}"], preds[f"e{k}"] = truth, pred
    return preds, truths


def test_default_scoring_agrees_with_plain_token_edit_scorer():
    preds, truths = _perturbed_file()
    dists = [_independent_distance(tuple(preds[k]), tuple(truths[k])) for k in truths]
    n = len(dists)
    result = score(preds, truths)
    assert result["normalization"] == "none"
    assert result["exprate"] == pytest.approx(100 * sum(d == 0 for d in dists) / n)
    assert result["le1"] == pytest.approx(100 * sum(d <= 1 for d in dists) / n)
    assert result["le2"] == pytest.approx(100 * sum(d <= 2 for d in dists) / n)
    assert result["wer"] == pytest.approx(100 * sum(dists) / sum(len(t) for t in truths.values()))
    # The file is a real test of the convention: "full" normalization scores it differently.
    assert 0 < result["exprate"] < result["le2"] < 100
    assert score(preds, truths, normalize="full")["le2"] != result["le2"]


def test_equivalent_normalization_leaves_malformed_sequences_alone():
    from hmer.data.latex import normalize_well_formed

    malformed = _t(r"x z 1 } { p } + \frac { 1 } { q } = 1")
    assert normalize_well_formed(malformed) == malformed
    assert normalize_well_formed(_t(r"a \le b")) == _t(r"a \leq b")
    assert normalize_well_formed(_t("x ^ { 2 } _ { i }")) == _t("x _ { i } ^ { 2 }")
    truths = {"a": _t(r"a \leq b"), "b": _t("x + 1")}
    preds = {"a": _t(r"a \le b"), "b": _t("x } + 1")}
    assert score(preds, truths, normalize="equivalent")["exact"] == 1
    assert score(preds, truths)["exact"] == 0
    with pytest.raises(ValueError, match="unknown normalization"):
        score(preds, truths, normalize="loose")
