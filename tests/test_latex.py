"""LaTeX tokens: tokenize, normalize to the caption conventions, validity and repair."""

from __future__ import annotations

import numpy as np
import pytest

from hmer.data.dataset import cache_path, read_captions
from hmer.data.latex import (
    check_normalization,
    detokenize,
    diff_class,
    is_valid,
    normalize_prediction,
    normalize_tokens,
    normalize_well_formed,
    repair,
    tokenize,
    validate,
)
from hmer.data.latex_tree import Malformed, parse


def _t(text: str) -> list[str]:
    return text.split()


def n(raw: str, **kw) -> str:
    return " ".join(normalize_tokens(raw, **kw))


def test_tokenize():
    assert tokenize(r"\frac{a}{b}") == [r"\frac", "{", "a", "}", "{", "b", "}"]
    assert tokenize(r"x^{12}\times\{y\}") == [
        "x",
        "^",
        "{",
        "1",
        "2",
        "}",
        r"\times",
        r"\{",
        "y",
        r"\}",
    ]
    assert tokenize(r"a\ b\,c \\") == ["a", "\\ ", "b", r"\,", "c", "\\\\"]
    assert tokenize("") == [] and tokenize("   ") == []
    assert tokenize("x \\") == ["x", "\\"]  # a trailing backslash does not break anything


@pytest.mark.parametrize(
    "latex, tokens",
    [
        (r"\text{if }x>0", r"\text { i f ~ } x > 0"),
        (r"\text { i f ~ } x > 0", r"\text { i f ~ } x > 0"),  # the token form reads back
        (r"x^2\text{ for all }n", r"x ^ { 2 } \text { ~ f o r ~ a l l ~ } n"),
        (r"\text{a\ b~c  d}", r"\text { a ~ b ~ c ~ d }"),  # every way to write a space
        (r"\text{log}", r"\text { l o g }"),  # a word, not the operator
        (r"\mbox{ab}", "a b"),  # CROHME's wrappers still unwrap
    ],
)
def test_text_in_formulas_keeps_its_characters(latex, tokens):
    got = normalize_tokens(latex, canonical=False)
    assert got == _t(tokens)
    assert normalize_tokens(detokenize(got), canonical=False) == got
    assert normalize_tokens(detokenize(got, compact=True), canonical=False) == got
    assert normalize_prediction(got) == got and is_valid(got)


def test_empty_text_reads_back_but_is_no_caption():
    # LaTeX accepts an empty \text{}; the caption conventions refuse empty arguments.
    got = normalize_tokens(r"\text{}", canonical=False)
    assert got == _t(r"\text { }")
    assert normalize_prediction(got) == got and not is_valid(got)


def test_text_in_formulas_compacts_to_latex_that_renders_the_words():
    tokens = normalize_tokens(r"\text{if }x>0")
    assert detokenize(tokens, compact=True) == r"\text{if~}x>0"
    assert tokenize(r"\text{if }x") == [r"\text", "{", "i", "f", "~", "}", "x"]
    assert tokenize(r"\textit{if }x") == [r"\textit", "{", "i", "f", "}", "x"]  # not \text
    assert repair(_t(r"\text { i f } {")) == _t(r"\text { i f }")


def test_detokenize_round_trip():
    caption = _t(r"\frac { \sqrt [ 3 ] { x } } { 2 } + \sin x ^ { 2 } = \{ a \} \ldots")
    assert detokenize(caption) == " ".join(caption)
    assert tokenize(detokenize(caption)) == caption
    compact = detokenize(caption, compact=True)
    assert compact.startswith(r"\frac{\sqrt[3]{x}}{2}+\sin x^{2}")
    assert tokenize(compact) == caption


