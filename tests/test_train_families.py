"""The training loop runs every input kind and model kind: strokes, CTC, unidirectional seq2seq."""

from __future__ import annotations

import math

import pytest
import torch

from hmer.data.batching import BucketSpec
from hmer.models import create_model
from hmer.training.train import batches_for, evaluate, train

CNN = {"widths": [8, 16, 16, 16], "dropout": 0.0}
MODELS = {
    "strokes": {
        "name": "strokes",
        "conv_channels": [16, 32],
        "context_layers": 1,
        "d_model": 32,
        "nhead": 4,
        "num_layers": 1,
        "ffn": 64,
        "dropout": 0.0,
    },
    "crnn": {"name": "crnn", "encoder_cfg": CNN, "hidden": 32, "lstm_layers": 1, "dropout": 0.0},
    "wap": {
        "name": "seq2seq",
        "encoder_cfg": CNN,
        "ann_dim": 32,
        "embed_dim": 32,
        "hidden": 32,
        "attn_dim": 32,
        "coverage": True,
        "cov_channels": 8,
        "dropout": 0.0,
    },
}


@pytest.mark.parametrize("name", list(MODELS))
def test_train_one_epoch_and_evaluate(tmp_path, samples, vocab, name):
    cfg = {
        "model": dict(MODELS[name]),
        "data": {"pixels_per_batch": 2 * 64 * 256, "augment": True},
        "train": {"epochs": 1, "lr": 3e-3, "bf16": True, "seed": 0, "num_workers": 0},
        "vocab": vocab.to_json(),
    }
    state = train(cfg, tmp_path / name, samples={"train": samples, "val": samples})
    assert state["epoch"] == 1 and state["step"] > 0
    rows = (tmp_path / name / "eval.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")


def test_evaluate_reads_the_models_input_kind(samples, vocab):
    model = create_model(
        "strokes", len(vocab), **{k: v for k, v in MODELS["strokes"].items() if k != "name"}
    )
    assert batches_for(model).__name__ == "StrokeBatches"
    metrics, rows = evaluate(model, samples, vocab, BucketSpec(), bf16=False)
    assert {"exprate", "le1", "le2"} <= set(metrics) and len(rows) == len(samples)
    assert metrics["n"] == len(samples) and metrics["normalization"] == "none"
    assert model.training  # evaluate puts the model back in training mode
    image_model = create_model("crnn", len(vocab), encoder_cfg=CNN, hidden=16, lstm_layers=1)
    assert batches_for(image_model).__name__ == "EpochBatches"
    with torch.no_grad():
        metrics, rows = evaluate(image_model, samples, vocab, BucketSpec(), bf16=True)
    assert len(rows) == len(samples)


class PerTokenLoss(torch.nn.Module):
    """A stand-in seq2seq model whose every token of expression i costs len(tokens_i) nats."""

    kind, input_kind = "seq2seq", "image"

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, inputs, masks, tokens, label_smoothing=0.0):
        weights = [len(t) + 1 for t in tokens]
        return torch.tensor(sum(w * (w - 1) for w in weights) / sum(weights))


def test_perplexity_weights_every_target_token_equally(vocab):
    from inks import write

    from hmer.data.dataset import Sample
    from hmer.training.train import perplexity

    exprs = [["x"], ["x", "+", "1"], ["1", "-", "x", "+", "2", "+", "x"], ["2"]]
    samples = [Sample(f"t{i}", write(t), t) for i, t in enumerate(exprs)]
    spec = BucketSpec(max_batch=2, min_batch=1)
    assert len(batches_for(PerTokenLoss())(samples, vocab, spec, 0, 0, shuffle=False)) >= 2
    toks = [len(s.tokens) for s in samples]
    want = sum((n + 1) * n for n in toks) / sum(n + 1 for n in toks)
    assert perplexity(PerTokenLoss(), samples, vocab, spec) == pytest.approx(math.exp(want))
    crnn = create_model(
        "crnn", len(vocab), **{k: v for k, v in MODELS["crnn"].items() if k != "name"}
    )
    with pytest.raises(TypeError, match="seq2seq"):
        perplexity(crnn, samples, vocab, spec)
