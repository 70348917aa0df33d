"""HTTP API and web page: ``create_app()`` builds the FastAPI application that ``hmer serve`` runs.

Routes: ``POST /v1/recognize`` (an image or an InkML file as multipart ``file`` or as a raw
``image/*`` / ``application/inkml+xml`` body, or pen strokes as JSON), ``POST /v1/symbol`` (the
same inputs, one symbol: its top LaTeX candidates), ``GET /v1/models``,
``GET /healthz``, the drawing page at ``/`` and offline OpenAPI docs at ``/docs``. Every error is a
JSON object ``{"detail": message, "code": code}``; nothing about the server's internals is ever
sent to a client. The handlers are module-level; ``create_app`` wires them to one app's
:class:`ServiceState` (its models, limits and gate), which they read from ``request.app.state``.

Every request's work is bounded (see :class:`Limits`): inputs are capped and reduced to the sizes
training used, recognition has a deadline, at most ``max_concurrency`` run at once behind a short
queue (more get 503 with ``Retry-After``), and a request whose client hangs up stops its work.
Requests must name this server in ``Host`` and, from a browser, come from its own page
(:class:`hmer.interfaces.guard.SameOriginMiddleware`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import json
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import hmer
from hmer.data.images import FORMATS, ImageError
from hmer.data.inkml import InkMLError, parse_inkml
from hmer.decoding import DecodingTimeout
from hmer.interfaces.guard import LOOPBACK_HOSTS, CancellableDeadline, Gate, SameOriginMiddleware
from hmer.weights import READERS
from hmer.weights import ROUTES as READER_ROUTES

log = logging.getLogger("hmer.api")

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
VENDOR = "/static/vendor"
IMAGE_TYPES = ("image/", "application/octet-stream")
INKML_TYPES = ("application/inkml+xml", "application/xml", "text/xml")
MAX_TOP = 20  # candidates /v1/symbol returns at most
STYLE_HELP = (
    "Output: 'latex' compact, x^{2} (default); 'tokens' the token form, x ^ { 2 }; "
    "'mathml' presentation MathML"
)
ROUTE_HELP = (
    "Who reads pen input: 'image' (rendered), 'strokes' (the stroke model) or 'fusion' (both); "
    "default: the server's choice (GET /v1/models: ink_route). Not with 'model'"
)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; larger inputs get a 4xx answer."""

    max_upload_bytes: int = 10 * 1024 * 1024  # whole request body
    max_json_bytes: int = 4 * 1024 * 1024  # a JSON strokes body (50,000 [x, y, t] points fit)
    max_pixels: int = 25_000_000  # decoded image width x height
    max_strokes: int = 500  # drawn strokes or InkML traces
    max_points: int = 50_000  # over all strokes
    max_coordinate: float = 1e6  # |x|, |y| of a pen point
    max_resampled: int = 20_000  # points a stroke model would see after resampling
    max_beam: int = 20
    max_concurrency: int = max(1, min(4, os.cpu_count() or 1))  # inputs processed at once
    max_pending: int = 32  # requests waiting or running; more get 503 at once
    queue_timeout_s: float = 5.0  # longest wait for a free worker; then 503 with Retry-After
    timeout_s: float = 3.0  # recognition time of one request; past it 503 "timeout"


