"""The symbol classifier: cutting labelled symbols from segmented ink, crops, a tiny training run
with resume, ``hmer symbol``, ``hmer export`` of it and ``POST /v1/symbol``.

Every sample is made here: a few glyph shapes drawn with random wobble, segmented like CROHME.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from inkml_samples import make_inkml, x_plus_one
from PIL import Image, ImageDraw

from hmer.data.images import ImageError
from hmer.data.inkml import Ink, Symbol, parse_inkml
from hmer.data.symbols import cut_symbols, render_symbol, symbol_bitmap, symbol_token
from hmer.data.vocab import Vocab
from hmer.training.config import ConfigError, symbol_config
from hmer.training.symbols import (
    SymbolCrops,
    accuracy,
    build_crops,
    export_release,
    train_symbols,
)

# Glyphs as polylines in a unit box (y down), and how CROHME would label them.
SHAPES = {
    "x": [[(0, 0), (1, 1)], [(1, 0), (0, 1)]],
    "+": [[(0, 0.5), (1, 0.5)], [(0.5, 0), (0.5, 1)]],
    "1": [[(0.2, 0.2), (0.5, 0), (0.5, 1)]],
    "-": [[(0, 0.5), (1, 0.5)]],
    "2": [[(0, 0.25), (0.5, 0), (1, 0.25), (0, 1), (1, 1)]],
    "<": [[(1, 0), (0, 0.5), (1, 1)]],
}
LABELS = {"<": r"\lt"}
VOCAB = Vocab([*SHAPES, "y"])  # "y" is never written: no class of its own


def _stroke(line, rng, at: float) -> np.ndarray:
    pts = []
    for (x0, y0), (x1, y1) in zip(line[:-1], line[1:], strict=True):
        for a in np.linspace(0, 1, 8, endpoint=False):
            pts.append((x0 + a * (x1 - x0), y0 + a * (y1 - y0)))
    pts.append(line[-1])
    p = np.array(pts, np.float32) + rng.normal(0, 0.03, (len(pts), 2)).astype(np.float32)
    return (p + [at, 0]) * 40


def expression(tokens: list[str], rng) -> Ink:
    """Segmented ink of ``tokens`` written left to right."""
    traces, symbols = [], []
    for i, tok in enumerate(tokens):
        ids = []
        for line in SHAPES[tok]:
            ids.append(str(len(traces)))
            traces.append(_stroke(line, rng, 1.4 * i))
        symbols.append(Symbol(LABELS.get(tok, tok), ids))
    return Ink(traces, None, symbols, [str(i) for i in range(len(traces))])


def inks(n: int, seed: int) -> list[tuple[str, Ink]]:
    rng = np.random.default_rng(seed)
    names = list(SHAPES)
    return [
        (f"e{seed}-{i}", expression([str(t) for t in rng.choice(names, 3)], rng)) for i in range(n)
    ]


CFG = ["size=16", "width=4", "epochs=4", "batch_size=16", "warmup_steps=4", "lr=0.02"]


@pytest.fixture(scope="module")
def crops() -> SymbolCrops:
    train = inks(50, 1)
    val_ids = {key for key, _ in train[:10]}
    return build_crops(train, inks(8, 2), val_ids, VOCAB, size=16, variants=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, crops):
    run = tmp_path_factory.mktemp("symbols") / "run"
    state = train_symbols(symbol_config({}, CFG), run, crops)
    return run, state


@pytest.fixture(scope="module")
def release(trained, tmp_path_factory):
    run, _ = trained
    return export_release(run / "best.pt", tmp_path_factory.mktemp("rel") / "symbols.safetensors")


# -- labels and cutting ---------------------------------------------------------------------------
def test_labels_map_to_caption_tokens_as_the_captions_are_normalized():
    tokens = {"<", ">", r"\neq", r"\leq", ",", r"\alpha", "x", r"\{", r"\sin"}
    mapped = {
        r"\lt": "<",
        r"\gt": ">",
        r"\ne": r"\neq",
        r"\le": r"\leq",
        "COMMA": ",",
        r" \alpha ": r"\alpha",
        "x": "x",
        r"\{": r"\{",
        r"\sin": r"\sin",
    }
    for label, token in mapped.items():
        assert symbol_token(label, tokens) == token, label
    for label in (r"\beta", "xy", "", "{", "$", "junk label"):  # not one token of the set
        assert symbol_token(label, tokens) is None, label


def test_cut_symbols_from_a_segmented_inkml_file():
    traces, groups = x_plus_one()
    traces.append(np.array([[30, 9], [29, 12]], np.float32))
    groups = [*groups, ("COMMA", [5]), (r"\weird", [4]), ("x", [99])]  # 99: no such trace
    ink = parse_inkml(make_inkml(traces, "$x+1,$", groups))
    symbols, skipped = cut_symbols(ink, {"x", "+", "1", ","})
    assert [(s.token, len(s.strokes)) for s in symbols] == [("x", 2), ("+", 2), ("1", 1), (",", 1)]
    assert np.array_equal(symbols[3].strokes[0], traces[5])
    assert skipped == {r"\weird": 1, "<no traces>": 1}


def test_a_render_keeps_the_aspect_ratio_and_fills_the_square():
    dash = render_symbol([np.array([[0, 0], [50, 0]], np.float32)], 32)
    bar = render_symbol([np.array([[0, 0], [0, 50]], np.float32)], 32)
    assert dash.shape == bar.shape == (32, 32) and dash.dtype == np.uint8
    rows, cols = np.nonzero(dash > 127)
    assert np.ptp(cols) >= 24 and np.ptp(rows) <= 4  # wide and flat, centred
    assert abs(rows.mean() - 15.5) < 2
    assert np.array_equal(bar, dash.T)
    plus = render_symbol(expression(["+"], np.random.default_rng(0)).traces, 48)
    assert plus.shape == (48, 48)


def _png(strokes, scale: float = 6.0, width: int = 5) -> bytes:
    """Dark ink on white paper, much larger than a crop, as a user's picture would be."""
    img = Image.new("L", (400, 400), 255)
    d = ImageDraw.Draw(img)
    for s in strokes:
        d.line([(50 + x * scale, 50 + y * scale) for x, y in s], fill=20, width=width)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_an_image_of_a_symbol_looks_like_the_render_of_its_ink():
    ink = expression(["2"], np.random.default_rng(3))
    for width in (2, 9):  # thin and heavy pens
        square = symbol_bitmap(_png(ink.traces, width=width), 32)
        drawn = render_symbol(ink.traces, 32)
        a, b = square > 100, drawn > 100
        assert (a & b).sum() / (a | b).sum() > 0.4, width
    with pytest.raises(ImageError, match="no ink"):
        symbol_bitmap(_png([]), 32)
    with pytest.raises(ImageError):
        symbol_bitmap(b"not an image", 32)


