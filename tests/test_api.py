"""HTTP API: every route, and every way a request can be refused, on tiny untrained models."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import (  # noqa: E402
    STROKES,
    live_server,
    local_client,
    png_bytes,
    tiny_image_recognizer,
    tiny_image_release,
    tiny_stroke_recognizer,
)

from hmer.interfaces.api import Limits, create_app, parse_strokes  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models decode fastest on one thread, and tests must not fight other work for cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def image_rec():
    return tiny_image_recognizer()


@pytest.fixture(scope="module")
def stroke_rec():
    return tiny_stroke_recognizer()


@pytest.fixture(scope="module")
def client(image_rec):
    with local_client(create_app({"tiny": image_rec}), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def both(image_rec, stroke_rec):
    app = create_app({"tiny": image_rec, "tiny-strokes": stroke_rec})
    with local_client(app, raise_server_exceptions=False) as c:
        yield c


def error_of(resp, status: int, code: str) -> str:
    """Check an error answer's status, JSON shape and code; return its message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in resp.text
    return body["detail"]


def check_result(body: dict, model: str = "tiny") -> None:
    assert set(body) >= {"latex", "tokens", "alternatives", "model", "time_ms", "score"}
    assert isinstance(body["latex"], str)
    assert all(isinstance(t, str) for t in body["tokens"])
    assert body["alternatives"] and body["alternatives"][0]["latex"] == body["latex"]
    for alt in body["alternatives"]:
        assert set(alt) == {"latex", "score"} and 0 <= alt["score"] <= 1
    assert body["model"] == model
    assert body["time_ms"] >= 0 and body["total_ms"] >= body["time_ms"]


