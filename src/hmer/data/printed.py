"""Printed formulas: LaTeX typeset by KaTeX in headless Chromium, in random fonts, sizes, paddings.

The range is that of Springstein et al.'s GAN paper (renders KaTeX makes before they are turned
into handwriting): the default math italic or one of ``\\mathrm``, ``\\mathit``, ``\\mathbf``,
``\\mathsf``, ``\\mathtt`` around the whole formula, font sizes 16-50 px, paddings 0-15 px, each
drawn per formula from a seed. Renders are dark ink on white, as a pasted screenshot is.

KaTeX was chosen over matplotlib's mathtext by measurement (``benchmarks/printed_renderers.py``):
it renders all 8,835 CROHME training captions (mathtext 98.4%: it has no ``\\limits``) and 96.9%
of 2,000 im2latex formulas as written (mathtext 84.5%: unbraced arguments, ``\\left``/``\\right``
pairs, ``\\operatorname*``...), at least as fast (tens of formulas per second either way on a busy
2-core machine), and it is already vendored for the web page, so it adds no Python dependency.
The browser is optional: Playwright and Chromium (``scripts/setup-browser.sh``) are imported only
when a renderer starts, and their absence is a :class:`BrowserUnavailable` saying what to install.

Many formulas are typeset on one page at once; one screenshot per strip of the page is cut into
formulas along the boxes the page reports, then each crop is trimmed to its ink and padded.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FONTS = ("default", "mathrm", "mathit", "mathbf", "mathsf", "mathtt")
SIZES = (16, 50)  # font size in px, inclusive
PADDINGS = (0, 15)  # white margin in px around the ink, inclusive

KATEX_DIR = Path(__file__).resolve().parents[1] / "web" / "static" / "vendor" / "katex"
CHROMIUM = os.environ.get("HMER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# No sandbox as root, and no background traffic to a closed network.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SETUP_HINT = "run scripts/setup-browser.sh (Debian's chromium and Playwright for Python)"

# Space around each formula on the page: its crop may take this much ink that overflows the box
# KaTeX reports (italic overhangs, big operators) without reaching the next formula.
GAP = 32
MARGIN = GAP // 2
# Formulas larger than this (px, either side) are refused: a screenshot strip must stay small.
MAX_SIDE = 8000
STRIP_PIXELS = 8_000_000  # screenshot area per strip
# KaTeX limits for hostile input: \rule and spacing sizes (em) and macro expansions.
MAX_SIZE_EM = 50
MAX_EXPAND = 200
_ORIGIN = "http://katex.render"  # served from the vendored files by a route, never the network

_PAGE = f"""<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="katex.min.css"><script src="katex.min.js"></script>
<style>
body {{ margin: 0; padding: {MARGIN}px; background: #fff; color: #000; }}
.f {{ display: block; width: max-content; margin-bottom: {GAP}px; white-space: nowrap; }}
.f .katex {{ font-size: 1em; }}
.f .katex-display {{ margin: 0; }}
</style></head><body></body></html>"""

# Typeset every formula (each error kept as its message), wait for the fonts they use, then
# report each element's box in page pixels (after the fonts: glyph widths change the boxes).
_TYPESET = """async ([items, opts]) => {
  document.body.replaceChildren();
  const els = items.map(([tex, size]) => {
    const div = document.createElement("div");
    div.className = "f";
    div.style.fontSize = size + "px";
    try {
      katex.render(tex, div, opts);
    } catch (e) {
      return { error: String((e && e.message) || e) };
    }
    document.body.appendChild(div);
    return { div };
  });
  void document.body.offsetHeight;  // lay out now, so the fonts it needs start loading
  await document.fonts.ready;
  return els.map((e) => {
    if (!e.div) return e;
    const r = e.div.getBoundingClientRect();
    return { x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height };
  });
}"""


class BrowserUnavailable(RuntimeError):
    """Playwright or Chromium is missing or does not start; the message says what to install."""


@dataclass(frozen=True)
class PrintStyle:
    """How one formula is typeset: font (a FONTS name), font size and padding in pixels."""

    font: str = "default"
    size: int = 32
    padding: int = 8

    def describe(self) -> str:
        return f"{self.font} {self.size} {self.padding}"


def random_styles(
    count: int,
    seed: int = 0,
    fonts: Sequence[str] = FONTS,
    sizes: tuple[int, int] = SIZES,
    paddings: tuple[int, int] = PADDINGS,
) -> list[PrintStyle]:
    """``count`` styles drawn uniformly from the given fonts and inclusive size/padding ranges."""
    unknown = [f for f in fonts if f not in FONTS]
    if unknown or not fonts:
        raise ValueError(f"unknown font {unknown[0] if unknown else '(none)'}: one of {FONTS}")
    for name, (lo, hi) in (("size", sizes), ("padding", paddings)):
        if not 0 <= lo <= hi <= 500:
            raise ValueError(f"bad {name} range {lo}-{hi} (0 <= low <= high <= 500)")
    rng = np.random.default_rng(seed)
    font = rng.integers(len(fonts), size=count)
    size = rng.integers(sizes[0], sizes[1] + 1, size=count)
    pad = rng.integers(paddings[0], paddings[1] + 1, size=count)
    return [PrintStyle(fonts[f], int(s), int(p)) for f, s, p in zip(font, size, pad, strict=True)]


def styled_latex(latex: str, font: str) -> str:
    """``latex`` with the font command of ``font`` around it (none for the default)."""
    return latex if font == "default" else f"\\{font}{{{latex}}}"


def trim_to_ink(region: np.ndarray, padding: int) -> np.ndarray | None:
    """Crop a grayscale region (dark ink on white) to its ink plus ``padding`` white pixels;
    None when there is no ink."""
    ink = region < 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        return None
    crop = region[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.pad(crop, padding, constant_values=255)


def _clean(message: str) -> str:
    # KaTeX underlines the offending input with combining low lines; keep the plain text.
    return " ".join(message.replace("\u0332", "").split())


class KatexRenderer:
    """One headless Chromium page that typesets batches of formulas with the vendored KaTeX.

    Use as a context manager (the browser is closed at the end); one at a time per thread, as
    Playwright's sync API allows. Raises :class:`BrowserUnavailable` when Playwright or Chromium
    is missing.
    """

    def __init__(self, chromium: str | None = None):
        try:
            from playwright.sync_api import Error, sync_playwright
        except ImportError as exc:
            raise BrowserUnavailable(
                f"Playwright for Python is not installed: {SETUP_HINT}"
            ) from exc
        path = chromium or CHROMIUM
        if not Path(path).exists():
            raise BrowserUnavailable(f"no Chromium at {path}: {SETUP_HINT} or set HMER_CHROMIUM")
        self._error = Error
        try:
            self._pw = sync_playwright().start()
        except Error as exc:  # Playwright's sync API runs one instance per thread
            raise RuntimeError(
                f"cannot start a browser in this thread (is another KatexRenderer open?): {exc}"
            ) from exc
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=path, headless=True, args=list(CHROMIUM_ARGS)
            )
        except Error as exc:
            self._pw.stop()
            raise BrowserUnavailable(f"Chromium at {path} does not start: {exc}") from exc
        self._page = None

    def __enter__(self) -> KatexRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser (idempotent)."""
        if self._pw is not None:
            self._browser.close()
            self._pw.stop()
            self._pw = None

    def _open_page(self):
        page = self._browser.new_page(viewport={"width": 1280, "height": 720})

        def serve(route) -> None:
            name = route.request.url.removeprefix(_ORIGIN + "/")
            path = (KATEX_DIR / name).resolve()
            if name == "":
                route.fulfill(body=_PAGE, content_type="text/html")
            elif path.is_file() and path.is_relative_to(KATEX_DIR):
                route.fulfill(path=str(path))
            else:
                route.fulfill(status=404)

        page.route(_ORIGIN + "/**", serve)
        page.route(lambda url: not url.startswith(_ORIGIN), lambda route: route.abort())
        page.goto(_ORIGIN + "/")
        page.wait_for_function("() => window.katex !== undefined")
        return page

    def render(self, items: Sequence[tuple[str, PrintStyle]]) -> list[np.ndarray | str]:
        """Typeset (LaTeX, style) pairs on one page: a uint8 grayscale image (dark on white) for
        each, or the message of why it failed (KaTeX's parse error, too large, no ink)."""
        if not items:
            return []
        try:
            if self._page is None:
                self._page = self._open_page()
            boxes = self._page.evaluate(
                _TYPESET,
                [
                    [[styled_latex(tex, st.font), st.size] for tex, st in items],
                    {
                        "displayMode": True,
                        "throwOnError": True,
                        "maxSize": MAX_SIZE_EM,
                        "maxExpand": MAX_EXPAND,
                    },
                ],
            )
            return self._cut(boxes, [st for _, st in items])
        except self._error as exc:  # a crashed page: start a new one
            self._page = None
            if len(items) > 1:  # one at a time, so that only the formula at fault fails
                return [result for item in items for result in self.render([item])]
            return [f"browser error: {_clean(str(exc).splitlines()[0])}"]

    def _cut(self, boxes: list[dict], styles: list[PrintStyle]) -> list[np.ndarray | str]:
        from PIL import Image

        out: list[np.ndarray | str] = []
        for box in boxes:
            if "error" in box:
                out.append(_clean(box["error"]))
            elif max(box["w"], box["h"]) > MAX_SIDE:
                out.append(f"renders {box['w']:.0f}x{box['h']:.0f} px, larger than {MAX_SIDE}")
            else:
                out.append("")
        for strip in _strips([(i, b) for i, b in enumerate(boxes) if out[i] == ""]):
            x0, y0 = 0, int(strip[0][1]["y"]) - MARGIN
            x1 = max(int(np.ceil(b["x"] + b["w"])) for _, b in strip) + MARGIN
            y1 = int(np.ceil(strip[-1][1]["y"] + strip[-1][1]["h"])) + MARGIN
            clip = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
            png = self._page.screenshot(clip=clip, full_page=True)
            sheet = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
            for i, b in strip:
                top = int(b["y"]) - MARGIN - y0
                bottom = int(np.ceil(b["y"] + b["h"])) + MARGIN - y0
                right = int(np.ceil(b["x"] + b["w"])) + MARGIN
                region = sheet[max(top, 0) : bottom, max(int(b["x"]) - MARGIN, 0) : right]
                image = trim_to_ink(region, styles[i].padding)
                out[i] = image if image is not None else "renders nothing visible"
        return out


def _strips(boxes: list[tuple[int, dict]]) -> Iterator[list[tuple[int, dict]]]:
    """Consecutive boxes grouped so that each group's screenshot stays under STRIP_PIXELS."""
    strip: list[tuple[int, dict]] = []
    for item in boxes:
        cand = [*strip, item]
        width = max(b["x"] + b["w"] for _, b in cand) + 2 * MARGIN
        height = cand[-1][1]["y"] + cand[-1][1]["h"] - cand[0][1]["y"] + 2 * MARGIN
        if strip and width * height > STRIP_PIXELS:
            yield strip
            cand = [item]
        strip = cand
    if strip:
        yield strip


def render_formulas(
    formulas: Iterable[tuple[str, str]],
    styles: Sequence[PrintStyle],
    renderer: KatexRenderer,
    batch: int = 64,
) -> Iterator[tuple[str, np.ndarray | str]]:
    """Render (id, LaTeX) pairs with one style each, ``batch`` per page; yields (id, image or
    error message) in input order."""
    formulas = list(formulas)
    if len(styles) < len(formulas):
        raise ValueError(f"{len(formulas)} formulas but only {len(styles)} styles")
    for start in range(0, len(formulas), batch):
        chunk = formulas[start : start + batch]
        items = [(tex, styles[start + k]) for k, (_, tex) in enumerate(chunk)]
        for (key, _), result in zip(chunk, renderer.render(items), strict=True):
            yield key, result


# Ids become file names: no path separators, no hidden files.
_SAFE_ID = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


@dataclass
class RenderReport:
    """What :func:`render_to_folder` wrote: ids rendered, one message per formula that failed."""

    written: list[str]
    errors: list[str]
    seconds: float


def render_to_folder(
    formulas: Sequence[tuple[str, list[str]]],
    out_dir: str | Path,
    styles: Sequence[PrintStyle],
    renderer: KatexRenderer,
    batch: int = 64,
    progress: bool = False,
) -> RenderReport:
    """Render (id, tokens) formulas as ``out_dir/ID.png`` and write ``captions.tsv`` (ID, tokens:
    a caption file) and ``styles.tsv`` (ID, font size padding) for those that rendered.

    A formula that fails (unknown command, no ink, unusable id) gets one message ``ID: why`` and
    the others go on.
    """
    from tqdm import tqdm

    from hmer.data.dataset import write_tsv
    from hmer.data.files import save_png

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    errors: list[str] = []
    todo: list[tuple[str, str]] = []
    todo_styles: list[PrintStyle] = []
    tokens_of: dict[str, list[str]] = {}
    for (key, tokens), style in zip(formulas, styles, strict=True):
        if not _SAFE_ID.fullmatch(key):
            errors.append(f"{key!r}: id unusable as a file name (letters, digits, _ . + - only)")
            continue
        todo.append((key, " ".join(tokens)))
        todo_styles.append(style)
        tokens_of[key] = tokens
    written: list[str] = []
    style_of = dict(zip((k for k, _ in todo), todo_styles, strict=True))
    results = render_formulas(todo, todo_styles, renderer, batch)
    for key, result in tqdm(results, total=len(todo), desc="render", disable=not progress):
        if isinstance(result, str):
            errors.append(f"{key}: {result}")
            continue
        save_png(result, out_dir / f"{key}.png")
        written.append(key)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / "captions.tsv", ((k, " ".join(tokens_of[k])) for k in written))
    write_tsv(out_dir / "styles.tsv", ((k, style_of[k].describe()) for k in written))
    return RenderReport(written, errors, time.perf_counter() - t0)