@pytest.mark.parametrize(
    "raw, caption",
    [
        (
            r"$\frac { { p - { \mbox { e } + k } } } { \left ( \sigma \right ) }$",
            r"\frac { p - e + k } { ( \sigma ) }",
        ),
        (r"$a \lt b \gt c$", "a < b > c"),
        (r"$M\ltN$", "M < N"),
        (r"$x{\times}y$", r"x \times y"),
        (r"$1+\ldots+n$", r"1 + \ldots + n"),
        (r"$\sum\limits_{i=1}^{n} i$", r"\sum _ { i = 1 } ^ { n } i"),
        (r"$\lim\limits_{x \to 0} x$", r"\lim _ { x \rightarrow 0 } x"),
        (r"$\int\limits_{a}^{b} f dx$", r"\int \limits _ { a } ^ { b } f d x"),
        (r"$\int\limits f$", r"\int f"),  # \limits without limits changes nothing
        (r"$x^2_k$", r"x _ { k } ^ { 2 }"),
        (r"$x^\frac12$", r"x ^ { \frac { 1 } { 2 } }"),
        (r"$\sqrt[3]{2}\sqrt2$", r"\sqrt [ 3 ] { 2 } \sqrt { 2 }"),
        (r"$\dfrac{a}{b}$", r"\frac { a } { b }"),
        (r"$\mathrm{Pa}\!\;\,\ \quad x$", "P a x"),
        (r"$\left. f \right| \Bigg( x \Bigg) \left\{ y \right\}$", r"f | ( x ) \{ y \}"),
        (r"$\lbrack a \rbrack \le b \ge c \ne d$", r"[ a ] \leq b \geq c \neq d"),
        (r"$ | x \parallel y | $", "| x | | y |"),
        (r"$2 l o g ( x ) + l i m x$", r"2 \log ( x ) + \lim x"),
        (r"$b l o g$", "b l o g"),  # a letter run inside a word is not an operator
        (r"$ \sqrt {x ^ {p}} ABOVE {q} $", r"\sqrt [ q ] { x ^ { p } }"),
        (r"$ 1, 000 _ {}, 000 $", "1 , 0 0 0 , 0 0 0"),  # empty scripts render nothing
        ("", ""),
    ],
)
def test_normalize_tokens(raw, caption):
    assert n(raw) == caption


def test_script_order_can_be_kept():
    assert n("$T^{\\mu}_{\\nu}$", canonical=False) == r"T ^ { \mu } _ { \nu }"
    assert n("$T^{\\mu}_{\\nu}$") == r"T _ { \nu } ^ { \mu }"


def test_malformed_raw_never_raises():
    for raw in [
        r"\lim \limits _ {z}} x",
        r"\frac{a",
        r"x^",
        r"}{",
        r"\sqrt[",
        r"^_^",
        r"\left",
        r"{{{{",
        r"\mbox",
        "\\",
    ]:
        assert isinstance(normalize_tokens(raw), list)


def test_normalize_prediction_keeps_captions_and_broken_output():
    caption = _t(r"\int \limits _ { 0 } ^ { \infty } e ^ { - x } d x = \sqrt [ 3 ] { 1 }")
    assert normalize_prediction(caption) == caption
    # Invalid predictions are not repaired into something that could match the truth.
    for broken in ["x ^ { 2", "x ^ { 2 } }", r"\frac { a }", "x ^", r"\sqrt"]:
        tokens = broken.split()
        assert normalize_prediction(tokens) == tokens
    # Token-level spellings are still mapped.
    assert normalize_prediction(_t(r"a \lt b }")) == _t("a < b }")
    # Unknown tokens pass through untouched.
    assert normalize_prediction(["<unk>", r"\foo", "ab"]) == ["<unk>", r"\foo", "ab"]


def test_normalization_keeps_different_expressions_different():
    exprs = [
        "x ^ { 2 }",
        "x _ { 2 }",
        "x 2",
        "( x ) ^ { 2 }",
        r"\frac { 1 } { 2 }",
        "1 / 2",
        r"\sqrt { x }",
        r"\sqrt [ 2 ] { x }",
        r"\int _ { a } ^ { b }",
        r"\int \limits _ { a } ^ { b }",
        r"\ldots",
        r"\cdots",
        "' x",
        r"\prime x",
        r"\sum _ { i }",
        r"\sum i",
        "x ^ { 2 } 3",
        "x ^ { 2 3 }",
        r"\log x",
        "l o g x",
    ]
    normalized = {" ".join(normalize_prediction(e.split())) for e in exprs}
    # Only "l o g x" and "\log x" are the same ink.
    assert len(normalized) == len(exprs) - 1


@pytest.mark.parametrize(
    "tokens",
    [
        "x",
        r"\frac { a } { b }",
        r"\sqrt [ 3 ] { x }",
        "x _ { 1 } ^ { 2 }",
        "x ^ { 2 } _ { 1 }",
        r"\int \limits _ { 0 } ^ { 1 }",
        r"\{ x \}",
        "[ x )",
        "{ }",
        "( x ) ^ { 2 }",
        "<unk> ^ { 2 }",
    ],
)
def test_valid(tokens):
    assert is_valid(tokens.split()), validate(tokens.split())


