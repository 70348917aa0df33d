"""A small layout engine for caption LaTeX: token sequence -> symbol boxes, as a hand writes them.

Coordinates are in x-heights with y growing downwards and the main baseline at y = 0. The tokens
are read by the caption grammar's one parser (:mod:`hmer.data.latex_tree`) and its tree is laid
out here: fractions, radicals with an index, scripts (limits above and below for ``\\lim``, often
for ``\\sum``, with ``\\limits`` for ``\\int``); brackets are plain symbols, stretched here to
the height of what they enclose. Every call draws its own random style (spacing, script size and
offsets, baseline drift, symbol sizes), so one formula never comes out twice the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from hmer.data.latex_tree import STRUCTURE as GRAMMAR
from hmer.data.latex_tree import WRAPPERS, Malformed, Node, parse
from hmer.synthesis.glyphs import (
    AXIS,
    BAR,
    DEFAULT_METRICS,
    FALLBACK_METRIC,
    Glyph,
    GlyphBank,
    Metric,
)

RELATIONS = frozenset([r"=", r"<", r">", r"\leq", r"\geq", r"\neq", r"\rightarrow", r"\in"])
BINARY = frozenset([r"+", r"-", r"\times", r"\div", r"\pm", r"\cdot", r"/"])
FUNCTIONS = frozenset([r"\sin", r"\cos", r"\tan", r"\log", r"\lim"])
OPENERS = {"(": ")", "[": "]", r"\{": r"\}"}
CLOSERS = frozenset(OPENERS.values())
PRIMES = frozenset({"'", r"\prime"})
# The caption grammar's tokens that are never drawn (font wrappers draw only their argument).
# Brackets are the exception: as a \sqrt's index delimiters they are grammar, everywhere else
# symbols with glyphs of their own.
STRUCTURE = (GRAMMAR - {"[", "]"}) | WRAPPERS


class LayoutError(ValueError):
    """Tokens the layout engine cannot read (unbalanced braces, a missing argument...)."""


def _atoms(nodes: list[Node]) -> list[str]:
    """The symbol tokens of parsed items, in reading order (a fraction's bar as :data:`BAR`)."""
    out: list[str] = []
    for node in nodes:
        if node.kind == "atom":
            out.append(node.tok)
        elif node.kind == "group":
            out.extend(_atoms(node.children))
        elif node.kind == "scripts":
            out.extend(_atoms([node.base] if node.base is not None else []))
            for _, arg in node.scripts:
                out.extend(_atoms(arg))
        else:
            out.append(BAR if node.kind == "frac" else r"\sqrt")
            for arg in [*node.args, node.index or []]:
                out.extend(_atoms(arg))
    return out


# -- boxes ------------------------------------------------------------------------------------


@dataclass
class Placed:
    """One symbol to draw: box (top-left x, y, width, height) in x-heights, y down.

    ``kind`` "glyph" draws ``glyph`` into the box as is; "stretch" (tall brackets), "bar" and
    "sqrt" pick and stretch a glyph to the box; ``hook`` is the width of a radical's tick part.
    """

    token: str
    x: float
    y: float
    w: float
    h: float
    kind: str = "glyph"
    glyph: Glyph | None = None
    hook: float = 0.0


@dataclass
class Box:
    """Laid-out material, in coordinates whose origin is on its baseline at its left edge.

    ``width`` is the x of its right edge: moving a box moves that edge too.
    """

    width: float
    top: float
    bottom: float
    items: list[Placed] = field(default_factory=list)

    def moved(self, dx: float, dy: float) -> Box:
        items = [replace(p, x=p.x + dx, y=p.y + dy) for p in self.items]
        return Box(self.width + dx, self.top + dy, self.bottom + dy, items)

    def scaled(self, s: float) -> Box:
        items = [
            replace(p, x=p.x * s, y=p.y * s, w=p.w * s, h=p.h * s, hook=p.hook * s)
            for p in self.items
        ]
        return Box(self.width * s, self.top * s, self.bottom * s, items)


def _empty() -> Box:
    return Box(0.0, -1.0, 0.0)


@dataclass
class Style:
    """The random hand of one formula: every factor is drawn once per layout."""

    spacing: float = 1.0  # multiplies all gaps
    script: float = 0.65  # size of first-level scripts
    nested: float = 0.8  # size of deeper scripts relative to their base
    frac_nested: float = 0.85  # size of a fraction inside a fraction
    size_jitter: float = 0.06  # log-sd of a symbol's size
    drift: float = 0.04  # sd of the baseline's random walk per symbol
    raise_jitter: float = 0.08  # sd of script offsets
    limits_sum: float = 0.85  # chance that \sum writes its scripts above and below

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Style:
        return cls(
            spacing=float(np.exp(rng.uniform(-0.35, 0.35))),
            script=float(rng.uniform(0.55, 0.78)),
            nested=float(rng.uniform(0.75, 0.9)),
            frac_nested=float(rng.uniform(0.75, 1.0)),
            size_jitter=float(rng.uniform(0.03, 0.09)),
            drift=float(rng.uniform(0.0, 0.06)),
            raise_jitter=float(rng.uniform(0.02, 0.08)),
        )


class Layout:
    """Lays out one formula. ``bank`` supplies glyphs and metrics (None: default metrics only)."""

    def __init__(
        self, bank: GlyphBank | None, rng: np.random.Generator, style: Style | None = None
    ):
        self.bank = bank
        self.rng = rng
        self.style = style or Style.draw(rng)

    # -- atoms --

    def metric(self, token: str) -> Metric:
        if self.bank is not None:
            return self.bank.metric(token)
        return DEFAULT_METRICS.get(token, FALLBACK_METRIC)

    def atom(self, token: str) -> Box:
        m = self.metric(token)
        glyph = None
        w, h = m.width, m.height
        if self.bank is not None and self.bank.has(token):
            glyph = self.bank.pick(token, self.rng)
            # keep the writer's proportions, but not the outliers of a mis-estimated scale
            ratio = max(glyph.width, glyph.height) / max(m.width, m.height, 1e-6)
            k = float(np.clip(ratio, 0.8, 1.25)) / max(ratio, 1e-6)
            w, h = glyph.width * k, glyph.height * k
        s = float(np.exp(self.rng.normal(0, self.style.size_jitter)))
        w, h = w * s, h * s
        if m.descent >= -0.05 * m.height:  # reaches the baseline: keep its share above the line
            top = -h * (m.height - m.descent) / max(m.height, 1e-6)
        else:  # floats above the line (-, =, '): keep its centre
            top = m.centre - h / 2
        top += float(self.rng.normal(0, 0.03))
        return Box(w, top, top + h, [Placed(token, 0.0, top, w, h, glyph=glyph)])

    # -- structures --

    def node(self, node: Node, depth: int = 0, frac_depth: int = 0) -> Box:
        if node.kind == "atom":
            return self.atom(node.tok)
        if node.kind == "group":
            return self.row(node.children, depth, frac_depth)
        if node.kind == "frac":
            return self.frac(node, depth, frac_depth)
        if node.kind == "sqrt":
            return self.sqrt(node, depth, frac_depth)
        return self.scripts(node, depth, frac_depth)

    def row(self, nodes: list[Node], depth: int, frac_depth: int) -> Box:
        if not nodes:
            return _empty()
        boxes = [self.node(n, depth, frac_depth) for n in nodes]
        self._stretch_brackets(nodes, boxes)
        rng, st = self.rng, self.style
        x, drift = 0.0, 0.0
        items: list[Placed] = []
        top, bottom = math.inf, -math.inf
        for k, (node, box) in enumerate(zip(nodes, boxes, strict=True)):
            if k:
                x += self._gap(nodes[k - 1], node, nodes[k - 2] if k > 1 else None)
            drift = float(np.clip(drift + rng.normal(0, st.drift), -0.25, 0.25))
            placed = box.moved(x, drift)
            items.extend(placed.items)
            top, bottom = min(top, placed.top), max(bottom, placed.bottom)
            x += box.width
        return Box(x, top, bottom, items)

    def _gap(self, prev: Node, cur: Node, before: Node | None) -> float:
        """Horizontal space between two neighbours of a row, by their roles."""
        p, c = _role_token(prev), _role_token(cur)
        u = self.rng.uniform
        if c in PRIMES:
            g = u(-0.02, 0.08)
        elif c in (",", ".") or p in OPENERS or c in CLOSERS:
            g = u(0.0, 0.12)
        elif p == ",":
            g = u(0.25, 0.5)
        elif p in RELATIONS or c in RELATIONS:
            g = u(0.2, 0.5)
        elif p in BINARY and _unary(before):
            g = u(0.03, 0.15)
        elif p in BINARY or c in BINARY:
            g = u(0.15, 0.42)
        elif p in FUNCTIONS:
            g = u(0.12, 0.3)
        else:
            g = u(0.05, 0.25)
        return g * self.style.spacing

    def _stretch_brackets(self, nodes: list[Node], boxes: list[Box]) -> None:
        """Make matching brackets of a row as tall as what they enclose (handwriting does)."""
        stack: list[int] = []
        for k, node in enumerate(nodes):
            tok = node.tok if node.kind == "atom" else None
            if tok in OPENERS:
                stack.append(k)
            elif tok in CLOSERS and stack and OPENERS[nodes[stack[-1]].tok] == tok:
                i = stack.pop()
                if k - i < 2:
                    continue
                inner_top = min(b.top for b in boxes[i + 1 : k])
                inner_bottom = max(b.bottom for b in boxes[i + 1 : k])
                pad = float(self.rng.uniform(0.05, 0.2))
                for j in (i, k):
                    boxes[j] = _stretch(boxes[j], inner_top - pad, inner_bottom + pad)

    def frac(self, node: Node, depth: int, frac_depth: int) -> Box:
        rng = self.rng
        num = self.row(node.args[0], depth, frac_depth + 1)
        den = self.row(node.args[1], depth, frac_depth + 1)
        if frac_depth:
            num, den = num.scaled(self.style.frac_nested), den.scaled(self.style.frac_nested)
        pad = float(rng.uniform(0.0, 0.3))
        width = max(num.width, den.width) + 2 * pad
        bar_h = float(self.metric(BAR).height * rng.uniform(0.7, 1.3))
        axis = AXIS + float(rng.normal(0, 0.05))
        # numerator and denominator centred over the bar, each a little off-centre
        xn = (width - num.width) / 2 + float(rng.normal(0, 0.08))
        xd = (width - den.width) / 2 + float(rng.normal(0, 0.08))
        num = num.moved(xn, axis - bar_h / 2 - float(rng.uniform(0.1, 0.35)) - num.bottom)
        den = den.moved(xd, axis + bar_h / 2 + float(rng.uniform(0.12, 0.4)) - den.top)
        bar = Placed(BAR, 0.0, axis - bar_h / 2, width, bar_h, kind="bar")
        if rng.random() < 0.4:  # some write the bar first
            items = [bar, *num.items, *den.items]
        else:
            items = [*num.items, bar, *den.items]
        left, right = min(0.0, xn, xd), max(width, num.width, den.width)  # moved: right edges
        box = Box(right, num.top, den.bottom, items)
        return box.moved(-left, 0.0) if left < 0 else box

    def sqrt(self, node: Node, depth: int, frac_depth: int) -> Box:
        rng = self.rng
        body = self.row(node.args[0], depth, frac_depth)
        top = body.top - float(rng.uniform(0.12, 0.35))
        bottom = max(body.bottom, 0.0) + float(rng.uniform(0.0, 0.2))
        height = bottom - top
        hook = float(np.clip(0.45 * height, 0.5, 1.3) * rng.uniform(0.8, 1.2))
        body_x = hook + float(rng.uniform(0.05, 0.2))
        width = body_x + body.width + float(rng.uniform(0.05, 0.3))
        rad = Placed(r"\sqrt", 0.0, top, width, height, kind="sqrt", hook=hook)
        items = [rad, *body.moved(body_x, 0.0).items]
        box = Box(width, top, bottom, items)
        if node.index:  # the index sits in the crook of the tick; an empty one draws nothing
            index = self.row(node.index, depth + 1, frac_depth).scaled(self.style.script * 0.85)
            dy = top + 0.5 * height - index.bottom
            dx = 0.55 * hook - index.width
            index = index.moved(dx, dy)
            box = Box(width, min(top, index.top), bottom, [*index.items, *items])
            if dx < 0:
                box = box.moved(-dx, 0.0)
        return box

    def scripts(self, node: Node, depth: int, frac_depth: int) -> Box:
        rng, st = self.rng, self.style
        base_node = node.base
        # in either written order; an empty script draws nothing, as in LaTeX
        sub_node, sup_node = node.script("_"), node.script("^")
        base = self.node(base_node, depth, frac_depth) if base_node is not None else _empty()
        scale = st.script if depth == 0 else st.nested
        sub = self.row(sub_node, depth + 1, frac_depth).scaled(scale) if sub_node else None
        sup = None
        primes = bool(sup_node) and set(_atoms(sup_node)) <= PRIMES
        if primes:  # a prime is already small and high: no raise
            sup = self.row(sup_node, depth, frac_depth)
            sup = sup.moved(0.0, base.top - float(rng.uniform(0.0, 0.3)) - sup.top)
        elif sup_node:
            sup = self.row(sup_node, depth + 1, frac_depth).scaled(scale)
        base_tok = _role_token(base_node) if base_node is not None else None
        limits = base_tok == r"\lim" or (
            base_tok == r"\sum" and (node.limits or rng.random() < st.limits_sum)
        )
        limits = limits or (base_tok == r"\int" and node.limits)
        if limits:
            return self._limits(base, sub, sup)
        jit = st.raise_jitter
        items = list(base.items)
        top, bottom, width = base.top, base.bottom, base.width
        above = -base.top
        if sup is not None and not primes:
            if base_tok == r"\int":
                dy = base.top + 0.2 - sup.top * 0.3
            else:
                dy = base.top + min(0.42 * above, 0.7) + float(rng.normal(0, jit))
            sup = sup.moved(0.0, dy)
        if sub is not None:
            if base_tok == r"\int":
                dy = base.bottom * 0.9 + 0.15
            else:
                dy = max(0.28, 0.5 * base.bottom + 0.3) + float(rng.normal(0, jit))
            sub = sub.moved(0.0, dy)
            if sup is not None and sub.top - sup.bottom < 0.1:  # keep the two apart
                sub = sub.moved(0.0, 0.1 - (sub.top - sup.bottom))
        for part, tuck in ((sup, 0.0), (sub, 0.3 if base_tok == r"\int" else 0.0)):
            if part is None:
                continue
            dx = base.width + float(rng.uniform(0.0, 0.1)) * st.spacing - tuck * base.width
            part = part.moved(dx, 0.0)
            items.extend(part.items)
            top, bottom = min(top, part.top), max(bottom, part.bottom)
            width = max(width, part.width)
        return Box(width, top, bottom, items)

    def _limits(self, base: Box, sub: Box | None, sup: Box | None) -> Box:
        rng = self.rng
        width = max(b.width for b in (base, sub, sup) if b is not None)
        items = base.moved((width - base.width) / 2, 0.0).items
        top, bottom = base.top, base.bottom
        if sup is not None:
            dy = base.top - float(rng.uniform(0.08, 0.25)) - sup.bottom
            sup = sup.moved((width - sup.width) / 2 + float(rng.normal(0, 0.05)), dy)
            items = [*items, *sup.items]
            top = sup.top
        if sub is not None:
            dy = base.bottom + float(rng.uniform(0.08, 0.25)) - sub.top
            sub = sub.moved((width - sub.width) / 2 + float(rng.normal(0, 0.05)), dy)
            # the lower limit is usually written right after the operator
            items = [*items[: len(base.items)], *sub.items, *items[len(base.items) :]]
            bottom = sub.bottom
        return Box(width, top, bottom, items)


def _role_token(node: Node | None) -> str | None:
    """The token that decides spacing: an atom's own, a scripted atom's base."""
    while node is not None and node.kind in ("scripts", "group"):
        if node.kind == "group":
            if len(node.children) != 1:
                return None
            node = node.children[0]
        else:
            node = node.base
    return node.tok if node is not None and node.kind == "atom" else None


def _unary(before: Node | None) -> bool:
    tok = _role_token(before) if before is not None else None
    return before is None or tok in OPENERS or tok in RELATIONS or tok in BINARY or tok == ","


def _stretch(box: Box, top: float, bottom: float) -> Box:
    """A bracket atom's box grown to span [top, bottom] (never shrunk)."""
    if len(box.items) != 1 or (top >= box.top and bottom <= box.bottom):
        return box
    p = box.items[0]
    top, bottom = min(top, box.top), max(bottom, box.bottom)
    h = bottom - top
    w = p.w * (h / max(p.h, 1e-6)) ** 0.35  # taller brackets get only a little wider
    return Box(w, top, bottom, [replace(p, x=0.0, y=top, w=w, h=h, kind="stretch")])


def layout(
    tokens: list[str],
    bank: GlyphBank | None = None,
    rng: np.random.Generator | None = None,
    style: Style | None = None,
) -> list[Placed]:
    """Place the symbols of caption ``tokens``; raises :class:`LayoutError` if unreadable.

    What LaTeX rejects is unreadable: the tokens are read by the shared parser
    (:func:`hmer.data.latex_tree.parse`).
    """
    try:
        tree = parse(tokens)
    except Malformed as exc:
        raise LayoutError(str(exc)) from exc
    rng = rng if rng is not None else np.random.default_rng()
    return Layout(bank, rng, style).row(tree, 0, 0).items