class ApiError(Exception):
    """An error answered as ``{"detail": message, "code": code}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


# -- schemas (for validation of answers and for the OpenAPI docs) -------------------------------
STROKES_HELP = (
    "Pen strokes in the order they were written, each a list of [x, y] or [x, y, t] points in "
    "the order the pen drew them (pen down at the first, up after the last). x grows to the "
    "right and y downwards, in any unit (canvas pixels, tablet or InkML units): the ink is "
    "scaled by its own symbol size, so only its shape counts. t (a timestamp) may be given "
    "and is not used. Stroke and point order matter to the stroke model, which reads the "
    "trajectory; the image model reads a render of it."
)


class StrokesRequest(BaseModel):
    """Pen strokes: each stroke a list of [x, y] or [x, y, t] points (y grows downwards)."""

    strokes: list[list[list[float]]] = Field(
        ..., description=STROKES_HELP, examples=[[[[0, 0], [10, 10]], [[10, 0], [0, 10]]]]
    )
    beam: int | None = Field(None, ge=1, description="beam width (default: the model's)")
    model: str | None = Field(None, description="model name from /v1/models (default: automatic)")
    route: str | None = Field(None, description=ROUTE_HELP)
    style: str | None = Field(None, description=STYLE_HELP)


class AlternativeOut(BaseModel):
    latex: str
    score: float = Field(..., description="confidence in (0, 1]")


class RecognizeResponse(BaseModel):
    latex: str = Field(..., description="LaTeX in the requested style (default compact)")
    tokens: list[str]
    score: float
    alternatives: list[AlternativeOut]
    model: str
    time_ms: float = Field(..., description="model time (decoding) in milliseconds")
    total_ms: float = Field(..., description="server time for the request in milliseconds")


class SymbolRequest(BaseModel):
    """Pen strokes of one symbol, as for /v1/recognize, and how many candidates to return."""

    strokes: list[list[list[float]]] = Field(
        ..., description=STROKES_HELP, examples=[[[[0, 0], [10, 10]], [[10, 0], [0, 10]]]]
    )
    top: int | None = Field(None, ge=1, le=MAX_TOP, description="how many candidates (5)")


class SymbolCandidate(BaseModel):
    latex: str = Field(..., description="a LaTeX command or character, as the captions write it")
    score: float = Field(..., description="confidence in (0, 1]")


class SymbolResponse(BaseModel):
    candidates: list[SymbolCandidate] = Field(..., description="most likely first")
    model: str
    time_ms: float = Field(..., description="classifier time in milliseconds")
    total_ms: float = Field(..., description="server time for the request in milliseconds")


class ErrorResponse(BaseModel):
    detail: str
    code: str


class ModelInfo(BaseModel):
    name: str
    input_kind: str
    default_for: list[str]
    beam: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    default: dict[str, str | None]
    routes: dict[str, str | None] = Field(
        ..., description="what reads pen input on each route (null: not available here)"
    )
    ink_route: str = Field(..., description="the route pen input takes when none is asked for")
    symbol_model: str | None = Field(None, description="the classifier of /v1/symbol, if any")


# -- request body size limit ----------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"detail": message, "code": code}).encode()


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes``: by Content-Length before reading, else as soon
    as the body read so far exceeds it (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reply(self, send: Send, status: int, code: str, message: str) -> None:
        body = _error_body(code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._reply(send, 400, "bad_request", "invalid Content-Length header")
                    return
                if length > self.max_bytes:
                    await self._reply(send, 413, "too_large", self._too_large())
                    return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes / (1024 * 1024):g} MB"


# -- input checks -----------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_strokes(value: Any, limits: Limits) -> list[np.ndarray]:
    """Check JSON strokes against ``limits`` and return one float64 array per stroke.

    Times (a third value per point) are made relative to the first point; if some stroke has no
    times, times are dropped from all. Raises :class:`ApiError` (422) with a message naming the
    first problem.
    """

    def bad(message: str, code: str = "invalid_strokes") -> ApiError:
        return ApiError(422, code, message)

    if not isinstance(value, list):
        raise bad("'strokes' must be a list of strokes, each a list of [x, y] or [x, y, t] points")
    if not value:
        raise bad("empty drawing: 'strokes' has no strokes", "empty_strokes")
    if len(value) > limits.max_strokes:
        raise bad(f"too many strokes: {len(value)} > {limits.max_strokes}", "too_many_strokes")
    total = 0
    for i, stroke in enumerate(value):
        if not isinstance(stroke, list) or not stroke:
            raise bad(f"stroke {i} must be a non-empty list of points")
        total += len(stroke)
        if total > limits.max_points:
            raise bad(f"too many points: more than {limits.max_points}", "too_many_points")
    arrays = []
    for i, stroke in enumerate(value):
        width = len(stroke[0]) if isinstance(stroke[0], list) else 0
        if width not in (2, 3):
            raise bad(f"stroke {i}: points must be [x, y] or [x, y, t]")
        for j, p in enumerate(stroke):
            if not isinstance(p, list) or len(p) != width or not all(_is_number(v) for v in p):
                raise bad(f"stroke {i}, point {j}: expected {width} numbers like its first point")
            # Written so that NaN fails too; checked before float() so that huge ints do not raise.
            if not (abs(p[0]) <= limits.max_coordinate and abs(p[1]) <= limits.max_coordinate):
                raise bad(
                    f"stroke {i}, point {j}: coordinates must be finite numbers within "
                    f"±{limits.max_coordinate:g}",
                    "bad_coordinates",
                )
            if width == 3 and not abs(p[2]) <= 1e15:
                raise bad(f"stroke {i}, point {j}: time must be a finite number", "bad_coordinates")
        arrays.append(np.asarray(stroke, dtype=np.float64))
    if any(a.shape[1] == 2 for a in arrays):
        arrays = [a[:, :2] for a in arrays]
    else:
        t0 = arrays[0][0, 2]
        for a in arrays:
            a[:, 2] -= t0
    return arrays


def resampled_length(traces: list[np.ndarray]) -> float:
    """About how many points a stroke model's resampling makes of ``traces`` (see ink_features)."""
    from hmer.data.render import ink_symbol_size
    from hmer.data.strokes import SPACING

    xy = [t[:, :2] for t in traces]
    step = SPACING * ink_symbol_size(xy)
    path = sum(float(np.linalg.norm(np.diff(t, axis=0), axis=1).sum()) for t in xy)
    return path / max(step, 1e-9) + len(xy)


