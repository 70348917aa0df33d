"""Synthetic handwriting: glyph bank, layout engine, ink generation, formula mapping, CLI."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from hmer.cli import main
from hmer.data.inkml import parse_inkml
from hmer.data.latex import normalize_tokens
from hmer.data.latex_tree import parse
from hmer.synthesis.generate import (
    SkipFormula,
    generate,
    im2latex_to_caption,
    synthesize,
    to_inkml,
)
from hmer.synthesis.glyphs import BAR, DEFAULT_METRICS, GlyphBank, build_bank, glyphs_of
from hmer.synthesis.layout import LayoutError, Placed, Style, layout

# Hand-made drawings in any units, y down: each token has two "writers".
DRAWINGS = {
    "x": [[[(0, 0), (1, 1)], [(1, 0), (0, 1)]], [[(0, 0.1), (0.9, 1)], [(1, 0), (0.1, 0.9)]]],
    "a": [[[(1, 0.2), (0.5, 0), (0, 0.5), (0.5, 1), (1, 0.6), (1, 0), (1.1, 1)]]] * 2,
    "b": [[[(0, 0), (0, 1.5), (0.5, 1.5), (0.8, 1.1), (0.5, 0.6), (0, 0.7)]]] * 2,
    "2": [
        [[(0, 0.3), (0.5, 0), (1, 0.3), (0, 1.4), (1, 1.4)]],
        [[(0, 0.2), (0.8, 0), (0, 1.3), (1, 1.3)]],
    ],
    "1": [[[(0.1, 0.3), (0.4, 0), (0.4, 1.4)]]] * 2,
    "+": [[[(0, 0.5), (1, 0.5)], [(0.5, 0), (0.5, 1)]]] * 2,
    "-": [[[(0, 0), (1, 0.02)]], [[(0, 0.01), (1.2, 0)]]],
    "=": [[[(0, 0), (1, 0)], [(0, 0.5), (1, 0.5)]]] * 2,
    "(": [[[(0.4, 0), (0, 1), (0.4, 2)]]] * 2,
    ")": [[[(0, 0), (0.4, 1), (0, 2)]]] * 2,
    r"\sqrt": [[[(0, 1.2), (0.3, 1), (0.6, 2), (1, 0), (3, 0)]]] * 2,
}


@pytest.fixture(scope="module")
def bank() -> GlyphBank:
    return GlyphBank.from_strokes(DRAWINGS)


def _t(text: str) -> list[str]:
    return text.split()


def _by_token(placed: list[Placed]) -> dict[str, Placed]:
    return {p.token: p for p in placed}


@pytest.mark.parametrize("seed", range(10))
def test_superscript_above_right_and_smaller(bank, seed):
    # the default hand (scripts at 0.65 of line size); other hands vary around it
    boxes = _by_token(layout(_t("x ^ { 2 }"), bank, np.random.default_rng(seed), Style()))
    x, two = boxes["x"], boxes["2"]
    line_size = bank.metric("2").height  # a digit on the line is ~1.45 x-heights
    assert two.x > x.x + 0.5 * x.w  # to the right
    assert two.y + two.h / 2 < x.y + x.h / 2  # its centre above the x's centre
    assert two.y < x.y  # and it reaches higher
    assert two.h < 0.85 * line_size


@pytest.mark.parametrize("seed", range(10))
def test_subscript_below_right(seed):
    boxes = _by_token(layout(_t("x _ { 2 }"), None, np.random.default_rng(seed)))
    x, two = boxes["x"], boxes["2"]
    assert two.x > x.x + 0.5 * x.w and two.y + two.h > x.y + x.h


@pytest.mark.parametrize("seed", range(10))
def test_fraction_numerator_over_bar_over_denominator(bank, seed):
    placed = layout(_t(r"\frac { a } { b }"), bank, np.random.default_rng(seed))
    boxes = _by_token(placed)
    a, b, bar = boxes["a"], boxes["b"], boxes[BAR]
    assert bar.kind == "bar"
    assert a.y + a.h <= bar.y  # a entirely above the bar
    assert b.y >= bar.y + bar.h  # b entirely below
    for p in (a, b):  # both roughly centred on the bar
        assert abs((p.x + p.w / 2) - (bar.x + bar.w / 2)) < 0.4
    assert bar.w >= max(a.w, b.w) - 0.3


def test_radical_covers_its_content_and_brackets_stretch(bank):
    rng = np.random.default_rng(0)
    placed = layout(_t(r"\sqrt { x + 1 }"), bank, rng)
    rad = placed[0]
    assert rad.kind == "sqrt"
    for p in placed[1:]:
        assert rad.x + rad.hook <= p.x + 0.05 and p.x + p.w <= rad.x + rad.w + 0.05
        assert rad.y <= p.y
    plain = _by_token(layout(_t("( a )"), bank, np.random.default_rng(1)))["("]
    tall = _by_token(layout(_t(r"( \frac { a } { b } )"), bank, np.random.default_rng(1)))["("]
    assert tall.h > plain.h * 1.3


def test_sqrt_index_and_limits_parse():
    tree = parse(
        _t(r"\sqrt [ 3 ] { x } + \sum _ { i = 1 } ^ { n } x \int \limits _ { 0 } ^ { 1 } x")
    )
    assert [n.kind for n in tree][:3] == ["sqrt", "atom", "scripts"]
    placed = layout(_t(r"\sum _ { i } ^ { n } x"), None, np.random.default_rng(0))
    boxes = _by_token(placed)
    s, i, n = boxes[r"\sum"], boxes["i"], boxes["n"]
    # limits: either above and below, or (sometimes, as people do) to the right
    assert n.y + n.h <= s.y + 0.5 * s.h and i.y >= s.y + 0.5 * s.h


@pytest.mark.parametrize(
    "tokens",
    [
        r"\frac { a }",
        "x ^",
        "{ x",
        "x }",
        r"\sqrt",
        "x ^ { 2 } ^ { 3 }",  # LaTeX: "Double superscript"
        r"x ^ \limits",  # \limits is no argument
        r"\limits _ { 1 }",  # nor without a base
        r"\sqrt [ x ^ ] { y }",  # this ] closes the index: ^ has no argument
        r"\mathrm",
    ],
)
def test_layout_rejects_what_latex_rejects(tokens):
    with pytest.raises(LayoutError):
        layout(tokens.split())


def test_layout_reads_the_shared_grammar_as_latex_does():
    # ] outside a \sqrt index is a plain symbol, here a superscript
    boxes = _by_token(layout(_t("x ^ ]"), None, np.random.default_rng(0), Style()))
    assert boxes["]"].x > boxes["x"].x and boxes["]"].y < boxes["x"].y
    assert boxes["]"].h < DEFAULT_METRICS["]"].height
    # a font wrapper draws its argument only
    placed = layout(_t(r"\mathrm { d } x ^ { \mathrm { a } }"), None, np.random.default_rng(0))
    assert [p.token for p in placed] == ["d", "x", "a"]
    # empty arguments draw nothing (a fraction keeps its bar, a radical its sign)
    assert [p.token for p in layout(_t("x ^ { } + 1"))] == ["x", "+", "1"]
    frac = _by_token(layout(_t(r"\frac { } { b }"), None, np.random.default_rng(0)))
    assert set(frac) == {BAR, "b"} and frac["b"].y >= frac[BAR].y + frac[BAR].h
    plain, empty = (
        layout(_t(rf"\sqrt {index} {{ x }}"), None, np.random.default_rng(3), Style())
        for index in ("", "[ ]")
    )
    assert plain == empty
    # a subscript and a superscript in either written order: the same layout
    one, two = (
        layout(_t(t), None, np.random.default_rng(4))
        for t in ("x _ { a } ^ { b }", "x ^ { b } _ { a }")
    )
    assert one == two and {p.token for p in one} == {"x", "a", "b"}
    # a script without a base is TeX's empty nucleus
    assert [p.token for p in layout(_t("_ { 2 } x"))] == ["2", "x"]


def test_generation_is_deterministic_under_a_seed(bank):
    tokens = _t(r"\frac { x + 1 } { 2 } = \sqrt { a } - ( b )")
    one = synthesize(tokens, bank, np.random.default_rng(5))
    two = synthesize(tokens, bank, np.random.default_rng(5))
    other = synthesize(tokens, bank, np.random.default_rng(6))
    assert len(one.traces) == len(two.traces)
    assert all(np.array_equal(p, q) for p, q in zip(one.traces, two.traces, strict=True))
    assert not all(
        p.shape == q.shape and np.allclose(p, q)
        for p, q in zip(one.traces, other.traces, strict=False)
    )
    assert all(t.dtype == np.float32 and t.ndim == 2 and t.shape[1] == 2 for t in one.traces)
    assert sum(len(ids) for _, ids in one.symbols) == len(one.traces)
    a, _, _ = generate({"f": [tokens, _t("x + 1")]}, 4, bank, seed=3)
    b, _, _ = generate({"f": [tokens, _t("x + 1")]}, 4, bank, seed=3)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert all(
        np.array_equal(p, q)
        for s, t in zip(a, b, strict=True)
        for p, q in zip(s.traces, t.traces, strict=True)
    )


def test_unknown_tokens_and_bad_formulas_are_skipped_not_crashed(bank):
    with pytest.raises(SkipFormula, match=r"no glyph for \\delta"):
        synthesize(_t(r"x + \delta"), bank, np.random.default_rng(0))
    with pytest.raises(SkipFormula, match="layout"):
        synthesize(_t(r"\frac { x }"), bank, np.random.default_rng(0))
    forms = [_t(r"x + \delta"), _t(r"\frac { x }"), _t("x + 1"), _t("}")]
    samples, report, _ = generate({"f": forms}, 3, bank, seed=0)
    assert len(samples) == 3 and all(s.tokens == ["x", "+", "1"] for s in samples)
    assert report.skipped[r"no glyph for \delta"] >= 1 and sum(report.skipped.values()) >= 3
    # a source that never works stops instead of looping
    samples, report, _ = generate({"f": [[r"\delta"]]}, 5, bank, seed=0)
    assert samples == [] and report.attempts > 0


VOCAB = set(DRAWINGS) | set(_t(r"{ } ^ _ \frac \sqrt \ldots \sin y \leq < , . \alpha B"))


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (r"\left( a + b \right) ^ { 2 } \; , \quad x \le 1", r"( a + b ) ^ { 2 } , x \leq 1"),
        (r"{ \frac { 1 } { 2 } } \, \mathrm { s i n } x \dots", r"\frac { 1 } { 2 } \sin x \ldots"),
        (r"x \sp { 2 } \sb 1", "x ^ { 2 } _ { 1 }"),
        (r"\mathbf { x } \lt y", "x < y"),
    ],
)
def test_im2latex_formulas_are_mapped_to_caption_tokens(line, want):
    assert im2latex_to_caption(line, VOCAB) == (want.split(), "")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (r"\delta x", "unknown token"),
        (r"a \leftrightarrow b", "unknown token"),
        (r"\mathrm { e x p } x", "text"),
        (" ".join(["x +"] * 40) + " x", "too long"),
        (r"\begin{array} { c } x \end{array}", ""),
    ],
)
def test_im2latex_formulas_outside_the_vocabulary_are_rejected(line, why):
    tokens, reason = im2latex_to_caption(line, VOCAB)
    assert tokens is None and why in reason


def test_substitution_keeps_structure_with_vocabulary_symbols():
    tokens, why = im2latex_to_caption(
        r"\frac { \partial \delta } { \hat { D } }", VOCAB, substitute=True
    )
    assert why == "" and tokens[:2] == [r"\frac", "{"] and set(tokens) <= VOCAB


def _segmented_inkml() -> str:
    # x ^ 2 + 1 with the 2 written small and high; labels as CROHME spells them (\lt)
    strokes = {
        "0": [(0, 0), (10, 10)],
        "1": [(10, 0), (0, 10)],
        "2": [(12, -6), (17, -8), (12, -2), (17, -2)],
        "3": [(22, 5), (32, 5)],
        "4": [(27, 0), (27, 10)],
        "5": [(36, -4), (38, -5), (38, 10)],
        "6": [(44, 0), (52, 5), (44, 10)],
        "7": [(56, 0), (56, 10), (64, 10), (64, 0)],
    }
    groups = [
        ("x", ["0", "1"]),
        ("2", ["2"]),
        ("+", ["3", "4"]),
        ("1", ["5"]),
        (r"\lt", ["6"]),
        ("u", ["7"]),
    ]
    traces = "".join(
        f'<trace id="{k}">{", ".join(f"{x} {y}" for x, y in pts)}</trace>'
        for k, pts in strokes.items()
    )
    tgs = "".join(
        f'<traceGroup><annotation type="truth">{label}</annotation>'
        + "".join(f'<traceView traceDataRef="{i}"/>' for i in ids)
        + "</traceGroup>"
        for label, ids in groups
    )
    return (
        '<ink xmlns="http://www.w3.org/2003/InkML">'
        '<annotation type="truth">$x^2+1 \\lt u$</annotation>'
        f"{traces}<traceGroup>{tgs}</traceGroup></ink>"
    )


def test_glyphs_are_cut_from_segmented_ink_in_x_height_units():
    ink = parse_inkml(_segmented_inkml())
    nominal = {"x": 1.0, "u": 1.0, "1": 1.5, "2": 1.5}
    glyphs = {g.label: g for g in glyphs_of(ink, nominal, "w")}
    assert set(glyphs) == {"x", "2", "+", "1", "<", "u"}  # \lt became the caption token <
    assert glyphs["x"].height == pytest.approx(1.0, rel=0.01)
    # the + has same-size letters/digits on both sides: its box bottom is on their baseline
    assert glyphs["+"].descent == pytest.approx(0.0, abs=0.05)
    assert not glyphs["2"].main and glyphs["2"].height == pytest.approx(1.5, rel=0.01)  # script
    bank = build_bank([("w", ink)])
    again = pickle.loads(pickle.dumps(bank))
    assert again.sizes() == bank.sizes()
    g, h = bank.glyphs["x"][0], again.glyphs["x"][0]
    assert all(np.array_equal(p, q) for p, q in zip(g.strokes, h.strokes, strict=True))


def test_inkml_output_reads_back_with_its_segmentation(bank):
    samples, _, inks = generate(
        {"f": [_t(r"\frac { x } { 2 } = 1")]}, 1, bank, 0, with_symbols=True
    )
    text = to_inkml(samples[0], inks[0].symbols)
    back = parse_inkml(text)
    assert len(back.traces) == len(samples[0].traces)
    assert sorted(s.label for s in back.symbols) == sorted(["x", "-", "2", "=", "1"])
    assert normalize_tokens(back.truth) == samples[0].tokens


def _tiny_crohme(tmp_path, monkeypatch):
    """A CROHME folder of one segmented training expression (and a cache folder): the data
    folder and its training ink."""
    train = tmp_path / "crohme" / "TrainINKML"
    train.mkdir(parents=True)
    (train / "w1.inkml").write_text(_segmented_inkml())
    data = tmp_path / "crohme"
    (data / "dictionary.txt").write_text(
        "".join(f"{t}\t{i}\n" for i, t in enumerate(_t("x 2 + 1 < u")))
    )
    (data / "train_caption.txt").write_text("w1\tx ^ { 2 } + 1 < u\nw2\tu + x\n")
    monkeypatch.setenv("HMER_CACHE", str(tmp_path / "cache"))
    return data, train


def test_cli_writes_split_preview_and_inkml(tmp_path, monkeypatch):
    data, train = _tiny_crohme(tmp_path, monkeypatch)
    out = tmp_path / "out" / "s.pkl"
    code = main(
        [
            "synth",
            "--count",
            "4",
            "--out",
            str(out),
            "--source",
            "crohme",
            "--data-dir",
            str(data),
            "--train-inkml",
            str(train),
            "--preview",
            str(tmp_path / "p.png"),
            "--inkml",
        ]
    )
    assert code == 0
    split = pickle.loads(out.read_bytes())
    assert len(split.samples) == 4 and split.samples[0].tokens
    assert (tmp_path / "p.png").stat().st_size > 0
    assert len(list((tmp_path / "out" / "s_inkml").glob("*.inkml"))) == 4
    assert (tmp_path / "cache").is_dir()  # the bank was cached


def test_cli_leaves_out_excluded_formulas(tmp_path, monkeypatch):
    data, train = _tiny_crohme(tmp_path, monkeypatch)
    (tmp_path / "test_caption.txt").write_text("t1\tu + x\n")
    out = tmp_path / "s.pkl"
    args = ["synth", "--count", "6", "--out", str(out), "--source", "crohme"]
    args += ["--data-dir", str(data), "--train-inkml", str(train)]
    assert main(args) == 0
    before = [s.tokens for s in pickle.loads(out.read_bytes()).samples]
    assert _t("u + x") in before
    assert main([*args, "--exclude", str(tmp_path / "test_caption.txt")]) == 0
    after = [s.tokens for s in pickle.loads(out.read_bytes()).samples]
    assert after == [t for t in before if t != _t("u + x")]
    assert main([*args, "--exclude", str(tmp_path / "missing.txt")]) == 2


def test_unseen_formulas_are_the_held_out_ones_training_lacks():
    from hmer.data.dataset import Sample
    from hmer.training.train import split_holdout, unseen_formulas

    repeated = [Sample(f"r{i}", [], ["a"]) for i in range(30)]
    unique = [Sample(f"u{i}", [], ["u", str(i)]) for i in range(10)]
    _, val = split_holdout(repeated + unique, 10)
    held = {tuple(s.tokens) for s in val}
    assert ("a",) in held and len(held) > 1  # both kinds were held out
    assert unseen_formulas(repeated + unique, 10) == held - {("a",)}


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "formulas").is_dir(), reason="shared data not available")
def test_real_im2latex_formulas_survive_the_filter():
    from hmer.data.vocab import Vocab

    vocab = set(Vocab.from_dictionary(SHARED / "crohme" / "dictionary.txt").itos[4:])
    lines = (
        (SHARED / "formulas" / "im2latex100k_val.formulas.norm.txt").read_text().splitlines()[:1500]
    )
    kept = [t for t, _ in (im2latex_to_caption(line, vocab) for line in lines) if t is not None]
    assert 0.04 * len(lines) < len(kept) < 0.3 * len(lines)
    assert all(set(t) <= vocab and len(t) <= 60 for t in kept)
