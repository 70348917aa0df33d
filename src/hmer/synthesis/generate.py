"""Synthetic handwritten formulas: caption tokens -> pen traces made of real glyphs.

:func:`synthesize` lays a formula out (:mod:`hmer.synthesis.layout`), draws a random glyph of
each symbol from the bank (so one formula mixes many writers), fits its strokes into the symbol's
box (stretching fraction bars, radicals and tall brackets) and jitters each symbol a little. The
traces are plain (n, 2) float32 arrays with y down, like CROHME ink, so the same renderer,
augmentation and stroke features apply. :func:`im2latex_to_caption` brings printed arXiv
formulas to the CROHME caption conventions, or rejects them with a reason.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from hmer.data.dataset import Sample
from hmer.data.latex import is_valid, normalize_tokens
from hmer.synthesis.glyphs import BAR, Glyph, GlyphBank
from hmer.synthesis.layout import STRUCTURE, LayoutError, Placed, layout

UNIT = 40.0  # ink units per x-height in the output (CROHME tablets give tens to hundreds)
MAX_TOKENS = 60


class SkipFormula(ValueError):
    """A formula that cannot be synthesized; ``str(exc)`` is a short reason for counting."""


@dataclass
class Synthesized:
    """Pen traces of one formula and its symbol segmentation (label, trace indices)."""

    tokens: list[str]
    traces: list[np.ndarray]
    symbols: list[tuple[str, list[int]]]


# -- fitting glyph strokes into boxes ---------------------------------------------------------


def _scales(g: Glyph, w: float, h: float) -> tuple[float, float]:
    sx, sy = w / max(g.width, 1e-6), h / max(g.height, 1e-6)
    # a thin glyph (|, -) has a nearly zero side: scaling it up would blow up the pen's wobble
    return min(sx, 2.0 * sy), min(sy, 2.0 * sx)


def fit(g: Glyph, p: Placed) -> list[np.ndarray]:
    """The strokes of ``g`` scaled into the box of ``p`` and centred there."""
    sx, sy = _scales(g, p.w, p.h)
    off = np.array([p.x + (p.w - g.width * sx) / 2, p.y + (p.h - g.height * sy) / 2], np.float32)
    scale = np.array([sx, sy], np.float32)
    return [s * scale + off for s in g.strokes]


def fit_radical(g: Glyph, p: Placed) -> list[np.ndarray]:
    """A radical stretched over its box: the tick keeps its shape, the overline takes the rest."""
    pts = np.concatenate(g.strokes)
    top = pts[:, 1].min()
    split = float(pts[pts[:, 1] <= top + 0.2 * g.height, 0].min())  # where the overline starts
    sy = p.h / max(g.height, 1e-6)
    if not 0.08 * g.width < split < 0.9 * g.width or p.hook >= p.w:  # no corner found: fill the box
        scale = np.array([p.w / max(g.width, 1e-6), sy], np.float32)
        return [s * scale + np.array([p.x, p.y], np.float32) for s in g.strokes]
    k1, k2 = p.hook / split, (p.w - p.hook) / (g.width - split)
    out = []
    for s in g.strokes:
        x = np.where(s[:, 0] < split, s[:, 0] * k1, p.hook + (s[:, 0] - split) * k2)
        out.append(np.stack([x + p.x, s[:, 1] * sy + p.y], 1).astype(np.float32))
    return out


def _jitter(strokes: list[np.ndarray], p: Placed, rng: np.random.Generator) -> list[np.ndarray]:
    """A symbol's own small rotation, slant and offset (writers are never exactly on the grid)."""
    long = p.kind in ("bar", "sqrt") or p.w > 3 * max(p.h, 0.3)
    a = math.radians(rng.normal(0, 1.0 if long else 3.0))
    sh = rng.normal(0, 0.02 if long else 0.08)
    mat = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
    mat = mat @ np.array([[1.0, sh], [0.0, 1.0]], np.float32)
    centre = np.array([p.x + p.w / 2, p.y + p.h / 2], np.float32)
    shift = rng.normal(0, 0.03, 2).astype(np.float32)
    return [(s - centre) @ mat.T + centre + shift for s in strokes]


