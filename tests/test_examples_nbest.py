"""The shipped models' full beam-10 n-best lists on the shipped examples stay those recorded in
``data/examples_nbest.json`` (written by ``nbest()`` with the decoding before the speed work of
the fast-inference issue: caches, batch layout and chunked convolutions must not change them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hmer.recognize import Recognizer
from hmer.weights import WEIGHTS_DIR

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "hmer" / "examples"
GOLDEN = Path(__file__).resolve().parent / "data" / "examples_nbest.json"


def nbest() -> dict[str, dict[str, list]]:
    """Per model and example file: the alternatives' tokens and confidences at beam 10."""
    torch.set_num_threads(1)
    image = Recognizer.load(WEIGHTS_DIR / "comer-small.safetensors")
    strokes = Recognizer.load(WEIGHTS_DIR / "strokes.safetensors", "strokes")
    files = sorted(EXAMPLES.glob("*.png")) + [EXAMPLES / "example.inkml"]
    out = {}
    for name, rec, paths in (("image", image, files), ("strokes", strokes, files[-1:])):
        for path in paths:
            r = rec.recognize_file(path, beam=10)
            out[f"{name}/{path.name}"] = {
                "tokens": [" ".join(a.tokens) for a in r.alternatives],
                "confidence": [a.score for a in r.alternatives],
            }
    return out


def test_shipped_models_keep_their_nbest_on_the_shipped_examples():
    want = json.loads(GOLDEN.read_text())
    got = nbest()
    assert sorted(got) == sorted(want) and len(want) == 11
    for key, w in want.items():
        assert got[key]["tokens"] == w["tokens"], key
        assert got[key]["confidence"] == pytest.approx(w["confidence"], abs=2e-4), key


if __name__ == "__main__":  # rewrite the golden file (only on purpose)
    GOLDEN.write_text(json.dumps(nbest(), indent=1) + "\n")
