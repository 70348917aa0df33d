"""Fusion of the image and stroke models for pen input, on tiny untrained models and synthetic
scores: pooling, rescoring, routes on the command line and the API, greedy mode, fitting."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from inkml_samples import make_inkml
from inks import write
from serve_helpers import (
    STROKES,
    TINY_IMAGE_CFG,
    TOKENS,
    local_client,
    png_bytes,
    tiny_image_recognizer,
    tiny_stroke_recognizer,
)

from hmer.data.dataset import Sample, default_data_dir
from hmer.data.inkml import read_inkml
from hmer.data.vocab import Vocab
from hmer.decoding.fusion import (
    Candidates,
    FusionParams,
    direction_scores,
    pool,
    search_lists,
)
from hmer.decoding.limits import length_limits
from hmer.decoding.search import Hypothesis, bidirectional_beam_search, greedy, sequence_logprob
from hmer.evaluation.fusion_fit import (
    Case,
    cross_validated_exprate,
    expected_calibration_error,
    fit_pool_depth,
    fit_strokes_weight,
    fit_temperature,
    load_cases,
    outcomes,
    paired,
    route_metrics,
    save_cases,
)
from hmer.fusion import FusionRecognizer, ink_recognizer
from hmer.weights import save_release

ROOT = Path(__file__).resolve().parents[1]
VOCAB = Vocab(TOKENS)
TINY_STROKE_CFG = {"name": "strokes", "conv_channels": [16, 32], "context_layers": 1}
TINY_STROKE_CFG |= {"d_model": 32, "nhead": 2, "num_layers": 1, "ffn": 64}


@pytest.fixture(scope="module")
def fusion() -> FusionRecognizer:
    return FusionRecognizer(tiny_image_recognizer(), tiny_stroke_recognizer(), beam=3)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("models")
    image, strokes = tiny_image_recognizer(), tiny_stroke_recognizer()
    a = save_release(image.model, TINY_IMAGE_CFG, VOCAB, folder / "img.safetensors", fp16=False)
    b = save_release(strokes.model, TINY_STROKE_CFG, VOCAB, folder / "pen.safetensors", fp16=False)
    return str(a), str(b)


def encoded(rec, traces):
    with torch.inference_mode():
        return rec.model.encode(*rec.as_batch(rec.prepare_ink(traces)))


def limit_of(rec, traces) -> int:
    """The length limit the recognizer's model decodes ``traces`` to (its input's size)."""
    _, masks = rec.as_batch(rec.prepare_ink(traces))
    (limit,) = length_limits(rec.model.input_kind, masks, 200)
    return limit


# -- pooling and rescoring ---------------------------------------------------------------------
def test_pool_keeps_each_distinct_hypothesis_once_with_who_found_it():
    h = lambda ids: Hypothesis(ids, -1.0, -0.5)  # noqa: E731
    lists = {
        "image": [[h([4, 5]), h([6])], [h([6]), h([7, 8])]],  # l2r and r2l lists
        "strokes": [[h([7, 8]), h([9])], [h([4, 5])]],
    }
    ids, found_by, place = pool(lists)
    assert ids == [[4, 5], [6], [7, 8], [9]]
    assert found_by == [["image", "strokes"], ["image"], ["image", "strokes"], ["strokes"]]
    assert place == [0, 0, 0, 1]  # [7, 8] is second for the image model, first for strokes
    # A pool of depth 1 holds each list's best only.
    ids, found_by, place = pool(lists, depth=1)
    assert ids == [[4, 5], [6], [7, 8]] and place == [0, 0, 0]
    assert found_by == [["image", "strokes"], ["image"], ["strokes"]]


def test_a_shallow_pool_is_the_whole_pool_cut_to_each_lists_best(fusion, monkeypatch):
    traces = write(["x", "+", "1"])
    whole = fusion.candidates(traces, beam=3)
    assert whole.within(None) is whole and max(whole.place) >= 1
    monkeypatch.setattr(fusion, "params", replace(fusion.params, pool_depth=1))
    shallow = fusion.candidates(traces, beam=3)
    cut = whole.within(1)
    assert shallow.ids == cut.ids and shallow.found_by == cut.found_by
    assert shallow.place == cut.place
    assert len(shallow.ids) < len(whole.ids)
    for role in shallow.scores:  # a hypothesis scores the same in any pool
        np.testing.assert_allclose(shallow.scores[role], cut.scores[role], atol=1e-5)
    with pytest.raises(ValueError, match="pool_depth"):
        FusionParams(pool_depth=0)


@pytest.mark.parametrize("role", ["image", "strokes"])
def test_rescoring_equals_each_models_own_beam_scoring(fusion, role):
    traces = write(["x", "+", "1"])
    cands = fusion.candidates(traces, beam=3)
    assert len({tuple(i) for i in cands.ids}) == len(cands.ids)  # deduplicated
    rec = fusion.recognizers[role]
    with torch.inference_mode():
        mem, limit = encoded(rec, traces), limit_of(rec, traces)
        own = bidirectional_beam_search(rec.model, mem, beam=3, max_len=limit)
    mine = cands.own(role, 3)
    assert [h.ids for h in mine] == [h.ids for h in own]
    assert [h.score for h in mine] == pytest.approx([h.score for h in own], abs=1e-5)
    assert [h.confidence for h in mine] == pytest.approx([h.confidence for h in own], abs=1e-5)


def test_direction_scores_are_teacher_forced_log_probabilities_per_token(fusion):
    from hmer.data.vocab import EOS_ID, SOS_ID

    rec = fusion.recognizers["strokes"]
    with torch.inference_mode():
        mem = encoded(rec, write(["2", "+", "x"]))
        seqs = [[4, 5, 6], [7], []]
        scores = direction_scores(rec.model, mem, seqs)
        r2l = sequence_logprob(rec.model, mem, seqs, "r2l")
        for seq, row in zip(seqs, scores, strict=True):
            # Read step by step, as a left-to-right search reads it, end token included.
            total = 0.0
            for t, tok in enumerate([*seq, EOS_ID]):
                prefix = torch.tensor([[SOS_ID, *seq[:t]]])
                total += float(rec.model.step(mem, prefix)[0, tok])
            assert row[0] == pytest.approx(total / (len(seq) + 1), abs=1e-5)
    assert scores[:, 1] == pytest.approx(np.array(r2l) / [len(s) + 1 for s in seqs], abs=1e-6)


def test_fused_ranking_weighs_the_two_models_and_confidences_are_a_softmax():
    scores = {
        "image": np.array([[-0.1, -0.1], [-1.0, -1.0]]),
        "strokes": np.array([[-2.0, -2.0], [-0.2, -0.2]]),
    }
    cands = Candidates([[4], [5]], [["image"], ["strokes"]], scores)
    assert FusionParams(0.0).rank(cands, 2)[0].ids == [4]  # image only
    assert FusionParams(1.0).rank(cands, 2)[0].ids == [5]  # strokes only
    ranked = FusionParams(0.5, temperature=0.5).rank(cands, 2)
    fused = np.array([-1.05, -0.6])
    expect = np.exp(fused / 0.5) / np.exp(fused / 0.5).sum()
    assert [h.ids for h in ranked] == [[5], [4]]
    assert [h.score for h in ranked] == pytest.approx([-0.6, -1.05])
    assert [h.confidence for h in ranked] == pytest.approx(expect[::-1])
    assert [h.ids for h in FusionParams(0.5).rank(cands, 1)] == [[5]]


def test_a_one_direction_model_is_scored_left_to_right_only():
    rec = tiny_stroke_recognizer()
    rec.model.bidirectional = False  # as the GRU seq2seq family declares
    with torch.inference_mode():
        mem = encoded(rec, STROKES_INK)
        (l2r,) = search_lists(rec.model, mem, beam=2)
        scores = direction_scores(rec.model, mem, [h.ids for h in l2r])
    assert np.isnan(scores[:, 1]).all() and not np.isnan(scores[:, 0]).any()
    cands = Candidates([h.ids for h in l2r], [["strokes"]] * len(l2r), {"strokes": scores})
    assert [h.ids for h in cands.own("strokes", 2)] == [h.ids for h in l2r]


STROKES_INK = [np.asarray(s, np.float64) for s in STROKES]


def test_models_must_share_a_vocabulary_and_read_their_kinds():
    image, strokes = tiny_image_recognizer(), tiny_stroke_recognizer()
    with pytest.raises(ValueError, match="image model and a stroke model"):
        FusionRecognizer(strokes, image)
    strokes.vocab = Vocab(TOKENS[:-1])
    with pytest.raises(ValueError, match="vocabularies"):
        FusionRecognizer(image, strokes)


# -- the recognizer and its greedy mode --------------------------------------------------------
def test_fusion_recognizes_ink_with_ranked_valid_alternatives(fusion):
    r = fusion.recognize_strokes(STROKES, beam=3)
    assert r.model == "tiny+tiny-strokes" and r.source
    assert 1 <= len(r.alternatives) <= 3
    assert 0 < sum(a.score for a in r.alternatives) <= 1 + 1e-3  # shares of one softmax
    assert r.score == r.alternatives[0].score


def test_greedy_mode_rescores_one_greedy_hypothesis_of_each_model(fusion):
    traces = write(["x", "+", "1"])
    cands = fusion.candidates(traces, beam=1)
    greedy_ids = []
    for role in ("image", "strokes"):
        rec = fusion.recognizers[role]
        with torch.inference_mode():
            mem, limit = encoded(rec, traces), limit_of(rec, traces)
            greedy_ids.append(greedy(rec.model, mem, 1, "l2r", limit)[0].ids)
    assert cands.ids == [list(i) for i in dict.fromkeys(map(tuple, greedy_ids))]
    assert all(len(f) >= 1 for f in cands.found_by)
    for s in cands.scores.values():  # both models score both hypotheses, both ways
        assert s.shape == (len(cands.ids), 2) and np.isfinite(s).all()
    r = fusion.recognize_ink(sample_ink(traces), beam=1)
    assert 1 <= len(r.alternatives) <= 2


def test_max_len_bounds_both_models_hypotheses(fusion):
    fusion.max_len = 3  # untrained models would otherwise write up to 200 tokens
    try:
        for beam in (1, 2):
            cands = fusion.candidates(write(["x", "+", "1"]), beam=beam)
            assert cands.ids and all(len(ids) <= 3 for ids in cands.ids)
    finally:
        fusion.max_len = None


def test_each_model_stops_at_its_inputs_length_limit(fusion):
    # Untrained models rarely write the end token: each runs to the limit its own input gives
    # (as alone in hmer.recognize), far below the 200 of the fixed bound.
    traces = write(["x", "+", "1"])
    limits = {role: limit_of(rec, traces) for role, rec in fusion.recognizers.items()}
    assert max(limits.values()) < 200
    for beam in (1, 2):
        cands = fusion.candidates(traces, beam=beam)
        for ids, roles in zip(cands.ids, cands.found_by, strict=True):
            assert len(ids) <= min(limits[role] for role in roles)


def sample_ink(traces):
    from hmer.data.inkml import Ink

    return Ink(traces, source="sample")


def test_fusion_deadline_and_timeout_stop_decoding(fusion):
    from hmer.decoding import DecodingTimeout

    with pytest.raises(DecodingTimeout):
        fusion.recognize_strokes(STROKES, beam=2, deadline=time.monotonic() - 1)
    fusion.timeout_s = 0.0
    try:
        with pytest.raises(DecodingTimeout):
            fusion.recognize_strokes(STROKES, beam=1)
    finally:
        fusion.timeout_s = None


# -- the two models side by side -----------------------------------------------------------------
@pytest.fixture
def two_threads():
    """Torch with two intra-op threads, which the concurrent path shares out (tests run on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def same_candidates(a: Candidates, b: Candidates) -> None:
    assert a.ids == b.ids and a.found_by == b.found_by
    assert a.scores.keys() == b.scores.keys()
    for role in a.scores:  # bit for bit, not approximately
        assert np.array_equal(a.scores[role], b.scores[role], equal_nan=True)


def spy_threads(monkeypatch, fusion: FusionRecognizer) -> dict[str, set[str]]:
    """The names of the threads that encode each role's input, from now on."""
    seen: dict[str, set[str]] = {"image": set(), "strokes": set()}
    for role, rec in fusion.recognizers.items():

        def encode(*args, _role=role, _encode=rec.model.encode):
            seen[_role].add(threading.current_thread().name)
            return _encode(*args)

        monkeypatch.setattr(rec.model, "encode", encode)
    return seen


def test_concurrent_fusion_gives_the_numbers_of_sequential_fusion(two_threads, monkeypatch):
    fusion = FusionRecognizer(tiny_image_recognizer(), tiny_stroke_recognizer(), beam=3)
    fusion.max_len = 12  # untrained models would otherwise write up to 200 tokens
    threads = spy_threads(monkeypatch, fusion)
    for traces in (STROKES_INK, write(["x", "+", "1"]), write(["2", "-", "x"])):
        for beam in (1, 3):
            fusion.concurrent = False
            alone = fusion.candidates(traces, beam)
            first = fusion.recognize_ink(sample_ink(traces), beam)
            fusion.concurrent = True
            same_candidates(alone, fusion.candidates(traces, beam))
            second = fusion.recognize_ink(sample_ink(traces), beam)
            assert second.to_dict() | {"time_ms": 0} == first.to_dict() | {"time_ms": 0}
    main = threading.current_thread().name
    assert threads == {
        "image": {main, "hmer-fusion-image_0"},
        "strokes": {main, "hmer-fusion-strokes_0"},
    }
    assert torch.get_num_threads() == 2  # the caller keeps its threads


def test_concurrent_fusion_on_the_shipped_example_and_models(two_threads):
    fusion = FusionRecognizer.load()
    ink = read_inkml(ROOT / "src" / "hmer" / "examples" / "example.inkml")
    for beam in (1, 10):
        fusion.concurrent = False
        alone = fusion.candidates(ink.traces, beam)
        fusion.concurrent = True
        together = fusion.candidates(ink.traces, beam)
        same_candidates(alone, together)
        # Both models' lists pooled: more than one list's share (the shipped pool depth).
        assert len(together.ids) > (1 if beam == 1 else fusion.params.pool_depth or beam)
    assert fusion._threads is not None  # it did run side by side


def test_one_torch_thread_runs_the_models_one_after_the_other(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    fusion = FusionRecognizer(tiny_image_recognizer(), tiny_stroke_recognizer(), max_len=5)
    threads = spy_threads(monkeypatch, fusion)
    fusion.candidates(STROKES_INK, beam=2)
    main = threading.current_thread().name
    assert threads == {"image": {main}, "strokes": {main}} and fusion._threads is None


@pytest.mark.parametrize("how", ["passed", "cancelled"])
def test_each_models_thread_stops_at_the_deadline(two_threads, monkeypatch, how):
    from hmer.decoding import DecodingTimeout, search

    fusion = FusionRecognizer(tiny_image_recognizer(), tiny_stroke_recognizer(), max_len=5)
    stopped: list[str] = []
    check = search.check_deadline

    def spy(deadline):
        try:
            check(deadline)
        except DecodingTimeout:
            stopped.append(threading.current_thread().name)
            raise

    monkeypatch.setattr(search, "check_deadline", spy)
    for rec in fusion.recognizers.values():  # both encoders finish after the deadline

        def encode(*args, _encode=rec.model.encode):
            time.sleep(0.6)
            return _encode(*args)

        monkeypatch.setattr(rec.model, "encode", encode)
    deadline = time.monotonic() + 0.3
    if how == "cancelled":  # as the server calls off the work of a client that left
        pytest.importorskip("starlette")
        from hmer.interfaces.guard import CancellableDeadline

        deadline = CancellableDeadline(deadline + 600)
        threading.Timer(0.3, deadline.cancel).start()
    with pytest.raises(DecodingTimeout):
        fusion.recognize_strokes(STROKES, beam=2, deadline=deadline)
    # Each worker stopped at its own first check (one after the other, only the first would).
    assert sorted(stopped) == ["hmer-fusion-image_0", "hmer-fusion-strokes_0"]
    monkeypatch.undo()
    assert fusion.recognize_strokes(STROKES, beam=1).model  # the workers take the next call


# -- routes: Python, command line, HTTP API ----------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from hmer.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_recognize_route_option_picks_the_reader_of_ink(capsys, tmp_path, releases):
    image, strokes = releases
    ink = tmp_path / "a.inkml"
    ink.write_text(make_inkml(write(["x", "+", "1"])))
    models = {}
    for route in ("image", "strokes", "fusion"):
        code, out, _ = run_cli(
            capsys, "recognize", ink, "--route", route, "--model", image,
            "--stroke-model", strokes, "--format", "json", "--beam", "2",
        )  # fmt: skip
        assert code == 0
        models[route] = json.loads(out)["model"]
    assert models == {"image": "img", "strokes": "pen", "fusion": "img+pen"}
    code, out, _ = run_cli(capsys, "recognize", ink, "--stroke-model", strokes, "--format", "json")
    assert code == 0 and json.loads(out)["model"] == "pen"  # a stroke model given reads ink
    png = tmp_path / "b.png"
    png.write_bytes(png_bytes())
    code, out, err = run_cli(capsys, "recognize", png, "--route", "fusion", "--model", image)
    assert code == 1 and "b.png" in err and "pen input" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "recognize", ink, "--route", "image", "--model", strokes)
    assert code == 1 and "needs a model that reads image" in err


def test_recognize_max_len_reaches_the_fusion_route(capsys, tmp_path, releases):
    from hmer.interfaces import cli_model

    image, strokes = releases
    ink = tmp_path / "a.inkml"
    ink.write_text(make_inkml(write(["x", "+", "1"])))
    argv = ["recognize", ink, "--route", "fusion", "--model", image, "--stroke-model", strokes]
    code, out, _ = run_cli(capsys, *argv, "--max-len", "3", "--format", "json", "--beam", "1")
    assert code == 0 and json.loads(out)["model"] == "img+pen"
    assert cli_model._RECOGNIZERS[("ink", "fusion", image, strokes)].max_len == 3
    code, _, err = run_cli(capsys, *argv, "--max-len", "0")
    assert code == 2 and "--max-len" in err


def test_ink_recognizer_for_each_route(releases):
    image, strokes = releases
    assert ink_recognizer("image", image).name == "img"
    assert ink_recognizer("strokes", stroke_model=strokes).name == "pen"
    assert ink_recognizer("strokes", strokes).name == "pen"  # --route strokes --model FILE
    fused = ink_recognizer("fusion", image, strokes, beam=4)
    assert isinstance(fused, FusionRecognizer) and fused.beam == 4
    assert fused.paths == {"image": Path(image), "strokes": Path(strokes)}
    with pytest.raises(ValueError, match="unknown route"):
        ink_recognizer("both", image)


def test_parameters_fitted_for_other_models_warn(tmp_path, releases):
    image, strokes = releases
    params = tmp_path / "fusion.json"
    params.write_text(FusionParams(0.3, 0.2, fitted={"strokes": {"sha256": "0" * 64}}).to_json())
    with pytest.warns(UserWarning, match="another strokes model"):
        rec = FusionRecognizer.load(image, strokes, params)
    assert (rec.params.strokes_weight, rec.params.temperature) == (0.3, 0.2)


def test_default_ink_route_follows_the_fusion_parameter_file(monkeypatch, tmp_path):
    import hmer.weights

    params = tmp_path / "fusion.json"
    monkeypatch.setattr(hmer.weights, "FUSION_PARAMS", params)

    def no_default(kind):
        raise hmer.weights.WeightsError(f"no default {kind} model")

    monkeypatch.setattr(hmer.weights, "default_weights", no_default)
    assert hmer.weights.ink_route() == "image"
    params.write_text(FusionParams(default_for_ink=True).to_json())
    assert hmer.weights.ink_route() == "fusion"
    params.write_text("[1, 2]")
    with pytest.raises(hmer.weights.WeightsError):
        hmer.weights.ink_route()


@pytest.fixture(scope="module")
def make_app():
    """create_app over a tiny image and stroke model (or the given ones)."""
    from hmer.interfaces.api import Limits, create_app

    pair = {"tiny": tiny_image_recognizer("tiny"), "tiny-strokes": tiny_stroke_recognizer()}
    limits = Limits(timeout_s=60.0)  # untrained models decode to full length: slow on a busy CPU

    def make(recs: dict | None = None, **kwargs):
        return create_app(pair if recs is None else recs, limits, **kwargs)

    make.pair = pair
    return make


def post_strokes(client, **fields):
    return client.post("/v1/recognize", json={"strokes": STROKES, "beam": 1, **fields})


def test_api_route_field_query_and_form(make_app):
    with local_client(make_app(), raise_server_exceptions=False) as c:
        info = c.get("/v1/models").json()
        assert info["routes"] == {
            "image": "tiny",
            "strokes": "tiny-strokes",
            "fusion": "tiny+tiny-strokes",
        }
        assert info["ink_route"] == "strokes"  # unchanged: a loaded stroke model reads drawings
        for route, model in info["routes"].items():
            resp = post_strokes(c, route=route)
            assert resp.status_code == 200 and resp.json()["model"] == model, resp.text
        resp = c.post("/v1/recognize?route=fusion&beam=1", json={"strokes": STROKES})
        assert resp.json()["model"] == "tiny+tiny-strokes"
        assert len(resp.json()["alternatives"]) <= 2
        inkml = make_inkml(write(["x", "+", "1"]))
        files = {"file": ("a.inkml", inkml.encode(), "application/inkml+xml")}
        resp = c.post("/v1/recognize", files=files, data={"route": "fusion", "beam": "1"})
        assert resp.json()["model"] == "tiny+tiny-strokes"
        for bad, code in [
            ({"route": "both"}, "bad_route"),
            ({"route": "fusion", "model": "tiny"}, "bad_route"),
            ({"route": 3}, "invalid_request"),
        ]:
            resp = post_strokes(c, **bad)
            assert resp.status_code == 422 and resp.json()["code"] == code
        files = {"file": ("a.png", png_bytes(), "image/png")}
        resp = c.post("/v1/recognize?route=fusion", files=files)
        assert resp.status_code == 422 and resp.json()["code"] == "bad_route"
        resp = c.post("/v1/recognize?route=image&beam=1", files=files)
        assert resp.status_code == 200 and resp.json()["model"] == "tiny"


def test_api_default_ink_route_and_missing_routes(make_app):
    with local_client(make_app(ink_route="fusion")) as c:
        info = c.get("/v1/models").json()
        assert info["ink_route"] == "fusion" and info["default"]["strokes"] == "tiny+tiny-strokes"
        assert post_strokes(c).json()["model"] == "tiny+tiny-strokes"
        assert post_strokes(c, model="tiny-strokes").json()["model"] == "tiny-strokes"
    only_image = {"tiny": make_app.pair["tiny"]}
    with local_client(make_app(only_image), raise_server_exceptions=False) as c:
        info = c.get("/v1/models").json()
        assert info["routes"] == {"image": "tiny", "strokes": None, "fusion": None}
        assert info["ink_route"] == "image"
        for route in ("strokes", "fusion"):
            resp = post_strokes(c, route=route)
            assert resp.status_code == 422 and resp.json()["code"] == "no_route"
    with pytest.raises(ValueError, match="fusion"):
        make_app(only_image, ink_route="fusion")


def test_routes_and_the_symbol_classifier_share_one_app(make_app):
    from hmer.models.symbols import SymbolCNN
    from hmer.symbol_classifier import SymbolClassifier

    symbols = SymbolClassifier(SymbolCNN(3, width=4), ["x", "+", "1"], 16, name="sym")
    with local_client(make_app(symbols=symbols, ink_route="fusion")) as c:
        info = c.get("/v1/models").json()
        assert info["symbol_model"] == "sym" and info["ink_route"] == "fusion"
        assert info["routes"]["fusion"] == "tiny+tiny-strokes"
        assert post_strokes(c, route="strokes").json()["model"] == "tiny-strokes"
        resp = c.post("/v1/symbol", json={"strokes": STROKES, "top": 2})
        assert resp.status_code == 200 and resp.json()["model"] == "sym"
        assert len(resp.json()["candidates"]) == 2
        inkml = make_inkml(write(["x"])).encode()
        resp = c.post("/v1/symbol", files={"file": ("x.inkml", inkml)}, data={"top": "1"})
        assert resp.status_code == 200 and len(resp.json()["candidates"]) == 1


def test_serve_ink_route_loads_the_stroke_model_it_needs(monkeypatch, releases, tmp_path):
    import hmer.interfaces.cli_serve as cli_serve
    import hmer.weights
    from hmer.cli import build_parser

    image, strokes = releases
    shipped = {"image": Path(image)}

    def default_weights(kind):
        if kind not in shipped:
            raise hmer.weights.WeightsError(f"no default {kind} model")
        return shipped[kind]

    monkeypatch.setattr(hmer.weights, "default_weights", default_weights)
    monkeypatch.setattr(hmer.weights, "shipped_weights", lambda kind: Path(strokes))
    parse = build_parser().parse_args
    params = tmp_path / "fusion.json"
    monkeypatch.setattr(hmer.weights, "FUSION_PARAMS", params)
    for default_for_ink, loaded in ((False, ["img"]), (True, ["img", "pen"])):
        params.write_text(json.dumps({"default_for_ink": default_for_ink}))
        assert list(cli_serve._load(parse(["serve"]))) == loaded  # what the default route needs
    recs = cli_serve._load(parse(["serve", "--ink-route", "fusion"]))
    assert {n: r.input_kind for n, r in recs.items()} == {"img": "image", "pen": "strokes"}
    with pytest.raises(ValueError, match="needs a stroke model"):
        cli_serve._load(parse(["serve", "--ink-route", "strokes", "--stroke-model", "none"]))


# -- fitting and calibration on synthetic scores ----------------------------------------------
def synthetic_cases(
    n: int, temperature: float, seed: int = 0, outside: float = 0.0, place: list[int] | None = None
) -> list[Case]:
    """Cases whose truth is drawn from the softmax of the fused scores at ``temperature`` (the
    temperature that calibrates them is known), or with probability ``outside`` is none of the
    candidates; ``place``: the candidates' places in their search lists."""
    rng = np.random.default_rng(seed)
    hyps = [["x"], ["1"], ["2"], ["x", "+", "1"], ["x", "=", "2"]]
    cases = []
    for k in range(n):
        s = rng.normal(-0.5, 0.3, len(hyps))
        p = np.exp(s / temperature) / np.exp(s / temperature).sum()
        truth = ["2", "+", "2"] if rng.random() < outside else hyps[rng.choice(len(hyps), p=p)]
        two = np.stack([s, s], 1)
        cands = Candidates(
            [VOCAB.encode(h) for h in hyps], [["image", "strokes"]] * len(hyps),
            {"image": two, "strokes": two}, place,
        )  # fmt: skip
        cases.append(Case(f"c{k}", truth, cands))
    return cases


def test_expected_calibration_error_by_hand():
    conf = np.array([0.95, 0.95, 0.15, 0.15])
    right = np.array([True, False, False, False])
    # bins: 0.9-1.0 (conf 0.95, accuracy 0.5) and 0.1-0.2 (conf 0.15, accuracy 0)
    assert expected_calibration_error(conf, right) == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([True, False])) == 0.0
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_temperature_fit_recovers_the_calibrating_temperature():
    cases = synthetic_cases(1500, temperature=0.12, seed=1)
    t = fit_temperature(cases, FusionParams(0.5, 1.0), VOCAB, beam=5)
    assert 0.09 < t < 0.15
    # With truths outside the pool no temperature is exact, but calibration still improves.
    cases = synthetic_cases(600, temperature=0.12, seed=2, outside=0.3)
    t = fit_temperature(cases, FusionParams(0.5, 1.0), VOCAB, beam=5)
    before = route_metrics(cases, "fusion", FusionParams(0.5, 1.0), VOCAB, 5)["ece"]
    after = route_metrics(cases, "fusion", FusionParams(0.5, t), VOCAB, 5)["ece"]
    assert after < before / 2


