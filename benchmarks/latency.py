"""Latency and batch throughput of a trained model on CROHME 2014 test expressions.

Latency is what a user of ``hmer recognize`` waits for one expression: rendering the ink (image
models) or its point features (stroke models), decoding, and post-processing, through
``hmer.recognize.Recognizer``; p50/p90 in ms for each beam width, after a few warm-up
expressions. Batch throughput decodes size-sorted batches greedily (expressions/s), as
``hmer recognize DIR --batch N`` does (``throughput.py`` times whole directory runs, beam search
included). Threads default to the 2 cores of the reference machine.
``--route`` times the pen-input routes of ``hmer recognize --route``: "fusion" runs both models
(beam 1: the greedy fusion mode for live recognition), side by side when it has two threads or
more, and has no batch mode; ``--compare-sequential`` also times each expression with the models
one after the other (alternating which goes first) and reports the paired ratios.
CPU time (``process_time``, all threads) per expression is reported next to wall time: on a
loaded machine wall time measures the load as much as the model.

    python benchmarks/latency.py                          # shipped image model, 200 expressions
    python benchmarks/latency.py --model src/hmer/weights/strokes.safetensors --limit 100
    python benchmarks/latency.py --threads 1 --beams 1 --batch 0
    python benchmarks/latency.py --model DIR --batch 0     # an ONNX export (hmer export --onnx)
    python benchmarks/latency.py --int8                   # dynamic int8 linear layers
    python benchmarks/latency.py --route fusion --beams 1,10
    python benchmarks/latency.py --route fusion --fusion-params other-fusion.json
    python benchmarks/latency.py --route fusion --limit 40 --compare-sequential
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from hmer.data.dataset import load_cached
from hmer.data.inkml import Ink
from hmer.fusion import ink_recognizer, load_params
from hmer.recognize import Recognizer
from hmer.weights import ROUTES


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 in milliseconds."""
    ms = 1000 * np.asarray(seconds)
    p50, p90, p99 = (round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99))
    return p50, p90, p99


