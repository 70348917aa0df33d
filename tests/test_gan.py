"""The printed-to-handwritten GAN: networks, losses, the training loop with exact resume, and
``hmer synth --method gan`` writing a dataset training reads.

The printed domain is drawn here with PIL's own font (no browser needed); the handwritten domain
is the made-up ink of conftest.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn.utils import parametrize

from hmer.cli import main
from hmer.data.dataset import default_data_dir, read_image_captions, write_tsv
from hmer.models.gan import (
    HANDWRITTEN,
    PRINTED,
    ConditionalBatchNorm,
    Discriminator,
    Generator,
    d_hinge_loss,
    g_hinge_loss,
)
from hmer.training.config import ConfigError, gan_config, read_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "gan" / "tiny.toml"
HAVE_CROHME = (default_data_dir() / "TrainINKML.tar.gz").exists()
CAPTIONS = [["x", "+", "1"], ["1", "-", "x"], ["2", "+", "x"], ["x", "-", "2"]]


def printed_dataset(folder: Path) -> Path:
    """Dark-on-white text renders of a few captions and their captions.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default()
    rows = []
    for i, tokens in enumerate(CAPTIONS):
        img = Image.new("L", (120, 40), 255)
        ImageDraw.Draw(img).text((8, 10), " ".join(tokens), fill=0, font=font)
        img = img.resize((360, 120))  # symbols of a few tens of pixels, as KaTeX renders them
        img.save(folder / f"p{i}.png")
        rows.append((f"p{i}", " ".join(tokens)))
    write_tsv(folder / "captions.tsv", rows)
    return folder / "captions.tsv"


@pytest.fixture
def domains(tmp_path, samples) -> list[str]:
    """--set overrides naming a printed and a handwritten dataset."""
    printed = printed_dataset(tmp_path / "printed")
    handwritten = tmp_path / "ink.pkl"
    handwritten.write_bytes(pickle.dumps(samples))
    return [f"printed={printed}", f"handwritten={handwritten}"]


# -- networks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [True, False])
def test_shapes_range_and_attention_switch(attention):
    g = Generator(channels=4, z_dim=8, embed_dim=8, self_attention=attention)
    d = Discriminator(channels=4, self_attention=attention)
    x = torch.rand(3, 1, 32, 96)
    out = g(x, torch.randn(3, 8), torch.tensor([0, 1, 1]))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1  # sigmoid output
    assert d(out, torch.tensor([0, 1, 1])).shape == (3,)
    assert (g.attention is not None) == attention and (d.attention is not None) == attention
    with pytest.raises(ValueError, match="multiples of 16"):
        g(torch.rand(2, 1, 30, 64), torch.randn(2, 8), torch.tensor([0, 1]))


def test_input_skip_starts_as_the_identity_and_learns_a_residual():
    torch.manual_seed(0)
    x = (torch.rand(2, 1, 32, 64) > 0.8).float()  # binary ink, as printed renders mostly are
    z, dom = torch.randn(2, 8), torch.tensor([HANDWRITTEN, HANDWRITTEN])
    g = Generator(channels=4, z_dim=8, embed_dim=8, input_skip=True)
    out = g(x, z, dom)
    assert torch.allclose(out, x.clamp(0.02, 0.98), atol=1e-5)  # the input, at init
    out.mean().backward()
    assert g.input_gain.grad is not None and g.input_gain.grad.abs() > 0  # the residual learns
    plain = Generator(channels=4, z_dim=8, embed_dim=8)  # the default: older checkpoints
    assert plain.input_gain is None
    assert (plain(x, z, dom) - x).abs().mean() > 0.3  # sigmoid around 0.5, far from the input


def test_every_weight_layer_is_spectrally_normalized():
    for net in (Generator(4, 8, 8), Discriminator(4)):
        layers = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        assert layers
        for m in layers:
            assert parametrize.is_parametrized(m, "weight"), m
        # ... and the discriminator's projection embedding too (the generator's is an input)
    assert parametrize.is_parametrized(Discriminator(4).embed, "weight")
    # Spectral norm bounds a layer's largest singular value by about 1.
    conv = Discriminator(4).blocks[1].conv1
    for _ in range(20):  # power iterations converge in training mode
        conv(torch.zeros(1, conv.in_channels, 8, 8))
    sigma = float(torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2))
    assert sigma == pytest.approx(1.0, abs=0.05)


def test_hinge_losses_signs():
    good, bad = torch.full((4,), 2.0), torch.full((4,), -2.0)
    assert d_hinge_loss(good, bad) == 0  # both beyond their margins
    assert d_hinge_loss(bad, good) == pytest.approx(6.0)  # (1 + 2) + (1 + 2)
    assert d_hinge_loss(torch.zeros(4), torch.zeros(4)) == pytest.approx(2.0)
    assert g_hinge_loss(good) < g_hinge_loss(bad)  # G gains when D rates its images real
    fake = torch.zeros(4, requires_grad=True)
    g_hinge_loss(fake).backward()
    assert (fake.grad < 0).all()  # descending the loss raises the scores