# -- routes ---------------------------------------------------------------------------------------
def test_health_and_models(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 1 and health["running"] == 0
    models = client.get("/v1/models").json()
    assert models["models"] == [
        {"name": "tiny", "input_kind": "image", "default_for": ["image", "strokes"], "beam": 2}
    ]
    assert models["default"] == {"image": "tiny", "strokes": "tiny"}


def test_models_with_a_stroke_model(both):
    models = both.get("/v1/models").json()
    assert models["default"] == {"image": "tiny", "strokes": "tiny-strokes"}
    kinds = {m["name"]: (m["input_kind"], m["default_for"]) for m in models["models"]}
    assert kinds == {"tiny": ("image", ["image"]), "tiny-strokes": ("strokes", ["strokes"])}


def test_recognize_strokes(client):
    resp = client.post("/v1/recognize", json={"strokes": STROKES, "beam": 2})
    assert resp.status_code == 200, resp.text
    check_result(resp.json())
    assert len(resp.json()["alternatives"]) <= 2


def test_recognize_strokes_with_times_and_query_beam(client):
    timed = [[[x, y, 1.7e12 + 10 * i] for i, (x, y) in enumerate(s)] for s in STROKES]
    resp = client.post("/v1/recognize?beam=1", json={"strokes": timed})
    assert resp.status_code == 200, resp.text
    check_result(resp.json())
    assert len(resp.json()["alternatives"]) == 1  # beam 1 = greedy: one hypothesis


def test_recognize_image_multipart(client):
    files = {"file": ("expr.png", png_bytes(), "image/png")}
    resp = client.post("/v1/recognize", files=files, data={"beam": "1"})
    assert resp.status_code == 200, resp.text
    check_result(resp.json())


def test_recognize_raw_image_body(client):
    resp = client.post(
        "/v1/recognize?beam=1", content=png_bytes(), headers={"content-type": "image/png"}
    )
    assert resp.status_code == 200, resp.text
    check_result(resp.json())


def test_compact_latex_by_default_token_form_on_request(client):
    from hmer.data.latex import detokenize

    body = client.post("/v1/recognize", json={"strokes": STROKES, "beam": 2}).json()
    assert len(body["tokens"]) > 1  # the styles differ in the spaces between tokens
    assert body["latex"] == detokenize(body["tokens"], compact=True) != " ".join(body["tokens"])
    tokens = " ".join(body["tokens"])
    asked = [
        client.post("/v1/recognize?style=tokens", json={"strokes": STROKES, "beam": 2}),
        client.post("/v1/recognize", json={"strokes": STROKES, "beam": 2, "style": "tokens"}),
    ]
    for resp in asked:
        assert resp.json()["latex"] == tokens and resp.json()["tokens"] == body["tokens"]
        check_result(resp.json())
    files = {"file": ("expr.png", png_bytes(), "image/png")}
    image = client.post("/v1/recognize", files=files, data={"beam": "1", "style": "tokens"})
    assert image.json()["latex"] == " ".join(image.json()["tokens"])
    resp = client.post("/v1/recognize?style=mathml", json={"strokes": STROKES, "beam": 2})
    from hmer.recognize import mathml

    assert resp.json()["latex"] == mathml(body["tokens"])
    assert resp.json()["latex"].startswith("<math") and "</math>" in resp.json()["latex"]
    resp = client.post("/v1/recognize?style=html", json={"strokes": STROKES})
    assert "style" in error_of(resp, 422, "bad_style")


def test_strokes_go_to_the_stroke_model_images_to_the_image_model(both):
    resp = both.post("/v1/recognize?beam=1", json={"strokes": STROKES})
    check_result(resp.json(), "tiny-strokes")
    resp = both.post("/v1/recognize?beam=1&model=tiny", json={"strokes": STROKES})
    check_result(resp.json(), "tiny")  # an image model reads strokes by rendering them
    files = {"file": ("a.png", png_bytes(), "image/png")}
    check_result(both.post("/v1/recognize?beam=1", files=files).json(), "tiny")
    resp = both.post("/v1/recognize?model=tiny-strokes", files=files)
    assert "strokes" in error_of(resp, 422, "wrong_model_kind")


def test_page_assets_and_offline_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in (
        "/static/app.js",
        "/static/style.css",
        "/static/vendor/katex/katex.min.js",
        "/static/vendor/katex/katex.min.css",
        "/static/vendor/katex/LICENSE",
        "/static/vendor/katex/fonts/KaTeX_Main-Regular.woff2",
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
    ):
        assert client.get(path).status_code == 200, path
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text and "https://" not in docs.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/recognize"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(body)
    strokes = body["application/json"]["schema"]["properties"]["strokes"]
    # The stroke format is documented: point order, optional time, coordinate units.
    assert all(w in strokes["description"] for w in ("order", "[x, y, t]", "any unit"))


def test_unknown_route_and_method_are_json(client):
    error_of(client.get("/nope"), 404, "not_found")
    error_of(client.get("/v1/recognize"), 405, "method_not_allowed")


# -- refusals -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(image_rec):
    limits = Limits(max_upload_bytes=2000, max_pixels=1000, max_strokes=3, max_points=20)
    with local_client(create_app({"tiny": image_rec}, limits), raise_server_exceptions=False) as c:
        yield c


def test_too_large_by_content_length(small):
    files = {"file": ("big.png", b"\x89PNG" + b"\0" * 5000, "image/png")}
    assert "larger than" in error_of(small.post("/v1/recognize", files=files), 413, "too_large")


def test_too_large_while_reading_a_chunked_body(small):
    def chunks():
        for _ in range(10):
            yield b"\0" * 1000

    resp = small.post("/v1/recognize", content=chunks(), headers={"content-type": "image/png"})
    error_of(resp, 413, "too_large")


def test_invalid_content_length(small):
    resp = small.post(
        "/v1/recognize",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "abc"},
    )
    assert resp.status_code == 400


def test_too_many_pixels(small):
    files = {"file": ("wide.png", png_bytes(size=(100, 20)), "image/png")}
    assert "pixels" in error_of(small.post("/v1/recognize", files=files), 413, "too_many_pixels")


@pytest.mark.parametrize("ctype", ["text/plain", "application/pdf", ""])
def test_unsupported_content_type(client, ctype):
    resp = client.post("/v1/recognize", content=b"hello", headers={"content-type": ctype})
    error_of(resp, 415, "unsupported_media_type")


