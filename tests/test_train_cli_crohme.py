"""Each model family's shipped config trains from the CLI on a CROHME subset, then evaluates.

Full-size models from ``configs/``, a few real training expressions, one epoch: this shows that
the configs a user runs still build, train, checkpoint, and decode through ``hmer evaluate``.
Needs ``../shared/data/crohme`` (present beside the checkout on the project's machines and in CI).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hmer.cli import main
from hmer.data.dataset import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
HAVE_CROHME = (default_data_dir() / "TrainINKML.tar.gz").exists()


@pytest.mark.skipif(not HAVE_CROHME, reason="CROHME data not available")
@pytest.mark.parametrize("config", ["crnn", "wap", "comer-small", "strokes"])
def test_family_trains_and_evaluates_from_the_cli(tmp_path, capsys, config):
    run = tmp_path / config
    code = main(
        [
            "train",
            str(ROOT / "configs" / f"{config}.toml"),
            "--run-dir",
            str(run),
            "--epochs",
            "1",
            "--set",
            "data.train_limit=12",
            "--set",
            "data.val_size=4",
            "--set",
            "data.pixels_per_batch=24576",  # batches of a few small images
            "--set",
            "train.test_every=0",
            "--set",
            "train.num_workers=0",
        ]
    )
    assert code == 0
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,epoch,loss")
    evals = (run / "eval.csv").read_text().splitlines()
    assert len(evals) == 2 and evals[1].split(",")[3] == "val"
    assert (run / "last.pt").exists() and (run / "best.pt").exists()

    capsys.readouterr()
    out = tmp_path / "pred.tsv"
    args = ["evaluate", "--model", str(run / "last.pt"), "--split", "2014", "--limit", "2"]
    assert main([*args, "--beam", "2", "--json", "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "2014" and metrics["beam"] == 2
    assert 0.0 <= metrics["exprate"] <= 100.0
    rows = out.read_text().splitlines()
    assert len(rows) == 2 and all(len(r.split("\t")) == 3 for r in rows)
