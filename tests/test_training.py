"""Training engine: checkpoints and logs, exact resume after a kill, torchrun data parallelism,
the optimizer and schedule choices, the validation log."""

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

from hmer.training.train import EVAL_HEADER, train

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
    assert rows[0] == ",".join(EVAL_HEADER) and len(rows) == 3  # header + one val row per epoch
    for row in rows[1:]:
        cells = dict(zip(EVAL_HEADER, row.split(","), strict=True))
        assert cells["split"] == "val" and float(cells["loss"]) > 0
        assert float(cells["wer"]) >= 0 and float(cells["cer"]) >= 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    for key in ("exprate", "loss", "wer", "cer"):
        assert len(events.Scalars(f"val/{key}")) == 2, key


def test_validation_loss_is_the_training_loss_without_augmentation(samples, vocab):
    from hmer.data.batching import BucketSpec, EpochBatches
    from hmer.models import create_model
    from hmer.training.config import TrainConfig
    from hmer.training.train import validation_loss

    kwargs = {k: v for k, v in TINY_TRANSFORMER.items() if k != "name"}
    model = create_model("transformer", len(vocab), **kwargs)
    tc = TrainConfig(label_smoothing=0.0)
    spec = BucketSpec()
    got = validation_loss(model, samples, vocab, spec, tc, bf16=False)
    assert model.training  # back in training mode
    model.eval()
    (batch,) = [EpochBatches(samples, vocab, spec, 0, 0, augment=False, shuffle=False)[0]]
    with torch.no_grad():
        want = model(batch["inputs"], batch["masks"], batch["tokens"], 0.0).item()
    assert got == pytest.approx(want, rel=1e-5)


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


# The plateau schedule cuts the rate every epoch here (ExpRate stays 0: no gain), so a resumed
# run that lost the schedule's state, or SGD's momentum, would diverge.
SCHEDULES = {
    "adamw-cosine": {},
    "sgd-plateau": {
        "optimizer": "sgd",
        "momentum": 0.8,
        "nesterov": True,
        "lr": 0.05,
        "scheduler": "plateau",
        "plateau_factor": 0.5,
        "plateau_patience": 0,
    },
}


@pytest.mark.parametrize("options", list(SCHEDULES))
def test_resume_after_kill_continues_exactly(tmp_path, samples, vocab, options):
    samples = samples * 4  # several batches per epoch, so the kill lands mid-epoch
    epochs = 8
    cfg, cfg_path = _config_files(
        tmp_path, samples, vocab, epochs=epochs, checkpoint_minutes=0, **SCHEDULES[options]
    )
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
    straight_ckpt = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed_ckpt = torch.load(run / "last.pt", weights_only=True)
    assert straight_ckpt.get("scheduler") == resumed_ckpt.get("scheduler")
    assert ("scheduler" in resumed_ckpt) == (options == "sgd-plateau")


def test_sgd_and_the_plateau_schedule_are_what_runs(tmp_path, samples, vocab, monkeypatch):
    from hmer.training import train as train_mod

    used = []
    step = train_mod.train_step
    monkeypatch.setattr(
        train_mod,
        "train_step",
        lambda *a: used.append(a[4]) or step(*a),  # a[4]: the rate
    )
    # lr so small that ExpRate cannot rise in 4 epochs; min_lr 0 leaves the cuts unclamped
    options = {**SCHEDULES["sgd-plateau"], "lr": 1e-4, "min_lr": 0.0, "warmup_steps": 1}
    cfg = tiny_config(epochs=4, **options)
    cfg["vocab"] = vocab.to_json()
    train(cfg, tmp_path / "run", samples={"train": samples, "val": samples})
    # The first validation sets the best; each later one without gain halves the rate (epochs
    # 3 and 4 train at half and a quarter of it).
    changes = [lr for k, lr in enumerate(used) if k == 0 or lr != used[k - 1]]
    assert changes == pytest.approx([1e-4, 5e-5, 2.5e-5])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # plain data
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.8 and group["nesterov"] is True
    assert all("momentum_buffer" in s for s in ckpt["optimizer"]["state"].values())
    # Validation ExpRate never rises above its first value: epochs 2, 3 and 4 each halve the rate.
    assert ckpt["scheduler"]["_last_lr"] == [pytest.approx(1e-4 / 8)]

    adamw = torch.load(_run_default(tmp_path, samples, vocab), weights_only=True)
    assert "scheduler" not in adamw and "amsgrad" in adamw["optimizer"]["param_groups"][0]