def test_corrupt_image(client):
    files = {"file": ("bad.png", b"\x89PNG\r\n\x1a\n not really", "image/png")}
    assert "not a readable image" in error_of(
        client.post("/v1/recognize", files=files), 422, "bad_input"
    )
    resp = client.post("/v1/recognize", content=b"", headers={"content-type": "image/png"})
    assert "empty" in error_of(resp, 422, "bad_input")


def test_blank_image(client):
    files = {"file": ("blank.png", png_bytes(blank=True), "image/png")}
    assert "no ink" in error_of(client.post("/v1/recognize", files=files), 422, "bad_input")


def test_multipart_without_file_or_boundary(client):
    error_of(
        client.post("/v1/recognize", data={"beam": "1"}, files={"other": ("a", b"x")}),
        422,
        "missing_file",
    )
    resp = client.post(
        "/v1/recognize", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    error_of(resp, 400, "bad_request")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[" * 20_000, 400, "malformed_json"),  # nesting deeper than the parser's recursion
        (b"[" * 100_000, 422, "too_many_points"),  # more lists than points allowed: not parsed
        (b"\xff\xfe\x00garbage", 400, "malformed_json"),
        (b"1" * 5000, 400, "malformed_json"),  # an integer too long to convert
        (b"[1, 2]", 422, "invalid_strokes"),
        (b'{"strokes": []}', 422, "empty_strokes"),
        (b'{"strokes": [[]]}', 422, "invalid_strokes"),
        (b'{"lines": [[[0, 0]]]}', 422, "invalid_strokes"),
        (b'{"strokes": "x"}', 422, "invalid_strokes"),
        (b'{"strokes": [[[0, "a"]]]}', 422, "invalid_strokes"),
        (b'{"strokes": [[[0, true]]]}', 422, "invalid_strokes"),
        (b'{"strokes": [[[0, 0], [1, 1, 2]]]}', 422, "invalid_strokes"),
        (b'{"strokes": [[[0]]]}', 422, "invalid_strokes"),
        (b'{"strokes": [[[0, NaN]]]}', 422, "bad_coordinates"),
        (b'{"strokes": [[[0, 0], [Infinity, 1]]]}', 422, "bad_coordinates"),
        (b'{"strokes": [[[0, 0], [1e999, 1]]]}', 422, "bad_coordinates"),
        (b'{"strokes": [[[0, 0], [1e300, 1]]]}', 422, "bad_coordinates"),
        (b'{"strokes": [[[0, 0, NaN]]]}', 422, "bad_coordinates"),
        (('{"strokes": [[[0, %s]]]}' % ("9" * 1000)).encode(), 422, "bad_coordinates"),
        (b'{"strokes": [[[0, 0]]], "beam": 0}', 422, "bad_beam"),
        (b'{"strokes": [[[0, 0]]], "beam": "wide"}', 422, "bad_beam"),
        (b'{"strokes": [[[0, 0]]], "model": 3}', 422, "invalid_request"),
    ],
)
def test_bad_json_bodies(client, body, status, code):
    resp = client.post("/v1/recognize", content=body, headers={"content-type": "application/json"})
    error_of(resp, status, code)


def test_too_many_strokes_and_points(small):
    resp = small.post("/v1/recognize", json={"strokes": [[[0, 0]]] * 4})
    assert "too many strokes" in error_of(resp, 422, "too_many_strokes")
    resp = small.post("/v1/recognize", json={"strokes": [[[i, i] for i in range(21)]]})
    assert "too many points" in error_of(resp, 422, "too_many_points")


def test_stroke_model_refuses_ink_it_would_resample_into_too_many_points(both):
    # Tiny symbols with one enormous stroke: resampling at the symbol scale would explode.
    dots = [[[i * 3, 0], [i * 3 + 0.01, 0.01]] for i in range(50)]
    resp = both.post("/v1/recognize", json={"strokes": [*dots, [[0, 0], [900_000, 900_000]]]})
    error_of(resp, 422, "too_many_points")