def check_pixels(data: bytes, limits: Limits) -> None:
    """Refuse images whose header declares more than ``limits.max_pixels`` pixels (no decoding).

    Unreadable data passes: the image reader reports it with a clear message.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", "image has too many pixels") from exc
    except Exception:  # noqa: BLE001 - any decoding problem is reported later by ImageError
        return
    if w * h > limits.max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image of {w}x{h} pixels is larger than {limits.max_pixels:,} pixels",
        )


def _beam(value: Any, limits: Limits) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.max_beam:
        raise ApiError(422, "bad_beam", f"'beam' must be an integer from 1 to {limits.max_beam}")
    return value


# -- models ---------------------------------------------------------------------------------------
def load_default_recognizers() -> dict:
    """The shipped default image model, plus the shipped stroke model when there is one."""
    from hmer.recognize import Recognizer
    from hmer.weights import WeightsError

    recs = {}
    for kind in ("image", "strokes"):
        try:
            rec = Recognizer.load(None, kind)
        except WeightsError:
            if kind == "image":
                raise
            continue
        recs[rec.name] = rec
    return recs


def load_default_symbols() -> Any:
    """The shipped symbol classifier, or None when none is shipped."""
    from hmer.symbol_classifier import SymbolClassifier
    from hmer.weights import WeightsError

    try:
        return SymbolClassifier.load()
    except WeightsError:
        return None


def _defaults(recognizers: dict) -> dict[str, str | None]:
    """Which model reads uploads ("image") and which reads drawn strokes ("strokes"): for each
    input kind, the first loaded model of the kind :data:`hmer.weights.READERS` prefers (without
    a stroke model, strokes are rendered and read by the image model)."""
    return {
        kind: next(
            (n for reader in readers for n, r in recognizers.items() if r.input_kind == reader),
            None,
        )
        for kind, readers in READERS.items()
    }


# -- what the handlers share --------------------------------------------------------------------
class ServiceState:
    """One application's models (and symbol classifier), the default model for each input kind,
    its limits, the gate in front of its workers and the deadlines of its running work.

    Handlers find it as ``request.app.state.service``.
    """

    def __init__(
        self,
        recognizers: dict,
        defaults: dict[str, str | None],
        limits: Limits,
        fusion: Any = None,
        ink_route: str | None = None,
        symbols: Any = None,
    ):
        self.recognizers = recognizers
        self.symbols = symbols  # the SymbolClassifier of /v1/symbol, or None
        self.defaults = defaults
        self.limits = limits
        self.fusion = fusion  # a hmer.fusion.FusionRecognizer over two of the recognizers
        strokes = [n for n, r in recognizers.items() if r.input_kind == "strokes"]
        self.routes = {
            "image": defaults.get("image"),
            "strokes": strokes[0] if strokes else None,
            "fusion": fusion.name if fusion is not None else None,
        }
        if ink_route is not None and self.routes.get(ink_route) is None:
            raise ValueError(f"pen input cannot default to the {ink_route!r} route: not loaded")
        self.ink_route = ink_route
        self.gate = Gate(limits.max_concurrency, limits.max_pending)
        self.active: set[CancellableDeadline] = set()
        self.stopping = False

    def stop_work(self) -> None:
        """Call off all running work and refuse new work (shutdown)."""
        self.stopping = True
        self.gate.close()  # queued requests get 503 now
        for deadline in list(self.active):
            deadline.cancel()

    def default_route(self) -> str:
        """The route pen input takes when a request names neither model nor route."""
        if self.ink_route is not None:
            return self.ink_route
        return "image" if self.defaults.get("strokes") == self.routes["image"] else "strokes"

    def pick(self, name: str | None, kind: str, route: str | None = None) -> Any:
        """The recognizer named ``name`` (it must read ``kind`` input), else the reader of
        ``route`` (pen input), else the default for ``kind``."""
        recs = self.recognizers
        if route is not None:
            return self._route(name, kind, route)
        if name is None and kind == "strokes" and self.ink_route is not None:
            return self._route(None, kind, self.ink_route)
        if name is not None:
            if name not in recs:
                raise ApiError(
                    422,
                    "unknown_model",
                    f"unknown model {name!r}; known: {', '.join(sorted(recs))}",
                )
            rec = recs[name]
            if rec.input_kind not in READERS[kind]:
                raise ApiError(
                    422,
                    "wrong_model_kind",
                    f"model {name!r} reads {rec.input_kind}, not {_INPUT_NOUNS[kind]}",
                )
            return rec
        if self.defaults.get(kind) is None:
            raise ApiError(422, "no_model", f"no model for {kind} input is loaded")
        return recs[self.defaults[kind]]

    def _route(self, name: str | None, kind: str, route: Any) -> Any:
        if name is not None:
            raise ApiError(422, "bad_route", "give 'model' or 'route', not both")
        if route not in READER_ROUTES:
            raise ApiError(422, "bad_route", f"'route' must be one of {', '.join(READER_ROUTES)}")
        if kind == "image" and route != "image":
            raise ApiError(
                422, "bad_route", f"the {route} route reads pen input; images go to the image model"
            )
        if route == "fusion":
            if self.fusion is None:
                raise ApiError(422, "no_route", "fusion needs an image and a stroke model loaded")
            return self.fusion
        if self.routes[route] is None:
            raise ApiError(422, "no_route", f"no {route} model is loaded")
        return self.recognizers[self.routes[route]]

    async def run(self, request: Request, fn: Callable[[CancellableDeadline], Any]) -> Any:
        """Run ``fn(deadline)`` in a worker thread once the gate admits it; the deadline is
        ``timeout_s`` away and is called off when the client disconnects or the server stops."""
        gate, limits = self.gate, self.limits
        if self.stopping:
            raise _busy("server shutting down")
        if not await gate.acquire(limits.queue_timeout_s):
            raise _busy("server shutting down" if self.stopping else "server busy, retry shortly")
        if await request.is_disconnected():  # gave up while queued: do not start the work
            gate.release()
            raise _busy("the client left before its turn")
        deadline = CancellableDeadline(time.monotonic() + limits.timeout_s)
        self.active.add(deadline)
        task = asyncio.ensure_future(run_in_threadpool(fn, deadline))

        def finished(_: asyncio.Future) -> None:  # the slot is free only once the thread is
            self.active.discard(deadline)
            gate.release()

        task.add_done_callback(finished)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.2)
                if not task.done() and await request.is_disconnected():
                    deadline.cancel()  # nobody waits for the answer: stop at the next step
                    break
            return await task
        except DecodingTimeout as exc:
            if deadline.cancelled:
                raise _busy("recognition stopped (client gone or server stopping)") from exc
            raise ApiError(
                503,
                "timeout",
                f"recognition took longer than {limits.timeout_s:g} s and was stopped; "
                "a smaller beam (beam=1 is fastest) or a simpler input may fit",
            ) from exc
        except asyncio.CancelledError:
            deadline.cancel()
            raise

    def check_ink(self, rec: Any, traces: list) -> None:
        """Refuse ink with more strokes or points than the limits allow (422)."""
        limits = self.limits
        if len(traces) > limits.max_strokes:
            raise ApiError(
                422, "too_many_strokes", f"too many strokes: {len(traces)} > {limits.max_strokes}"
            )
        if sum(len(t) for t in traces) > limits.max_points:
            raise ApiError(
                422, "too_many_points", f"too many points: more than {limits.max_points}"
            )
        if rec.input_kind == "strokes" and resampled_length(traces) > limits.max_resampled:
            raise ApiError(
                422, "too_many_points", "drawing too long or too spread out for the stroke model"
            )

    def image_work(self, rec: Any, data: bytes, source: str, beam: int | None) -> Callable:
        """The worker-thread job that recognizes an uploaded image."""

        def work(deadline: CancellableDeadline):
            check_pixels(data, self.limits)
            return rec.recognize_image(data, source, beam, deadline=deadline)

        return work

    def inkml_work(self, rec: Any, data: bytes, source: str, beam: int | None) -> Callable:
        """The worker-thread job that parses, checks and recognizes an uploaded InkML file."""

        def work(deadline: CancellableDeadline):
            ink = parse_inkml(data, source)
            self.check_ink(rec, ink.traces)
            return rec.recognize_ink(ink, beam, deadline=deadline)

        return work


_INPUT_NOUNS = {"image": "images", "strokes": "strokes"}


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _busy(message: str = "server busy, retry shortly") -> ApiError:
    return ApiError(503, "busy", message, {"retry-after": "1"})


# -- errors: always JSON, never a traceback -------------------------------------------------------
def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, "code": code}, status, headers=headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.message, exc.headers)


async def _too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
    mb = _state(request).limits.max_upload_bytes / (1024 * 1024)
    message = f"request body larger than {mb:g} MB"
    return _error(413, "too_large", message, {"connection": "close"})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    code = codes.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, message, exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    message = f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request"
    return _error(422, "invalid_request", message)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal_error", "internal server error")


_ERROR_HANDLERS: list[tuple[type[Exception], Callable]] = [
    (ApiError, _api_error),
    (_BodyTooLarge, _too_large),
    (StarletteHTTPException, _http_error),
    (RequestValidationError, _invalid),
    (Exception, _internal),
]


# -- routes ---------------------------------------------------------------------------------------
router = APIRouter()


@router.get("/healthz", tags=["service"])
async def healthz(request: Request) -> dict:
    """Liveness and load: "ok" when a request would start at once, "busy" when every worker
    is taken (requests then wait, up to a limit, or get 503)."""
    state = _state(request)
    gate = state.gate
    busy = gate.running >= gate.capacity or gate.waiting > 0
    return {
        "status": "stopping" if state.stopping else "busy" if busy else "ok",
        "models": len(state.recognizers),
        "running": gate.running,
        "waiting": gate.waiting,
        "capacity": gate.capacity,
    }


@router.get("/v1/models", response_model=ModelsResponse, tags=["recognition"])
async def models(request: Request) -> dict:
    """The loaded models, their input kinds and which one is the default for each input."""
    state = _state(request)
    out = []
    for name, rec in state.recognizers.items():
        roles = [kind for kind, n in state.defaults.items() if n == name]
        out.append(
            {"name": name, "input_kind": rec.input_kind, "default_for": roles, "beam": rec.beam}
        )
    default = dict(state.defaults)
    if state.ink_route is not None:
        default["strokes"] = state.routes[state.ink_route]
    return {
        "models": out,
        "default": default,
        "routes": state.routes,
        "ink_route": state.default_route(),
        "symbol_model": state.symbols.name if state.symbols is not None else None,
    }


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The drawing page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={
            "content-security-policy": (
                "default-src 'self'; img-src 'self' data: blob:; "
                "style-src 'self' 'unsafe-inline'; font-src 'self'; connect-src 'self'; "
                "object-src 'none'; base-uri 'none'"
            ),
            "cache-control": "no-cache",
        },
    )


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """The OpenAPI docs, with Swagger UI served from this package (nothing loaded from outside)."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title="hmer API",
        swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


