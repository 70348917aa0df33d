"""Every seed system trained for the same CPU budget, then scored on CROHME 2014: one table.

Each row is a config of ``configs/`` trained from scratch on the CROHME training set for the same
number of training minutes on one thread, with the same formula-disjoint validation (whole
formulas held out, ``data.val_split = "formula"``) selecting its checkpoint. A row runs in steps,
each an ``hmer`` command (printed, and kept in the row's ``row.json``), and each step is skipped
when its output exists, so an interrupted table goes on where it stopped:

1. calibrate: a few minutes of ``hmer train`` on the real loader measure samples/s (or ``--rate``);
2. train: ``hmer train CONFIG --set train.max_minutes=BUDGET`` with the epochs that budget fills at
   the measured rate, so the cosine schedule ends about when the budget does (the budget is the
   hard limit; ``row.json`` records the epochs reached);
3. export the best validation checkpoint as an fp16 release (``hmer export``);
4. ``hmer evaluate`` on 2014 greedy and at beam 10, one expression at a time (greedy latency is
   the p50 of the greedy pass, rendering included).

    python benchmarks/families.py list
    python benchmarks/families.py run --budget 60 [ROW ...] [--dir runs/families]
    python benchmarks/families.py table [--dir runs/families] [--out table.md]

Releases stay in the run folder (``ROW/release.safetensors``); ``hmer recognize --model`` and
``hmer explain --model`` read them. Expect 60-90 minutes of one core per row plus its evaluation.
The records of finished rows are kept in the repository as ``benchmarks/results/families/ROW/
row.json`` (the README's table is ``table --dir benchmarks/results/families``); the releases are
not (the row's command makes them again).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hmer.data.files import atomic_open

ROOT = Path(__file__).resolve().parents[1]
SKIP_STEPS = 20  # the first steps meet new padded shapes, which cost far more than repeats


@dataclass(frozen=True)
class Row:
    name: str
    config: str
    family: str
    published: str  # CROHME 2014 ExpRate of the published system and its source, or "–"


ROWS = [
    Row("crnn", "crnn", "CNN + BiLSTM + CTC", "–"),
    Row("crnn-resnet18", "crnn-resnet18", "ResNet-18 CRNN + CTC", "–"),
    Row("gru-attention", "gru-attention", "Bahdanau-attention GRU seq2seq", "–"),
    Row("wap", "wap", "WAP (attention + coverage)", "46.6 (WAP, 2017)"),
    Row("densewap", "densewap", "DenseWAP", "50.6 (DenseWAP, 2018)"),
    Row("resnet-transformer", "resnet-transformer", "ResNet + Transformer, 3 layers", "–"),
    Row("resnet-transformer-d5", "resnet-transformer-d5", "ResNet + Transformer, 5 layers", "–"),
    Row("bttr-small", "bttr-small", "BTTR (bidirectional Transformer)", "54.0 (BTTR, 2021)"),
    Row("comer-small", "comer-small", "CoMER-style coverage Transformer", "59.3 (CoMER, 2022)"),
    Row("strokes", "strokes", "stroke model (points → coverage Transformer)", "48.5 (TAP, 2018)"),
]
BY_NAME = {r.name: r for r in ROWS}


def hmer(*args: str) -> list[str]:
    """The command line of an ``hmer`` sub-command run with this interpreter."""
    return [sys.executable, "-m", "hmer", *args]


def run_step(cmd: list[str], log: Path, threads: int, output: Path | None = None) -> None:
    """Run one step, its output appended to ``log`` (its standard output written to ``output``
    instead, when given, whole or not at all); a failing step stops the table."""
    print("$", shlex.join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with (
        log.open("a") as fh,
        atomic_open(output, "w") if output else contextlib.nullcontext(fh) as out,
    ):
        errors = fh if output else subprocess.STDOUT
        code = subprocess.call(cmd, stdout=out, stderr=errors, env=env, cwd=ROOT)
        if code:
            raise SystemExit(f"step failed (exit {code}); see {log}")


def measured_rate(run_dir: Path) -> float:
    """Samples/s of a calibration run from the end of its first new-shape steps on, from
    ``log.csv`` (whose rates count from the epoch's start, with its hours of training)."""
    with (run_dir / "log.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) >= SKIP_STEPS]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir}: too few steps to measure a rate")
    (t0, r0), (t1, r1) = [
        (3600 * float(r["cpu_hours"]), float(r["samples_per_s"])) for r in (rows[0], rows[-1])
    ]
    return (r1 * t1 - r0 * t0) / (t1 - t0)


def train_size(val_size: int = 500) -> int:
    """Training expressions left beside the formula-disjoint validation every row uses."""
    from hmer.data.dataset import load_cached
    from hmer.training.train import split_holdout

    train, _ = split_holdout(load_cached("train").samples, val_size, by="formula")
    return len(train)


def run_row(row: Row, out: Path, budget: float, args: argparse.Namespace) -> dict:
    """Calibrate, train, export and evaluate one row (skipping finished steps); its record."""
    d = out / row.name
    d.mkdir(parents=True, exist_ok=True)
    log = d / "steps.log"
    config = f"configs/{row.config}.toml"  # steps run in the checkout's root
    threads = args.threads
    extra = [a for kv in args.set for a in ("--set", kv)]
    common = ["--set", "data.val_split=formula", "--set", "train.test_every=0", *extra]
    record_path = d / "row.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"row": row.name}
    record.update(config=config, budget_minutes=budget, threads=threads)

    if args.rate:
        record["rate"] = args.rate
    elif "rate" not in record:
        calib = [config, "--run-dir", str(d / "calib"), *common, "--set", "data.val_size=0"]
        cmd = hmer("train", *calib, "--set", f"train.max_minutes={args.calibrate_minutes}")
        run_step([*cmd, "--set", "train.epochs=1000"], log, threads)
        record["rate"] = round(measured_rate(d / "calib"), 2)
    n_train = record.get("train_expressions") or train_size()
    record["train_expressions"] = n_train
    epochs = max(1, math.ceil(60 * budget * record["rate"] / n_train))
    record["epochs_planned"] = epochs
    record_path.write_text(json.dumps(record, indent=2))

    run = d / "run"
    train_cmd = hmer(
        "train", config, "--run-dir", str(run), "--resume", *common,
        "--set", f"train.epochs={epochs}", "--set", f"train.max_minutes={budget}",
    )  # fmt: skip
    record["commands"] = {"train": shlex.join(train_cmd[2:])}
    run_step(train_cmd, log, threads)
    with (run / "eval.csv").open() as fh:
        evals = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    record["val"] = [float(r["exprate"]) for r in evals]
    record["training_minutes"] = round(60 * float(evals[-1]["cpu_hours"]), 1)

    release = d / "release.safetensors"
    if not release.exists():
        run_step(hmer("export", str(run / "best.pt"), "-o", str(release)), log, threads)
    record["release_mb"] = round(release.stat().st_size / 2**20, 2)
    for beam in (1, 10):
        result = d / f"beam{beam}.json"
        cmd = hmer("evaluate", "--model", str(release), "--split", "2014", "--beam", str(beam))
        cmd += ["--limit", str(args.limit)] if args.limit else []
        record["commands"][f"beam{beam}"] = shlex.join(cmd[2:])
        if not result.exists():
            run_step([*cmd, "--json"], log, threads, output=result)
        record[f"beam{beam}"] = json.loads(result.read_text())
    record["params"] = parameter_count(release)
    record_path.write_text(json.dumps(record, indent=2))
    return record


def parameter_count(release: Path) -> int:
    """Parameters stored in a release file."""
    from safetensors import safe_open

    with safe_open(str(release), "pt") as f:
        names = f.keys()
        return sum(math.prod(f.get_slice(k).get_shape()) for k in names)


def table(out: Path) -> str:
    """The markdown table of every finished row under ``out``."""
    head = (
        "| system | config | params | train samples/s | budget (validations) | ExpRate | ≤1 | ≤2 "
        "| WER | CER | BLEU-4 | greedy ExpRate | greedy p50 ms | published 2014 |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for row in ROWS:
        path = out / row.name / "row.json"
        if not path.exists() or "beam10" not in json.loads(path.read_text()):
            continue
        r = json.loads(path.read_text())
        b, g = r["beam10"], r["beam1"]
        lines.append(
            f"| {row.family} | `{r['config']}` | {r['params'] / 1e6:.1f}M | {r['rate']:.1f} "
            f"| {r['training_minutes']:.1f} min ({len(r['val'])} val.) | {b['exprate']:.2f} "
            f"| {b['le1']:.2f} | {b['le2']:.2f} | {b['wer']:.2f} | {b['cer']:.2f} "
            f"| {b['bleu4']:.2f} | {g['exprate']:.2f} | {g['latency_ms_p50']:.0f} "
            f"| {row.published} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the rows")
    p = sub.add_parser("run", help="train and score rows (all by default)")
    p.add_argument("rows", nargs="*", help="row names (see list); default: every row")
    p.add_argument("--budget", type=float, default=60.0, help="training minutes per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate-minutes", type=float, default=3.0)
    p.add_argument("--rate", type=float, help="training samples/s to plan with (no calibration)")
    p.add_argument("--limit", type=int, default=0, help="score only the first N (smoke tests)")
    p.add_argument("--set", action="append", default=[], help="more config overrides, KEY=VALUE")
    p.add_argument("--dir", type=Path, default=ROOT / "runs" / "families")
    p = sub.add_parser("table", help="the markdown table of finished rows")
    p.add_argument("--dir", type=Path, default=ROOT / "runs" / "families")
    p.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for r in ROWS:
            print(f"{r.name:24s} configs/{r.config}.toml  {r.family}; published: {r.published}")
    elif args.cmd == "run":
        unknown = sorted(set(args.rows) - set(BY_NAME))
        if unknown:
            ap.error(f"unknown rows {unknown}; known: {', '.join(BY_NAME)}")
        for name in args.rows or list(BY_NAME):
            run_row(BY_NAME[name], args.dir, args.budget, args)
            print(table(args.dir), flush=True)
    else:
        text = table(args.dir)
        if args.out:
            args.out.write_text(text)
        print(text, end="")


if __name__ == "__main__":
    main()