def test_unknown_model_and_bad_beam(client):
    resp = client.post("/v1/recognize?model=nope", json={"strokes": STROKES})
    assert "nope" in error_of(resp, 422, "unknown_model")
    resp = client.post("/v1/recognize?beam=99", json={"strokes": STROKES})
    assert "beam" in error_of(resp, 422, "invalid_request")
    resp = client.post("/v1/recognize?beam=abc", json={"strokes": STROKES})
    error_of(resp, 422, "invalid_request")


def test_parse_strokes_makes_times_relative_and_drops_partial_times():
    arrays = parse_strokes([[[0, 0, 1000], [1, 1, 1010]], [[2, 2, 1100]]], Limits())
    assert arrays[0][:, 2].tolist() == [0, 10] and arrays[1][0, 2] == 100
    arrays = parse_strokes([[[0, 0, 1000]], [[2, 2]]], Limits())
    assert all(a.shape[1] == 2 for a in arrays)


# -- failures and load ----------------------------------------------------------------------------
class Broken:
    """A recognizer that fails the way a bug would, with internals in its message."""

    input_kind = "image"
    beam = 1

    def recognize_strokes(self, strokes, beam=None, deadline=None):
        raise RuntimeError("secret /srv/internal/path")

    recognize_image = recognize_strokes


def test_internal_error_is_generic_json():
    with local_client(create_app({"broken": Broken()}), raise_server_exceptions=False) as c:
        resp = c.post("/v1/recognize", json={"strokes": STROKES})
        assert error_of(resp, 500, "internal_error") == "internal server error"
        assert "secret" not in resp.text
        assert c.get("/healthz").status_code == 200  # still serving


def test_busy_server_answers_503(image_rec):
    app = create_app({"tiny": image_rec}, Limits(max_pending=0))
    with local_client(app) as c:
        resp = c.post("/v1/recognize", json={"strokes": STROKES})
        error_of(resp, 503, "busy")
        assert resp.headers["retry-after"] == "1"


class Slow:
    """A recognizer that takes ``delay`` seconds, to see requests overlap."""

    input_kind = "image"
    beam = 1

    def __init__(self, delay: float):
        self.delay = delay

    def recognize_strokes(self, strokes, beam=None, deadline=None):
        from hmer.recognize import Result

        time.sleep(self.delay)
        return Result("x", ["x"], 1.0, [], "slow", self.delay * 1000, "<strokes>")


def test_inference_runs_off_the_event_loop_and_concurrently():
    app = create_app({"slow": Slow(0.4)}, Limits(max_concurrency=4))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            t0 = time.perf_counter()
            posts = [c.post("/v1/recognize", json={"strokes": STROKES}) for _ in range(4)]
            tasks = [asyncio.ensure_future(p) for p in posts]
            await asyncio.sleep(0.05)
            health = await c.get("/healthz")
            pending = sum(not t.done() for t in tasks)
            answers = await asyncio.gather(*tasks)
            return health, pending, answers, time.perf_counter() - t0

    health, pending, answers, total = asyncio.run(scenario())
    assert health.status_code == 200 and pending > 0  # answered while recognitions still ran
    assert [a.status_code for a in answers] == [200] * 4
    assert total < 1.2  # four 0.4 s recognitions overlapped (serially: 1.6 s)


