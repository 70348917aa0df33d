"""Throughput of ``hmer recognize DIR`` with --batch and --jobs, on CROHME 2014 test bitmaps.

Writes the first N CROHME 2014 test expressions as PNGs, rendered from their ink by hmer's
renderer (``--style hmer``, as ``hmer data render`` draws them) or drawn as official-like bitmaps
(``--style official``, as ``robustness.py --write`` does), then times whole
``hmer recognize DIR --format tsv`` runs (start-up and model loading included, as a user waits
for them) for each beam / batch / jobs setting, and reports expressions (files) per second,
ExpRate (exact tokens) and how many predictions equal those of the same beam's first run::

    python benchmarks/throughput.py --limit 100
    python benchmarks/throughput.py --limit 0 --style hmer --settings 1:1:1,1:8:1,10:1:1,10:8:1
    python benchmarks/throughput.py --limit 40 --settings 1:1:1,1:16:1,1:1:2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import write_test_images  # noqa: E402

from hmer.data.dataset import Split, load_cached, render_split  # noqa: E402
from hmer.evaluation.metrics import score  # noqa: E402

DEFAULT_SETTINGS = "1:1:1,1:16:1,1:1:2,1:16:2,10:1:1,10:4:1,10:1:2"


def run(folder: Path, beam: int, batch: int, jobs: int, model: str | None) -> tuple[float, dict]:
    """Seconds for one ``hmer recognize`` run and its predictions by file id."""
    cmd = [sys.executable, "-m", "hmer.cli", "recognize", str(folder), "--format", "tsv"]
    cmd += ["--beam", str(beam), "--batch", str(batch), "--jobs", str(jobs), "--no-progress"]
    cmd += ["--timeout", "0"]  # a loaded machine must not turn slow inputs into failures
    if model:
        cmd += ["--model", model]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    out = done.stdout
    # Exit 1 with some answers: some inputs failed, counted as wrong. Anything else is a crash.
    if done.returncode not in (0, 1) or not out.strip():
        raise RuntimeError(f"hmer recognize failed: {done.stderr[-500:]}")
    seconds = time.perf_counter() - t0
    preds = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return seconds, preds


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a .safetensors release (default: the shipped image model)")
    p.add_argument(
        "--limit", type=int, default=100, help="test expressions (the first N; 0: all 986)"
    )
    p.add_argument(
        "--style",
        choices=["official", "hmer"],
        default="official",
        help="official-like bitmaps (Pillow, white on black) or hmer's own renders of the ink",
    )
    p.add_argument(
        "--settings",
        default=DEFAULT_SETTINGS,
        help="comma-separated BEAM:BATCH:JOBS runs; each beam's first run is its reference",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    samples = load_cached("2014").samples[: args.limit or None]
    rows: list[dict] = []
    reference: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "png"
        if args.style == "hmer":
            folder.mkdir()
            render_split(Split("2014", samples), folder, progress=False)
        else:
            write_test_images(samples, folder)
            (folder / "truth.tsv").unlink()
        truth = {s.id: s.tokens for s in samples}
        for setting in args.settings.split(","):
            beam, batch, jobs = (int(v) for v in setting.split(":"))
            seconds, preds = run(folder, beam, batch, jobs, args.model)
            ref = reference.setdefault(beam, preds)
            same = sum(preds.get(k) == v for k, v in ref.items()) / max(len(ref), 1)
            tokens = {k: v.split() for k, v in preds.items()}
            rows.append(
                {
                    "beam": beam,
                    "batch": batch,
                    "jobs": jobs,
                    "files": len(preds),
                    "seconds": round(seconds, 1),
                    "style": args.style,
                    "files_per_s": round(len(preds) / seconds, 2),
                    "exprate": round(score(tokens, truth)["exprate"], 1),
                    "same_as_reference": round(100 * same, 1),
                }
            )
            if not args.json:
                r = rows[-1]
                print(
                    f"beam {beam:>2}  batch {batch:>2}  jobs {jobs}  {r['files']} files  "
                    f"{r['seconds']:>6} s  {r['files_per_s']:>6} files/s  "
                    f"ExpRate {r['exprate']}%  same as reference {r['same_as_reference']}%",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "runs": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