# -- crops and training ---------------------------------------------------------------------------
def test_crops_hold_out_whole_expressions_and_skip_unknown_labels(crops, tmp_path):
    assert crops.classes == ["x", "+", "1", "-", "2", "<"]  # vocabulary order, no "y"
    assert crops.train.shape == (2, 120, 16, 16) and crops.val.shape == (30, 16, 16)
    assert len(crops.test) == 24 and crops.skipped == {}
    assert not np.array_equal(crops.train[0], crops.train[1])  # two different renders
    crops.save(tmp_path / "c.npz")
    again = SymbolCrops.load(tmp_path / "c.npz")
    assert again.classes == crops.classes and np.array_equal(again.val, crops.val)
    odd = expression(["x"], np.random.default_rng(0))
    odd.symbols.append(Symbol("COMMA", ["0"]))  # a label outside the vocabulary
    skipped = build_crops([("a", odd)], [], set(), VOCAB, size=16, variants=1).skipped
    assert skipped == {"COMMA": 1}


def test_tiny_training_learns_and_scores_the_test_set_once(trained, crops):
    run, state = trained
    assert state["epoch"] == 4
    for name in ("last.pt", "best.pt", "log.csv", "eval.csv", "config.json", "result.json"):
        assert (run / name).exists(), name
    rows = (run / "eval.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,cpu_hours,split,top1,top5" and len(rows) == 5
    assert all(r.split(",")[3] == "val" for r in rows[1:])  # the test set never selects
    result = json.loads((run / "result.json").read_text())
    assert result["val"]["n"] == 30 and result["test_2014"]["n"] == 24
    assert result["val"]["top1"] >= 60, result  # 6 shapes: chance is 17%
    assert result["val"]["top1"] == max(float(r.split(",")[4]) for r in rows[1:])


def test_resume_after_an_interruption_continues_exactly(tmp_path, crops, monkeypatch):
    cfg = symbol_config({}, [*CFG, "epochs=2", "checkpoint_minutes=0"])
    straight = train_symbols(cfg, tmp_path / "straight", crops)
    steps = straight["step"]
    real_step = torch.optim.AdamW.step
    calls = []

    def dies_at_step_11(self, *args, **kwargs):  # mid-epoch: 8 batches an epoch
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", dies_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        train_symbols(cfg, tmp_path / "cut", crops)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    at = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["state"]
    assert (at["epoch"], at["batch"], at["step"]) == (1, 2, 10)
    resumed = train_symbols(cfg, tmp_path / "cut", crops, resume=True)
    assert resumed["step"] == steps
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["result"]["val"] == straight["result"]["val"]


def test_a_time_budget_stops_resumably(tmp_path, crops):
    cfg = symbol_config({}, [*CFG, "max_minutes=1e-9"])
    state = train_symbols(cfg, tmp_path / "run", crops)
    assert (state["epoch"], state["step"]) == (0, 1) and "test_2014" in state["result"]
    again = train_symbols(symbol_config({}, [*CFG, "epochs=1"]), tmp_path / "run", crops, True)
    assert again["epoch"] == 1 and again["step"] == 8


def test_symbol_config_is_checked():
    from pathlib import Path

    from hmer.training.config import read_config

    shipped = Path(__file__).parents[1] / "configs" / "symbols" / "classifier.toml"
    cfg = symbol_config(read_config(shipped))
    assert (cfg.size, cfg.width, cfg.epochs, cfg.val_size) == (32, 16, 4, 500)
    assert symbol_config({"symbols": {"size": 48}}, ["width=8"]).size == 48
    for raw, overrides, match in (
        ({}, ["sise=48"], "did you mean symbols.size"),
        ({}, ["size=big"], "must be an integer, not .big."),
        ({}, ["size=4"], "too small"),
        ({}, ["dropout=2"], "probability"),
        ({"train": {}}, [], "only a \\[symbols\\] table"),
    ):
        with pytest.raises(ConfigError, match=match):
            symbol_config(raw, overrides)


# -- hmer symbol and hmer export ------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from hmer.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_makes_a_small_fp16_release_in_the_manifest(capsys, trained, tmp_path):
    from hmer.weights import WeightsError, load_model, read_manifest

    run, _ = trained
    out = tmp_path / "w" / "symbols.safetensors"
    code, text, _ = run_cli(capsys, "export", run / "best.pt", "-o", out, "--default-for", "symbol")
    assert code == 0 and f"wrote {out}" in text
    entry = read_manifest(out.parent)["symbols.safetensors"]
    assert entry["input_kind"] == "symbol" and entry["default_for"] == "symbol"
    with pytest.raises(WeightsError, match="symbol classifier"):
        load_model(out)  # not an expression model
    code, _, err = run_cli(capsys, "recognize", "--model", out, _write_png(tmp_path))
    assert code == 1 and "symbol classifier" in err and "Traceback" not in err


def _write_png(tmp_path, strokes=None):
    path = tmp_path / "sym.png"
    path.write_bytes(_png(strokes if strokes is not None else SHAPES["x"], scale=200.0))
    return path


def test_symbol_command_on_inkml_and_images(capsys, release, tmp_path):
    from hmer.symbol_classifier import SymbolClassifier

    ink = expression(["x"], np.random.default_rng(5))
    inkml = tmp_path / "x.inkml"
    inkml.write_text(make_inkml(ink.traces, None))  # unsegmented: all of it is the symbol
    code, out, _ = run_cli(capsys, "symbol", inkml, "--model", release, "--json")
    assert code == 0
    answer = json.loads(out)
    scores = [c["score"] for c in answer["candidates"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0001
    direct = SymbolClassifier.load(release).classify_traces(ink.traces)
    assert [c["latex"] for c in answer["candidates"]] == [c.latex for c in direct.candidates]
    code, out, _ = run_cli(capsys, "symbol", inkml, "--model", release, "--top", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[0].startswith("1. ") and "%" in lines[0]
    code, out, _ = run_cli(capsys, "symbol", _write_png(tmp_path), "--model", release)
    assert code == 0 and len(out.splitlines()) == 5


def test_symbol_command_errors_are_one_clear_line(capsys, release, tmp_path):
    bad = tmp_path / "bad.inkml"
    bad.write_text("<ink><trace>0 0, 1")
    (tmp_path / "blank.png").write_bytes(_png([]))
    for path, words in (
        (bad, "malformed XML"),
        (tmp_path / "blank.png", "no ink"),
        (tmp_path / "missing.png", "no such file"),
    ):
        code, out, err = run_cli(capsys, "symbol", path, "--model", release)
        assert code == 1 and out == "" and words in err and "Traceback" not in err, err
    code, _, err = run_cli(capsys, "symbol", bad, "--model", tmp_path / "none.safetensors")
    assert code == 1 and "not found" in err
    code, _, err = run_cli(capsys, "symbol", bad, "--model", release, "--top", "0")
    assert code == 2


def test_the_classifier_reads_its_training_checkpoint_too(trained, crops):
    from hmer.symbol_classifier import SymbolClassifier

    run, _ = trained
    classifier = SymbolClassifier.load(run / "best.pt")
    assert classifier.classes == crops.classes and classifier.size == 16
    top1 = accuracy(classifier.model, crops.val, crops.val_labels)["top1"]
    result = json.loads((run / "result.json").read_text())
    assert top1 == result["val"]["top1"]


# -- POST /v1/symbol ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(release):
    pytest.importorskip("fastapi")
    from serve_helpers import local_client, tiny_image_recognizer

    from hmer.interfaces.api import create_app
    from hmer.symbol_classifier import SymbolClassifier

    app = create_app({"tiny": tiny_image_recognizer()}, symbols=SymbolClassifier.load(release))
    with local_client(app, raise_server_exceptions=False) as client:
        yield client


def _strokes(tok: str) -> list:
    return [s.tolist() for s in expression([tok], np.random.default_rng(7)).traces]


def test_symbol_route_answers_strokes_inkml_and_images(api, tmp_path):
    resp = api.post("/v1/symbol", json={"strokes": _strokes("+")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"candidates", "model", "time_ms", "total_ms"}
    assert len(body["candidates"]) == 5 and body["model"] == "symbols"
    assert api.get("/v1/models").json()["symbol_model"] == "symbols"
    three = api.post("/v1/symbol?top=3", json={"strokes": _strokes("+")}).json()
    assert [c["latex"] for c in three["candidates"]] == [c["latex"] for c in body["candidates"][:3]]
    assert (
        len(api.post("/v1/symbol", json={"strokes": _strokes("+"), "top": 2}).json()["candidates"])
        == 2
    )
    traces = [np.array(s, np.float32) for s in _strokes("+")]
    inkml = make_inkml(traces, None).encode()
    four = api.post("/v1/symbol", files={"file": ("plus.inkml", inkml)}, data={"top": "4"})
    assert four.status_code == 200 and len(four.json()["candidates"]) == 4
    raw = api.post("/v1/symbol", content=inkml, headers={"content-type": "application/inkml+xml"})
    assert raw.json()["candidates"][:4] == four.json()["candidates"]
    png = _write_png(tmp_path, SHAPES["+"]).read_bytes()
    resp = api.post("/v1/symbol", content=png, headers={"content-type": "image/png"})
    assert resp.status_code == 200 and len(resp.json()["candidates"]) == 5


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"strokes": []}}, 422, "empty_strokes"),
        ({"json": {"strokes": "x"}}, 422, "invalid_strokes"),
        ({"json": {"strokes": [[[0, 0]]], "top": 0}}, 422, "bad_top"),
        (
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        ({"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n garbage")}}, 422, "bad_input"),
        ({"files": {"file": ("a.inkml", b"<ink><trace>0 0, 1")}}, 422, "bad_input"),
        (
            {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ],
)
def test_symbol_route_refuses_bad_input_with_json_errors(api, kwargs, status, code):
    resp = api.post("/v1/symbol", **kwargs)
    assert resp.status_code == status and resp.json()["code"] == code, resp.text
    assert api.post("/v1/symbol?top=99", json={"strokes": _strokes("1")}).status_code == 422


def test_symbol_route_without_a_classifier_and_in_the_docs():
    from serve_helpers import local_client, tiny_image_recognizer

    from hmer.interfaces.api import create_app

    with local_client(create_app({"tiny": tiny_image_recognizer()})) as c:
        resp = c.post("/v1/symbol", json={"strokes": _strokes("1")})
        assert resp.status_code == 422 and resp.json()["code"] == "no_model"
        assert c.get("/v1/models").json()["symbol_model"] is None
        spec = c.get("/openapi.json").json()["paths"]["/v1/symbol"]["post"]
        assert set(spec["requestBody"]["content"]) >= {"application/json", "multipart/form-data"}
        assert "SymbolResponse" in json.dumps(spec["responses"]["200"])


def test_the_shipped_classifier_is_small_listed_and_reads_drawn_symbols(tmp_path):
    from hmer.symbol_classifier import SymbolClassifier
    from hmer.weights import WEIGHTS_DIR, default_weights, read_manifest, sha256

    path = default_weights("symbol")
    assert path == WEIGHTS_DIR / "symbols.safetensors" and path.stat().st_size < 2_000_000
    entry = read_manifest()[path.name]
    assert entry["input_kind"] == "symbol" and entry["sha256"] == sha256(path)
    classifier = SymbolClassifier.load()
    assert classifier.size == 32 and len(classifier.classes) == 101
    for tok in SHAPES:  # clean made-up shapes, never seen in training
        ink = expression([tok], np.random.default_rng(0))
        assert classifier.classify_traces(ink.traces).candidates[0].latex == tok, tok
    for tok in ("+", "<"):
        top = classifier.classify_file(_write_png(tmp_path, SHAPES[tok])).candidates[0]
        assert top.latex == tok, tok


def test_serve_loads_the_given_the_shipped_or_no_symbol_classifier(release):
    from hmer.interfaces.cli_serve import _load_symbols
    from hmer.weights import WeightsError

    assert _load_symbols("none") is None
    assert _load_symbols(str(release)).size == 16
    assert _load_symbols(None).size == 32  # the shipped one
    with pytest.raises(WeightsError):
        _load_symbols("missing.safetensors")