def compose(placed: Sequence[Placed], bank: GlyphBank, rng: np.random.Generator) -> Synthesized:
    """Ink for laid-out symbols (in x-heights) scaled to :data:`UNIT` ink units per x-height."""
    traces: list[np.ndarray] = []
    symbols: list[tuple[str, list[int]]] = []
    for p in placed:
        if p.kind == "bar":
            token = BAR if bank.has(BAR) else "-"
            g = bank.pick(token, rng, aspect=p.w / max(p.h, 1e-3))
            strokes = fit(g, p)
            label = "-"
        elif p.kind == "sqrt":
            g = bank.pick(r"\sqrt", rng, aspect=p.w / max(p.h, 1e-3), k=16)
            strokes, label = fit_radical(g, p), r"\sqrt"
        else:
            g = p.glyph if p.glyph is not None else bank.pick(p.token, rng)
            strokes, label = fit(g, p), p.token
        strokes = _jitter(strokes, p, rng)
        symbols.append((label, list(range(len(traces), len(traces) + len(strokes)))))
        traces.extend(strokes)
    if not traces:
        raise SkipFormula("nothing to draw")
    lo = np.concatenate(traces).min(axis=0)
    traces = [((t - lo) * UNIT).astype(np.float32) for t in traces]
    return Synthesized([], traces, symbols)


def missing_glyphs(tokens: Sequence[str], bank: GlyphBank) -> list[str]:
    """Symbol tokens of ``tokens`` the bank has no glyph for."""
    need = [t for t in tokens if t not in STRUCTURE]
    return sorted({t for t in need if not bank.has(t)})


def synthesize(tokens: Sequence[str], bank: GlyphBank, rng: np.random.Generator) -> Synthesized:
    """Handwritten ink for caption ``tokens``; raises :class:`SkipFormula` saying why not."""
    tokens = list(tokens)
    missing = missing_glyphs(tokens, bank)
    if missing:
        raise SkipFormula(f"no glyph for {missing[0]}")
    try:
        placed = layout(tokens, bank, rng)
    except LayoutError as exc:
        raise SkipFormula(f"layout: {str(exc).split(' at ')[0]}") from exc
    if all(p.kind == "bar" for p in placed):  # fraction bars alone are no formula
        raise SkipFormula("nothing to draw")
    out = compose(placed, bank, rng)
    out.tokens = tokens
    return out


# -- formula sources ----------------------------------------------------------------------------

# Wrappers and switches of printed LaTeX that a hand writes as plain letters.
_AS_MATHRM = {
    r"\mathbf",
    r"\boldsymbol",
    r"\bm",
    r"\mathsf",
    r"\mathtt",
    r"\textbf",
    r"\textsf",
    r"\operatorname*",
}
_DROP = {"~", r"\bf", r"\sf", r"\tt", r"\boldmath", r"\nonumber", r"\mathstrut", r"\/"}
_SPACE_CMDS = {r"\hspace", r"\vspace", r"\hspace*", r"\vspace*", r"\kern", r"\mskip"}
_DELIM = re.compile(r"\\(?:left|right|middle|[bB]igg?[lr]?)([^A-Za-z\\]|\\[^A-Za-z]|\\[A-Za-z]+)")
_TEXT = {r"\mathrm", r"\text", r"\mbox", r"\textrm", r"\textit", r"\mathit", r"\hbox"}
_TEXT |= {r"\operatorname"} | _AS_MATHRM
_OPERATOR_WORDS = {"sin", "cos", "tan", "log", "lim"}
_WORDS = {("s", "i", "n"): r"\sin", ("c", "o", "s"): r"\cos", ("t", "a", "n"): r"\tan"}


def _drop_group(tokens: list[str], i: int) -> int:
    """Index after the braced group starting at ``i`` (``i`` itself when there is none)."""
    if i >= len(tokens) or tokens[i] != "{":
        return i
    depth = 0
    for j in range(i, len(tokens)):
        depth += {"{": 1, "}": -1}.get(tokens[j], 0)
        if depth == 0:
            return j + 1
    return len(tokens)