def test_serve_command_loads_given_models(tmp_path, image_rec, stroke_rec):
    from serve_helpers import TINY_IMAGE_CFG

    from hmer.cli import build_parser
    from hmer.interfaces.cli_serve import _load
    from hmer.weights import save_release

    path = save_release(
        image_rec.model, TINY_IMAGE_CFG, image_rec.vocab, tmp_path / "img.safetensors"
    )
    args = build_parser().parse_args(["serve", "--model", str(path), "--stroke-model", "none"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 10.0)
    recs = _load(args)
    assert list(recs) == ["img"] and recs["img"].input_kind == "image"
    with local_client(create_app(recs)) as c:
        resp = c.post("/v1/recognize?beam=1", json={"strokes": STROKES})
        assert resp.status_code == 200 and resp.json()["model"] == "img"


def test_serve_command_loads_the_shipped_defaults_by_the_routing_rule(
    monkeypatch, tmp_path, stroke_rec
):
    import hmer.weights
    from hmer.cli import build_parser
    from hmer.interfaces.cli_serve import _load
    from hmer.weights import WeightsError, save_release

    cfg = {"name": "strokes", "conv_channels": [16, 32], "context_layers": 1, "d_model": 32}
    cfg |= {"nhead": 2, "num_layers": 1, "ffn": 64}
    strokes = save_release(stroke_rec.model, cfg, stroke_rec.vocab, tmp_path / "pen.safetensors")
    shipped = {"image": tmp_path / "img.safetensors", "strokes": strokes}
    tiny_image_release(shipped["image"])

    def default_weights(kind):
        if kind not in shipped:
            raise WeightsError(f"no default {kind} model")
        return shipped[kind]

    monkeypatch.setattr(hmer.weights, "default_weights", default_weights)
    # The routing rule alone, without the shipped fusion default.
    monkeypatch.setattr(hmer.weights, "FUSION_PARAMS", tmp_path / "no-fusion.json")
    parse = build_parser().parse_args
    recs = _load(parse(["serve"]))
    assert {n: r.input_kind for n, r in recs.items()} == {"img": "image", "pen": "strokes"}
    with local_client(create_app(recs)) as c:
        assert c.get("/v1/models").json()["default"] == {"image": "img", "strokes": "pen"}
    assert list(_load(parse(["serve", "--stroke-model", "none"]))) == ["img"]
    del shipped["strokes"]  # none shipped: drawings are rendered for the image model
    recs = _load(parse(["serve"]))
    assert list(recs) == ["img"]
    with local_client(create_app(recs)) as c:
        assert c.get("/v1/models").json()["default"] == {"image": "img", "strokes": "img"}
    with pytest.raises(WeightsError):  # a given file must load
        _load(parse(["serve", "--stroke-model", str(tmp_path / "missing.safetensors")]))


def test_response_is_plain_json(client):
    resp = client.post("/v1/recognize?beam=1", json={"strokes": STROKES})
    json.dumps(resp.json())  # serializable, no NaN
    assert resp.headers["content-type"] == "application/json"


def test_garbage_bodies_never_give_500(client):
    rng = random.Random(7)
    types = [
        "application/json",
        "multipart/form-data; boundary=xyz",
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "multipart/form-data; boundary=",
    ]
    seeds = [
        b'{"strokes": [[[0, 0]]]',
        b'--xyz\r\nContent-Disposition: form-data; name="file"',
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\xff\xd8\xff\xe0",
        b'{"strokes": [[[',
    ]
    for _ in range(150):
        body = rng.choice(seeds)[: rng.randrange(40)] + rng.randbytes(rng.randrange(300))
        resp = client.post(
            "/v1/recognize", content=body, headers={"content-type": rng.choice(types)}
        )
        assert 400 <= resp.status_code < 500, (resp.status_code, body)
        assert resp.json()["code"]


# -- InkML over HTTP ------------------------------------------------------------------------------
def test_inkml_is_accepted_as_upload_raw_body_and_in_utf16(client):
    from inkml_samples import make_inkml, x_plus_one

    doc = make_inkml(x_plus_one()[0])
    for resp in (
        client.post("/v1/recognize?beam=1", files={"file": ("x.inkml", doc.encode(), "")}),
        client.post("/v1/recognize?beam=1", files={"file": ("x.png", doc.encode(), "image/png")}),
        client.post(
            "/v1/recognize?beam=1",
            content=doc.encode("utf-16"),
            headers={"content-type": "application/inkml+xml"},
        ),
        client.post(
            "/v1/recognize?beam=1",
            content=doc.encode("utf-16-le"),
            headers={"content-type": "application/octet-stream"},
        ),
    ):
        assert resp.status_code == 200, resp.text
        check_result(resp.json())
    bad = client.post("/v1/recognize", files={"file": ("y.inkml", b"<ink><trace>1 NaN")})
    message = error_of(bad, 422, "bad_input")
    assert message.startswith("y.inkml: ") and "Error" not in message


# -- who may ask ----------------------------------------------------------------------------------
def test_host_header_must_name_this_server(image_rec):
    app = create_app({"tiny": image_rec})
    with TestClient(app) as c:  # Host: testserver, like a page whose domain re-resolves here
        assert "Host" in error_of(c.get("/healthz"), 400, "bad_host")
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
            assert c.get("/healthz", headers={"host": host}).status_code == 200, host
        resp = c.post("/v1/recognize", json={"strokes": STROKES}, headers={"host": "evil.test"})
        error_of(resp, 400, "bad_host")
    with TestClient(create_app({"tiny": image_rec}, allowed_hosts=None)) as c:
        assert c.get("/healthz", headers={"host": "anything.test"}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"origin": "https://attacker.test"}, 403),
        ({"origin": "http://127.0.0.1:9999"}, 403),  # another local server: another origin
        ({"origin": "null"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "same-site"}, 403),
        ({"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"}, 200),  # the page
        ({}, 200),  # not a browser
    ],
)
def test_posts_from_other_web_pages_are_refused(client, headers, status):
    files = {"file": ("expr.png", png_bytes(), "image/png")}  # a no-preflight form post
    resp = client.post("/v1/recognize?beam=1", files=files, headers=headers)
    assert resp.status_code == status, resp.text
    if status == 403:
        error_of(resp, 403, "cross_origin")
    assert client.get("/v1/models", headers=headers).status_code == 200  # reads are not work


