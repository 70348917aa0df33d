"""InkML reading: good files and every kind of bad one gives InkMLError naming the source."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from inkml_samples import ENTITY_BOMB, EXTERNAL_ENTITY, make_inkml, write_inkml, x_plus_one

from hmer.data.inkml import MAX_POINTS, MAX_TRACES, InkMLError, parse_inkml, read_inkml


def test_reads_traces_truth_and_segmentation(tmp_path):
    ink = read_inkml(write_inkml(tmp_path / "a.inkml", truth="$x+1$"))
    assert len(ink.traces) == 5
    assert ink.traces[0].shape == (10, 2) and ink.traces[0].dtype == np.float32
    assert ink.truth == "$x+1$"
    assert [s.label for s in ink.symbols] == ["x", "+", "1"]
    assert ink.symbols[0].trace_ids == ["0", "1"]


def test_latin1_file_is_read(tmp_path):
    traces, _ = x_plus_one()
    doc = make_inkml(traces, truth="$x$ écrit").encode("latin-1")
    path = tmp_path / "latin.inkml"
    path.write_bytes(doc)
    assert read_inkml(path).truth == "$x$ écrit"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"   \n  ", "empty"),
        (b"<ink><trace>0 0, 1 1</trace>", "malformed"),
        (b"not xml at all", "malformed"),
        (ENTITY_BOMB.encode(), "unsafe"),
        (EXTERNAL_ENTITY.encode(), "unsafe"),
        (
            b'<ink xmlns="http://www.w3.org/2003/InkML">'
            b'<annotation type="truth">x</annotation></ink>',
            "no pen traces",
        ),
        (b"<ink><trace>1, 2</trace></ink>", "bad trace"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "malformed"),
    ],
)
def test_bad_documents_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.inkml"
    path.write_bytes(content)
    with pytest.raises(InkMLError) as info:
        read_inkml(path)
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InkMLError, match="cannot read"):
        read_inkml(tmp_path / "nope.inkml")
    with pytest.raises(InkMLError, match="not a regular file"):
        read_inkml(tmp_path)


def test_parse_from_text_and_declared_encoding():
    traces, _ = x_plus_one()
    doc = make_inkml(traces).replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    assert len(parse_inkml(doc, "mem").traces) == 5
    assert len(parse_inkml(doc.encode("utf-8"), "mem").traces) == 5


@pytest.mark.parametrize(
    "encode",
    [
        lambda doc: doc.encode("utf-16"),  # with a byte-order mark
        lambda doc: b"\xfe\xff" + doc.encode("utf-16-be"),
        lambda doc: doc.encode("utf-16-le"),  # no mark: told by how "<" is encoded
        lambda doc: doc.encode("utf-16-be"),
        lambda doc: b"\xef\xbb\xbf" + doc.encode("utf-8"),
        lambda doc: doc.encode("utf-32"),
    ],
)
def test_utf16_utf32_and_bom_documents_are_read(encode):
    traces, _ = x_plus_one()
    doc = make_inkml(traces, truth="$x$ é").replace('encoding="UTF-8"', 'encoding="UTF-16"')
    ink = parse_inkml(encode(doc), "u.inkml")
    assert len(ink.traces) == 5 and ink.truth == "$x$ é"


@pytest.mark.parametrize(
    "trace, message",
    [
        ("0 0, 1e39 1", "beyond"),  # overflows float32: once "cannot convert float NaN"
        ("0 0, 1e300 1", "beyond"),
        ("0 0, 2000000 1", "beyond"),
        ("0 0, NaN 1, 2 2", "NaN or infinite"),  # once dropped silently
        ("0 0, inf 1", "NaN or infinite"),
        ("0 0 1e39, 1 1 1e39", "too large"),
    ],
)
def test_non_finite_or_out_of_range_coordinates_are_refused_clearly(trace, message):
    doc = f'<ink xmlns="http://www.w3.org/2003/InkML"><trace id="t">{trace}</trace></ink>'
    with pytest.raises(InkMLError, match=message) as info:
        parse_inkml(doc, "c.inkml")
    assert "'t'" in str(info.value)


def test_trace_and_point_counts_are_capped_before_the_work_grows():
    many = "".join(f"<trace>{i} 0, {i} 1</trace>" for i in range(MAX_TRACES + 1))
    with pytest.raises(InkMLError, match=f"more than {MAX_TRACES:,} pen traces"):
        parse_inkml(f"<ink>{many}</ink>", "m.inkml")
    long = ", ".join(["1 2"] * (MAX_POINTS // 2 + 1))
    with pytest.raises(InkMLError, match="points"):
        parse_inkml(f"<ink><trace>{long}</trace><trace>{long}</trace></ink>", "m.inkml")
    assert len(parse_inkml(f"<ink>{many[: many.index('<trace>1000 ')]}</ink>").traces) == 1000


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.inkml"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            read_inkml(fifo)
        except InkMLError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert outcome and "not a regular file" in outcome[0]