def _run_default(tmp_path, samples, vocab):
    cfg = tiny_config(epochs=1)
    cfg["vocab"] = vocab.to_json()
    train(cfg, tmp_path / "default", samples={"train": samples, "val": samples})
    return tmp_path / "default" / "last.pt"


def test_a_resumed_plateau_schedule_keeps_its_count(tmp_path, samples, vocab):
    # Stopped after epoch 2 (one validation without gain counted, no cut yet), then resumed to
    # epoch 4: the schedule must go on where it was (a cut after epoch 3), as in the straight run.
    # (The kill test above may stop before the schedule has counted anything.)
    splits = {"train": samples, "val": samples}
    options = {**SCHEDULES["sgd-plateau"], "plateau_patience": 1}
    cfg = tiny_config(epochs=4, **options)
    cfg["vocab"] = vocab.to_json()
    train(cfg, tmp_path / "straight", samples=splits)
    train({**cfg, "train": {**cfg["train"], "epochs": 2}}, tmp_path / "two", samples=splits)
    train(cfg, tmp_path / "two", resume=True, samples=splits)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "two")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_warm_up_scales_the_plateau_rate():
    from hmer.training.config import TrainConfig
    from hmer.training.train import learning_rate, lr_at, make_optimizer, make_plateau, step_plateau

    tc = TrainConfig(lr=1.0, warmup_steps=4, scheduler="plateau", plateau_patience=0)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], tc)
    plateau = make_plateau(optimizer, tc)
    assert [learning_rate(s, 100, tc, plateau) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    optimizer.param_groups[0]["lr"] = 0.25  # what train_step wrote during the warm-up
    step_plateau(plateau, optimizer, 10.0)  # the first value is a gain
    step_plateau(plateau, optimizer, 10.0)  # no gain: cut from the held rate, not the warm-up's
    assert learning_rate(50, 100, tc, plateau) == pytest.approx(0.5)
    cosine = TrainConfig(lr=1.0, warmup_steps=4)
    assert make_plateau(optimizer, cosine) is None
    assert learning_rate(50, 100, cosine, None) == lr_at(50, 100, 1.0, 4)


def test_resume_refuses_another_optimizer(tmp_path, samples, vocab):
    from hmer.training.train import SetupError

    cfg = tiny_config(epochs=1)
    cfg["vocab"] = vocab.to_json()
    splits = {"train": samples, "val": samples}
    train(cfg, tmp_path / "run", samples=splits)
    cfg["train"]["optimizer"] = "sgd"
    with pytest.raises(SetupError, match="train.optimizer = 'adamw', the config says 'sgd'"):
        train(cfg, tmp_path / "run", resume=True, samples=splits)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.parametrize("options", list(SCHEDULES))
def test_torchrun_two_processes_gloo(tmp_path, samples, vocab, options):
    # With the plateau schedule every rank steps it on rank 0's validation ExpRate.
    epochs = 1 if options == "adamw-cosine" else 3
    opts = SCHEDULES[options]
    if opts:  # a rate at which ExpRate stays 0, unclamped cuts
        opts = {**opts, "lr": 1e-4, "min_lr": 0.0}
    _, cfg_path = _config_files(tmp_path, samples * 2, vocab, epochs=epochs, **opts)
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
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["state"]["epoch"] == epochs
    if options == "sgd-plateau":  # a gain at epoch 1, then two cuts
        assert ckpt["scheduler"]["_last_lr"] == [pytest.approx(opts["lr"] / 4)]


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


def test_a_time_budget_stops_mid_epoch_and_a_larger_one_goes_on(tmp_path, samples, vocab):
    # A budget spent after the first step stops there, validated and saved; resumed without a
    # budget the run ends where a run without one ends, with the same weights.
    splits = {"train": samples, "val": samples}
    cfg = tiny_config(epochs=2)
    cfg["vocab"] = vocab.to_json()
    straight = train(cfg, tmp_path / "straight", samples=splits)
    budget = {**cfg, "train": {**cfg["train"], "max_minutes": 1e-9}}
    stopped = train(budget, tmp_path / "budget", samples=splits)
    assert (stopped["epoch"], stopped["batch"], stopped["step"]) == (0, 1, 1)
    assert (tmp_path / "budget" / "best.pt").exists()
    assert len((tmp_path / "budget" / "eval.csv").read_text().splitlines()) == 2  # one val row
    again = train(budget, tmp_path / "budget", resume=True, samples=splits)
    assert again["step"] == 1  # the same budget is spent already
    resumed = train(cfg, tmp_path / "budget", resume=True, samples=splits)
    assert resumed["step"] == straight["step"] and resumed["epoch"] == 2
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "budget")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_epochs_keeps_the_last_end_of_epoch_checkpoints(tmp_path, samples, vocab):
    # Three epochs keeping two: epoch-2.pt and epoch-3.pt remain, each the run as it ended that
    # epoch (epoch-3.pt is the final last.pt), ready for hmer export to average.
    cfg = tiny_config(epochs=3, keep_epochs=2)
    cfg["vocab"] = vocab.to_json()
    train(cfg, tmp_path / "run", samples={"train": samples, "val": samples})
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-2.pt", "epoch-3.pt"]
    kept = torch.load(run / "epoch-2.pt", weights_only=False)
    assert kept["state"]["epoch"] == 2
    last, final = _weights(run), torch.load(run / "epoch-3.pt", weights_only=False)["model"]
    assert all(torch.equal(last[k], final[k]) for k in last)


