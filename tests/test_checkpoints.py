"""Checkpoints load without running code, and training logs survive kills at any moment."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch
from test_training import _config_files

from hmer.training.train import EVAL_HEADER, LOG_HEADER, train, trim_csv
from hmer.weights import WeightsError, load_checkpoint


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def crafted_checkpoint(path, marker) -> str:
    """A checkpoint that looks like hmer's but holds an object whose unpickling runs code."""
    torch.save(
        {
            "model": {},
            "config": {"model": {"name": "transformer"}},
            "vocab": "[]",
            "state": {"epoch": 0},
            "extra": Payload(str(marker)),
        },
        path,
    )
    return str(path)


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path, samples, vocab):
    from hmer.cli import main

    marker = tmp_path / "marker"
    evil = crafted_checkpoint(tmp_path / "evil.pt", marker)
    plain = tmp_path / "evil.pkl.pt"  # a bare pickle, not torch's zip format
    plain.write_bytes(pickle.dumps({"model": Payload(str(marker))}, protocol=2))
    for path in (evil, plain):
        with pytest.raises(WeightsError, match="refused"):
            load_checkpoint(path)
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG")
    for argv in (
        ["evaluate", "--model", evil, "--limit", "1"],
        ["export", evil, "-o", str(tmp_path / "out.safetensors")],
        ["explain", str(image), "-o", str(tmp_path / "att.png"), "--model", evil],
    ):
        assert main(argv) == 1, argv
    cfg, _ = _config_files(tmp_path, samples, vocab, epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    crafted_checkpoint(run / "last.pt", marker)
    with pytest.raises(WeightsError, match="refused"):
        train(cfg, run, resume=True)
    assert not marker.exists()


def test_other_unreadable_checkpoints_are_weights_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"just": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not an hmer training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_trim_csv_repairs_whatever_a_kill_left(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("")  # killed before the header reached the disk
    trim_csv(log, LOG_HEADER, "step", 40)
    assert log.read_text().splitlines() == [",".join(LOG_HEADER)]
    # Rows written without a header by a restart, a repeated header, a half-written last line.
    log.write_text(
        "20,0,1.5,1e-3,5.0,0.01\n"
        + ",".join(LOG_HEADER)
        + "\n40,0,1.2,1e-3,5.0,0.02\n60,1,1.1,1e-3,5.0,0.03\n80,1,1.0"
    )
    trim_csv(log, LOG_HEADER, "step", 60)
    rows = log.read_text().splitlines()
    assert rows[0] == ",".join(LOG_HEADER)
    assert [r.split(",")[0] for r in rows[1:]] == ["20", "40", "60"]
    missing = tmp_path / "eval.csv"
    trim_csv(missing, EVAL_HEADER, "epoch", 0)
    assert missing.read_text().splitlines() == [",".join(EVAL_HEADER)]


def test_an_eval_log_from_before_loss_wer_and_cer_keeps_its_rows(tmp_path):
    from hmer.training.train import OLD_EVAL_WIDTHS

    log = tmp_path / "eval.csv"
    old = "epoch,step,cpu_hours,split,exprate,le1,le2\n1,40,0.2,val,10.00,20.00,30.00\n"
    log.write_text(old + "2,80,0.4,val,12.00,22.00,32.00,1.5,40.00,30.00\n3,120,0.6,val,1")
    trim_csv(log, EVAL_HEADER, "epoch", 5, OLD_EVAL_WIDTHS)
    assert log.read_text().splitlines() == [
        ",".join(EVAL_HEADER),
        "1,40,0.2,val,10.00,20.00,30.00,,,",  # the old row, its new cells empty
        "2,80,0.4,val,12.00,22.00,32.00,1.5,40.00,30.00",
    ]  # and the torn last line is gone


def test_a_kill_in_the_first_steps_leaves_a_log_that_resume_reads(tmp_path, samples, vocab):
    cfg, cfg_path = _config_files(tmp_path, samples * 4, vocab, epochs=1, checkpoint_minutes=0)
    run = tmp_path / "run"
    # Dies by SIGKILL at its first optimizer step, before any log row or checkpoint.
    code = (
        "import os, signal, sys, torch\n"
        "torch.optim.AdamW.step = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "from hmer.training.train import load_config, train\n"
        "train(load_config(sys.argv[1]), sys.argv[2])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(cfg_path), str(run)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "log.csv").read_text().splitlines() == [",".join(LOG_HEADER)]
    assert not (run / "last.pt").exists()
    state = train(cfg, run, resume=True)  # nothing to resume: starts over, logs stay whole
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0] == ",".join(LOG_HEADER) and all(len(r.split(",")) == 6 for r in rows)
    ckpt = load_checkpoint(run / "last.pt")  # plain data: loads with weights_only=True
    assert ckpt["state"]["step"] == state["step"] and json.dumps(ckpt["state"])