@pytest.mark.parametrize(
    "tokens, reason",
    [
        ("x ^ { 2", "missing }"),
        ("x }", "unmatched }"),
        ("x ^", "without a {group}"),
        ("x ^ 2", "without a {group}"),
        ("x ^ { }", "empty group"),
        ("^ { 2 }", "without a base"),
        ("{ _ { 2 } }", "without a base"),
        (r"\frac { a }", r"\frac without"),
        (r"\frac { a } { }", "empty group"),
        (r"\sqrt x", r"\sqrt without"),
        (r"\sqrt [ 3 { x }", "missing ]"),
        (r"\sqrt [ ] { x }", "empty []"),
        ("x ^ { 1 } ^ { 2 }", "double ^"),
        (r"x \limits _ { 1 }", r"\limits not after"),
        (r"\int \limits x", r"\limits without a script"),
    ],
)
def test_invalid(tokens, reason):
    why = validate(tokens.split())
    assert why is not None and reason in why
    assert not is_valid(tokens.split())


def test_repair_makes_valid():
    assert repair(_t("x ^ { 2")) == _t("x ^ { 2 }")
    assert repair(_t("x } + 1")) == _t("x + 1")
    assert repair(_t(r"\frac { a }")) == ["a"]
    assert repair(_t("x ^ { 1 } ^ { 2 }")) == _t("x ^ { 1 }")
    assert repair(_t("^ { 2 } x")) == _t("2 x")
    good = _t(r"\frac { a } { b } ^ { 2 } _ { 1 }")
    assert repair(good) == good  # valid input is left as it is, script order included


def test_fuzz_never_crashes_and_repair_is_valid():
    alphabet = [
        "x",
        "1",
        "{",
        "}",
        "^",
        "_",
        r"\frac",
        r"\sqrt",
        "[",
        "]",
        r"\limits",
        r"\int",
        r"\sum",
        r"\left",
        "(",
        r"\mbox",
        "<unk>",
        r"\lt",
        "$",
        "\\",
        r"\{",
    ]
    rng = np.random.default_rng(0)
    for _ in range(1500):
        tokens = list(rng.choice(alphabet, size=int(rng.integers(0, 14))))
        fixed = repair(tokens)
        assert is_valid(fixed), (tokens, fixed, validate(fixed))
        assert repair(fixed) == fixed
        normalize_prediction(tokens)
        normalize_tokens(" ".join(tokens))
        if is_valid(tokens):
            # Normalizing valid tokens keeps them valid.
            assert is_valid(normalize_prediction(tokens)), tokens


def _w(text: str) -> str:
    return " ".join(normalize_well_formed(text.split()))


def test_closing_bracket_is_an_argument_outside_a_root_index():
    # LaTeX: ] ends a \sqrt's [index] (outside braces there); elsewhere it is a symbol
    assert _w("x ^ ] +") == "x ^ { ] } +"
    assert _w(r"\sqrt [ x ^ ] { y }") == r"\sqrt [ x ^ ] { y }"  # malformed: kept as written
    [root] = parse(_t(r"\sqrt [ { x ^ ] } ] { y }"))
    assert [t.tok for t in root.index[0].children[0].script("^")] == ["]"]
    assert repair(_t(r"\sqrt [ 3 ^ ] { x }")) == _t(r"\sqrt [ 3 ] { x }")


def test_limits_is_no_argument_and_needs_a_base():
    for tokens in [r"x ^ \limits", r"\frac \limits { a } { b }", r"\limits _ { 1 } x"]:
        assert _w(tokens) == tokens  # LaTeX: "Limit controls must follow a math operator"
        with pytest.raises(Malformed, match="limits|argument"):
            parse(tokens.split())
    assert _w(r"\int \limits _ 0 ^ 1") == r"\int \limits _ { 0 } ^ { 1 }"
    assert repair(_t(r"\int ^ \limits _ { 0 }")) == _t(r"\int \limits _ { 0 }")


def test_font_wrappers_are_groups_of_their_argument():
    assert n(r"$\mathrm{d}x + \operatorname{log} y + \mbox{e}^{2}$") == r"d x + \log y + e ^ { 2 }"
    [group] = parse(_t(r"\mathrm { a b }"))
    assert (group.kind, group.tok, [c.tok for c in group.children]) == (
        "group",
        r"\mathrm",
        ["a", "b"],
    )
    assert _w(r"x ^ \mathrm a") == "x ^ { a }"
    assert _w(r"x + \mathrm") == r"x + \mathrm"  # LaTeX: the argument is missing
    assert "without a {group}" in validate(_t(r"\mathrm x"))  # captions brace every argument