def test_conditional_batch_norm_depends_on_the_domain():
    torch.manual_seed(0)
    g = Generator(channels=4, z_dim=8, embed_dim=8).eval()
    x, z = torch.rand(2, 1, 32, 64), torch.randn(1, 8).expand(2, 8)
    out = g(x, z, torch.tensor([PRINTED, HANDWRITTEN]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)  # same input and noise, other domain
    bn = ConditionalBatchNorm(3, 5).eval()
    feat = torch.randn(2, 3, 4, 4)
    same = bn(feat, torch.zeros(2, 5))
    assert torch.allclose(same, bn.bn(feat))  # a zero condition is plain batch norm
    assert not torch.allclose(bn(feat, torch.ones(2, 5)), same)


# -- config ---------------------------------------------------------------------------------------
def test_gan_config_is_checked():
    cfg = gan_config(read_config(ROOT / "configs" / "gan" / "small.toml"))
    assert cfg.lr_d == 2e-4 and cfg.lr_g == 5e-5 and cfg.self_attention
    assert gan_config({}, ["lambda_task=0", "self_attention=false"]).lambda_task == 0.0
    assert gan_config({}, ["printed=/some/where/captions.tsv"]).printed.endswith(".tsv")
    for bad, match in [
        (["height=40"], "multiple of 16"),
        (["lamda_task=0"], "did you mean gan.lambda_task"),
        (["self_attention=3"], "true or false"),
        (["batch_size=1"], "at least 2"),
        (["beta1=1.5"], "probability"),
    ]:
        with pytest.raises(ConfigError, match=match):
            gan_config({}, bad)
    with pytest.raises(ConfigError, match=r"only a \[gan\] table"):
        gan_config({"train": {}})


# -- training and generation ----------------------------------------------------------------------
def _gan(tmp_path, *args) -> int:
    return main(["gan", "train", str(TINY), *args])


def test_train_and_synthesize_a_dataset_training_reads(tmp_path, domains, capsys):
    run = tmp_path / "run"
    assert _gan(tmp_path, "--run-dir", str(run), *(f"--set={s}" for s in domains)) == 0
    for name in ("last.pt", "log.csv", "config.json", "samples.png"):
        assert (run / name).exists(), name
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,d_loss") and [r.split(",")[0] for r in rows[1:]] == [
        "2",
        "4",
        "6",
    ]
    task = [float(r.split(",")[3]) for r in rows[1:]]
    assert all(t > 0 for t in task)  # the recognizer's loss is in the objective

    out = tmp_path / "gen"
    grid = tmp_path / "grid.png"
    printed = domains[0].split("=", 1)[1]
    code = main(
        ["synth", "--method", "gan", "--generator", str(run / "last.pt"), "--printed", printed]
        + ["--out", str(out), "--preview", str(grid), "--seed", "3"]
    )
    assert code == 0, capsys.readouterr().err
    split = read_image_captions(out / "captions.tsv")  # what data.extra_train loads
    assert [s.tokens for s in split.samples] == CAPTIONS
    source = read_image_captions(printed).samples
    for made, src in zip(split.samples, source, strict=True):
        raw = np.asarray(Image.open(out / f"{made.id}.png"))
        assert raw.shape == src.image.shape  # the input convention's size: ready to mix in
        assert made.image.max() > 0
    assert Image.open(grid).size[0] > 2 * 64

    first = tmp_path / "first"
    args = ["--generator", str(run / "last.pt"), "--printed", printed, "--count", "2"]
    assert main(["synth", "--method", "gan", *args, "--out", str(first)]) == 0
    assert [s.id for s in read_image_captions(first / "captions.tsv").samples] == ["p0", "p1"]


def test_lambda_task_zero_loads_no_recognizer(tmp_path, domains, monkeypatch):
    from hmer.training import gan as gan_mod

    monkeypatch.setattr(gan_mod, "TaskLoss", None)  # calling it would fail
    sets = [f"--set={s}" for s in [*domains, "lambda_task=0", "self_attention=false", "steps=2"]]
    assert _gan(tmp_path, "--run-dir", str(tmp_path / "run"), *sets) == 0
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[3]) == 0.0