def _upload_body(fields: dict, json_model: type[BaseModel], inkml: bool = False) -> dict:
    """The documented request bodies of an upload route: a multipart ``file`` beside ``fields``,
    the JSON ``json_model``, a raw InkML body if ``inkml``, and a raw image."""
    file = {"type": "string", "format": "binary"}
    form = {"type": "object", "required": ["file"], "properties": {"file": file, **fields}}
    content = {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": json_model.model_json_schema()},
    }
    if inkml:
        content["application/inkml+xml"] = {"schema": {"type": "string"}}
    content["image/*"] = {"schema": file}
    return {"requestBody": {"required": True, "content": content}}


_RECOGNIZE_BODY = _upload_body(
    {
        "beam": {"type": "integer"},
        "model": {"type": "string"},
        "route": {"type": "string", "enum": list(READER_ROUTES)},
        "style": {"type": "string", "enum": ["latex", "tokens", "mathml"]},
    },
    StrokesRequest,
)


def _post_route(response_model: type, body: dict) -> dict[str, Any]:
    """The options of a recognition POST route: its answer, its documented bodies and errors."""
    return {
        "methods": ["POST"],
        "response_model": response_model,
        "tags": ["recognition"],
        "openapi_extra": body,
        "responses": {s: {"model": ErrorResponse} for s in (400, 403, 413, 415, 422, 500, 503)},
    }


