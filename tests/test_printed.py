"""Printed formulas: KaTeX renders in headless Chromium through ``hmer data render-latex``.

The rendering tests need Debian's chromium and Playwright for Python (scripts/setup-browser.sh,
which CI runs); they are skipped, with the reason, only when one of them is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmer.cli import main
from hmer.data.dataset import read_captions, read_tsv
from hmer.data.images import prepare_image
from hmer.data.printed import (
    CHROMIUM,
    FONTS,
    KatexRenderer,
    PrintStyle,
    random_styles,
    styled_latex,
    trim_to_ink,
)

HAVE_BROWSER = importlib.util.find_spec("playwright") is not None and Path(CHROMIUM).exists()
needs_browser = pytest.mark.skipif(
    not HAVE_BROWSER,
    reason=f"needs Playwright and Chromium at {CHROMIUM} (run scripts/setup-browser.sh)",
)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HMER_DEBUG", raising=False)


@pytest.fixture
def renderer():  # per test: the CLI tests start their own, and a thread runs one at a time
    if not HAVE_BROWSER:
        pytest.skip(f"needs Playwright and Chromium at {CHROMIUM} (run scripts/setup-browser.sh)")
    with KatexRenderer() as r:  # a browser that is there but does not start is a failure
        yield r


def test_random_styles_are_seeded_and_within_the_papers_range():
    a = random_styles(500, seed=3)
    assert a == random_styles(500, seed=3) and a != random_styles(500, seed=4)
    assert {s.font for s in a} == set(FONTS)
    assert min(s.size for s in a) == 16 and max(s.size for s in a) == 50
    assert min(s.padding for s in a) == 0 and max(s.padding for s in a) == 15
    assert {s.font for s in random_styles(50, 0, fonts=["mathtt"])} == {"mathtt"}
    with pytest.raises(ValueError, match="unknown font"):
        random_styles(1, fonts=["mathcal"])
    with pytest.raises(ValueError, match="bad size range"):
        random_styles(1, sizes=(40, 20))


def test_styled_latex_wraps_the_whole_formula():
    assert styled_latex("x ^ { 2 }", "default") == "x ^ { 2 }"
    assert styled_latex("x ^ { 2 }", "mathsf") == r"\mathsf{x ^ { 2 }}"


def test_trim_to_ink_crops_then_pads_with_white():
    region = np.full((20, 30), 255, np.uint8)
    region[5:8, 10:20] = 0
    out = trim_to_ink(region, 4)
    assert out.shape == (3 + 8, 10 + 8)
    assert (out[:4] == 255).all() and (out[4:7, 4:14] == 0).all()
    assert trim_to_ink(np.full((5, 5), 255, np.uint8), 3) is None


def test_renders_dark_ink_on_white_with_the_asked_size_and_padding(renderer):
    formula = r"\frac { x ^ { 2 } } { \sqrt { y } } + \int \limits _ { 0 } ^ { 1 } \alpha d t"
    small, big, padded = renderer.render(
        [
            (formula, PrintStyle("default", 16, 0)),
            (formula, PrintStyle("default", 48, 0)),
            (formula, PrintStyle("default", 48, 12)),
        ]
    )
    for img in (small, big, padded):
        assert isinstance(img, np.ndarray) and img.dtype == np.uint8
        assert np.median(img) == 255 and img.min() < 64  # white paper, dark ink
    assert 2.5 < big.shape[0] / small.shape[0] < 3.5  # 48 px type is about 3x the 16 px one
    # The same type, padded: 12 white pixels on each side (the ink itself may differ by a pixel
    # of anti-aliasing, as its place on the page does by a fraction of one).
    assert (padded[:12] == 255).all() and (padded[:, -12:] == 255).all()
    assert padded[12].min() < 255 and padded[:, 12].min() < 255
    assert abs(padded.shape[0] - 24 - big.shape[0]) <= 1
    assert abs(padded.shape[1] - 24 - big.shape[1]) <= 1
    for edge in (big[0], big[-1], big[:, 0], big[:, -1]):  # no padding: ink touches each side
        assert edge.min() < 255


def test_each_font_draws_differently_and_unknown_commands_fail_alone(renderer):
    formula = "f ( x ) = 2 x + 1"
    results = renderer.render([(formula, PrintStyle(f, 30, 2)) for f in FONTS])
    results += renderer.render([(r"x + \foo", PrintStyle()), ("y", PrintStyle())])
    images = results[: len(FONTS)]
    assert all(isinstance(r, np.ndarray) for r in images)
    signatures = {(r.shape, r.tobytes()) for r in images}
    assert len(signatures) == len(FONTS)
    error, after = results[len(FONTS) :]
    assert isinstance(error, str) and "Undefined control sequence" in error and r"\foo" in error
    assert isinstance(after, np.ndarray)


def test_a_printed_render_is_read_by_the_image_pipeline(renderer):
    (img,) = renderer.render([("a ^ { 2 } + b ^ { 2 } = c ^ { 2 }", PrintStyle("mathsf", 40, 5))])
    model_input = prepare_image(img, "render")
    assert model_input.max() == 255 and np.median(model_input) == 0  # white ink on black


@needs_browser
def test_render_latex_cli_writes_pngs_and_caption_files(tmp_path, capsys):
    captions = tmp_path / "caps.txt"
    captions.write_text(
        "a1\tx ^ { 2 } + 1\n"
        "b2\t\\frac { 1 } { \\notacommand }\n"
        "c3\t\\sum _ { i = 1 } ^ { n } i\n"
        "d4\t\\{ a \\} \\cdot \\ldots \\leq \\lim _ { x \\rightarrow 0 }\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code = main(["data", "render-latex", str(captions), "-o", str(out), "--quiet", "--seed", "5"])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "Traceback" not in stderr
    assert "rendered 3 of 4 formulas" in stdout
    (line,) = [x for x in stderr.splitlines() if "b2" in x]
    assert line.startswith("hmer: error: ") and r"Undefined control sequence: \notacommand" in line
    assert sorted(p.name for p in out.glob("*.png")) == ["a1.png", "c3.png", "d4.png"]
    assert Image.open(out / "c3.png").mode == "L"
    # The caption file is what the training data and hmer score read.
    rendered = read_captions(out / "captions.tsv")
    assert rendered == {k: v for k, v in read_captions(captions).items() if k != "b2"}
    styles, errors = read_tsv(out / "styles.tsv")
    assert not errors and set(styles) == set(rendered)
    for font, size, pad in styles.values():
        assert font in FONTS and 16 <= int(size) <= 50 and 0 <= int(pad) <= 15

    # The same seed draws the same styles; --fonts restricts them; --lines reads plain files.
    plain = tmp_path / "forms.txt"
    plain.write_text("x ^ { 2 } + 1\n\n\\sqrt { 2 }\n", encoding="utf-8")
    out2 = tmp_path / "out2"
    argv = ["data", "render-latex", str(plain), "-o", str(out2), "--lines", "--quiet"]
    assert main([*argv, "--fonts", "mathtt", "--seed", "5"]) == 0
    styles2, _ = read_tsv(out2 / "styles.tsv")
    assert set(styles2) == {"forms-1", "forms-3"}
    assert {v[0] for v in styles2.values()} == {"mathtt"}


def test_render_latex_cli_says_what_to_install_without_chromium(tmp_path, capsys, monkeypatch):
    import hmer.data.printed as printed

    monkeypatch.setattr(printed, "CHROMIUM", str(tmp_path / "no-chromium"))
    captions = tmp_path / "caps.txt"
    captions.write_text("a\tx\n", encoding="utf-8")
    code = main(["data", "render-latex", str(captions), "-o", str(tmp_path / "o")])
    _, stderr = capsys.readouterr()
    assert code == 1 and "Traceback" not in stderr
    assert "setup-browser.sh" in stderr
