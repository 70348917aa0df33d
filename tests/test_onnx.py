"""The ONNX export decodes exactly like the PyTorch model it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from serve_helpers import tiny_image_recognizer  # noqa: E402

from hmer.models import create_model  # noqa: E402
from hmer.onnx import export_onnx, load_onnx  # noqa: E402
from hmer.recognize import Recognizer  # noqa: E402


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((40, 90), (64, 200), (33, 61)):  # odd sizes: padded to the stride
        img = np.zeros((h, w), np.uint8)
        for _ in range(4):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[y : y + 8, x : x + 3] = 255
        out.append(img)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    rec = tiny_image_recognizer(beam=3)
    for p in rec.model.parameters():  # untrained coverage starts at zero: make it matter
        p.data.add_(0.05 * torch.randn_like(p))
    folder = export_onnx(rec.model, rec.vocab, tmp_path_factory.mktemp("onnx"))
    model, vocab = load_onnx(folder, threads=1)
    return rec, Recognizer(model, vocab, "onnx", beam=3), folder


@pytest.mark.parametrize("beam", [1, 3])
def test_onnx_runtime_matches_pytorch(pair, beam):
    torch_rec, onnx_rec, _ = pair
    for img in _images():
        a = torch_rec.recognize_image(img, beam=beam)
        b = onnx_rec.recognize_image(img, beam=beam)
        assert [x.tokens for x in a.alternatives] == [x.tokens for x in b.alternatives]
        for x, y in zip(a.alternatives, b.alternatives, strict=True):
            assert abs(x.score - y.score) < 1e-3


def test_a_batch_on_onnx_runtime_is_decoded_input_by_input(pair):
    from hmer.data.images import prepare_image
    from hmer.recognize import MAX_IMAGE_SIZE

    torch_rec, onnx_rec, _ = pair
    images = [prepare_image(img, max_size=MAX_IMAGE_SIZE) for img in _images()]  # as files are
    for beam in (1, 3):
        got = onnx_rec.recognize_prepared(images, ["a", "b", "c"], beam)
        want = [torch_rec.recognize_prepared([img], ["x"], beam)[0] for img in images]
        assert [[x.tokens for x in r.alternatives] for r in got] == [
            [x.tokens for x in r.alternatives] for r in want
        ]


def test_export_folder_loads_by_path(pair):
    _, _, folder = pair
    rec = Recognizer.load(folder)
    assert rec.name == folder.name and rec.recognize_image(_images()[0], beam=1).tokens is not None


def test_only_the_coverage_transformer_exports(tmp_path):
    model = create_model(  # BTTR: no coverage
        "transformer",
        8,
        encoder_cfg={"growth": 4, "depth": 2},
        d_model=32,
        nhead=2,
        num_layers=1,
        ffn=64,
        coverage=False,
    )
    with pytest.raises(TypeError, match="ONNX export covers"):
        export_onnx(model, None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="not an ONNX export folder"):
        load_onnx(tmp_path)


def test_shipped_model_on_shipped_examples_matches_pytorch(tmp_path):
    from pathlib import Path

    import hmer

    rec = Recognizer.load()  # the shipped default image model
    folder = export_onnx(rec.model, rec.vocab, tmp_path / "shipped")
    model, vocab = load_onnx(folder, threads=1)
    onnx_rec = Recognizer(model, vocab, "onnx")
    examples = sorted((Path(hmer.__file__).parent / "examples").glob("*.png"))
    assert len(examples) >= 5
    for path in examples:
        for beam in (1, 10):
            a, b = rec.recognize_file(path, beam=beam), onnx_rec.recognize_file(path, beam=beam)
            assert a.tokens == b.tokens, (path.name, beam)
            assert abs(a.score - b.score) < 1e-3
