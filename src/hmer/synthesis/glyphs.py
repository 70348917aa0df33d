"""A bank of real handwritten symbols cut from CROHME training ink.

Every segmented symbol (``<traceGroup>``) of a training expression becomes a :class:`Glyph`: its
strokes measured in x-height units of the expression they were written in, so that a ``1`` keeps
its size relative to an ``x`` of the same writer. Where the symbol had a same-size reference
symbol next to it on its line (a digit, a capital, a letter without descender), its position on
that line is kept too (``descent``: how far the box bottom lies below the baseline); per-label
medians of these give the metrics the layout engine places symbols with.

Only training ink is read: glyphs from test expressions would leak their writers into training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hmer.data.dataset import default_cache_dir, default_data_dir, read_inks, save_atomic
from hmer.data.inkml import Ink

BANK_VERSION = 1
AXIS = -0.55  # height of the math axis (centre of -, +, =) above the baseline, in x-heights

# InkML symbol labels whose caption token is spelled differently.
LABEL_TOKENS = {r"\lt": "<", r"\gt": ">", r"\le": r"\leq", r"\ge": r"\geq", r"\ne": r"\neq"}
BAR = "<bar>"  # pseudo-label: a long "-" (a fraction bar as written)
BAR_MIN_WIDTH = 1.8  # a "-" wider than this many x-heights is a fraction bar

# Labels whose shape varies in width by nature (lengths of lines, radicals over any content).
FREE_ASPECT = {"-", BAR, r"\sqrt", r"\ldots", ".", "|", r"\rightarrow"}

# Tokens drawn with another label's glyphs; a float moves the centre to that height.
DERIVED: dict[str, tuple[str, float | None]] = {
    r"\cdot": (".", AXIS),
    r"\cdots": (r"\ldots", AXIS),
    "'": (r"\prime", None),
}

_X_LETTERS = set("acemnorsuvwxz")
_TALL = set("bdhklt") | set("ABCEFGHILMNPRSTVXY") | set("0123456789")
# Symbols whose box bottom sits on the baseline: neighbours that tell where the baseline is.
BASELINE_REF = _X_LETTERS | _TALL
SIZE_REF = BASELINE_REF | set("fgijpqy")
# Vertical centres set by hand: brackets are centred on the axis, a "." sits on the baseline.
FIXED_CENTRE = {
    ".": -0.06,
    r"\ldots": -0.08,
    **{b: -0.7 for b in ("(", ")", "[", "]", r"\{", r"\}", "|")},
}


@dataclass(frozen=True)
class Metric:
    """Typical box of a token in x-height units: width, height, bottom below the baseline."""

    width: float
    height: float
    descent: float

    @property
    def centre(self) -> float:
        return self.descent - self.height / 2


def _default_metrics() -> dict[str, Metric]:
    m: dict[str, Metric] = {}
    for c in _X_LETTERS:
        m[c] = Metric(0.9, 1.0, 0.0)
    for c in _TALL:
        m[c] = Metric(0.85, 1.45, 0.0)
    for c in "gpqy":
        m[c] = Metric(0.9, 1.45, 0.45)
    m.update(
        {
            "i": Metric(0.3, 1.3, 0.0),
            "j": Metric(0.5, 1.75, 0.45),
            "f": Metric(0.9, 1.8, 0.35),
            "t": Metric(0.7, 1.3, 0.0),
            r"\alpha": Metric(1.1, 1.0, 0.0),
            r"\beta": Metric(0.9, 1.9, 0.45),
            r"\gamma": Metric(0.9, 1.45, 0.45),
            r"\theta": Metric(0.8, 1.45, 0.0),
            r"\lambda": Metric(0.9, 1.45, 0.0),
            r"\mu": Metric(0.9, 1.45, 0.45),
            r"\pi": Metric(1.1, 1.0, 0.0),
            r"\sigma": Metric(1.0, 1.0, 0.0),
            r"\phi": Metric(1.0, 1.9, 0.45),
            r"\Delta": Metric(1.2, 1.45, 0.0),
            r"\infty": Metric(1.5, 0.8, -0.15),
            "(": Metric(0.45, 2.0, 0.35),
            ")": Metric(0.45, 2.0, 0.35),
            "[": Metric(0.45, 2.0, 0.35),
            "]": Metric(0.45, 2.0, 0.35),
            r"\{": Metric(0.6, 2.0, 0.35),
            r"\}": Metric(0.6, 2.0, 0.35),
            "|": Metric(0.1, 1.9, 0.3),
            "/": Metric(0.8, 1.9, 0.3),
            "+": Metric(0.95, 0.95, -0.08),
            "-": Metric(0.9, 0.1, AXIS + 0.05),
            BAR: Metric(3.0, 0.15, AXIS + 0.07),
            "=": Metric(0.95, 0.45, AXIS + 0.22),
            r"\neq": Metric(0.95, 0.9, -0.1),
            "<": Metric(0.8, 0.85, -0.12),
            ">": Metric(0.8, 0.85, -0.12),
            r"\leq": Metric(0.8, 1.1, 0.0),
            r"\geq": Metric(0.8, 1.1, 0.0),
            r"\times": Metric(0.75, 0.75, -0.17),
            r"\div": Metric(0.9, 0.9, -0.1),
            r"\pm": Metric(0.9, 1.1, 0.0),
            r"\rightarrow": Metric(1.6, 0.6, AXIS + 0.3),
            r"\in": Metric(0.8, 0.9, 0.0),
            r"\exists": Metric(0.8, 1.45, 0.0),
            r"\forall": Metric(1.0, 1.45, 0.0),
            ".": Metric(0.12, 0.12, 0.0),
            ",": Metric(0.2, 0.45, 0.3),
            "!": Metric(0.25, 1.45, 0.0),
            r"\prime": Metric(0.25, 0.6, -1.0),
            r"\ldots": Metric(1.2, 0.12, 0.0),
            r"\sqrt": Metric(1.5, 1.8, 0.2),
            r"\sum": Metric(1.6, 2.0, 0.4),
            r"\int": Metric(0.9, 2.8, 0.75),
            r"\lim": Metric(2.0, 1.45, 0.0),
            r"\log": Metric(2.2, 1.8, 0.4),
            r"\sin": Metric(2.0, 1.3, 0.0),
            r"\cos": Metric(2.2, 1.0, 0.0),
            r"\tan": Metric(2.2, 1.3, 0.0),
        }
    )
    return m


DEFAULT_METRICS = _default_metrics()
FALLBACK_METRIC = Metric(0.9, 1.2, 0.0)


def label_token(label: str) -> str:
    """Caption token of an InkML symbol label (``\\lt`` -> ``<``...)."""
    return LABEL_TOKENS.get(label, label)


@dataclass
class Glyph:
    """One handwritten symbol: strokes in x-height units, box from (0, 0) to (width, height).

    ``descent`` is how far the box bottom was below the writer's baseline (NaN when unknown).
    Script-size glyphs of letters and digits are scaled up to their line size when cut.
    """

    label: str
    strokes: list[np.ndarray]
    width: float
    height: float
    descent: float = math.nan
    writer: str = ""
    main: bool = True  # written at the size of its line (False: probably a script)

    @property
    def aspect(self) -> float:
        return self.width / max(self.height, 1e-6)


def normalize_strokes(
    strokes: Sequence[np.ndarray], unit: float
) -> tuple[list[np.ndarray], float, float]:
    """Shift strokes to a (0, 0) box corner and divide by ``unit``; drops repeated points."""
    strokes = [np.asarray(s, np.float32)[:, :2] for s in strokes if len(s)]
    lo = np.concatenate(strokes).min(axis=0)
    out = []
    for s in strokes:
        p = (s - lo) / unit
        if len(p) > 2:  # tablets repeat points while the pen rests; they add nothing
            keep = np.ones(len(p), bool)
            keep[1:] = np.abs(np.diff(p, axis=0)).max(axis=1) > 1e-3
            keep[-1] = True
            p = p[keep]
        out.append(p.astype(np.float32))
    hi = np.concatenate(out).max(axis=0)
    return out, float(hi[0]), float(hi[1])


@dataclass
class GlyphBank:
    """Handwritten glyphs by caption token, with the per-token metrics the layout uses."""

    glyphs: dict[str, list[Glyph]] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)

    # -- building -------------------------------------------------------------------------

    def add(self, glyph: Glyph) -> None:
        self.glyphs.setdefault(glyph.label, []).append(glyph)

    @classmethod
    def from_strokes(
        cls, drawings: Mapping[str, Iterable[Sequence[Sequence[Sequence[float]]]]]
    ) -> GlyphBank:
        """A bank from hand-made drawings (token -> list of drawings, each a list of strokes).

        Each drawing is scaled to the default size of its token: for tests and demos.
        """
        bank = cls()
        for label, items in drawings.items():
            ref = DEFAULT_METRICS.get(label, FALLBACK_METRIC)
            for k, strokes in enumerate(items):
                arrs = [np.asarray(s, np.float32).reshape(-1, 2) for s in strokes]
                _, w, h = normalize_strokes(arrs, 1.0)
                # thin symbols (-, bars) take their size from their width, the others from height
                unit = w / ref.width if w > 3 * h else h / ref.height
                norm, w, h = normalize_strokes(arrs, max(unit, 1e-6))
                bank.add(Glyph(label, norm, w, h, math.nan, f"hand{k}"))
        bank.finalize()
        return bank

    def finalize(self) -> None:
        """Per-token metrics from line-size glyphs; hand-set defaults where data are thin."""
        self.metrics = {}
        for label, items in self.glyphs.items():
            ref = DEFAULT_METRICS.get(label, FALLBACK_METRIC)
            main = [g for g in items if g.main]
            # Sizes of letters and digits come from line-size glyphs. For other symbols "main"
            # only means "has a same-size neighbour", which favours scripts beside a big base.
            pool = main if label in SIZE_REF and len(main) >= 20 else items
            w = float(np.median([g.width for g in pool]))
            h = float(np.median([g.height for g in pool]))
            known = [g.descent for g in main if not math.isnan(g.descent)]
            if label in BASELINE_REF:  # by definition: they are what the baseline is found from
                d = 0.0
            elif label in FIXED_CENTRE:  # the context estimate mixes uses (a "." is also a \cdot)
                d = FIXED_CENTRE[label] + h / 2
            elif len(known) >= 20:
                d = float(np.median(known))
            elif ref.descent < 0:  # floating symbols: keep the default centre
                d = ref.centre + h / 2
            else:
                d = ref.descent * h / ref.height
            self.metrics[label] = Metric(w, h, d)
        parens = [self.metrics[b] for b in ("(", ")") if b in self.metrics]
        if parens:  # [ and { are mostly written around tall content: size them like parentheses
            h = float(np.mean([m.height for m in parens]))
            for b in ("[", "]", r"\{", r"\}"):
                if b in self.metrics:
                    m = self.metrics[b]
                    self.metrics[b] = Metric(m.width * h / m.height, h, FIXED_CENTRE[b] + h / 2)
        for token, (source, centre) in DERIVED.items():
            if source in self.metrics and token not in self.glyphs:
                m = self.metrics[source]
                self.metrics[token] = (
                    m if centre is None else Metric(m.width, m.height, centre + m.height / 2)
                )

    # -- use --------------------------------------------------------------------------------

    def source(self, token: str) -> str:
        """The label whose glyphs draw ``token``."""
        if token in self.glyphs:
            return token
        return DERIVED.get(token, (token, None))[0]

    def has(self, token: str) -> bool:
        return bool(self.glyphs.get(self.source(token)))

    def tokens(self) -> set[str]:
        """Tokens this bank can draw."""
        return {t for t in [*self.glyphs, *DERIVED] if self.has(t)}

    def metric(self, token: str) -> Metric:
        return self.metrics.get(token) or DEFAULT_METRICS.get(token, FALLBACK_METRIC)

    def pick(
        self, token: str, rng: np.random.Generator, aspect: float | None = None, k: int = 12
    ) -> Glyph:
        """A random glyph of ``token``; with ``aspect``, the closest of ``k`` random candidates."""
        items = self.glyphs.get(self.source(token))
        if not items:
            raise KeyError(token)
        if aspect is None or len(items) == 1:
            return items[int(rng.integers(len(items)))]
        cand = rng.integers(len(items), size=min(k, len(items)))
        err = [abs(math.log(items[i].aspect / aspect)) for i in cand]
        return items[int(cand[int(np.argmin(err))])]

    def sizes(self) -> dict[str, int]:
        return {label: len(items) for label, items in sorted(self.glyphs.items())}

    # -- storage: one packed array instead of ~10^5 small ones pickles ~20x faster ----------------

    def __getstate__(self) -> dict:
        labels, rows, strokes_per, lengths, pts, writers = [], [], [], [], [], []
        for label, items in self.glyphs.items():
            for g in items:
                labels.append(label)
                rows.append((g.width, g.height, g.descent, float(g.main)))
                strokes_per.append(len(g.strokes))
                lengths.extend(len(s) for s in g.strokes)
                pts.extend(g.strokes)
                writers.append(g.writer)
        return {
            "version": BANK_VERSION,
            "labels": labels,
            "rows": np.asarray(rows, np.float32).reshape(-1, 4),
            "strokes_per": np.asarray(strokes_per, np.int32),
            "lengths": np.asarray(lengths, np.int32),
            "points": np.concatenate(pts) if pts else np.zeros((0, 2), np.float32),
            "writers": writers,
            "metrics": {k: (m.width, m.height, m.descent) for k, m in self.metrics.items()},
        }

    def __setstate__(self, state: dict) -> None:
        ends = np.cumsum(state["lengths"])
        strokes = np.split(state["points"], ends[:-1]) if len(ends) else []
        self.glyphs = {}
        at = 0
        for label, (w, h, d, main), n, writer in zip(
            state["labels"], state["rows"], state["strokes_per"], state["writers"], strict=True
        ):
            glyph = Glyph(
                label, strokes[at : at + n], float(w), float(h), float(d), writer, main > 0
            )
            self.add(glyph)
            at += n
        self.metrics = {k: Metric(*v) for k, v in state["metrics"].items()}


# -- cutting glyphs out of segmented expressions --------------------------------------------------


@dataclass
class _Cut:
    label: str
    strokes: list[np.ndarray]
    box: np.ndarray  # x0, y0, x1, y1


def _cuts(ink: Ink) -> list[_Cut]:
    index = {tid: i for i, tid in enumerate(ink.trace_ids)}
    out = []
    for sym in ink.symbols:
        strokes = [ink.traces[index[t]][:, :2] for t in sym.trace_ids if t in index]
        if not strokes or len(strokes) > 10:
            continue
        pts = np.concatenate(strokes)
        out.append(_Cut(label_token(sym.label), strokes, np.r_[pts.min(axis=0), pts.max(axis=0)]))
    return out


def _height(c: _Cut) -> float:
    return float(c.box[3] - c.box[1])


MAIN_SIZE = (0.7, 1.3)  # size ratios (to the label's line-size height) of symbols on the line


def _line_height(heights: Sequence[float]) -> float:
    # The upper part of the distribution: scripts are smaller than their line, never larger.
    return float(np.quantile(heights, 0.7))


def relative_heights(inks: Iterable[Ink]) -> dict[str, float]:
    """Line-size height of each label relative to the x-height letters of the same expression.

    An upper quantile, not the median: a digit is often a subscript, never a "superscript of
    size"; the common bias of the quantile cancels out in the per-expression unit.
    """
    ratios: dict[str, list[float]] = {}
    for ink in inks:
        cuts = _cuts(ink)
        xs = [_height(c) for c in cuts if c.label in _X_LETTERS]
        if len(xs) < 2:
            continue
        xh = _line_height(xs)
        if xh <= 0:
            continue
        for c in cuts:
            ratios.setdefault(c.label, []).append(_height(c) / xh)
    return {k: _line_height(v) for k, v in ratios.items() if len(v) >= 20}


def glyphs_of(ink: Ink, nominal: Mapping[str, float], writer: str = "") -> list[Glyph]:
    """Cut the segmented symbols of one expression into glyphs (none if its scale is unknown).

    ``nominal`` gives each reference label's height in x-heights (see :func:`relative_heights`).
    """
    cuts = _cuts(ink)
    scales = [
        _height(c) / nominal[c.label] for c in cuts if c.label in SIZE_REF and c.label in nominal
    ]
    scales = [s for s in scales if s > 0]
    if not scales:
        return []
    unit = _line_height(scales)

    def size_ratio(c: _Cut) -> float:
        return _height(c) / (nominal[c.label] * unit)

    lo, hi = MAIN_SIZE
    refs = [c for c in cuts if c.label in BASELINE_REF and c.label in nominal]
    refs = [c for c in refs if lo <= size_ratio(c) <= hi]
    out = []
    for c in cuts:
        strokes, w, h = normalize_strokes(c.strokes, unit)
        if max(w, h) <= 0 and c.label not in (".", r"\cdot"):
            continue
        descent = math.nan
        main = True
        if c.label in SIZE_REF and c.label in nominal:
            ratio = size_ratio(c)
            main = lo <= ratio <= hi
            if not main and ratio > 0:  # a script: keep its shape at the size of its line
                strokes = [s / ratio for s in strokes]
                w, h = w / ratio, h / ratio
        if main:
            base = _baseline(c, refs, unit)
            if base is not None:
                descent = (float(c.box[3]) - base) / unit
            elif c.label not in SIZE_REF:
                main = False  # no same-size neighbour: may well be a script
        label = c.label
        if label == "-" and w > BAR_MIN_WIDTH:
            label = BAR
        out.append(Glyph(label, strokes, w, h, descent, writer, main))
    return out


def _baseline(c: _Cut, refs: list[_Cut], unit: float) -> float | None:
    """Baseline at ``c``: mean bottom of its nearest same-line reference neighbours on each side."""
    best: dict[int, tuple[float, float]] = {}
    lo, hi = c.box[1] - 0.3 * unit, c.box[3] + 0.3 * unit
    for r in refs:
        if r is c or r.box[3] < lo or r.box[1] > hi:
            continue
        if r.box[2] <= c.box[0] + 0.2 * unit:
            side, gap = 0, c.box[0] - r.box[2]
        elif r.box[0] >= c.box[2] - 0.2 * unit:
            side, gap = 1, r.box[0] - c.box[2]
        else:
            continue
        if gap > 1.5 * unit:
            continue
        if side not in best or gap < best[side][0]:
            best[side] = (float(gap), float(r.box[3]))
    if not best:
        return None
    return float(np.mean([b for _, b in best.values()]))


def _log_aspect(g: Glyph) -> float:
    # sides floored at a fifth of the other: a 1 drawn as a bare line is not an outlier
    return math.log(max(g.width, 0.2 * g.height, 1e-6) / max(g.height, 0.2 * g.width, 1e-6))


def build_bank(inks: Iterable[tuple[str, Ink]]) -> GlyphBank:
    """Build a bank from (id, ink) pairs of segmented TRAINING expressions."""
    inks = list(inks)
    nominal = relative_heights(ink for _, ink in inks)
    for label in SIZE_REF:  # too few samples of a label (small data): trust the default
        nominal.setdefault(label, DEFAULT_METRICS[label].height)
    bank = GlyphBank()
    for key, ink in inks:
        for g in glyphs_of(ink, nominal, key):
            bank.add(g)
    for label, items in bank.glyphs.items():
        # far more strokes than usual: a segmentation error or a scribble, not a clean symbol
        med = float(np.median([len(g.strokes) for g in items]))
        items = [g for g in items if len(g.strokes) <= max(2 * med, med + 2)]
        if label not in FREE_ASPECT and items:  # squashed far beyond its kind: mislabelled
            mid = float(np.median([_log_aspect(g) for g in items]))
            items = [g for g in items if abs(_log_aspect(g) - mid) < math.log(2.5)]
        if label in ("-", BAR):  # a "-" as tall as it is wide is a dot or a mislabelled stroke
            items = [g for g in items if g.aspect >= 2.5]
        bank.glyphs[label] = items
    bank.finalize()
    return bank


def default_train_source() -> Path:
    """Training InkML: an extracted ``TrainINKML`` folder beside the archive, else the archive."""
    folder = default_data_dir() / "TrainINKML"
    return folder if folder.is_dir() else default_data_dir() / "TrainINKML.tar.gz"


def read_training_inks(source: str | Path | None = None) -> list[tuple[str, Ink]]:
    """Parse every readable training InkML of ``source`` (unreadable files are skipped)."""
    source = Path(source) if source else default_train_source()
    if "test" in source.name.lower():
        raise ValueError(f"{source}: the glyph bank is built from training ink only")
    return read_inks(source)


def bank_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"glyphs-train-v{BANK_VERSION}.pkl"


def load_bank(
    source: str | Path | None = None, cache_dir: Path | None = None, rebuild: bool = False
) -> GlyphBank:
    """The glyph bank of the CROHME training ink, built once and cached as a pickle."""
    import pickle

    path = bank_path(cache_dir)
    if path.exists() and not rebuild:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    bank = build_bank(read_training_inks(source))
    save_atomic(path, bank)
    return bank