def test_empty_arguments_are_latex_but_not_caption_form():
    assert _w("x ^ { } + 1") == "x + 1"  # an empty script renders nothing
    assert _w(r"\frac { } { b }") == r"\frac { } { b }"
    assert _w(r"\sqrt [ ] { x }") == r"\sqrt [ ] { x }"
    assert "empty group" in validate(_t(r"\frac { } { b }"))
    assert "empty []" in validate(_t(r"\sqrt [ ] { x }"))
    assert repair(_t(r"x ^ { } + \sqrt [ ] { x }")) == _t(r"x + \sqrt { x }")


def test_one_subscript_and_one_superscript_in_either_order():
    assert _w("x ^ b _ a") == "x _ { a } ^ { b }"
    assert " ".join(normalize_well_formed(_t("x ^ b _ a"), canonical=False)) == "x ^ { b } _ { a }"
    [node] = parse(_t("x ^ { b } _ { a }"))
    assert [t for t, _ in node.scripts] == ["^", "_"] and node.script("_")[0].tok == "a"
    for double in ["x ^ 2 ^ 3", "x _ { 1 } ^ { 2 } _ { 3 }"]:  # LaTeX: "Double subscript"
        assert _w(double) == double
        assert normalize_prediction(double.split()) == double.split()
    assert normalize_tokens("x^{1}^{2}") == _t("x ^ { 1 } ^ { 2 }")  # raw truth: kept as written


def test_diff_class_labels():
    assert diff_class(_t("1"), _t("1")) == "equal"
    assert "script order" in diff_class(_t("x _ { 1 } ^ { 2 }"), _t("x ^ { 2 } _ { 1 }"))
    assert "number" in diff_class(_t("1 . 0"), ["1"], raw="1.0")
    assert "unbalanced" in diff_class(["x"], ["y"], raw="x}")
    assert diff_class([r"\Pi"], [r"\pi"]) == r"caption spells \Pi as \pi"
    report = check_normalization([("a", "$x^2$", _t("x ^ { 2 }")), ("b", r"$\Pi$", [r"\pi"])])
    assert (report.total, report.exact) == (2, 1) and report.percent == 50.0
    assert report.examples[r"caption spells \Pi as \pi"][0][0] == "b"


# --- real CROHME data, when present -----------------------------------------------------------


def _cached(name: str):
    import pickle

    path = cache_path(name)
    if not path.exists():
        pytest.skip(f"{path} not prepared (hmer data prepare)")
    with open(path, "rb") as fh:
        return pickle.load(fh)


@pytest.mark.parametrize("name, minimum", [("train", 99.0), ("2014", 98.5)])
def test_normalization_reproduces_captions(name, minimum):
    split = _cached(name)
    report = check_normalization((s.id, s.truth, s.tokens) for s in split.samples)
    assert report.total >= 900
    assert report.percent >= minimum, report.classes.most_common(5)


@pytest.mark.parametrize("name", ["train", "2014"])
def test_captions_round_trip_valid_and_stable(name):
    from hmer.data.dataset import caption_tokens, default_data_dir

    path = default_data_dir() / f"{name}_caption.txt"
    if not path.exists():
        pytest.skip("CROHME captions not available")
    captions = list(read_captions(path).values())
    distinct = set()
    for tokens in captions:
        assert tokenize(detokenize(tokens)) == tokens
        assert tokenize(detokenize(tokens, compact=True)) == tokens
        # a user's caption file is read as written: a CROHME caption line stays its tokens
        assert caption_tokens(" ".join(tokens)) == tokens
        assert is_valid(tokens), (tokens, validate(tokens))
        assert normalize_prediction(tokens, canonical=False) == tokens
        distinct.add(" ".join(tokens))
    # Normalization merges no two different captions.
    assert len({" ".join(normalize_prediction(t.split())) for t in distinct}) == len(distinct)


def test_hostile_nesting_does_not_recurse_forever():
    deep = ["{"] * 3000 + ["x"] + ["}"] * 3000
    roots = [r"\sqrt"] * 3000 + ["x"]
    for tokens in (deep, roots, ["x"] + ["^", "{"] * 2000):
        assert isinstance(normalize_tokens(" ".join(tokens)), list)
        assert isinstance(normalize_prediction(tokens), list)
        assert not is_valid(tokens)
        assert is_valid(repair(tokens))
    assert "nesting" in validate(deep)
    assert normalize_tokens("{" * 50 + "x" + "}" * 50) == ["x"]  # deep but sane still works