def latency(rec, inks: list[Ink], beam: int, warmup: int = 5) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (every thread of the process) per expression of ``rec`` (a
    Recognizer or FusionRecognizer), one at a time, after ``warmup`` unrecorded ones."""
    for ink in inks[:warmup]:
        rec.recognize_ink(ink, beam=beam)
    wall, cpu = [], []
    for ink in inks:
        w, c = one(rec, ink, beam)
        wall.append(w)
        cpu.append(c)
    return wall, cpu


def one(rec, ink: Ink, beam: int) -> tuple[float, float]:
    """Wall and CPU seconds of recognizing ``ink``."""
    t0, c0 = time.perf_counter(), time.process_time()
    rec.recognize_ink(ink, beam=beam)
    return time.perf_counter() - t0, time.process_time() - c0


def paired(rec, inks: list[Ink], beam: int, warmup: int = 5) -> dict[str, list[float]]:
    """Wall and CPU seconds per expression of a FusionRecognizer with its models side by side
    ("concurrent") and one after the other ("sequential"), both on each expression in turn,
    alternating which goes first so that load changes fall on both alike."""
    out: dict[str, list[float]] = {}
    warm = inks[:warmup]
    for i, ink in enumerate([*warm, *inks]):
        for concurrent in (True, False) if i % 2 else (False, True):
            rec.concurrent = concurrent
            w, c = one(rec, ink, beam)
            if i < len(warm):
                continue
            mode = "concurrent" if concurrent else "sequential"
            out.setdefault(f"{mode}_wall", []).append(w)
            out.setdefault(f"{mode}_cpu", []).append(c)
    rec.concurrent = True
    return out


def batch_throughput(rec: Recognizer, inks: list[Ink], batch: int) -> float:
    """Greedy expressions/s over size-sorted batches, decoded as ``hmer recognize --batch``
    decodes them (inputs prepared inside the timing)."""
    t0 = time.perf_counter()
    items = sorted((rec.prepare_ink(i.traces) for i in inks), key=lambda a: a.shape[::-1])
    for k in range(0, len(items), batch):
        chunk = items[k : k + batch]
        rec.recognize_prepared(chunk, [""] * len(chunk), beam=1)
    return round(len(inks) / (time.perf_counter() - t0), 1)


def comparison(times: dict[str, list[float]], beam: int) -> dict:
    """Report entries of :func:`paired`'s times: each mode's wall percentiles and mean CPU, and
    the medians of the per-expression ratios concurrent / sequential."""
    out = {}
    for mode in ("concurrent", "sequential"):
        p50, p90, p99 = percentiles(times[f"{mode}_wall"])
        out |= {f"beam{beam}_{mode}_ms_p50": p50, f"beam{beam}_{mode}_ms_p90": p90}
        out[f"beam{beam}_{mode}_ms_p99"] = p99
        out[f"beam{beam}_{mode}_cpu_ms_mean"] = round(
            1000 * float(np.mean(times[f"{mode}_cpu"])), 1
        )
    for kind in ("wall", "cpu"):
        ratio = np.asarray(times[f"concurrent_{kind}"]) / np.asarray(times[f"sequential_{kind}"])
        out[f"beam{beam}_{kind}_ratio_concurrent_to_sequential_p50"] = round(
            float(np.median(ratio)), 3
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", help="a release, checkpoint or ONNX export folder (default: shipped image model)"
    )
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers")
    p.add_argument(
        "--route",
        choices=ROUTES,
        help="the pen-input route to time, as hmer recognize --route (--model: its image model, "
        "or the stroke model of 'strokes')",
    )
    p.add_argument("--stroke-model", help="stroke model of --route strokes/fusion")
    p.add_argument(
        "--fusion-params", help="--route fusion: a fusion.json (default: the shipped one)"
    )
    p.add_argument("--limit", type=int, default=200, help="test expressions (the first N)")
    p.add_argument("--beams", default="1,10", help="beam widths, comma-separated (1 = greedy)")
    p.add_argument("--batch", type=int, default=16, help="batch size for throughput (0 = skip)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--compare-sequential",
        action="store_true",
        help="--route fusion: also time the models one after the other, paired per expression",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.compare_sequential and args.route != "fusion":
        p.error("--compare-sequential applies to --route fusion")
    if args.route:
        if args.int8:
            p.error("--int8 applies to one model; leave out --route")
        rec = ink_recognizer(args.route, args.model, args.stroke_model)
        if args.fusion_params:
            if args.route != "fusion":
                p.error("--fusion-params applies to --route fusion")
            rec.params = load_params(args.fusion_params)
    else:
        rec = Recognizer.load(args.model)
    if args.int8:
        from hmer.models.quantize import quantize_int8

        rec = Recognizer(quantize_int8(rec.model), rec.vocab, f"{rec.name}-int8")
    samples = load_cached("2014").samples[: args.limit]
    inks = [Ink(s.traces, source=s.id) for s in samples]
    report = {"model": rec.name, "expressions": len(inks), "threads": args.threads}
    report["load_avg_1min_before"] = round(os.getloadavg()[0], 2)  # other work on the machine
    if args.route:
        report["route"] = args.route
    if args.route == "fusion":
        report["pool_depth"] = rec.params.pool_depth
    for beam in (int(b) for b in args.beams.split(",")):
        if args.compare_sequential:
            report |= comparison(paired(rec, inks, beam), beam)
            continue
        times, cpu = latency(rec, inks, beam)
        p50, p90, p99 = percentiles(times)
        report.update({f"beam{beam}_ms_p50": p50, f"beam{beam}_ms_p90": p90})
        report[f"beam{beam}_ms_p99"] = p99
        report[f"beam{beam}_cpu_ms_mean"] = round(1000 * float(np.mean(cpu)), 1)
        if beam == 1:
            report["greedy_one_at_a_time_expr_per_s"] = round(len(times) / sum(times), 1)
    if args.batch and args.route != "fusion":  # fusion decodes no batches
        report[f"greedy_batch{args.batch}_expr_per_s"] = batch_throughput(rec, inks, args.batch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>32}  {v}")
    return report


if __name__ == "__main__":
    main()
