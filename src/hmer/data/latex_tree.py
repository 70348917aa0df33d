r"""The one parser of caption LaTeX: tokens -> a tree of atoms, groups, fractions, roots, scripts.

Normalization and validation (:mod:`hmer.data.latex`) and the synthesis layout
(:mod:`hmer.synthesis.layout`) read the same tree, so they agree on what a formula is. Where the
grammar has a choice, LaTeX decides:

- ``]`` closes a ``\sqrt`` index only inside that index (and outside braces there); elsewhere it
  is a plain symbol, so ``x ^ ]`` is a superscript ``]`` while ``\sqrt [ x ^ ] { y }`` lacks one;
- ``\limits`` is no argument (``x ^ \limits`` lacks its superscript) and needs a base;
- a font wrapper (``\mathrm { a b }``) is a group of its argument;
- empty groups and arguments are allowed (``x ^ { }``, ``\frac { } { b }``) and so is a script
  without a base (``^ { 2 }``), as TeX's empty nucleus;
- a base takes at most one subscript and one superscript, in either order (``x _ a ^ b``,
  ``x ^ b _ a``); a second of a kind is TeX's "Double superscript" error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The grammar's own tokens: everything else is a symbol.
STRUCTURE = frozenset({"{", "}", "[", "]", "_", "^", r"\frac", r"\sqrt", r"\limits"})
SCRIPTS = ("_", "^")
LIMITS = r"\limits"
POSTFIX = (*SCRIPTS, LIMITS)

# Font / text wrappers: their argument is a group of plain symbols.
WRAPPERS = frozenset(
    r"""\mbox \mathrm \textrm \textit \mathit \mathnormal \hbox \operatorname""".split()  # noqa: SIM905
)

# Words in a formula: \text keeps its command (hmer.data.latex tokenizes its argument by character).
TEXT = r"\text"

# Commands with a fixed number of braced arguments (\sqrt also takes an optional [n]).
ARITY = {r"\frac": 2, r"\sqrt": 1, TEXT: 1}

# The operators whose scripts the captions may place with \limits.
LIMIT_OPERATORS = frozenset({r"\int", r"\sum", r"\lim"})

# Deeper nesting than any real expression; keeps the recursive parser far from Python's limit.
MAX_DEPTH = 100

# Some CROHME 2014 truths write a root's index as "\sqrt {x} ABOVE {n}" (letter tokens).
ABOVE = list("ABOVE")
BELOW = list("BELOW")


class Malformed(ValueError):
    """Tokens the grammar rejects; the message says what and at which token."""


class TooDeep(Malformed):
    """Nesting beyond :data:`MAX_DEPTH` (hostile input), raised even when recovering."""


@dataclass
class Node:
    r"""One item of a formula.

    ``kind`` "atom": the symbol ``tok``. "group": ``children``, from braces or a font wrapper
    (``tok`` is the wrapper, "" for braces). "frac" / "sqrt": ``tok`` is the command, ``args``
    its arguments (fewer only when recovering), ``index`` a radical's ``[n]``. "scripts":
    ``base`` (None without one), ``scripts`` as ("_" or "^", argument) in written order,
    ``limits`` when ``\limits`` came with them.
    """

    kind: str
    tok: str = ""
    children: list[Node] = field(default_factory=list)
    args: list[list[Node]] = field(default_factory=list)
    index: list[Node] | None = None
    base: Node | None = None
    scripts: list[tuple[str, list[Node]]] = field(default_factory=list)
    limits: bool = False

    def script(self, kind: str) -> list[Node] | None:
        """The argument of the first ``kind`` ("_" or "^") script, None when there is none."""
        return next((arg for tok, arg in self.scripts if tok == kind), None)


def parse(tokens: Sequence[str], strict: bool = True, caption: bool = False) -> list[Node]:
    r"""The items of ``tokens`` (see the module docstring for the grammar).

    ``strict`` raises :class:`Malformed` on what LaTeX rejects: unbalanced braces, a missing
    argument, a second script of a kind, ``\limits`` without a base. ``caption`` also enforces
    the caption conventions: every script and command argument a non-empty ``{group}``, scripts
    after a base, ``\limits`` right after ``\int``, ``\sum`` or ``\lim`` and before a script,
    no empty ``[]``. Otherwise the parser recovers (skips a stray ``}``, closes open groups,
    leaves an argument out) and also reads ``\sqrt {x} ABOVE {n}``. :class:`TooDeep` is raised
    in every mode.
    """
    return _Parser([str(t) for t in tokens], strict or caption, caption).seq(None)


class _Parser:
    """Recursive descent; ``closer`` is what ends the innermost open group ("}", "]" or None)."""

    def __init__(self, tokens: list[str], strict: bool, caption: bool):
        self.toks = tokens
        self.i = 0
        self.strict = strict
        self.caption = caption
        self.depth = 0
        self.closer: str | None = None

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def seq(self, closer: str | None) -> list[Node]:
        """Items up to ``closer`` (None: the end), which is consumed."""
        outer, self.closer = self.closer, closer
        try:
            return self._seq(closer)
        finally:
            self.closer = outer

    def _seq(self, closer: str | None) -> list[Node]:
        nodes: list[Node] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closer is not None and self.strict:
                    raise Malformed(f"missing {closer} at end")
                return nodes
            if tok == closer:
                self.i += 1
                return nodes
            if tok == "}":  # stray closing brace
                if self.strict:
                    raise Malformed(f"unmatched }} at {self.i}")
                self.i += 1
                continue
            if tok in POSTFIX:
                last = nodes.pop() if nodes else None
                if last is None or last.kind != "scripts":
                    last = Node("scripts", base=last)
                # a scripts node continues after a skipped stray }
                nodes.append(self.scripts(last))
                continue
            nodes.append(self.item())

    def item(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooDeep(f"nesting deeper than {MAX_DEPTH}")
        try:
            return self._item()
        finally:
            self.depth -= 1

    def _item(self) -> Node:
        tok = self.toks[self.i]
        self.i += 1
        if tok == "{":
            return Node("group", children=self.seq("}"))
        if tok in WRAPPERS:
            return Node("group", tok, children=self.argument(tok) or [])
        if tok not in ARITY:
            return Node("atom", tok)
        node = Node(tok[1:], tok)  # "frac" or "sqrt"
        if tok == r"\sqrt" and self.peek() == "[":
            self.i += 1
            node.index = self.seq("]")
            if self.caption and not node.index:
                raise Malformed(f"\\sqrt with an empty [] at {self.i - 1}")
        for _ in range(ARITY[tok]):
            arg = self.argument(tok)
            if arg is None:
                break
            node.args.append(arg)
        if tok == r"\sqrt" and not self.strict and self.toks[self.i : self.i + 5] == ABOVE:
            self._sqrt_above(node)
        return node

    def _sqrt_above(self, node: Node) -> None:
        """Read the index of ``\\sqrt {x} ABOVE {n}``; "ABOVE .. BELOW" is left alone (garbled)."""
        start = self.i
        self.i += 5
        index = self.argument(r"\sqrt")
        if index is None or self.toks[self.i : self.i + 5] == BELOW:
            self.i = start
        else:
            node.index = index

    def argument(self, what: str) -> list[Node] | None:
        """One macro argument: a braced group's items or a single item (None when missing)."""
        tok = self.peek()
        if self.caption and tok != "{":
            raise Malformed(f"{what} without a {{group}} at {self.i}")
        if tok is None or tok == "}" or tok in POSTFIX or (tok == "]" and self.closer == "]"):
            if self.strict:
                raise Malformed(f"{what} without its argument at {self.i}")
            return None
        node = self.item()
        arg = node.children if node.kind == "group" and not node.tok else [node]
        if self.caption and not arg:
            raise Malformed(f"{what} with an empty group at {self.i - 1}")
        return arg

    def scripts(self, node: Node) -> Node:
        r"""Read the ``\limits``, ``_`` and ``^`` that follow a base into its scripts ``node``."""
        base = node.base
        while (tok := self.peek()) in POSTFIX:
            if tok == LIMITS:
                operator = base is not None and base.kind == "atom" and base.tok in LIMIT_OPERATORS
                if self.caption and (node.scripts or not operator):
                    raise Malformed(f"\\limits not after an operator at {self.i}")
                if self.caption and self.peek(1) not in SCRIPTS:
                    raise Malformed(f"\\limits without a script at {self.i}")
                if self.strict and base is None:
                    raise Malformed(f"\\limits without a base at {self.i}")
                node.limits = True
                self.i += 1
                continue
            if self.caption and base is None:
                raise Malformed(f"{tok} without a base at {self.i}")
            if self.strict and node.script(tok) is not None:
                raise Malformed(f"double {tok} at {self.i}")
            self.i += 1
            arg = self.argument(tok)
            node.scripts.append((tok, [] if arg is None else arg))
        return node