def test_weight_fit_prefers_the_model_that_ranks_the_truth_first():
    cases = []
    for k in range(10):
        image_right = k < 3  # the image model ranks the truth first in 3 of 10, strongly
        a, b = (-0.1, -1.5) if image_right else (-0.4, -0.3)
        s_right, s_wrong = (-0.9, -0.8) if image_right else (-0.1, -2.0)
        cands = Candidates(
            [VOCAB.encode(["x"]), VOCAB.encode(["1"])], [["image", "strokes"]] * 2,
            {"image": np.array([[a, a], [b, b]]), "strokes": np.array([[s_right] * 2,
             [s_wrong] * 2])},
        )  # fmt: skip
        cases.append(Case(f"c{k}", ["x"], cands))
    weight, table = fit_strokes_weight(cases, VOCAB, beam=2)
    assert table[0.0] == 30.0 and table[1.0] == 70.0
    assert table[weight] == 100.0 == max(table.values())
    best = [w for w, r in table.items() if r == 100.0]
    assert weight == best[len(best) // 2]  # the middle of the best run
    image_alone = outcomes(cases, "image", FusionParams(weight), VOCAB, 2)
    assert image_alone.correct.mean() == 0.3
    counts = paired(cases, "fusion", "image", FusionParams(weight), VOCAB, 2)
    assert counts == {"both": 3, "only_fusion": 7, "only_image": 0, "neither": 0}
    assert cross_validated_exprate(cases, VOCAB, 2) == 100.0  # a weight good for every case
    # Two cases that need opposite weights: each fitted on the other alone gets itself wrong.
    scores = {
        "image": np.array([[-0.1] * 2, [-1.0] * 2]),
        "strokes": np.array([[-1.0] * 2, [-0.1] * 2]),
    }
    cands = Candidates(
        [VOCAB.encode(["x"]), VOCAB.encode(["1"])], [["image", "strokes"]] * 2, scores
    )
    opposite = [Case("a", ["x"], cands), Case("b", ["1"], cands)]
    assert max(fit_strokes_weight(opposite, VOCAB, 2)[1].values()) == 50.0
    assert cross_validated_exprate(opposite, VOCAB, 2) == 0.0


def test_pool_depth_fit_takes_the_shallowest_pool_that_reads_as_many():
    # "x" is second in its list (place 1), "1" first (place 0); the fused score prefers the
    # truth, so a pool of depth 1 misses "x" where it is the truth, and depth 2 reads both.
    cases = []
    for k in range(4):
        truth_second = k < 2
        s = np.array([[-0.1] * 2, [-0.5] * 2])
        s = s if truth_second else s[::-1].copy()
        cands = Candidates(
            [VOCAB.encode(["x"]), VOCAB.encode(["1"])], [["image", "strokes"]] * 2,
            {"image": s, "strokes": s}, [1, 0],
        )  # fmt: skip
        cases.append(Case(f"c{k}", ["x"] if truth_second else ["1"], cands))
    depth, table = fit_pool_depth(cases, VOCAB, 3, FusionParams(0.5))
    assert table == {1: 50.0, 2: 100.0, 3: 100.0} and depth == 2
    whole_only = [c for c in cases if c.truth == ["x"]]
    assert fit_pool_depth(whole_only, VOCAB, 2, FusionParams(0.5))[0] is None
    with pytest.raises(ValueError, match="places"):
        synthetic_cases(1, 0.2)[0].cands.within(1)


def test_cases_round_trip_through_the_cache_file(tmp_path):
    cases = synthetic_cases(3, 0.2)
    cases[2].cands.place = [0, 1, 0, 2, 1]
    cases[0].cands.scores["image"][:, 1] = np.nan  # a one-direction model
    cases[1].seen = True
    save_cases(tmp_path / "c.json", cases, {"split": "val"})
    meta, back = load_cases(tmp_path / "c.json")
    assert meta == {"split": "val"} and [c.id for c in back] == [c.id for c in cases]
    for a, b in zip(cases, back, strict=True):
        assert a.truth == b.truth and a.cands.ids == b.cands.ids and a.seen == b.seen
        assert a.cands.place == b.cands.place
        for role in ("image", "strokes"):
            np.testing.assert_allclose(a.cands.scores[role], b.cands.scores[role], atol=1e-6)


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fusion_benchmark_fits_on_validation_only_and_scores(tmp_path, capsys):
    bench = load_benchmark("fusion")
    cases = synthetic_cases(60, 0.15)
    for c in cases[:10]:
        c.seen = True  # a training formula: left out of the fit by default
    meta = {"expressions": 60, "beam": 5, "threads": 1, "vocab": VOCAB.to_json()}
    meta |= {r: {"file": f"{r}.safetensors", "sha256": r * 8} for r in ("image", "strokes")}
    save_cases(tmp_path / "val.json", cases, {**meta, "split": "val"})
    save_cases(tmp_path / "test.json", cases, {**meta, "split": "2014"})
    with pytest.raises(SystemExit, match="fit on 'val' only"):
        bench.main(["fit", str(tmp_path / "test.json")])
    with pytest.raises(SystemExit, match="does not mark training formulas"):
        bench.main(["fit", str(tmp_path / "val.json")])
    save_cases(tmp_path / "val.json", cases, {**meta, "split": "val", "seen_marked": True})
    with pytest.raises(SystemExit, match="does not record list places"):
        bench.main(["fit", str(tmp_path / "val.json")])  # a cache of before pool depths
    assert bench.main(["fit", str(tmp_path / "val.json"), "--whole-pool"]) == 0
    assert '"pool_depth": null' in capsys.readouterr().out
    cases = synthetic_cases(60, 0.15, place=[0, 1, 2, 3, 4])
    for c in cases[:10]:
        c.seen = True
    save_cases(tmp_path / "val.json", cases, {**meta, "split": "val", "seen_marked": True})
    out = tmp_path / "fusion.json"
    assert bench.main(["fit", str(tmp_path / "val.json"), "-o", str(out)]) == 0
    params = FusionParams.from_json(out.read_text())
    depths = params.fitted["exprate_by_pool_depth"]
    assert list(depths) == ["1", "2", "3", "4", "5"]
    assert params.pool_depth is None or depths[str(params.pool_depth)] >= depths["5"]
    assert params.fitted["expressions"] == 60 and params.fitted["fitted_on"] == 50
    assert params.fitted["image"]["sha256"] == "image" * 8
    assert bench.main(["fit", str(tmp_path / "val.json"), "--formulas", "all"]) == 0
    assert '"fitted_on": 60' in capsys.readouterr().out
    assert not params.default_for_ink
    capsys.readouterr()
    assert bench.main(["score", str(tmp_path / "test.json"), "--params", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "2014" and set(report) >= {"image", "strokes", "fusion"}
    assert report["fusion"]["ece"] <= report["fusion_ece_temperature_1"]
    # The same cache in two parts (collect --part 1/2, 2/2) scores the same.
    for k, half in ((1, cases[0::2]), (2, cases[1::2])):
        part = {**meta, "split": "2014", "expressions": 30, "seconds": 1.0, "part": f"{k}/2"}
        save_cases(tmp_path / f"t{k}.json", half, part)
    parts = [str(tmp_path / "t1.json"), str(tmp_path / "t2.json")]
    assert bench.main(["score", *parts, "--params", str(out), "--json"]) == 0
    joined = json.loads(capsys.readouterr().out)
    assert joined["expressions"] == 60 and joined["fusion"] == report["fusion"]
    with pytest.raises(SystemExit, match="not another part"):
        bench.main(["score", parts[0], parts[0]])
    with pytest.raises(SystemExit):
        bench.main(["collect", "--part", "3/2", "-o", str(tmp_path / "x.json")])


HAVE_CROHME = (default_data_dir() / "TrainINKML.tar.gz").exists()


@pytest.mark.skipif(not HAVE_CROHME, reason="CROHME data not available")
def test_latency_benchmark_times_the_fusion_route(releases, two_threads, tmp_path):
    image, strokes = releases  # (two_threads restores the thread count)
    params = tmp_path / "fusion.json"
    params.write_text(FusionParams(pool_depth=1).to_json())
    args = ["--route", "fusion", "--model", image, "--stroke-model", strokes]
    args += ["--limit", "2", "--beams", "1,2", "--threads", "1"]
    report = load_benchmark("latency").main([*args, "--fusion-params", str(params)])
    assert report["route"] == "fusion" and report["model"] == "img+pen"
    assert report["pool_depth"] == 1
    assert report["beam1_ms_p50"] > 0 and report["beam2_ms_p50"] > 0
    assert report["beam1_cpu_ms_mean"] > 0 and report["load_avg_1min_before"] >= 0
    assert not any(k.startswith("greedy_batch") for k in report)  # fusion has no batch mode
    # Side by side against one after the other, paired on the same expressions.
    args[-1] = "2"
    paired = load_benchmark("latency").main([*args, "--beams", "1", "--compare-sequential"])
    for mode in ("concurrent", "sequential"):
        assert paired[f"beam1_{mode}_ms_p50"] <= paired[f"beam1_{mode}_ms_p99"]
        assert paired[f"beam1_{mode}_cpu_ms_mean"] > 0
    assert paired["beam1_wall_ratio_concurrent_to_sequential_p50"] > 0
    assert paired["beam1_cpu_ratio_concurrent_to_sequential_p50"] > 0
    with pytest.raises(SystemExit):
        load_benchmark("latency").main(["--compare-sequential", "--limit", "1"])


def test_collect_keeps_each_samples_candidates(fusion):
    from hmer.evaluation.fusion_fit import collect

    samples = [Sample("a", write(["x", "+", "1"]), ["x", "+", "1"])]
    done = []
    (case,) = collect(fusion, samples, beam=2, progress=done.append, trained={("x", "+", "1")})
    assert done == [1] and case.id == "a" and case.truth == ["x", "+", "1"] and case.seen
    assert set(case.cands.scores) == {"image", "strokes"} and case.cands.ids
