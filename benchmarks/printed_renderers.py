"""Which math renderer for printed formulas: coverage and speed of KaTeX (headless Chromium) and
matplotlib's mathtext, on the CROHME training captions and a sample of im2latex formulas.

Every formula is typeset in a random style of ``hmer.data.printed`` (font, size; the same styles
for both renderers) and counts as covered when the renderer returns ink without an error. Speed is
formulas per second of wall time to images in memory (PNG writing excluded), after start-up; the
browser's start is reported on its own. mathtext is not a dependency of hmer: install matplotlib
to measure it (``pip install --target DIR matplotlib`` and ``PYTHONPATH=DIR`` will do).

    python benchmarks/printed_renderers.py                         # all captions, 2000 im2latex
    python benchmarks/printed_renderers.py --limit 500 --renderers katex --json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hmer.data.dataset import default_data_dir, read_captions
from hmer.data.printed import KatexRenderer, PrintStyle, random_styles, styled_latex, trim_to_ink


def mathtext_renderer() -> Callable[[list[tuple[str, PrintStyle]]], list[np.ndarray | str]]:
    """A batch renderer with the same contract as ``KatexRenderer.render``, on mathtext."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    matplotlib.rcParams["mathtext.fontset"] = "cm"  # TeX's Computer Modern, shipped with it
    parser = MathTextParser("agg")

    def render(items: list[tuple[str, PrintStyle]]) -> list[np.ndarray | str]:
        out: list[np.ndarray | str] = []
        for tex, style in items:
            try:
                parsed = parser.parse(
                    f"${styled_latex(tex, style.font)}$", 72, FontProperties(size=style.size)
                )
                ink = np.asarray(parsed.image)  # ink coverage, 0..255
                image = trim_to_ink(255 - ink.astype(np.uint8), style.padding)
                out.append(image if image is not None else "renders nothing visible")
            except Exception as exc:  # parse errors are ValueErrors; count anything as a miss
                # mathtext's message quotes the formula first; its last line says why.
                lines = [line for line in str(exc).splitlines() if line.strip()]
                out.append(f"{type(exc).__name__}: {lines[-1] if lines else ''}")
        return out

    return render


def error_class(message: str) -> str:
    """The reason of a failure without where in the formula, to count failures by kind."""
    message = re.sub(r"^(KaTeX parse error|\w+Error: Parse\w*Exception): ", "", message)
    return re.sub(r"(,? found| at position| *\(at char).*", "", message)[:80]


def im2latex_sample(folder: Path, count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` random formulas of the im2latex files (ids FILE:LINE), as the files write them."""
    rows = []
    for path in sorted(folder.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows += [(f"{path.stem}:{i}", line) for i, line in enumerate(lines, 1) if line.strip()]
    keep = np.random.default_rng(seed).permutation(len(rows))[:count]
    return [rows[i] for i in sorted(keep)]


def measure(render, formulas: list[tuple[str, str]], seed: int, batch: int) -> dict:
    styles = random_styles(len(formulas), seed)
    ok = 0
    reasons: Counter = Counter()
    t0 = time.perf_counter()
    for start in range(0, len(formulas), batch):
        chunk = formulas[start : start + batch]
        items = [(tex, styles[start + k]) for k, (_, tex) in enumerate(chunk)]
        for result in render(items):
            if isinstance(result, str):
                reasons[error_class(result)] += 1
            else:
                ok += 1
    seconds = time.perf_counter() - t0
    return {
        "formulas": len(formulas),
        "rendered": ok,
        "percent": round(100 * ok / max(len(formulas), 1), 2),
        "per_s": round(len(formulas) / seconds, 1),
        "top_errors": reasons.most_common(8),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="CROHME folder (default: auto)")
    p.add_argument("--limit", type=int, default=0, help="only the first N captions (0: all)")
    p.add_argument("--im2latex", type=int, default=2000, help="im2latex formulas sampled")
    p.add_argument("--renderers", default="katex,mathtext")
    p.add_argument("--batch", type=int, default=64, help="formulas per page (KaTeX)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    data_dir = args.data_dir or default_data_dir()
    captions = list(read_captions(data_dir / "train_caption.txt").items())
    captions = captions[: args.limit or None]
    sources = {
        "crohme_train": [(k, " ".join(v)) for k, v in captions],
        "im2latex": im2latex_sample(data_dir.parent / "formulas", args.im2latex, args.seed),
    }
    report: dict = {}
    for name in args.renderers.split(","):
        t0 = time.perf_counter()
        if name == "katex":
            renderer = KatexRenderer()
            render, close = renderer.render, renderer.close
        elif name == "mathtext":
            render, close = mathtext_renderer(), lambda: None
        else:
            raise SystemExit(f"unknown renderer {name!r} (katex, mathtext)")
        # A first small batch loads the page, the fonts and the parser: start-up, not speed.
        render([("x", PrintStyle(font)) for font in ("default", "mathsf", "mathtt", "mathbf")])
        entry: dict = {"startup_s": round(time.perf_counter() - t0, 2)}
        try:
            for source, formulas in sources.items():
                entry[source] = measure(render, formulas, args.seed, args.batch)
        finally:
            close()
        report[name] = entry
        if not args.json:
            print(f"{name}: start-up {entry['startup_s']} s")
            for source in sources:
                r = entry[source]
                print(
                    f"  {source:13s} {r['rendered']:5d}/{r['formulas']} rendered "
                    f"({r['percent']:.2f}%), {r['per_s']:.1f} formulas/s"
                )
                for why, n in r["top_errors"]:
                    print(f"      {n:5d}  {why}")
    if args.json:
        print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