def test_serve_allows_the_bound_address_and_loopback_names():
    from hmer.interfaces.cli_serve import allowed_hosts

    assert set(allowed_hosts("127.0.0.1", [])) == {"127.0.0.1", "localhost", "::1"}
    assert "localhost" not in allowed_hosts("192.168.1.5", [])
    assert allowed_hosts("0.0.0.0", []) is None  # names unknown: any
    assert allowed_hosts("0.0.0.0", ["box.lan"]) == ["0.0.0.0", "box.lan"]
    assert allowed_hosts("127.0.0.1", ["*"]) is None


# -- bounded work ---------------------------------------------------------------------------------
def test_recognition_past_its_deadline_is_a_503_json(image_rec):
    with local_client(create_app({"tiny": image_rec}, Limits(timeout_s=0.0))) as c:
        resp = c.post("/v1/recognize", json={"strokes": STROKES})
        assert "longer than" in error_of(resp, 503, "timeout")
        assert c.get("/healthz").json()["running"] == 0


def test_json_bodies_are_capped_before_parsing_and_parsed_off_the_loop(image_rec, monkeypatch):
    import hmer.interfaces.api as api

    loops = []
    real = api._load_json

    def spy(body):
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:  # no event loop in this thread: a worker thread
            loops.append(False)
        return real(body)

    monkeypatch.setattr(api, "_load_json", spy)
    limits = Limits(max_json_bytes=2000, max_points=50, max_strokes=5)
    with local_client(create_app({"tiny": image_rec}, limits)) as c:
        assert c.post("/v1/recognize?beam=1", json={"strokes": STROKES}).status_code == 200
        assert loops == [False]
        resp = c.post("/v1/recognize", content=b"[" * 3000, headers={"content-type": "text/json"})
        error_of(resp, 415, "unsupported_media_type")
        big = b'{"strokes": [[[0, 0]]], "pad": "' + b"x" * 3000 + b'"}'
        resp = c.post("/v1/recognize", content=big, headers={"content-type": "application/json"})
        error_of(resp, 413, "too_large")
        brackets = b"[" * 100
        resp = c.post(
            "/v1/recognize", content=brackets, headers={"content-type": "application/json"}
        )
        error_of(resp, 422, "too_many_points")
        assert loops == [False]  # neither was parsed


