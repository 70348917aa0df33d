"""Training engine: checkpoints and logs, exact resume after a kill, torchrun data parallelism."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from hmer.training.train import train

TINY_TRANSFORMER = {
    "name": "transformer",
    "encoder": "densenet",
    "encoder_cfg": {"growth": 4, "depth": 2, "dropout": 0.0},
    "d_model": 32,
    "nhead": 2,
    "num_layers": 1,
    "ffn": 64,
    "dropout": 0.1,
    "coverage": True,
}


def tiny_config(epochs: int = 2, **train_opts) -> dict:
    cfg = {
        "model": dict(TINY_TRANSFORMER),
        "data": {"pixels_per_batch": 2 * 64 * 256, "augment": True, "test": ""},
        "train": {
            "epochs": epochs,
            "lr": 3e-3,
            "warmup_steps": 2,
            "label_smoothing": 0.0,
            "clip_grad": 1.0,
            "bf16": False,
            "seed": 3,
            "checkpoint_minutes": 5,
            "num_workers": 0,
        },
    }
    cfg["train"].update(train_opts)
    return cfg


def _config_files(tmp_path, samples, vocab, **train_opts):
    data = tmp_path / "samples.pkl"
    data.write_bytes(pickle.dumps(samples))
    cfg = tiny_config(**train_opts)
    cfg["vocab"] = vocab.to_json()
    cfg["data"].update({"train": str(data), "val_size": 1})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return cfg, path


def test_train_writes_checkpoints_logs_and_best(tmp_path, samples, vocab):
    cfg, _ = _config_files(tmp_path, samples, vocab, epochs=2)
    state = train(cfg, tmp_path / "run")
    assert state["epoch"] == 2 and state["step"] > 0
    for name in ("last.pt", "best.pt", "log.csv", "eval.csv", "config.json", "pred-val.tsv"):
        assert (tmp_path / "run" / name).exists(), name
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 3  # header + one val row per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert len(events.Scalars("val/exprate")) == 2


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


def test_resume_after_kill_continues_exactly(tmp_path, samples, vocab):
    samples = samples * 4  # several batches per epoch, so the kill lands mid-epoch
    epochs = 8
    cfg, cfg_path = _config_files(tmp_path, samples, vocab, epochs=epochs, checkpoint_minutes=0)
    train(cfg, tmp_path / "straight")

    run = tmp_path / "killed"
    code = (
        "import sys; from hmer.training.train import load_config, train; "
        "train(load_config(sys.argv[1]), sys.argv[2], resume=True)"
    )
    # same thread count as this process, so both runs compute bit for bit alike
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(cfg_path), str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while not (run / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["state"]
    assert killed_at["epoch"] < epochs

    state = train(cfg, run, resume=True)
    assert state["epoch"] == epochs
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    steps = [int(r.split(",")[0]) for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))  # no duplicated log rows after the resume


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_torchrun_two_processes_gloo(tmp_path, samples, vocab):
    _, cfg_path = _config_files(tmp_path, samples * 2, vocab, epochs=1)
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "hmer.cli",
            "train",
            str(cfg_path),
            "--run-dir",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run / "last.pt").exists()
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["state"]
    assert state["epoch"] == 1


def test_overrides_set_dotted_keys_with_toml_values():
    from hmer.training.train import apply_overrides

    cfg = tiny_config()
    cfg["data"]["test"] = "2016"
    cfg = apply_overrides(
        cfg,
        ["train.lr=1e-4", "data.test=2014", "data.augment=false", "model.encoder_cfg.depth=3"],
    )
    assert cfg["train"]["lr"] == 1e-4
    assert cfg["data"]["test"] == "2014"  # text where text was
    assert apply_overrides(cfg, ['data.test=""'])["data"]["test"] == ""  # quoted TOML text
    assert cfg["data"]["augment"] is False
    assert cfg["model"]["encoder_cfg"] == {"growth": 4, "depth": 3, "dropout": 0.0}
    cfg["train"]["bf16"] = "auto"
    assert apply_overrides(cfg, ["train.bf16=false"])["train"]["bf16"] is False  # not "false"
    for bad in ["lr=1", "train.lr"]:
        with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
            apply_overrides(tiny_config(), [bad])


def test_formula_holdout_keeps_every_copy_of_a_formula_out_of_training(samples):
    from hmer.training.train import split_holdout

    doubled = samples + [type(s)(s.id + "_b", s.traces, s.tokens) for s in samples]
    train_set, val = split_holdout(doubled, 3, by="formula")
    assert len(val) >= 3 and len(train_set) + len(val) == len(doubled)
    assert not {tuple(s.tokens) for s in val} & {tuple(s.tokens) for s in train_set}
    _, val_random = split_holdout(doubled, 3)
    assert len(val_random) == 3
    with pytest.raises(ValueError, match="hold-out"):
        split_holdout(doubled, 3, by="writer")


def test_bf16_setting_follows_the_cpu_when_auto(monkeypatch):
    from hmer.training import train as train_mod

    monkeypatch.setattr(train_mod, "bf16_fast", lambda: False)
    assert train_mod.use_bf16("auto") is False
    monkeypatch.setattr(train_mod, "bf16_fast", lambda: True)
    assert train_mod.use_bf16("auto") is True
    assert train_mod.use_bf16(False) is False and train_mod.use_bf16(True) is True
    for bad in ("sometimes", "false", 1):
        with pytest.raises(ValueError, match="bf16"):
            train_mod.use_bf16(bad)


def test_partial_init_gives_a_stroke_model_the_image_models_decoder(tmp_path, vocab):
    from hmer.models import create_model
    from hmer.training.train import init_weights
    from hmer.weights import WeightsError, save_release

    dec = {"d_model": 32, "nhead": 4, "num_layers": 1, "ffn": 64}
    image_cfg = {"name": "transformer", "encoder": "cnn", **dec}
    image = create_model(
        "transformer", len(vocab), **{k: v for k, v in image_cfg.items() if k != "name"}
    )
    path = save_release(image, image_cfg, vocab, tmp_path / "img.safetensors", fp16=False)
    strokes = create_model(
        "strokes", len(vocab), conv_channels=[16], conv_strides=[2], context_layers=1, **dec
    )
    fresh_encoder = {
        k: v.clone() for k, v in strokes.state_dict().items() if k.startswith("encoder.")
    }

    n = init_weights(strokes, path, partial=True)
    own, src = strokes.state_dict(), image.state_dict()
    shared = [k for k in own if not k.startswith("encoder.")]
    assert n == len(shared) > 0
    assert all(torch.equal(own[k], src[k]) for k in shared)  # the whole decoder came across
    assert all(torch.equal(own[k], v) for k, v in fresh_encoder.items())  # encoder untouched
    with pytest.raises(RuntimeError):  # without partial, a mismatch is an error, not a surprise
        init_weights(strokes, path)
    with pytest.raises(WeightsError):
        init_weights(strokes, tmp_path / "missing.safetensors", partial=True)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_run_that_fails_releases_its_log_files(tmp_path, samples, vocab, monkeypatch):
    from pathlib import Path

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    cfg = tiny_config(epochs=1)
    cfg["vocab"] = vocab.to_json()
    run = tmp_path / "run"
    # The caught exception keeps train's frame alive, as a caller that logs or re-raises it does:
    # only an explicit close releases what the frame holds.
    with pytest.raises(RuntimeError, match="boom") as failure:
        train(cfg, run, samples={"train": samples, "val": samples})
    assert (run / "log.csv").exists() and (run / "tb").is_dir()  # they were open
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            held.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    assert not [p for p in held if p.startswith(str(run.resolve()))]  # log.csv, the tb events
    assert failure.traceback
