"""LaTeX tokens as the CROHME captions write them: tokenize, normalize, check and repair.

The captions of the published systems (WAP, BTTR, CoMER...) follow a few conventions: one token per
character or command, every sub/superscript and command argument braced, subscript before
superscript, no bare groups, no spacing or font commands, ``<`` rather than ``\\lt``, ``\\limits``
kept only on ``\\int``. :func:`normalize_tokens` maps a raw InkML truth to those conventions;
:func:`normalize_prediction` applies the same mapping to model output. Both only rewrite spellings
that render identically, so they never turn a wrong answer into a right one. The structure comes
from the grammar's one parser (:mod:`hmer.data.latex_tree`): normalization and :func:`repair`
write its tree back as caption tokens, :func:`validate` is its caption mode.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hmer.data.latex_tree import ARITY, STRUCTURE, TEXT, Malformed, Node, TooDeep, parse

# Spellings with one caption equivalent (several tokens when a list).
ALIASES: dict[str, list[str]] = {
    r"\lt": ["<"],
    r"\gt": [">"],
    r"\le": [r"\leq"],
    r"\leqslant": [r"\leq"],
    r"\ge": [r"\geq"],
    r"\geqslant": [r"\geq"],
    r"\ne": [r"\neq"],
    r"\to": [r"\rightarrow"],
    r"\lbrack": ["["],
    r"\rbrack": ["]"],
    r"\lbrace": [r"\{"],
    r"\rbrace": [r"\}"],
    r"\vert": ["|"],
    r"\mid": ["|"],
    r"\|": ["|", "|"],
    r"\parallel": ["|", "|"],  # written as two bars; the captions spell it so
    r"\dots": [r"\ldots"],
    r"\dotsc": [r"\ldots"],
    r"\dotsb": [r"\cdots"],
    r"\cdotp": [r"\cdot"],
    r"\centerdot": [r"\cdot"],
    r"\ast": ["*"],
    r"\colon": [":"],
    r"\lparen": ["("],
    r"\rparen": [")"],
}

# Commands that render nothing visible: spacing, size and style switches.
DROPPED = frozenset(
    r"""\! \, \: \; \> \quad \qquad \displaystyle \textstyle \scriptstyle \nolimits
    \left \right \big \Big \bigg \Bigg \bigl \bigr \Bigl \Bigr \biggl \biggr \Biggl \Biggr
    \middle \rm \it \mathstrut \strut \relax""".split()  # noqa: SIM905
) | {"\\ ", "\\\n", "\\\t"}  # backslash + space, newline or tab: a space

# Words in a formula (\text{if }x>0) keep their command: its argument is one token per
# character, a space written TEXT_SPACE (LaTeX's unbreakable space). CROHME never uses \text.
TEXT_SPACE = "~"

# Spellings of \frac.
FRACS = {r"\dfrac": r"\frac", r"\tfrac": r"\frac"}

_RAW_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\\$|\S", re.S)
_ONE_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S", re.S)
_TEXT_ARG = re.compile(r"\\text\s*\{([^{}]*)\}")
_TEXT_PIECE = re.compile(r"\\[A-Za-z]+|\\.|\s+|.", re.S)


def tokenize(latex: str) -> list[str]:
    """Split LaTeX into tokens: ``\\command``, ``\\`` plus one symbol, or one character.

    Letters and digits become one token each, as in the captions; so do the characters of a
    ``\\text{...}`` argument, where a space is ``~`` (:func:`_text_tokens`). Never raises.
    """
    latex = latex or ""
    out: list[str] = []
    pos = 0
    for m in _TEXT_ARG.finditer(latex):
        out += _RAW_TOKEN.findall(latex[pos : m.start()])
        out += [TEXT, "{", *_text_tokens(m.group(1)), "}"]
        pos = m.end()
    return out + _RAW_TOKEN.findall(latex[pos:])


def _text_tokens(content: str) -> list[str]:
    """The tokens of a ``\\text`` argument: one per character, ``~`` for a space (a run of
    white space, ``\\ `` or ``~``). An argument in token form, single tokens between single
    spaces as :func:`detokenize` writes ``\\text { i f ~ }``, reads back as those tokens."""
    inner = content[1:-1]
    tokens = inner.split(" ") if inner else []
    if content[:1] == content[-1:] == " " and all(_ONE_TOKEN.fullmatch(t) for t in tokens):
        return tokens
    pieces = _TEXT_PIECE.findall(content)
    return [TEXT_SPACE if p.isspace() or p in ("\\ ", "~") else p for p in pieces]


def detokenize(tokens: Iterable[str], compact: bool = False) -> str:
    """Join tokens back into LaTeX.

    The default is the captions' space-separated form (``tokenize`` inverts it). With ``compact``
    spaces are kept only where LaTeX needs them (after a letter command before a letter).
    """
    tokens = [str(t) for t in tokens]
    if not compact:
        return " ".join(tokens)
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i and re.fullmatch(r"\\[A-Za-z]+", tokens[i - 1]) and re.match(r"[A-Za-z]", tok):
            out.append(" ")
        out.append(tok)
    return "".join(out)


def _split_fused(tok: str) -> list[str]:
    # Some raw truths glue \lt or \gt to the next letter ("M\ltN"). Longer commands are left
    # alone: \neg, \inf or \sinh are real commands, not \ne g, \in f or \sin h.
    m = re.fullmatch(r"(\\[lg]t)([A-Za-z])", tok)
    return [m.group(1), m.group(2)] if m else [tok]


def _map_tokens(tokens: Iterable[str]) -> list[str]:
    """Token-level rewriting: aliases, dropped commands, ``\\left.``-style null delimiters."""
    out: list[str] = []
    tokens = list(tokens)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == "$":
            continue
        if tok in DROPPED:
            # \left. and \right. are invisible delimiters: drop the dot with the command.
            if tok in (r"\left", r"\right", r"\middle") and i < len(tokens) and tokens[i] == ".":
                i += 1
            continue
        if tok in ALIASES:
            out.extend(ALIASES[tok])
        elif tok in FRACS:
            out.append(FRACS[tok])
        else:
            out.append(tok)
    return out


def _base_token(node: Node | None) -> str | None:
    while node is not None and node.kind == "group" and len(node.children) == 1:
        node = node.children[0]
    return node.tok if node is not None and node.kind == "atom" else None


@dataclass
class _Style:
    canonical: bool = False  # subscript before superscript
    repair: bool = False  # drop what cannot be written well-formed instead of keeping it


def _emit(nodes: list[Node], out: list[str], style: _Style) -> None:
    for node in nodes:
        if node.kind == "atom":
            out.append(node.tok)
        elif node.kind == "group":  # bare braces and font wrappers render nothing
            _emit(node.children, out, style)
        elif node.kind == "scripts":
            _emit_script(node, out, style)
        else:
            _emit_cmd(node, out, style)


def _emitted(nodes: list[Node] | None, style: _Style) -> list[str]:
    out: list[str] = []
    _emit(nodes or [], out, style)
    return out


def _emit_cmd(node: Node, out: list[str], style: _Style) -> None:
    args = [_emitted(arg, style) for arg in node.args]
    opt = None if node.index is None else _emitted(node.index, style)
    if style.repair:
        if len(args) < ARITY[node.tok] or not all(args):  # keep the content, drop the command
            out.extend(opt or [])
            for arg in args:
                out.extend(arg)
            return
        opt = opt or None  # an empty [] index is dropped
    out.append(node.tok)
    if opt is not None:
        out.extend(["[", *opt, "]"])
    for arg in args:
        out.extend(["{", *arg, "}"])


def _emit_script(node: Node, out: list[str], style: _Style) -> None:
    base = _emitted([node.base], style) if node.base is not None else []
    # An empty script renders nothing: drop it.
    scripts = [(t, a) for t, a in ((t, _emitted(a, style)) for t, a in node.scripts) if a]
    if style.canonical and [t for t, _ in scripts] == ["^", "_"]:
        scripts.reverse()
    if style.repair and not base:  # scripts without base: keep their content inline
        for _, arg in scripts:
            out.extend(arg)
        return
    out.extend(base)
    # In the captions \limits survives only on the integral: \sum and \lim place their limits
    # above and below anyway. Without scripts it changes nothing.
    if node.limits and scripts and _base_token(node.base) == r"\int":
        out.append(r"\limits")
    seen: set[str] = set()
    for tok, arg in scripts:
        if style.repair and tok in seen:  # a double script cannot be written: drop it
            continue
        seen.add(tok)
        out.extend([tok, "{", *arg, "}"])


LETTER_WORDS = {"log": r"\log", "lim": r"\lim"}


def _is_letter(tok: str) -> bool:
    return len(tok) == 1 and tok.isascii() and tok.isalpha()


def _words(tokens: list[str]) -> list[str]:
    # Operator names typed as letters ("l o g") are the same ink as \log, and the captions use the
    # command ("l o g x" is \log x). A run after a letter is left alone: "b l o g"; and so are
    # the words of \text{...}.
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        if tokens[i] == TEXT and tokens[i + 1 : i + 2] == ["{"]:
            end = tokens.index("}", i) + 1 if "}" in tokens[i:] else n
            out.extend(tokens[i:end])
            i = end
            continue
        for word, cmd in LETTER_WORDS.items():
            k = len(word)
            if tokens[i : i + k] == list(word) and not (i > 0 and _is_letter(tokens[i - 1])):
                out.append(cmd)
                i += k
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


def _structure(tokens: list[str], strict: bool, style: _Style) -> list[str]:
    nodes = parse(_words(tokens), strict)
    out: list[str] = []
    _emit(nodes, out, style)
    return out


def _prepare(tokens: Iterable[str]) -> list[str]:
    return _map_tokens(t for tok in tokens for t in _split_fused(str(tok)))


def normalize_tokens(raw: str, canonical: bool = True) -> list[str]:
    """Map a raw LaTeX truth (e.g. an InkML annotation) to caption tokens.

    Sub/superscripts keep their written order, as in the captions, unless ``canonical`` (then the
    subscript comes first). Malformed input (stray braces, missing arguments) never raises.
    """
    mapped = _prepare(tokenize(raw))
    try:
        return _structure(mapped, strict=False, style=_Style(canonical))
    except TooDeep:
        return _words(mapped)


def normalize_prediction(tokens: Sequence[str], canonical: bool = True) -> list[str]:
    """Normalize model output (or caption tokens) by the rules of :func:`normalize_tokens`.

    Caption tokens come back unchanged, except that ``canonical`` puts a subscript before its
    superscript (36 training captions have the other order). Structurally broken sequences
    (unbalanced braces, a ``^`` without argument...) only get the token-level rewriting:
    repairing them here could make a wrong prediction score as right.
    """
    mapped = _prepare(tokens)
    try:
        return _structure(mapped, strict=True, style=_Style(canonical))
    except Malformed:
        return _words(mapped)


def normalize_well_formed(tokens: Sequence[str], canonical: bool = True) -> list[str]:
    """Like :func:`normalize_prediction` for well-formed sequences; others come back as written.

    Malformed means what LaTeX itself rejects (unbalanced braces, a script or ``\\frac`` without
    its argument, a double superscript: see :mod:`hmer.data.latex_tree`); ``x^2`` is well-formed
    and becomes ``x ^ { 2 }``. This is the ``equivalent`` scoring convention: the edit distance
    of a malformed prediction is never changed.
    """
    tokens = [str(t) for t in tokens]
    try:
        return _structure(_prepare(tokens), strict=True, style=_Style(canonical))
    except Malformed:
        return tokens


def validate(tokens: Sequence[str]) -> str | None:
    r"""Why ``tokens`` are not well-formed caption LaTeX, or None when they are.

    Well-formed: balanced braces; ``^``/``_`` after a base, with a non-empty braced argument, at
    most one of each per base; ``\frac`` followed by two non-empty groups; ``\sqrt`` by an
    optional non-empty ``[...]`` and a non-empty group; ``\limits`` right after ``\int``,
    ``\sum`` or ``\lim`` and before a script; a font wrapper (``\mathrm``) with a non-empty
    group too. Unknown tokens count as plain symbols.
    """
    try:
        parse(tokens, caption=True)
    except Malformed as exc:
        return str(exc)
    return None


def is_valid(tokens: Sequence[str]) -> bool:
    """True when ``tokens`` are well-formed caption LaTeX (see :func:`validate`)."""
    return validate(tokens) is None


def repair(tokens: Sequence[str]) -> list[str]:
    r"""Make ``tokens`` well-formed with small edits, for display (never used when scoring).

    Drops stray ``}``, empty or base-less scripts and second scripts of a kind, closes open groups,
    and unwraps a ``\frac``/``\sqrt`` whose arguments are missing.
    """
    mapped = _prepare(tokens)
    try:
        return _structure(mapped, strict=False, style=_Style(repair=True))
    except TooDeep:  # flatten: without structure tokens nothing can be malformed
        return [t for t in _words(mapped) if t not in STRUCTURE]


# ---------------------------------------------------------------------------------------------
# Measuring normalization against reference captions


@dataclass
class NormalizationReport:
    """How many raw truths normalize to their caption, and how the others differ."""

    total: int
    exact: int
    classes: Counter
    examples: dict[str, list[tuple[str, str, str, str]]]  # class -> (id, raw, got, caption)

    @property
    def percent(self) -> float:
        return 100.0 * self.exact / self.total if self.total else 0.0


_NUMERIC = set("0123456789.,")


def _first_edit(got: Sequence[str], want: Sequence[str]) -> tuple[str, list[str], list[str]]:
    import difflib

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        a=list(got), b=list(want), autojunk=False
    ).get_opcodes():
        if tag != "equal":
            return tag, list(got[i1:i2]), list(want[j1:j2])
    return "equal", [], []


def _short(tokens: list[str]) -> str:
    return " ".join(tokens[:4]) + (" ..." if len(tokens) > 4 else "")


def diff_class(got: Sequence[str], want: Sequence[str], raw: str = "") -> str:
    """A short label for why normalized ``got`` differs from the caption ``want``."""
    got, want = list(got), list(want)
    if got == want:
        return "equal"
    if normalize_prediction(want) == normalize_prediction(got):
        return "script order: caption keeps ^ before _"
    raw_tokens = tokenize(raw)
    if raw_tokens.count("{") != raw_tokens.count("}"):
        return "raw truth has unbalanced braces"
    if re.search(r"[_^]\s*\{\s*\}", raw):
        return "raw truth has an empty script: caption differs"
    tag, a, b = _first_edit(got, want)
    if set(a + b) <= _NUMERIC and re.search(r"\d", raw):
        return "caption rewrites a number (1.0 -> 1, 02 -> 2, 3,1415 -> 31,415)"
    if tag == "replace":
        return f"caption spells {_short(a)} as {_short(b)}"
    if tag == "delete":
        return f"caption drops {_short(a)}"
    return f"caption adds {_short(b)}"


def check_normalization(
    pairs: Iterable[tuple[str, str, Sequence[str]]], max_examples: int = 3, canonical: bool = True
) -> NormalizationReport:
    """Normalize each (id, raw truth, caption tokens) and count exact matches and diff classes."""
    total = exact = 0
    classes: Counter = Counter()
    examples: dict[str, list[tuple[str, str, str, str]]] = {}
    for key, raw, caption in pairs:
        total += 1
        got = normalize_tokens(raw, canonical)
        if got == list(caption):
            exact += 1
            continue
        label = diff_class(got, caption, raw)
        classes[label] += 1
        ex = examples.setdefault(label, [])
        if len(ex) < max_examples:
            ex.append((key, raw, " ".join(got), " ".join(caption)))
    return NormalizationReport(total, exact, classes, examples)


def format_report(name: str, report: NormalizationReport, examples: bool = True) -> str:
    """Text summary of a :class:`NormalizationReport`."""
    lines = [
        f"{name}: {report.exact}/{report.total} raw truths normalize to their caption "
        f"({report.percent:.2f}%)"
    ]
    for label, count in report.classes.most_common():
        lines.append(f"  {count:5d}  {label}")
        if examples:
            for key, raw, got, want in report.examples.get(label, []):
                lines.append(f"           {key}: {raw}")
                lines.append(f"             normalized: {got}")
                lines.append(f"             caption:    {want}")
    return "\n".join(lines)
