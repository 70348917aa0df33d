"""What users run: the shipped models on the shipped examples, input routing, refused weights,
export and reload, explain for every family, curves, the model list, the schedule, early stops."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from inkml_samples import make_inkml
from inks import write
from PIL import Image
from serve_helpers import TOKENS, png_bytes, tiny_image_release

from hmer.cli import main
from hmer.data.vocab import Vocab
from hmer.evaluation.plots import COLORS
from hmer.models import create_model
from hmer.weights import WEIGHTS_DIR, WeightsError, load_model, read_manifest, save_release

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "hmer" / "examples"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- the shipped models on the shipped examples ----------------------------------------------
# Golden outputs, computed with the shipped weights when these tests were written (beam 10).


@pytest.mark.parametrize(
    ("argv", "tokens", "model", "score"),
    [
        ([EXAMPLES / "example.png"], "H = - B + v", "comer-small", 0.7146),
        (
            [EXAMPLES / "example.inkml", "--route", "image"],
            "H = - B ^ { - N } V",
            "comer-small",
            0.7515,
        ),
        (
            [EXAMPLES / "example.inkml"],  # fusion
            "H = - B ^ { - 1 } V",
            "comer-small+strokes",
            0.8331,
        ),
        (
            [EXAMPLES / "example.inkml", "--model", WEIGHTS_DIR / "strokes.safetensors"],
            "H = - B ^ { - 1 } V",
            "strokes",
            None,
        ),
    ],
    ids=["png", "inkml-rendered", "inkml-fusion", "inkml-strokes"],
)
def test_shipped_models_read_the_shipped_examples(capsys, argv, tokens, model, score):
    code, out, err = run(capsys, "recognize", *argv, "--format", "json")
    assert code == 0 and err == ""
    body = json.loads(out)
    assert " ".join(body["tokens"]) == tokens and body["model"] == model
    if score is not None:
        assert body["score"] == pytest.approx(score, abs=0.02)
    assert body["latex"] == tokens.replace(" ", "")


@pytest.fixture(scope="module")
def tiny_stroke_release(tmp_path_factory) -> str:
    cfg = {"conv_channels": [8], "conv_strides": [2], "context_layers": 1, "d_model": 16}
    cfg |= {"nhead": 2, "num_layers": 1, "ffn": 32, "max_len": 12}
    torch.manual_seed(0)
    model = create_model("strokes", len(Vocab(TOKENS)), **cfg)
    path = tmp_path_factory.mktemp("strokes") / "tiny-strokes.safetensors"
    return str(save_release(model, {"name": "strokes", **cfg}, Vocab(TOKENS), path, fp16=False))


def test_inkml_goes_to_the_stroke_model_when_one_is_the_default(
    capsys, monkeypatch, tmp_path, tiny_stroke_release
):
    import hmer.weights

    image = tiny_image_release(tmp_path / "tiny-image.safetensors")
    defaults = {"image": Path(image), "strokes": Path(tiny_stroke_release)}
    monkeypatch.setattr(hmer.weights, "default_weights", lambda kind: defaults[kind])
    # The routing rule alone, without the shipped fusion default.
    monkeypatch.setattr(hmer.weights, "FUSION_PARAMS", tmp_path / "no-fusion.json")
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "b.inkml").write_text(make_inkml(write(["x", "+", "1"])))
    code, out, _ = run(capsys, "recognize", tmp_path, "--format", "json", "--beam", "1")
    assert code == 0
    routed = {Path(r["source"]).name: r["model"] for r in map(json.loads, out.splitlines())}
    assert routed == {"a.png": "tiny-image", "b.inkml": "tiny-strokes"}

    def no_stroke_default(kind):
        if kind == "strokes":
            raise hmer.weights.WeightsError("none")
        return defaults[kind]

    monkeypatch.setattr(hmer.weights, "default_weights", no_stroke_default)
    code, out, _ = run(capsys, "recognize", tmp_path / "b.inkml", "--format", "json")
    assert code == 0 and json.loads(out)["model"] == "tiny-image"  # rendered for the image model


def test_one_rule_routes_files_the_python_api_and_the_servers_probe(monkeypatch, tmp_path):
    import hmer.weights
    from hmer.recognize import Recognizer, input_kind_of
    from hmer.weights import weights_for

    image = Path(tiny_image_release(tmp_path / "tiny-image.safetensors"))

    def image_only(kind):
        if kind != "image":
            raise WeightsError(f"no default {kind} model")
        return image

    monkeypatch.setattr(hmer.weights, "default_weights", image_only)
    assert [input_kind_of(p) for p in ("a/b.INKML", "c.png", "d")] == ["strokes", "image", "image"]
    assert weights_for("image") == image and weights_for("strokes") == image  # ink rendered
    assert weights_for("strokes", tmp_path / "given.pt") == tmp_path / "given.pt"
    # Asked for a stroke model itself (as hmer serve and the API ask, to learn whether one is
    # shipped), there is none.
    with pytest.raises(WeightsError):
        weights_for("strokes", render_ink=False)
    with pytest.raises(WeightsError):
        Recognizer.load(None, "strokes")
    assert Recognizer.load(None, "image").name == "tiny-image"


def test_a_tampered_release_is_refused(capsys, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(WEIGHTS_DIR / "MANIFEST.json", folder)
    release = folder / "strokes.safetensors"
    data = bytearray((WEIGHTS_DIR / "strokes.safetensors").read_bytes())
    data[-100] ^= 0xFF  # one weight changed
    release.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model(release)
    inkml = EXAMPLES / "example.inkml"
    code, out, err = run(capsys, "recognize", inkml, "--model", release)
    assert code == 1 and out == "" and "checksum mismatch" in err and "Traceback" not in err


# -- export -> load --------------------------------------------------------------------------


def test_export_then_load_gives_the_checkpoints_model(capsys, tmp_path, vocab, image_batch):
    from hmer.training.train import save_checkpoint

    cfg = {"name": "seq2seq", "encoder_cfg": {"widths": [8, 8, 8, 8]}, "ann_dim": 16}
    cfg |= {"embed_dim": 16, "hidden": 16, "attn_dim": 16, "coverage": True, "cov_channels": 4}
    torch.manual_seed(0)
    model = create_model("seq2seq", len(vocab), **{k: v for k, v in cfg.items() if k != "name"})
    ckpt = tmp_path / "run" / "last.pt"
    ckpt.parent.mkdir()
    state = {"epoch": 3, "batch": 0, "step": 30, "best": 1.0, "seconds": 9.0, "stale": 0}
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "optimizer": {},
            "torch_rng": torch.get_rng_state(),
            "state": state,
            "config": {"model": cfg, "data": {}, "train": {"lr": 1e-3}},
            "vocab": vocab.to_json(),
        },
    )
    out = tmp_path / "rel" / "tiny.safetensors"
    code, text, _ = run(capsys, "export", ckpt, "-o", out, "--fp32", "--default-for", "image")
    assert code == 0 and f"wrote {out}" in text
    loaded, loaded_vocab, meta = load_model(out)
    assert loaded_vocab.itos == vocab.itos and meta["info"]["state"]["step"] == 30
    assert read_manifest(out.parent)["tiny.safetensors"]["default_for"] == "image"
    model.eval()
    x, m = image_batch["inputs"], image_batch["masks"]
    tgt = torch.tensor([[1, 4, 5], [1, 6, 7], [1, 5, 5]])
    with torch.no_grad():
        want = model.decode(model.encode(x, m), tgt)
        got = loaded.decode(loaded.encode(x, m), tgt)
    assert torch.equal(want, got)
    _, half_text, _ = run(capsys, "export", ckpt, "-o", tmp_path / "rel" / "half.safetensors")
    half = load_model(tmp_path / "rel" / "half.safetensors")[0]
    with torch.no_grad():
        torch.testing.assert_close(half.decode(half.encode(x, m), tgt), want, atol=2e-2, rtol=0)


def _crnn_checkpoint(path, vocab, seed: int, hidden: int = 8) -> dict:
    from hmer.training.train import save_checkpoint

    cfg = {"name": "crnn", "encoder_cfg": {"widths": [8, 8, 8, 8]}, "hidden": hidden}
    torch.manual_seed(seed)
    model = create_model("crnn", len(vocab), **{k: v for k, v in cfg.items() if k != "name"})
    state = {"epoch": seed, "batch": 0, "step": 10 * seed, "best": 1.0, "seconds": 1.0}
    config = {"model": cfg, "data": {}, "train": {}}
    ckpt = {"model": model.state_dict(), "optimizer": {}, "state": state, "config": config}
    save_checkpoint(path, {**ckpt, "vocab": vocab.to_json()})
    return model.state_dict()


def test_export_averages_the_weights_of_several_checkpoints(capsys, tmp_path, vocab):
    paths = [tmp_path / f"ep{epoch}.pt" for epoch in (1, 2, 3)]
    weights = [_crnn_checkpoint(path, vocab, seed) for seed, path in enumerate(paths, 1)]
    out = tmp_path / "mean.safetensors"
    code, text, _ = run(capsys, "export", *paths, "-o", out, "--fp32")
    assert code == 0 and f"wrote {out}" in text
    model, _, meta = load_model(out)
    assert meta["info"]["state"]["averaged_epochs"] == [1, 2, 3]
    got = model.state_dict()
    for key, last in weights[-1].items():
        if last.is_floating_point():
            want = sum(w[key] for w in weights) / 3
            torch.testing.assert_close(got[key], want, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got[key], last)  # BatchNorm counts: the last checkpoint's

    _crnn_checkpoint(tmp_path / "other.pt", vocab, 9, hidden=16)
    code, _, err = run(capsys, "export", paths[0], tmp_path / "other.pt", "-o", out)
    assert code == 1 and "not the same model" in err and "Traceback" not in err


# -- explain, for every family ---------------------------------------------------------------

CNN = {"widths": [8, 8, 8, 8], "dropout": 0.0}
FAMILIES = {
    "transformer": {"encoder_cfg": {"growth": 4, "depth": 2}, "d_model": 16, "nhead": 2},
    "seq2seq": {"encoder_cfg": CNN, "ann_dim": 16, "embed_dim": 16, "hidden": 16, "attn_dim": 16},
    "crnn": {"encoder_cfg": CNN, "hidden": 16, "lstm_layers": 1},
    "strokes": {"conv_channels": [8], "conv_strides": [2], "context_layers": 1, "d_model": 16},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_explain_works_for_every_family(capsys, tmp_path, family):
    from hmer.decoding import recognize_batch
    from hmer.decoding.explain import explain

    vocab = Vocab(TOKENS)
    cfg = dict(FAMILIES[family])
    if family in ("transformer", "strokes"):
        cfg |= {"nhead": 2, "num_layers": 1, "ffn": 32, "max_len": 10}
    if family == "seq2seq":
        cfg["max_len"] = 10
    torch.manual_seed(0)
    model = create_model(family, len(vocab), **cfg)
    release = save_release(model, {"name": family, **cfg}, vocab, tmp_path / f"{family}.st")
    if family == "strokes":
        source = tmp_path / "x.inkml"
        source.write_text(make_inkml(write(["x", "+", "1"])))
    else:
        source = tmp_path / "x.png"
        source.write_bytes(png_bytes())
    code, out, err = run(capsys, "explain", source, "-o", tmp_path / "e.png", "--model", release)
    assert code == 0 and err == "", err
    assert Image.open(tmp_path / "e.png").size[0] > 0 and f"wrote {tmp_path / 'e.png'}" in out

    from hmer.recognize import Recognizer

    rec = Recognizer(load_model(release)[0], vocab)
    x = rec.prepare_file(source)
    if family == "strokes":
        inputs, masks = torch.from_numpy(x)[None], torch.zeros(1, len(x), dtype=torch.bool)
    else:
        inputs = torch.from_numpy(x.astype(np.float32) / 255)[None, None]
        masks = torch.zeros(1, *x.shape, dtype=torch.bool)
    ex = explain(rec.model, inputs, masks)
    (greedy,) = recognize_batch(rec.model, inputs, masks, beam=1)
    assert ex.ids == greedy[0].ids  # it explains what recognition reads
    if family == "crnn":
        assert ex.kind == "alignment" and len(ex.maps) == len(ex.ids)
        assert all(m.max() > 0 for m in ex.maps)  # each token came from some frame
    else:
        assert ex.kind == "attention" and len(ex.maps) == len(ex.ids) + 1  # and the end token
        sums = ex.maps.reshape(len(ex.maps), -1).sum(1)
        np.testing.assert_allclose(sums, 1.0, atol=1e-4)


ENCODERS = {
    "densenet": {"growth": 4, "depth": 2},
    "resnet": {"widths": [8, 8, 8, 8]},
    "cnn": CNN,
}
STAGES = {  # stage names and their strides
    "densenet": [("stem", 2), ("block 1", 8), ("block 2", 16), ("block 3", 16)],
    "resnet": [("stem", 4), ("stage 1", 4), ("stage 2", 8), ("stage 3", 16), ("stage 4", 16)],
    "cnn": [("block 1", 2), ("block 2", 4), ("block 3", 8), ("block 4", 16)],
}


@pytest.mark.parametrize(
    ("family", "encoder"),
    [
        ("transformer", "densenet"),  # CoMER, BTTR
        ("transformer", "resnet"),  # ResNet + Transformer
        ("seq2seq", "cnn"),  # WAP
        ("seq2seq", "densenet"),  # DenseWAP
        ("crnn", "cnn"),  # CRNN
        ("crnn", "resnet"),  # ResNet-18 CRNN
    ],
)
def test_explain_draws_the_activations_of_every_image_family(capsys, tmp_path, family, encoder):
    from hmer.decoding.explain import activation_maps

    vocab = Vocab(TOKENS)
    cfg = {**FAMILIES[family], "encoder": encoder, "encoder_cfg": ENCODERS[encoder]}
    if family == "transformer":
        cfg |= {"nhead": 2, "num_layers": 1, "ffn": 32, "max_len": 10}
    if family == "seq2seq":
        cfg["max_len"] = 10
    torch.manual_seed(0)
    model = create_model(family, len(vocab), **cfg).eval()
    release = save_release(model, {"name": family, **cfg}, vocab, tmp_path / "m.safetensors")
    source = tmp_path / "x.png"
    source.write_bytes(png_bytes(size=(150, 50)))
    plain, with_maps = tmp_path / "plain.png", tmp_path / "maps.png"
    assert run(capsys, "explain", source, "-o", plain, "--model", release)[0] == 0
    code, out, err = run(
        capsys, "explain", source, "-o", with_maps, "--model", release, "--activations"
    )
    assert code == 0 and err == "" and f"then the activations of {len(STAGES[encoder])}" in out
    assert Image.open(with_maps).height > Image.open(plain).height  # a row of stage maps below

    x = torch.rand(1, 1, 40, 100)  # padded to 48 x 112 by the encoder
    stages = activation_maps(model, x, torch.zeros(1, 40, 100, dtype=torch.bool))
    assert [name for name, _ in stages] == [name for name, _ in STAGES[encoder]]
    for (_, m), (_, stride) in zip(stages, STAGES[encoder], strict=True):
        assert m.shape == (-(-48 // stride), -(-112 // stride)) and (m >= 0).all() and m.max() > 0


def test_explain_says_which_input_a_model_reads(capsys, tmp_path, tiny_stroke_release):
    (tmp_path / "x.png").write_bytes(png_bytes())
    argv = ["explain", tmp_path / "x.png", "-o", tmp_path / "e.png", "--model", tiny_stroke_release]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "reads strokes, not image" in err and "Traceback" not in err
    (tmp_path / "x.inkml").write_text(make_inkml(write(["x", "+", "1"])))
    argv[1] = tmp_path / "x.inkml"
    code, _, err = run(capsys, *argv, "--activations")
    assert code == 1 and "--activations: model tiny-strokes reads strokes" in err


# -- curves and the model list ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["current", "before loss, WER and CER"])
def test_curves_plot_a_runs_logs(capsys, tmp_path, layout):
    from hmer.training.train import EVAL_HEADER, LOG_HEADER

    (tmp_path / "log.csv").write_text(
        ",".join(LOG_HEADER) + "\n20,0,3.0,1e-4,5.0,0.1\n40,0,2.0,2e-4,5.0,0.2\n"
    )
    rows = ["1,40,0.2,val,10.0,20.0,30.0,2.5,60.0,50.0", "2,80,0.4,val,12.0,22.0,32.0,2.0,55,45"]
    header = EVAL_HEADER
    if layout != "current":  # a run logged by an older hmer: seven columns
        header, rows = EVAL_HEADER[:7], [",".join(r.split(",")[:7]) for r in rows]
    (tmp_path / "eval.csv").write_text("\n".join([",".join(header), *rows]) + "\n")
    code, out, _ = run(capsys, "curves", tmp_path, "-o", tmp_path / "c.png")
    assert code == 0 and out.strip() == str(tmp_path / "c.png")
    img = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert img.shape == (380, 1320, 3)
    colored = (img.max(2).astype(int) - img.min(2)) > 60  # the plotted series, not black text
    loss, rate, errors = colored[:, :470], colored[:, 470:900], colored[:, 900:]
    assert loss.any() and rate.any()
    assert errors.any() == (layout == "current")  # WER/CER only where the log has them
    blue, orange = np.array(COLORS[0]), np.array(COLORS[1])  # first and second series
    second_loss = (np.abs(img[:, :470].astype(int) - orange).sum(2) < 30).any()
    assert second_loss == (layout == "current")  # the val loss beside the training loss
    assert (np.abs(img[:, :470].astype(int) - blue).sum(2) < 30).any()


def test_models_lists_families_and_shipped_weights(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert out.splitlines()[0] == "families: crnn, seq2seq, strokes, transformer"
    for name, entry in read_manifest().items():
        line = next(x for x in out.splitlines() if x.strip().startswith(name + ":"))
        assert entry["sha256"][:12] in line and entry["input_kind"] in line
        assert ("default for" in line) == ("default_for" in entry)


# -- training: the learning-rate schedule and early stopping ---------------------------------


def test_learning_rate_warms_up_then_decays_to_one_percent():
    from hmer.training.train import lr_at

    base, warm, total = 1e-3, 10, 110
    rates = [lr_at(s, total, base, warm) for s in range(total + 1)]
    assert rates[0] == pytest.approx(base / warm) and rates[warm - 1] == pytest.approx(base)
    assert all(a < b for a, b in zip(rates[: warm - 1], rates[1:warm], strict=True))  # linear rise
    after = rates[warm:]
    assert after[0] == pytest.approx(base) and after[-1] == pytest.approx(0.01 * base)
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # cosine fall
    mid = lr_at(warm + (total - warm) // 2, total, base, warm)
    assert mid == pytest.approx(base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2))))
    assert lr_at(10 * total, total, base, warm) == pytest.approx(0.01 * base)  # stays at the floor


def test_training_stops_when_validation_stops_improving(tmp_path, samples, vocab, capsys):
    from test_training import tiny_config

    from hmer.training.train import train

    cfg = tiny_config(epochs=6, lr=0.0, warmup_steps=1, patience=2)  # lr 0: nothing improves
    cfg["vocab"] = vocab.to_json()
    state = train(cfg, tmp_path / "run", samples={"train": samples, "val": samples})
    assert state["epoch"] == 3 and state["stale"] == 2  # best at 1, then two without gain
    assert "early stop: no validation gain in 2 evaluations" in capsys.readouterr().out
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert len(rows) == 1 + 3