_RECOGNIZE_ROUTE = _post_route(RecognizeResponse, _RECOGNIZE_BODY)


_SYMBOL_BODY = _upload_body(
    {"top": {"type": "integer", "minimum": 1, "maximum": MAX_TOP}}, SymbolRequest, inkml=True
)

_SYMBOL_ROUTE = _post_route(SymbolResponse, _SYMBOL_BODY)


def _beam_query(max_beam: int | None = None) -> Any:
    return Query(None, ge=1, le=max_beam, description="beam width")


async def recognize(
    request: Request,
    model: str | None = Query(None, description="model name (default: by input kind)"),
    beam: int | None = _beam_query(),  # bounded by each app's Limits.max_beam: _with_max_beam
    style: str | None = Query(None, description=STYLE_HELP),
    route: str | None = Query(None, description=ROUTE_HELP),
) -> dict:
    """Recognize an image or InkML file (multipart field ``file``, or a raw ``image/*`` or
    ``application/inkml+xml`` body) or pen strokes (JSON ``{"strokes": [[[x, y], ...], ...]}``).
    ``model``, ``route``, ``beam`` and ``style`` may also be given in the JSON body or as form
    fields."""
    t0 = time.perf_counter()
    state = _state(request)
    if state.gate.full():  # refused before the body is even read
        raise _busy()
    result, style_ = await _answer(
        "/v1/recognize", lambda: _recognize(state, request, model, beam, style, route)
    )
    alts = [{"latex": a.latex_as(style_), "score": a.score} for a in result.alternatives]
    return {
        "latex": result.latex_as(style_),
        "tokens": result.tokens,
        "score": result.score,
        "alternatives": alts,
        "model": result.model,
        "time_ms": result.time_ms,
        "total_ms": round((time.perf_counter() - t0) * 1000, 1),
    }