def test_resume_after_kill_continues_exactly(tmp_path, domains):
    # Without the recognizer (frozen, it holds no state to resume): seconds, not minutes.
    sets = [*domains, "steps=12", "checkpoint_minutes=0", "log_every=4", "lambda_task=0"]
    flags = [f"--set={s}" for s in sets]
    straight, run = tmp_path / "straight", tmp_path / "killed"
    assert _gan(tmp_path, "--run-dir", str(straight), *flags) == 0

    # same thread count as this process, so both runs compute bit for bit alike
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hmer", "gan", "train", str(TINY), "--run-dir", str(run), *flags],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        last = run / "last.pt"
        if last.exists() and torch.load(last, weights_only=True)["state"]["step"] >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "last.pt", weights_only=True)["state"]["step"]
    assert 4 <= killed_at < 12

    assert _gan(tmp_path, "--run-dir", str(run), "--resume", *flags) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    assert b["state"]["step"] == 12
    for part in ("model", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert a["optimizer_d"]["state"][0]["step"] == b["optimizer_d"]["state"][0]["step"]
    steps = [int(r.split(",")[0]) for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no rows repeated by the resume


def test_bad_input_gives_a_clear_error(tmp_path, domains, capsys):
    printed = domains[0].split("=", 1)[1]
    out = str(tmp_path / "gen")
    code = main(
        ["synth", "--method", "gan", "--generator", str(tmp_path / "none.pt")]
        + ["--printed", printed, "--out", out]
    )
    assert code == 2 and "generator file not found" in capsys.readouterr().err

    not_gan = tmp_path / "other.pt"
    torch.save({"model": {}, "config": {"model": {"name": "transformer"}}, "vocab": "[]"}, not_gan)
    code = main(
        ["synth", "--method", "gan", "--generator", str(not_gan), "--printed", printed]
        + ["--out", out]
    )
    assert code == 2 and "not a GAN generator checkpoint" in capsys.readouterr().err

    run = tmp_path / "run"
    assert (
        _gan(tmp_path, "--run-dir", str(run), *(f"--set={s}" for s in [*domains, "steps=1"])) == 0
    )
    empty = tmp_path / "empty" / "captions.tsv"
    empty.parent.mkdir()
    empty.write_text("")
    code = main(
        ["synth", "--method", "gan", "--generator", str(run / "last.pt")]
        + ["--printed", str(empty), "--out", out]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no ID<TAB>LaTeX lines" in err

    assert main(["synth", "--method", "gan", "--out", out]) == 2
    assert "--generator FILE and --printed TSV" in capsys.readouterr().err
    assert main(["gan", "train", str(TINY), "--run-dir", str(run)]) == 1
    assert "gan.printed is not set" in capsys.readouterr().err
    assert main(["gan", "train", str(TINY), "--set", "printed=/no/such.tsv"]) == 1
    assert "/no/such.tsv" in capsys.readouterr().err


RECOGNIZER = """[model]
name = "seq2seq"
encoder_cfg = { widths = [8, 16, 16, 16], dropout = 0.0 }
ann_dim = 32
embed_dim = 32
hidden = 32
attn_dim = 32
dropout = 0.0
[data]
pixels_per_batch = 40000
[train]
lr = 3e-3
warmup_steps = 1
bf16 = false
num_workers = 0
"""


@pytest.mark.skipif(not HAVE_CROHME, reason="the recognizer is scored on CROHME 2014")
def test_gan_eval_ablation_row_trains_generates_and_scores(tmp_path, domains, capsys):
    spec = importlib.util.spec_from_file_location("gan_eval", ROOT / "benchmarks" / "gan_eval.py")
    gan_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan_eval)
    rec = tmp_path / "rec.toml"
    rec.write_text(RECOGNIZER)
    printed = domains[0].split("=", 1)[1]
    out = tmp_path / "eval"
    args = ["ablate", "no-task", "--printed", printed, "--gan-config", str(TINY)]
    args += ["--gan-set", domains[1], "--gan-minutes", "1", "--count", "4"]
    args += ["--recognizer", str(rec), "--minutes", "0.1", "--limit", "2", "--dir", str(out)]
    gan_eval.main(args)
    row = out / "ablate" / "no-task"
    assert (row / "data" / "captions.tsv").exists() and (row / "samples.png").exists()
    record = json.loads((row / "row.json").read_text())
    assert record["beam1"]["n"] == 2 and record["beam1"]["perplexity"] > 1.0
    assert json.loads((row / "gan" / "config.json").read_text())["lambda_task"] == 0  # variant
    (line,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| no-task |")]
    assert line.split("|")[3].strip() == "4"  # images
    steps = (row / "steps.log").read_text()
    gan_eval.main(args)  # every step done: the trainings resume at their end, nothing else runs
    new = (row / "steps.log").read_text()[len(steps) :].splitlines()
    assert len(new) == 4 and all(r.startswith(("resumed from", "done:")) for r in new), new
