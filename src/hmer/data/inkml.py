"""Read CROHME InkML: pen traces, LaTeX truth and symbol segmentation.

XML is parsed with defusedxml, so entity expansion and external entities are refused: InkML also
arrives from users over the network. Documents with more than ``MAX_TRACES`` traces or
``MAX_POINTS`` points, or coordinates that are not finite numbers within ``MAX_COORDINATE``, are
refused with a message saying so.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from hmer.data.files import read_regular_file

MAX_INKML_BYTES = 20_000_000
# CROHME's largest expression has 92 traces and 3,150 points, its coordinates stay below 30,000.
MAX_TRACES = 1000
MAX_POINTS = 100_000
MAX_COORDINATE = 1e6


class InkMLError(ValueError):
    """An InkML document that cannot be read; the message names the source."""


@dataclass
class Symbol:
    """One segmented symbol: its label and the indices of the traces that form it."""

    label: str
    trace_ids: list[str]


@dataclass
class Ink:
    """Pen strokes of one expression.

    ``traces`` holds one float32 array of shape (n_points, 2 or 3) per stroke: x, y, maybe t,
    with y growing downwards as in the source files.
    """

    traces: list[np.ndarray]
    truth: str | None = None
    symbols: list[Symbol] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    source: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NON_FINITE = re.compile(r"(?i)\b(?:nan|inf(?:inity)?)\b")


class TooManyPoints(ValueError):
    """A trace with more points than allowed."""


def parse_trace(text: str, max_points: int = MAX_POINTS) -> np.ndarray:
    """Parse the text of a ``<trace>``: points separated by commas, channels by whitespace.

    Raises ``ValueError`` for NaN or infinite values, x/y beyond ``MAX_COORDINATE`` and points
    with fewer than two values, :class:`TooManyPoints` for more than ``max_points`` points.
    """
    if text.count(",") >= max_points:  # counted before any list of that size is built
        raise TooManyPoints(f"more than {max_points:,} points")
    if _NON_FINITE.search(text):
        raise ValueError("a coordinate is NaN or infinite")
    rows = []
    for chunk in text.strip().split(","):
        values = [m.group() for m in itertools.islice(_NUMBER.finditer(chunk), 3)]
        if values:
            rows.append([float(v) for v in values])
    if not rows:
        return np.zeros((0, 2), np.float32)
    width = min(len(r) for r in rows)
    if width < 2:
        raise ValueError("a trace point has fewer than two coordinates")
    arr = np.asarray([r[:width] for r in rows], dtype=np.float64)
    if not np.all(np.abs(arr[:, :2]) <= MAX_COORDINATE):
        raise ValueError(f"a coordinate is beyond ±{MAX_COORDINATE:g}")
    if not np.all(np.abs(arr) < 3e38):  # e.g. times, which must fit float32
        raise ValueError("a value is too large")
    return arr.astype(np.float32)


def _decode(data: bytes) -> str:
    """Bytes -> text: the encoding from a byte-order mark or, without one, from how the first
    character is encoded (XML 1.0 appendix F); else UTF-8, falling back to ISO-8859-1."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8-sig"),
        (b"\xff\xfe\x00\x00", "utf-32"),
        (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    zeros = tuple(b == 0 for b in data[:4])
    codec = {
        (False, True, True, True): "utf-32-le",
        (True, True, True, False): "utf-32-be",
    }.get(zeros) or {(False, True): "utf-16-le", (True, False): "utf-16-be"}.get(zeros[:2])
    if codec:
        return data.decode(codec, errors="replace")
    # Some CROHME files (MfrDB0104) are ISO-8859-1 although they declare nothing: fall back to it.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_inkml(data: bytes | str, source: str = "<memory>") -> Ink:
    """Parse an InkML document (bytes or text) into :class:`Ink`.

    Raises :class:`InkMLError` naming ``source`` for empty, malformed, hostile or traceless input.
    """
    if isinstance(data, bytes):
        if len(data) > MAX_INKML_BYTES:
            raise InkMLError(f"{source}: InkML larger than {MAX_INKML_BYTES} bytes")
        data = _decode(data)
    if not data.strip():
        raise InkMLError(f"{source}: empty InkML file")
    # Drop the XML declaration: it may name an encoding that no longer applies to decoded text.
    data = re.sub(r"^\s*<\?xml[^>]*\?>", "", data)
    try:
        root = ElementTree.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise InkMLError(
            f"{source}: refused unsafe XML (DTDs, entities and external references are not allowed)"
        ) from exc
    except ElementTree.ParseError as exc:
        raise InkMLError(f"{source}: malformed XML ({exc})") from exc

    traces: list[np.ndarray] = []
    trace_ids: list[str] = []
    truth = None
    points = n_traces = 0
    for child in root:
        tag = _local(child.tag)
        if tag == "trace":
            n_traces += 1
            if n_traces > MAX_TRACES:
                raise InkMLError(f"{source}: more than {MAX_TRACES:,} pen traces")
            try:
                pts = parse_trace(child.text or "", MAX_POINTS - points)
            except TooManyPoints as exc:
                raise InkMLError(f"{source}: more than {MAX_POINTS:,} pen points") from exc
            except ValueError as exc:
                name = child.get("id", str(n_traces - 1))
                raise InkMLError(f"{source}: bad trace {name!r}: {exc}") from exc
            points += len(pts)
            if len(pts):
                traces.append(pts)
                trace_ids.append(child.get("id", str(len(trace_ids))))
        elif tag == "annotation" and child.get("type") == "truth" and truth is None:
            truth = (child.text or "").strip()
    if not traces:
        raise InkMLError(f"{source}: no pen traces")

    symbols: list[Symbol] = []
    for group in root.iter():
        if _local(group.tag) != "traceGroup":
            continue
        label = None
        refs = []
        for child in group:
            tag = _local(child.tag)
            if tag == "annotation" and child.get("type") == "truth":
                label = (child.text or "").strip()
            elif tag == "traceView":
                refs.append(child.get("traceDataRef", ""))
        if label is not None and refs:
            symbols.append(Symbol(label, refs))
    return Ink(traces, truth, symbols, trace_ids, source)


def read_inkml(path: str | Path) -> Ink:
    """Read an InkML file; errors name the file."""
    path = Path(path)
    try:
        data = read_regular_file(path, MAX_INKML_BYTES, "InkML file")
    except ValueError as exc:
        raise InkMLError(str(exc)) from exc
    except OSError as exc:
        raise InkMLError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return parse_inkml(data, str(path))


def strokes_to_ink(strokes: list[list[list[float]]], source: str = "<strokes>") -> Ink:
    """Build :class:`Ink` from JSON-like strokes: a list of strokes, each a list of [x, y(, t)]."""
    traces = []
    for i, stroke in enumerate(strokes):
        try:
            arr = np.asarray(stroke, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InkMLError(f"{source}: stroke {i} is not a list of numeric points") from exc
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] not in (2, 3):
            raise InkMLError(
                f"{source}: stroke {i} must be a non-empty list of [x, y] or [x, y, t]"
            )
        if not np.isfinite(arr).all():
            raise InkMLError(
                f"{source}: stroke {i} has a coordinate that is NaN, infinite or too large"
            )
        traces.append(arr)
    if not traces:
        raise InkMLError(f"{source}: empty drawing (no strokes)")
    return Ink(traces, source=source)