def _with_max_beam(endpoint: Callable, max_beam: int) -> Callable:
    """``endpoint`` with its ``beam`` query parameter capped at ``max_beam``.

    FastAPI takes a parameter's bounds from the handler's signature, and the cap is each app's
    own (:attr:`Limits.max_beam`): the wrapper's signature carries it, so that FastAPI refuses a
    wider beam (422) and the OpenAPI schema states the maximum.
    """
    sig = inspect.signature(endpoint, eval_str=True)
    params = [
        p.replace(default=_beam_query(max_beam)) if p.name == "beam" else p
        for p in sig.parameters.values()
    ]

    @functools.wraps(endpoint)
    async def capped(*args: Any, **kwargs: Any) -> Any:
        return await endpoint(*args, **kwargs)

    capped.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return capped


@dataclass
class _Upload:
    """A request's input as read off the wire: JSON, InkML or image bytes, and form fields."""

    kind: str  # "json", "inkml" or "image"
    data: bytes
    source: str  # a client-side name for messages
    fields: Any  # the multipart form (model, beam, style, top...), else an empty dict


async def _read_upload(request: Request, limits: Limits) -> _Upload:
    """Read a request's body by its content type (the forms /v1/recognize and /v1/symbol take).

    JSON is only read here, and checked for its point count before any parsing: the caller
    parses it off the event loop.
    """
    mtype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if mtype == "application/json" or mtype.endswith("+json"):
        body = await _read_body(request, limits.max_json_bytes)
        # Each point is a list: count them before any parsing work grows with them.
        if body.count(b"[") > limits.max_points + limits.max_strokes + 1:
            raise ApiError(
                422, "too_many_points", f"too many points: more than {limits.max_points}"
            )
        return _Upload("json", body, "strokes", {})
    if mtype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(422, "missing_file", "multipart body needs a file field 'file'")
        data = await upload.read()
        kind = "inkml" if _is_inkml(data, upload.filename, upload.content_type) else "image"
        return _Upload(kind, data, upload.filename or "upload", form)
    if mtype in INKML_TYPES or mtype.startswith(IMAGE_TYPES):
        data = await request.body()
        if mtype in INKML_TYPES or (mtype == "application/octet-stream" and _is_inkml(data)):
            return _Upload("inkml", data, "upload.inkml", {})
        return _Upload("image", data, "upload", {})
    raise ApiError(
        415,
        "unsupported_media_type",
        "send multipart/form-data with a 'file', an image/* or application/inkml+xml "
        "body, or application/json strokes",
    )


