"""HTTP API: every route, and every way a request can be refused, on tiny untrained models."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import (  # noqa: E402
    STROKES,
    png_bytes,
    tiny_image_recognizer,
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
    with TestClient(create_app({"tiny": image_rec}), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def both(image_rec, stroke_rec):
    app = create_app({"tiny": image_rec, "tiny-strokes": stroke_rec})
    with TestClient(app, raise_server_exceptions=False) as c:
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
    assert client.get("/healthz").json() == {"status": "ok", "models": 1}
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
    resp = client.post("/v1/recognize?style=mathml", json={"strokes": STROKES})
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
    assert "strokes" in body["application/json"]["schema"]["properties"]


def test_unknown_route_and_method_are_json(client):
    error_of(client.get("/nope"), 404, "not_found")
    error_of(client.get("/v1/recognize"), 405, "method_not_allowed")


# -- refusals -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(image_rec):
    limits = Limits(max_upload_bytes=2000, max_pixels=1000, max_strokes=3, max_points=20)
    with TestClient(create_app({"tiny": image_rec}, limits), raise_server_exceptions=False) as c:
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


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", ""])
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
        (b"[" * 100_000, 400, "malformed_json"),  # nesting deeper than the parser's recursion
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

    def recognize_strokes(self, strokes, beam=None):
        raise RuntimeError("secret /srv/internal/path")

    recognize_image = recognize_strokes


def test_internal_error_is_generic_json():
    with TestClient(create_app({"broken": Broken()}), raise_server_exceptions=False) as c:
        resp = c.post("/v1/recognize", json={"strokes": STROKES})
        assert error_of(resp, 500, "internal_error") == "internal server error"
        assert "secret" not in resp.text
        assert c.get("/healthz").status_code == 200  # still serving


def test_busy_server_answers_503(image_rec):
    app = create_app({"tiny": image_rec}, Limits(max_pending=0))
    with TestClient(app) as c:
        resp = c.post("/v1/recognize", json={"strokes": STROKES})
        error_of(resp, 503, "busy")
        assert resp.headers["retry-after"] == "1"


class Slow:
    """A recognizer that takes ``delay`` seconds, to see requests overlap."""

    input_kind = "image"
    beam = 1

    def __init__(self, delay: float):
        self.delay = delay

    def recognize_strokes(self, strokes, beam=None):
        from hmer.recognize import Result

        time.sleep(self.delay)
        return Result("x", ["x"], 1.0, [], "slow", self.delay * 1000, "<strokes>")


def test_inference_runs_off_the_event_loop_and_concurrently():
    app = create_app({"slow": Slow(0.4)}, Limits(max_concurrency=4))

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
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
    from hmer.cli import build_parser
    from hmer.interfaces.cli_serve import _load
    from hmer.weights import save_release

    cfg = {
        "name": "transformer",
        "encoder_cfg": {"growth": 4, "depth": 2},
        "d_model": 32,
        "nhead": 2,
        "num_layers": 1,
        "ffn": 64,
    }
    path = save_release(image_rec.model, cfg, image_rec.vocab, tmp_path / "img.safetensors")
    args = build_parser().parse_args(["serve", "--model", str(path), "--stroke-model", "none"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 10.0)
    recs = _load(args)
    assert list(recs) == ["img"] and recs["img"].input_kind == "image"
    with TestClient(create_app(recs)) as c:
        resp = c.post("/v1/recognize?beam=1", json={"strokes": STROKES})
        assert resp.status_code == 200 and resp.json()["model"] == "img"


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
