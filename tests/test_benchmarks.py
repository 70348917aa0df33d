"""The latency benchmark runs end to end on real test expressions, for both input kinds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hmer.data.dataset import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
HAVE_CROHME = (default_data_dir() / "TrainINKML.tar.gz").exists()


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAVE_CROHME, reason="CROHME data not available")
@pytest.mark.parametrize("kind", ["image", "strokes"])
def test_latency_benchmark_reports_percentiles_and_throughput(tmp_path, capsys, vocab, kind):
    from hmer.models import create_model
    from hmer.weights import save_release

    args = ["--limit", "3", "--beams", "1,2", "--batch", "2", "--threads", "1"]
    if kind == "strokes":  # a tiny untrained stroke model: the path, not the accuracy
        cfg = {
            "conv_channels": [8],
            "conv_strides": [2],
            "context_layers": 1,
            "d_model": 16,
            "nhead": 2,
            "num_layers": 1,
            "ffn": 32,
            "max_len": 12,
        }
        model = create_model("strokes", len(vocab), **cfg)
        path = save_release(model, {"name": "strokes", **cfg}, vocab, tmp_path / "s.safetensors")
        args += ["--model", str(path)]
    report = load_benchmark("latency").main(args)
    assert report["expressions"] == 3
    for key in ("beam1_ms_p50", "beam1_ms_p90", "beam2_ms_p50", "greedy_batch2_expr_per_s"):
        assert report[key] > 0
    assert report["beam1_ms_p50"] <= report["beam1_ms_p90"] <= report["beam1_ms_p99"]
    assert "beam2_ms_p90" in capsys.readouterr().out


@pytest.mark.skipif(not HAVE_CROHME, reason="CROHME data not available")
def test_throughput_benchmark_times_batches_and_workers(tmp_path):
    from serve_helpers import tiny_image_release

    model = tiny_image_release(tmp_path / "tiny.safetensors")
    rows = load_benchmark("throughput").main(
        ["--limit", "4", "--settings", "1:1:1,1:2:1", "--model", model, "--json"]
    )
    assert [(r["batch"], r["jobs"]) for r in rows] == [(1, 1), (2, 1)]
    assert all(r["files"] == 4 and r["files_per_s"] > 0 and 0 <= r["exprate"] <= 100 for r in rows)
    assert rows[0]["same_as_reference"] == 100.0 and rows[1]["same_as_reference"] == 100.0


def test_robustness_writes_each_style_and_tabulates_the_chosen_ones(tmp_path):
    """Every style draws ink that recognition reads back, --write puts each chosen style in its
    own folder with the truth, and the table has the reference row plus the chosen styles."""
    import pickle

    from inks import EXPRESSIONS, write
    from PIL import Image
    from serve_helpers import tiny_image_release

    from hmer.data.dataset import Sample
    from hmer.data.images import prepare_image

    robustness = load_benchmark("robustness")
    samples = [Sample(f"e{i}", write(t), t) for i, t in enumerate(EXPRESSIONS)]
    split = tmp_path / "split.pkl"
    split.write_bytes(pickle.dumps(samples))
    out = tmp_path / "styles"
    robustness.main(
        ["--split", str(split), "--write", str(out), "--style", "6px", "--style", "1px"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["1px", "6px"]
    for key in ("1px", "6px"):
        assert sorted(p.name for p in (out / key).glob("*.png")) == ["e0.png", "e1.png", "e2.png"]
        truth = (out / key / "truth.tsv").read_text().splitlines()
        assert truth[0] == "e0\tx + 1"
    thick = np.asarray(Image.open(out / "6px" / "e0.png"))
    assert np.median(thick) == 255 and thick.min() == 0  # black ink on white paper
    for style in robustness.STYLES:
        bitmap = robustness.draw(samples[0].traces, style, np.random.default_rng(0))
        prepared = prepare_image(bitmap, style.key)
        assert prepared.dtype == np.uint8 and (prepared > 127).any()

    model = tiny_image_release(tmp_path / "tiny.safetensors")
    table = tmp_path / "table.md"
    robustness.main(
        ["--split", str(split), "--model", model, "--style", "photo", "--out", str(table)]
    )
    rows = [r for r in table.read_text().splitlines() if r.startswith("| ") and "---" not in r]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| hmer's renderer (training style; reference)",
        "| photo-like: 150 px high, grey gradient paper, noise, JPEG",
    ]


@pytest.mark.skipif(not HAVE_CROHME, reason="CROHME data not available")
def test_family_table_trains_scores_and_tabulates_a_row_resumably(tmp_path, capsys):
    families = load_benchmark("families")
    tiny = ["data.train_limit=24", "data.val_size=4", "data.pixels_per_batch=24576"]
    args = ["run", "crnn", "--dir", str(tmp_path), "--budget", "0.25", "--limit", "2"]
    args += ["--rate", "5", *(a for kv in tiny for a in ("--set", kv))]
    families.main(args)
    row = (tmp_path / "crnn" / "row.json").read_text()
    assert '"rate": 5.0' in row and '"epochs_planned": 1' in row
    capsys.readouterr()
    families.main(["table", "--dir", str(tmp_path)])
    table = capsys.readouterr().out
    (line,) = [r for r in table.splitlines() if "`configs/crnn.toml`" in r]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "CNN + BiLSTM + CTC" and 0 <= float(cells[5]) <= 100
    assert 0 < float(cells[4].split()[0]) <= 1  # trained within its quarter-minute budget
    steps = (tmp_path / "crnn" / "steps.log").read_text()
    families.main(args)  # every step done: nothing runs again
    assert (tmp_path / "crnn" / "steps.log").read_text().count("budget") == steps.count("budget")


def test_family_calibration_rate_leaves_out_the_first_steps(tmp_path):
    # 40 samples in the first 10 s (new shapes), then 10/s: the rate past step 20 is 10/s.
    rows = ["step,epoch,loss,lr,samples_per_s,cpu_hours"]
    for step, seen, seconds in [(20, 40, 10), (40, 140, 20), (60, 240, 30)]:
        rows.append(f"{step},0,1.0,0.001,{seen / seconds},{seconds / 3600}")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    assert load_benchmark("families").measured_rate(tmp_path) == pytest.approx(10.0)
    # A slow family logs twice in its calibration (steps 20 and 40): enough to measure.
    (tmp_path / "log.csv").write_text("\n".join(rows[:3]) + "\n")
    assert load_benchmark("families").measured_rate(tmp_path) == pytest.approx(10.0)


def test_models_benchmark_tabulates_each_config(tmp_path):
    models = load_benchmark("models")
    out = tmp_path / "bench.md"
    text = models.main(["--quick", str(ROOT / "configs" / "crnn.toml"), "--out", str(out)])
    (line,) = [r for r in text.splitlines() if r.startswith("| crnn |")]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["crnn", "ctc", "image"] and float(cells[6].split()[0]) > 0  # samples/s
    assert out.read_text() == text