def _premap(tokens: list[str]) -> tuple[list[str], str]:
    """Printed-LaTeX-only spellings -> what the caption normalizer reads; or ([], reason)."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok in _TEXT:
            # words in roman type ("for", "exp", "perms") are prose or unknown operators
            end = _drop_group(tokens, i)
            word = "".join(t for t in tokens[i:end] if len(t) == 1 and t.isalpha())
            if len(word) > 1 and word not in _OPERATOR_WORDS:
                return [], "text or operator name"
        if tok in _SPACE_CMDS:
            i = _drop_group(tokens, i)
        elif tok in _DROP:
            continue
        elif tok in _AS_MATHRM:
            out.append(r"\mathrm")
        elif tok == r"\sp":
            out.append("^")
        elif tok == r"\sb":
            out.append("_")
        elif m := _DELIM.fullmatch(tok):  # \left( -> (, \right. -> nothing
            if m.group(1) != ".":
                out.append(m.group(1))
        else:
            out.append(tok)
    return out, ""


def _letter_words(tokens: list[str]) -> list[str]:
    """``s i n`` -> ``\\sin`` (and cos, tan) unless a letter comes right before."""

    def letter(k: int) -> bool:
        return 0 <= k < len(tokens) and len(tokens[k]) == 1 and tokens[k].isalpha()

    out: list[str] = []
    i = 0
    while i < len(tokens):
        word = _WORDS.get(tuple(tokens[i : i + 3]))
        if word and not letter(i - 1):  # as the captions: "s i n x" is \sin x
            out.append(word)
            i += 3
        else:
            out.append(tokens[i])
            i += 1
    return out


# With substitution: symbols outside the vocabulary become vocabulary symbols of the same kind.
_ACCENTS = set(
    r"""\hat \bar \tilde \vec \dot \ddot \widetilde \widehat \overline \underline \check
    \breve \acute \grave""".split()  # noqa: SIM905
)
_FONTS = {r"\mathcal", r"\mathbb", r"\mathfrak", r"\mathscr", r"\cal", r"\Bbb"}
_GREEK_LOWER = set(
    r"""\delta \epsilon \varepsilon \zeta \eta \vartheta \iota \kappa \nu \xi \rho \varrho
    \tau \upsilon \varphi \chi \psi \omega \ell""".split()  # noqa: SIM905
)
_GREEK_UPPER = set(r"\Gamma \Theta \Lambda \Xi \Pi \Sigma \Upsilon \Phi \Psi \Omega".split())  # noqa: SIM905


_GREEK_CROHME = set(r"\alpha \beta \gamma \theta \lambda \mu \pi \sigma \phi".split())  # noqa: SIM905


def _substitute(tokens: list[str], vocab: set[str], line: str) -> list[str]:
    """Swap symbols the vocabulary lacks for ones it has (each one consistently in a formula)."""
    rng = np.random.default_rng(zlib.crc32(line.encode("utf-8")))
    lower = sorted(t for t in vocab if len(t) == 1 and t.islower())
    upper = sorted(t for t in vocab if len(t) == 1 and t.isupper())
    greek = sorted(vocab & _GREEK_CROHME)
    swap: dict[str, str] = {}
    out = []
    for tok in tokens:
        if tok in _ACCENTS:
            continue  # the argument stays, as a bare group
        if tok in _FONTS:
            out.append(r"\mathrm" if tok.startswith(r"\math") else r"\rm")
            continue
        if tok not in vocab and tok not in swap:
            if tok == r"\partial" and "d" in vocab:
                swap[tok] = "d"
            elif (tok in _GREEK_LOWER or tok == r"\partial") and greek:
                swap[tok] = str(rng.choice(greek))
            elif (tok in _GREEK_UPPER or (len(tok) == 1 and tok.isupper())) and upper:
                swap[tok] = str(rng.choice(upper))
            elif len(tok) == 1 and tok.islower() and lower:
                swap[tok] = str(rng.choice(lower))
        out.append(swap.get(tok, tok))
    return out


def im2latex_to_caption(
    line: str, vocab: set[str], max_tokens: int = MAX_TOKENS, substitute: bool = False
) -> tuple[list[str] | None, str]:
    """Map one space-tokenized printed formula to caption tokens: (tokens, "") or (None, reason).

    Spacing, font and ``\\left``/``\\right`` commands are dropped, spellings mapped (``\\dots`` ->
    ``\\ldots``, ``\\le`` -> ``\\leq``...); formulas left with tokens outside ``vocab``, longer
    than ``max_tokens`` or malformed are rejected. With ``substitute``, accents and font changes
    are dropped and letters the vocabulary lacks (Greek, capitals, ``\\partial``) are swapped for
    ones it has: the formula changes, its structure stays, and ink and label still agree.
    """
    tokens, why = _premap(line.split())
    if why:
        return None, why
    if substitute:
        tokens = _substitute(tokens, vocab, line)
    tokens = _letter_words(normalize_tokens(" ".join(tokens), canonical=False))
    if not tokens:
        return None, "empty"
    if re.search(r"(?:\b[A-Za-z] ){5}[A-Za-z]\b", " ".join(tokens)):
        return None, "text or operator name"  # six letters in a row: a spelled-out word
    unknown = [t for t in tokens if t not in vocab]
    if unknown:
        return None, f"unknown token {unknown[0]}"
    if len(tokens) > max_tokens:
        return None, "too long"
    if not is_valid(tokens):
        return None, "malformed"
    return tokens, ""


def read_im2latex(
    paths: Iterable[str | Path],
    vocab: set[str],
    max_tokens: int = MAX_TOKENS,
    substitute: bool = False,
) -> tuple[list[list[str]], Counter]:
    """Caption-token formulas from im2latex files (duplicates removed) and why others were not."""
    kept: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    reasons: Counter = Counter()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            tokens, why = im2latex_to_caption(line, vocab, max_tokens, substitute)
            if tokens is None:
                reasons[why] += 1
            elif tuple(tokens) in seen:
                reasons["duplicate"] += 1
            else:
                seen.add(tuple(tokens))
                kept.append(tokens)
    return kept, reasons


# -- many samples -----------------------------------------------------------------------------


@dataclass
class GenerationReport:
    """What a generation run made and what it skipped (reason -> count)."""

    made: int = 0
    attempts: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    by_source: Counter = field(default_factory=Counter)


def generate(
    sources: dict[str, list[list[str]]],
    count: int,
    bank: GlyphBank,
    seed: int = 0,
    with_symbols: bool = False,
) -> tuple[list[Sample], GenerationReport, list[Synthesized]]:
    """``count`` synthetic samples, taking formulas from ``sources`` in turn (each shuffled).

    Deterministic under ``seed``. Formulas that cannot be drawn are skipped and counted; the run
    stops early when too many fail. Returns the samples, the report and (``with_symbols``) the
    segmented ink.
    """
    names = [n for n, forms in sources.items() if forms]
    report = GenerationReport()
    samples: list[Sample] = []
    inks: list[Synthesized] = []
    if not names or count <= 0:
        return samples, report, inks
    order = {
        n: np.random.default_rng([seed, k, 7]).permutation(len(sources[n]))
        for k, n in enumerate(names)
    }
    taken = Counter()
    start = time.perf_counter()
    limit = 3 * count + sum(len(f) for f in sources.values())
    while len(samples) < count and report.attempts < limit:
        name = names[report.attempts % len(names)]
        forms = sources[name]
        tokens = forms[order[name][taken[name] % len(forms)]]
        taken[name] += 1
        rng = np.random.default_rng([seed, report.attempts])
        report.attempts += 1
        try:
            ink = synthesize(tokens, bank, rng)
        except SkipFormula as exc:
            report.skipped[str(exc)] += 1
            continue
        key = f"synth-{name}-s{seed}-{len(samples):06d}"
        samples.append(Sample(key, ink.traces, list(tokens), " ".join(tokens)))
        report.by_source[name] += 1
        if with_symbols:
            inks.append(ink)
    report.made = len(samples)
    report.seconds = time.perf_counter() - start
    return samples, report, inks


# -- output -----------------------------------------------------------------------------------


def to_inkml(sample: Sample, symbols: Sequence[tuple[str, list[int]]] = ()) -> str:
    """An InkML document of a synthetic sample, with its symbol segmentation when given."""
    lines = [
        '<ink xmlns="http://www.w3.org/2003/InkML">',
        f'<annotation type="truth">${escape(sample.truth)}$</annotation>',
        f'<annotation type="UI">{escape(sample.id)}</annotation>',
    ]
    for i, t in enumerate(sample.traces):
        pts = ", ".join(f"{x:.1f} {y:.1f}" for x, y in t[:, :2])
        lines.append(f'<trace id="{i}">{pts}</trace>')
    if symbols:
        lines.append('<traceGroup xml:id="g">')
        lines.append('<annotation type="truth">Segmentation</annotation>')
        for k, (label, ids) in enumerate(symbols):
            lines.append(f'<traceGroup xml:id="g{k}">')
            lines.append(f'<annotation type="truth">{escape(label)}</annotation>')
            lines.extend(f'<traceView traceDataRef="{i}"/>' for i in ids)
            lines.append("</traceGroup>")
        lines.append("</traceGroup>")
    lines.append("</ink>")
    return "\n".join(lines) + "\n"


def preview_grid(samples: Sequence[Sample], path: str | Path, columns: int = 3) -> Path:
    """A PNG of rendered samples (dark ink on white) each with its LaTeX underneath."""
    from PIL import Image, ImageDraw, ImageFont

    from hmer.data.render import render_natural

    cell_w, text_h, max_img_h = 460, 34, 150
    tiles = []
    for s in samples:
        img = Image.fromarray(255 - render_natural(s.traces, symbol_px=22, padding=6))
        k = min(1.0, (cell_w - 10) / img.width, max_img_h / img.height)
        if k < 1.0:
            img = img.resize((max(1, int(img.width * k)), max(1, int(img.height * k))))
        tiles.append((img, " ".join(s.tokens)))
    rows = [tiles[i : i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t[0].height for t in row) + text_h + 8 for row in rows]
    sheet = Image.new("L", (cell_w * columns, sum(heights) or 1), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    y = 0
    for row, h in zip(rows, heights, strict=True):
        for c, (img, text) in enumerate(row):
            sheet.paste(img, (c * cell_w + 5, y + 4))
            chars = cell_w // 6
            for j, part in enumerate([text[:chars], text[chars : 2 * chars]]):
                draw.text((c * cell_w + 5, y + h - text_h + j * 13), part, fill=0, font=font)
            draw.rectangle([c * cell_w, y, (c + 1) * cell_w - 1, y + h - 1], outline=200)
        y += h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
