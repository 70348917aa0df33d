"""InkML reading: good files and every kind of bad one gives InkMLError naming the source."""

from __future__ import annotations

import numpy as np
import pytest
from inkml_samples import ENTITY_BOMB, EXTERNAL_ENTITY, make_inkml, write_inkml, x_plus_one

from hmer.data.inkml import InkMLError, parse_inkml, read_inkml


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
    with pytest.raises(InkMLError, match="cannot read"):
        read_inkml(tmp_path)


def test_parse_from_text_and_declared_encoding():
    traces, _ = x_plus_one()
    doc = make_inkml(traces).replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    assert len(parse_inkml(doc, "mem").traces) == 5
    assert len(parse_inkml(doc.encode("utf-8"), "mem").traces) == 5