async def _answer(path: str, work: Callable[[], Any]) -> Any:
    """Await ``work()``, turning bad input into 422 and anything unexpected into a logged 500."""
    try:
        return await work()
    except (ApiError, StarletteHTTPException, RequestValidationError, _BodyTooLarge):
        raise
    except ClientDisconnect as exc:  # hung up while sending: nobody reads the answer
        raise ApiError(400, "client_disconnected", "the client disconnected") from exc
    except (ImageError, InkMLError) as exc:
        raise ApiError(422, "bad_input", _client_message(str(exc))) from exc
    except Exception as exc:  # noqa: BLE001
        # Answered here, not by the generic handler, which would also drop the connection.
        log.error("internal error on POST %s", path, exc_info=exc)
        raise ApiError(500, "internal_error", "internal server error") from exc


async def _recognize(
    state: ServiceState,
    request: Request,
    model: str | None,
    beam: int | None,
    style: str | None,
    route: str | None = None,
) -> tuple[Any, str]:
    """Read the request by its content type and run its recognition: (result, style)."""
    limits = state.limits
    upload = await _read_upload(request, limits)
    if upload.kind == "json":

        def work(deadline: CancellableDeadline):
            # Parsed and checked in the worker, off the event loop.
            payload = _load_json(upload.data)
            name = _str_field(payload.get("model", model), "model")
            way = _str_field(payload.get("route", route), "route")
            width = _beam(payload.get("beam", beam), limits)
            chosen_style = _style(payload.get("style", style))
            traces = parse_strokes(payload.get("strokes"), limits)
            rec = state.pick(name, "strokes", way)
            state.check_ink(rec, traces)
            return rec.recognize_strokes(traces, width, deadline=deadline), chosen_style

        return await state.run(request, work)
    fields = upload.fields
    name = _str_field(fields.get("model", model), "model")
    way = _str_field(fields.get("route", route), "route")
    width = _beam(fields.get("beam", beam), limits)
    chosen_style = _style(fields.get("style", style))
    if upload.kind == "inkml":
        work = state.inkml_work(state.pick(name, "strokes", way), upload.data, upload.source, width)
    else:
        work = state.image_work(state.pick(name, "image", way), upload.data, upload.source, width)
    return await state.run(request, work), chosen_style


async def classify_symbol(
    request: Request,
    top: int | None = Query(None, ge=1, le=MAX_TOP, description="how many candidates (5)"),
) -> dict:
    """Which symbol is this? The most likely LaTeX commands, with confidences, for one
    handwritten symbol: pen strokes (JSON ``{"strokes": [...], "top": 5}``), an InkML file (all
    its ink is the symbol) or an image, sent as for ``/v1/recognize``."""
    t0 = time.perf_counter()
    state = _state(request)
    if state.gate.full():  # refused before the body is even read
        raise _busy()
    classifier = state.symbols
    if classifier is None:
        raise ApiError(422, "no_model", "no symbol classifier is loaded")
    limits = state.limits

    async def read_and_run():
        upload = await _read_upload(request, limits)
        fields = upload.fields

        def work(deadline: CancellableDeadline):
            if upload.kind == "json":  # parsed and checked in the worker, off the event loop
                payload = _load_json(upload.data)
                k = _top(payload.get("top", top))
                traces = parse_strokes(payload.get("strokes"), limits)
            elif upload.kind == "inkml":
                k = _top(fields.get("top", top))
                traces = parse_inkml(upload.data, upload.source).traces
            else:
                k = _top(fields.get("top", top))
                check_pixels(upload.data, limits)
                return classifier.classify_image(upload.data, upload.source, k)
            state.check_ink(classifier, traces)
            return classifier.classify_traces([np.asarray(t, np.float32) for t in traces], k)

        return await state.run(request, work)

    result = await _answer("/v1/symbol", read_and_run)
    return {**result.to_dict(), "total_ms": round((time.perf_counter() - t0) * 1000, 1)}