def test_device_option_trains_on_the_cpu_and_names_a_missing_gpu(tmp_path, samples, vocab, capsys):
    from hmer.cli import main

    _, cfg_path = _config_files(tmp_path, samples, vocab, epochs=1)
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run), "--device", "cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "cpu"
    assert main(["train", str(cfg_path), "--run-dir", str(run), "--device", "gpu"]) == 2
    assert 'train.device must be "cpu", "cuda" or "cuda:N"' in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", str(cfg_path), "--run-dir", str(run), "--device", "cuda"]) == 1
        assert "sees no CUDA device" in capsys.readouterr().err


def test_bf16_auto_on_a_gpu_follows_the_gpu(monkeypatch):
    from hmer.training import train as train_mod

    monkeypatch.setattr(train_mod, "bf16_fast", lambda: False)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert train_mod.use_bf16("auto", torch.device("cuda")) is supported
    assert train_mod.use_bf16("auto", torch.device("cpu")) is False


def test_gpu_script_steps_run_on_the_cpu_and_the_run_goes_on_after_join(tmp_path, samples, vocab):
    # scripts/train-gpu.sh with DEVICE=cpu: the GPU job's steps (train, export, evaluate, the
    # checkpoint in parts), then join and resume here, as after a GPU run.
    from pathlib import Path

    from hmer.cli import main

    _, cfg_path = _config_files(tmp_path, samples, vocab, epochs=1)
    root = Path(__file__).resolve().parents[1]
    out, run = tmp_path / "out", tmp_path / "gpu-run"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": sys.executable,
        "EVAL_SPLIT": str(tmp_path / "samples.pkl"),
        "RUN_DIR": str(run),
        "OMP_NUM_THREADS": "1",
    }
    script = [str(root / "scripts" / "train-gpu.sh")]
    done = subprocess.run(
        ["bash", *script, "run", str(out), str(cfg_path), "5", "--set", "train.num_workers=0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "eval-2014-greedy.json").read_text())["n"] == len(samples)
    assert (out / "release.safetensors").stat().st_size > 0
    assert sorted(p.name for p in out.glob("last.pt.part-*")) == ["last.pt.part-aa"]
    here = tmp_path / "here"
    done = subprocess.run(["bash", *script, "join", str(out), str(here)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (here / "last.pt").read_bytes() == (run / "last.pt").read_bytes()
    args = ["train", str(here / "config.json"), "--run-dir", str(here), "--resume"]
    assert main([*args, "--device", "cpu", "--epochs", "2"]) == 0
    assert torch.load(here / "last.pt", weights_only=False)["state"]["epoch"] == 2


def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path, samples, vocab):
    from hmer.training.config import Config, ConfigError

    cfg = tiny_config(epochs=3, val_every=2)
    cfg["vocab"] = vocab.to_json()
    train(cfg, tmp_path / "run", samples={"train": samples, "val": samples})
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [2, 3]
    with pytest.raises(ConfigError, match="train.val_every must be at least 1"):
        Config.from_dict({**cfg, "train": {**cfg["train"], "val_every": 0}})


def test_best_checkpoint_breaks_exprate_ties_by_wer():
    from hmer.training.train import fresh_state, improves

    state = fresh_state()
    assert improves({"exprate": 0.0, "wer": 99.0}, state)
    state.update(best=0.0, best_wer=99.0)
    assert improves({"exprate": 0.0, "wer": 95.0}, state)  # nothing read whole yet, but closer
    assert not improves({"exprate": 0.0, "wer": 99.5}, state)
    assert improves({"exprate": 1.0, "wer": 99.9}, state)
    assert not improves({"exprate": 0.0, "wer": 95.0}, {"best": 0.0})  # old checkpoints: no WER
