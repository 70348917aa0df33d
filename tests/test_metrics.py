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