# -- app ----------------------------------------------------------------------------------------
def create_app(
    recognizers: dict | None = None,
    limits: Limits | None = None,
    defaults: dict[str, str | None] | None = None,
    allowed_hosts: Collection[str] | None = LOOPBACK_HOSTS,
    ink_route: str | None = None,
    symbols: Any = None,
) -> FastAPI:
    """Build the application.

    ``recognizers`` maps names to :class:`hmer.recognize.Recognizer` objects (default: the shipped
    models). ``defaults`` may name the model for "image" uploads and for drawn "strokes"; by
    default the first image model reads uploads and strokes go to the first stroke model, else to
    the image model (which renders them). ``allowed_hosts`` are the host names a request's
    ``Host`` header may give (default: this machine's loopback names; ``None``: any).
    With an image and a stroke model among them, pen input can also take the "fusion" route
    (:class:`hmer.fusion.FusionRecognizer`, with the shipped fusion parameters); ``ink_route``
    ("image", "strokes", "fusion") makes a route the default for pen input.
    ``symbols`` is the :class:`hmer.symbol_classifier.SymbolClassifier` of ``/v1/symbol``
    (default: the shipped one when the recognizers are the shipped ones too; none: the route
    answers 422 ``no_model``).
    ``app.state.stop_work()`` calls off all running work and refuses new work (shutdown).
    """
    limits = limits or Limits()
    if recognizers is None and symbols is None:
        symbols = load_default_symbols()
    recs = dict(recognizers) if recognizers is not None else load_default_recognizers()
    if not recs:
        raise ValueError("create_app needs at least one recognizer")
    chosen = {**_defaults(recs), **(defaults or {})}
    for name in chosen.values():
        if name is not None and name not in recs:
            raise ValueError(f"default model {name!r} is not among the recognizers")

    app = FastAPI(
        title="hmer",
        version=hmer.__version__,
        description="Handwritten mathematical expressions to LaTeX, on a CPU, offline.",
        docs_url=None,
        redoc_url=None,
    )
    service = ServiceState(recs, chosen, limits, _fusion_of(recs, chosen), ink_route, symbols)
    app.state.service = service
    app.state.recognizers = recs
    app.state.defaults = chosen
    app.state.limits = limits
    app.state.stop_work = service.stop_work
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_upload_bytes)
    app.add_middleware(SameOriginMiddleware, allowed_hosts=allowed_hosts)  # outermost: first
    for exc_type, handler in _ERROR_HANDLERS:
        app.add_exception_handler(exc_type, handler)
    app.include_router(router)
    app.add_api_route(
        "/v1/recognize", _with_max_beam(recognize, limits.max_beam), **_RECOGNIZE_ROUTE
    )
    app.add_api_route("/v1/symbol", classify_symbol, **_SYMBOL_ROUTE)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _fusion_of(recognizers: dict, defaults: dict[str, str | None]) -> Any:
    """The fusion of the default image model and the first stroke model, when both are loaded
    and share a vocabulary."""
    from hmer.fusion import FusionRecognizer, load_params

    image = recognizers.get(defaults.get("image") or "")
    strokes = next((r for r in recognizers.values() if r.input_kind == "strokes"), None)
    if image is None or image.input_kind != "image" or strokes is None:
        return None
    try:
        return FusionRecognizer(image, strokes, load_params(), beam=image.beam)
    except ValueError as exc:  # e.g. two vocabularies: served without the fusion route
        log.warning("no fusion route: %s", exc)
        return None


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(413, "too_large", f"JSON body larger than {limit / (1024 * 1024):g} MB")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _is_inkml(data: bytes, filename: str | None = None, ctype: str | None = None) -> bool:
    """Whether an upload is InkML: by name, by declared type, or because it starts like XML
    (no supported image format starts with ``<``, in UTF-8 or UTF-16)."""
    if filename and filename.lower().endswith(".inkml"):
        return True
    if ctype and ctype.split(";")[0].strip().lower() in INKML_TYPES:
        return True
    head = data[:256]
    for bom in (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"):
        head = head.removeprefix(bom)
    return head.replace(b"\x00", b"").lstrip().startswith(b"<")


def _load_json(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_strokes", 'expected a JSON object like {"strokes": [...]}')
    return payload


def _top(value: Any) -> int:
    """How many symbol candidates: 5 unless given, an integer from 1 to ``MAX_TOP``."""
    if value is None:
        return 5
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOP:
        raise ApiError(422, "bad_top", f"'top' must be an integer from 1 to {MAX_TOP}")
    return value


def _style(value: Any) -> str:
    if value is None:
        return "latex"
    if value not in ("latex", "tokens", "mathml"):
        raise ApiError(422, "bad_style", "'style' must be 'latex' (compact), 'tokens' or 'mathml'")
    return value


def _str_field(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ApiError(422, "invalid_request", f"'{name}' must be a string")


def _client_message(message: str) -> str:
    """An input error's message without server paths (the source is a client-side name)."""
    return message[:300]