class Blocking:
    """A recognizer that works until released, its deadline passes or it is called off."""

    input_kind = "image"
    beam = 1

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.stopped = threading.Event()

    def recognize_strokes(self, strokes, beam=None, deadline=None):
        from hmer.decoding import DecodingTimeout
        from hmer.recognize import Result

        self.started.set()
        try:
            while not self.release.wait(0.01):
                if time.monotonic() > deadline:  # how decoding checks its budget
                    raise DecodingTimeout("stopped")
            return Result("x", ["x"], 1.0, [], "blocking", 1.0, "<strokes>")
        finally:
            self.stopped.set()


def test_saturation_gives_503_with_retry_after_and_health_tells_busy():
    rec = Blocking()
    limits = Limits(max_concurrency=1, max_pending=2, queue_timeout_s=0.3, timeout_s=30)
    app = create_app({"blocking": rec}, limits)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            idle = (await c.get("/healthz")).json()
            first = asyncio.ensure_future(c.post("/v1/recognize", json={"strokes": STROKES}))
            while not rec.started.is_set():
                await asyncio.sleep(0.01)
            queued = asyncio.ensure_future(c.post("/v1/recognize", json={"strokes": STROKES}))
            await asyncio.sleep(0.05)
            busy = (await c.get("/healthz")).json()
            refused = await c.post("/v1/recognize", json={"strokes": STROKES})  # queue full
            waited = await queued  # gave up after queue_timeout_s
            rec.release.set()
            done = await first
            return idle, busy, refused, waited, done, (await c.get("/healthz")).json()

    idle, busy, refused, waited, done, after = asyncio.run(scenario())
    assert idle["status"] == "ok" and idle["capacity"] == 1
    assert busy["status"] == "busy" and busy["running"] == 1 and busy["waiting"] == 1
    for resp in (refused, waited):
        error_of(resp, 503, "busy")
        assert resp.headers["retry-after"] == "1"
    assert done.status_code == 200
    assert after["status"] == "ok" and after["running"] == 0 and after["waiting"] == 0


def test_a_request_whose_client_hangs_up_stops_its_work():
    rec = Blocking()
    app = create_app({"blocking": rec}, Limits(timeout_s=60))
    with live_server(app) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/recognize", json={"strokes": STROKES}, timeout=0.5)
        gone = time.monotonic()
        assert rec.stopped.wait(20), "the work went on after the client left"
        assert time.monotonic() - gone < 20  # far less than its 60 s deadline
        deadline = time.monotonic() + 10
        while httpx.get(url + "/healthz").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/healthz").json()["running"] == 0


def _http_exchange(sock, request: bytes) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on ``sock`` and read one response (status, body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""  # the server closed the connection
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def test_an_internal_error_keeps_the_connection_open():
    import socket

    with live_server(create_app({"broken": Broken()})) as url:
        host, port = url.removeprefix("http://").split(":")
        payload = json.dumps({"strokes": STROKES}).encode()
        post = (
            b"POST /v1/recognize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        ) % (len(payload), payload)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            status, body = _http_exchange(sock, post)
            assert status == 500 and json.loads(body)["code"] == "internal_error"
            status, _ = _http_exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert status == 200  # the same connection still serves


def test_stopping_calls_off_running_work_and_turns_the_queue_away():
    rec = Blocking()
    limits = Limits(max_concurrency=1, max_pending=4, queue_timeout_s=30, timeout_s=60)
    app = create_app({"blocking": rec}, limits)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            running = asyncio.ensure_future(c.post("/v1/recognize", json={"strokes": STROKES}))
            while not rec.started.is_set():
                await asyncio.sleep(0.01)
            queued = asyncio.ensure_future(c.post("/v1/recognize", json={"strokes": STROKES}))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            app.state.stop_work()  # what SIGTERM does in hmer serve
            answers = await asyncio.gather(running, queued)
            return answers, time.monotonic() - t0, (await c.get("/healthz")).json()

    (running, queued), took, health = asyncio.run(scenario())
    assert "stopped" in error_of(running, 503, "busy")
    assert "shutting down" in error_of(queued, 503, "busy")
    assert took < 10 and rec.stopped.is_set()  # not the 60 s deadline nor the 30 s queue wait
    assert health["status"] == "stopping"
