"""End to end in a real headless Chromium: draw on the page, see LaTeX and its KaTeX rendering.

Needs Debian's chromium (/usr/bin/chromium) and Playwright for Python, both installed by
``scripts/setup-browser.sh``; skipped with a reason when either is missing. Playwright never
downloads a browser here: it drives the system Chromium.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

pytest.importorskip("fastapi")
from serve_helpers import live_server, png_bytes, tiny_image_recognizer  # noqa: E402

from hmer.interfaces.api import create_app  # noqa: E402

CHROMIUM = os.environ.get("HMER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for this machine: no sandbox as root, and no background traffic to a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (run scripts/setup-browser.sh)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with live_server(create_app({"tiny": tiny_image_recognizer()})) as url:
            yield url
    finally:
        torch.set_num_threads(before)


def open_page(browser, url: str, **context_args):
    """A fresh page on ``url`` that records console errors and any request leaving the server."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    problems: list[str] = []
    origin = urlsplit(url).netloc
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def check_request(req):
        if urlsplit(req.url).scheme in ("http", "https") and urlsplit(req.url).netloc != origin:
            problems.append(f"off-server request: {req.url}")

    page.on("request", check_request)
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status}: {r.url}"))
    page.goto(url + "/")
    page.wait_for_function("() => window.katex !== undefined")
    return context, page, problems


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes with the mouse, in fractions of the canvas size."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        (x0, y0), rest = stroke[0], stroke[1:]
        page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


# x + 1 = 2, roughly, in fractions of the canvas
EXPRESSION = [
    [(0.10, 0.35), (0.20, 0.65)],
    [(0.20, 0.35), (0.10, 0.65)],  # x
    [(0.26, 0.50), (0.36, 0.50)],
    [(0.31, 0.40), (0.31, 0.60)],  # +
    [(0.42, 0.42), (0.46, 0.35), (0.46, 0.65)],  # 1
    [(0.54, 0.46), (0.64, 0.46)],
    [(0.54, 0.55), (0.64, 0.55)],  # =
    [(0.70, 0.40), (0.75, 0.35), (0.80, 0.40), (0.70, 0.65), (0.81, 0.65)],  # 2
]

RESULT_SHOWN = "() => document.getElementById('status').textContent.includes('model tiny')"


def test_draw_see_latex_and_rendering(browser, server, tmp_path):
    context, page, problems = open_page(browser, server, viewport={"width": 1100, "height": 800})
    try:
        assert page.locator("#hint").is_visible()
        with page.expect_response(lambda r: r.url.endswith("/v1/recognize")) as answer:
            draw(page, EXPRESSION)
        assert answer.value.status == 200
        page.wait_for_function(RESULT_SHOWN, timeout=30_000)
        body = answer.value.json()
        latex = page.input_value("#latex")
        assert latex == body["latex"]
        assert latex, "the tiny model gave an empty answer; the rendering check needs text"
        page.wait_for_selector("#render .katex", timeout=5_000)
        assert not page.locator("#hint").is_visible()
        shot = tmp_path / "hmer-drawn.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        # Editing the LaTeX re-renders it live; KaTeX builds a fraction.
        page.fill("#latex", r"\frac{x+1}{2}")
        page.wait_for_selector("#render .katex .mfrac", timeout=5_000)
        # Alternatives (beam 2) can be chosen with a click.
        alts = page.locator("#alts button")
        if alts.count() > 1:
            alts.nth(1).click()
            assert page.input_value("#latex") == body["alternatives"][1]["latex"]
        # Undo re-reads the drawing; Clear empties everything.
        with page.expect_response(lambda r: r.url.endswith("/v1/recognize")):
            page.click("#undo")
        page.click("#clear")
        assert page.input_value("#latex") == ""
        assert page.locator("#hint").is_visible()
        assert problems == [], problems
    finally:
        context.close()


def touch_draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes with a finger (real touch events through the DevTools protocol)."""
    box = page.locator("#pad").bounding_box()
    cdp = page.context.new_cdp_session(page)

    def at(x: float, y: float) -> list[dict]:
        return [{"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]}]

    for stroke in strokes:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": at(*stroke[0])})
        for (x0, y0), (x1, y1) in zip(stroke[:-1], stroke[1:], strict=True):
            for k in range(1, 9):
                a = k / 8
                point = at(x0 + a * (x1 - x0), y0 + a * (y1 - y0))
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": point})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def test_touch_and_upload_on_a_phone_sized_page(browser, server, tmp_path):
    context, page, problems = open_page(
        browser,
        server,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        has_touch=True,
        is_mobile=True,
    )
    try:
        scroll = page.evaluate("() => window.scrollY")
        with page.expect_response(lambda r: r.url.endswith("/v1/recognize")) as answer:
            touch_draw(page, EXPRESSION[:4])
        assert answer.value.status == 200
        assert page.evaluate("() => window.scrollY") == scroll  # drawing did not scroll the page
        page.wait_for_function(RESULT_SHOWN, timeout=30_000)
        page.screenshot(path=str(tmp_path / "hmer-phone-touch.png"), full_page=True)
        page.click("#clear")

        image = tmp_path / "expr.png"
        image.write_bytes(png_bytes())
        with page.expect_response(lambda r: r.url.endswith("/v1/recognize")) as answer:
            page.set_input_files("#file", str(image))
        assert answer.value.status == 200
        page.wait_for_function(RESULT_SHOWN, timeout=30_000)
        # Nothing overflows the narrow viewport sideways.
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390
        blank = tmp_path / "blank.png"
        blank.write_bytes(png_bytes(blank=True))
        page.set_input_files("#file", str(blank))
        page.wait_for_function(
            "() => document.getElementById('status').textContent.includes('no ink')"
        )
        assert page.input_value("#latex") == ""  # a refused input leaves no stale answer
        page.screenshot(path=str(tmp_path / "hmer-phone.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'hmer-phone.png'}")
        # The 422 for the blank page is expected; any other problem is not.
        assert [p for p in problems if "422" not in p] == [], problems
    finally:
        context.close()


def test_api_docs_work_offline(browser, server):
    context = browser.new_context()
    page = context.new_page()
    outside: list[str] = []
    origin = urlsplit(server).netloc
    page.on(
        "request", lambda r: urlsplit(r.url).netloc not in (origin, "") and outside.append(r.url)
    )
    try:
        page.goto(server + "/docs")
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=20_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/v1/recognize" in p for p in paths)
        assert outside == []
    finally:
        context.close()
