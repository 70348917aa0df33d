"""Speed and size of every model config on this CPU, as a markdown table.

For each ``configs/*.toml``: training samples/s in fp32 and, on CPUs with native bf16, in bf16
autocast (images channels-last) on realistic bucketed batches, inference latency per expression
(greedy and beam, p50/p90, batch of one, fp32), parameter count and weight size in fp16.

Batches come from the CROHME training set (``hmer.data.dataset.load_cached("train")``) when it is
available, else from synthetic scribbles. They are built before timing (in real training a data
loader worker renders them alongside). Each timed pass follows a warm-up pass over the same
batches, because on this CPU the first batch of a new padded shape costs seconds; the warm-up
rate is reported too. Models are untrained, so decoding is capped at the reference length + 1
tokens (an untrained decoder rarely stops by itself): latency is that of a realistic number of
decoding steps, not of a trained model's own choice of length.

    python benchmarks/models.py                   # all configs, full measurement (minutes)
    python benchmarks/models.py --quick           # 1-2 tiny batches per config: a smoke test
    python benchmarks/models.py configs/crnn.toml --out bench.md
"""

from __future__ import annotations

import argparse
import glob
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hmer.data.batching import BucketSpec
from hmer.data.dataset import Sample, default_cache_dir, default_data_dir, load_cached
from hmer.data.vocab import Vocab
from hmer.decoding import recognize_batch
from hmer.models import create_model
from hmer.training.train import as_input, batches_for, bf16_fast, load_config

ROOT = Path(__file__).resolve().parents[1]


def crohme_or_synthetic(n: int, seed: int = 0) -> tuple[list[Sample], Vocab, str]:
    """``n`` training samples and the vocabulary: CROHME when present, else synthetic."""
    cached = (default_cache_dir() / "crohme-train-v1.pkl").exists()
    dictionary = default_data_dir() / "dictionary.txt"
    if dictionary.exists() and (cached or (default_data_dir() / "TrainINKML.tar.gz").exists()):
        samples = load_cached("train").samples
        pick = np.random.default_rng(seed).choice(len(samples), min(n, len(samples)), replace=False)
        return [samples[i] for i in pick], Vocab.from_dictionary(dictionary), "CROHME train"
    return synthetic_samples(n, seed), Vocab(["x", "y", "+", "-", "1", "2", "="]), "synthetic"


def synthetic_samples(n: int, seed: int = 0) -> list[Sample]:
    """Random scribbles of 3-15 "symbols" (1-3 random polylines each) on one line."""
    rng = np.random.default_rng(seed)
    tokens = ["x", "y", "+", "-", "1", "2", "="]
    out = []
    for k in range(n):
        length = int(rng.integers(3, 16))
        traces = []
        for i in range(length):
            for _ in range(int(rng.integers(1, 4))):
                pts = rng.uniform(0, 1, (int(rng.integers(2, 6)), 2)) + [1.3 * i, 0]
                segments = zip(pts[:-1], pts[1:], strict=True)
                dense = np.concatenate([np.linspace(a, b, 6) for a, b in segments])
                traces.append((dense * 100).astype(np.float32))
        out.append(Sample(f"syn{k}", traces, [str(rng.choice(tokens)) for _ in range(length)]))
    return out


def train_rate(model, batches: list[dict], bf16: bool) -> tuple[float, float]:
    """(warm-up, steady) training samples/s over ``batches``, both passes timed."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rates = []
    for _ in range(2):
        n, t0 = 0, time.perf_counter()
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(as_input(b["inputs"]), b["masks"], b["tokens"], 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(b["ids"])
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


@torch.no_grad()
def latencies(model, singles: list[dict], beam: int) -> tuple[list[float], list[float]]:
    """Per-expression milliseconds of greedy and of beam decoding (batch of one, fp32)."""
    model.eval()
    greedy_ms, beam_ms = [], []
    recognize_batch(model, as_input(singles[0]["inputs"]), singles[0]["masks"], 1, 4)  # warm-up
    for b in singles:
        x, m, cap = as_input(b["inputs"]), b["masks"], len(b["tokens"][0]) + 1
        for k, out in ((1, greedy_ms), (beam, beam_ms)):
            t0 = time.perf_counter()
            recognize_batch(model, x, m, beam=k, max_len=cap)
            out.append(1000 * (time.perf_counter() - t0))
    return greedy_ms, beam_ms


def bench_config(path: Path, args, samples: list[Sample], vocab: Vocab) -> dict:
    config = load_config(path)
    mc = dict(config.model)
    name = mc.pop("name")
    torch.manual_seed(0)
    model = create_model(name, len(vocab), **mc)
    if model.input_kind == "image":
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    pixels = config.data.pixels_per_batch
    if args.quick:
        spec = BucketSpec(pixels_per_batch=2 * 64 * 256, max_batch=2)
    else:
        spec = BucketSpec(pixels_per_batch=pixels)
    make = batches_for(model)
    data = make(samples, vocab, spec, epoch=0, seed=0)
    batches = [data[k] for k in range(min(args.batches, len(data)))]
    row = {
        "config": path.stem,
        "family": name,
        "kind": model.kind,
        "input": model.input_kind,
        "params": n_params,
        "fp16_mb": 2 * n_params / 1e6,
        "batch_shapes": len({tuple(b["inputs"].shape) for b in batches}),
    }
    row["warm_fp32"], row["train_fp32"] = train_rate(model, batches, False)
    if bf16_fast():  # emulated bf16 runs ~10x slower: not worth minutes a config
        row["warm_bf16"], row["train_bf16"] = train_rate(model, batches, True)
    plain = make(samples[: args.latency_samples], vocab, spec, 0, 0, augment=False, shuffle=False)
    singles = []
    for k in range(len(plain)):  # one expression per batch, at its bucket's padded shape
        b = plain[k]
        singles += [{key: v[j : j + 1] for key, v in b.items()} for j in range(len(b["ids"]))]
    g, bm = latencies(model, singles[: args.latency_samples], args.beam)
    row["greedy_ms"] = (np.percentile(g, 50), np.percentile(g, 90))
    row["beam_ms"] = (np.percentile(bm, 50), np.percentile(bm, 90))
    return row


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(rows: list[dict], args, source: str) -> str:
    quick = "QUICK smoke run (tiny batches), " if args.quick else ""
    cpu = cpu_name() + (", native bf16" if bf16_fast() else ", no native bf16")
    head = (
        f"Models on {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__};"
        f" data: {source}; {quick}{args.batches} batches per pass, beam {args.beam},"
        f" {args.latency_samples} latency samples.\n"
        "Train = samples/s after a warm-up pass over the same batches (first pass in brackets);"
        " latency = ms per expression, batch of one, fp32, untrained weights capped at the"
        " reference length + 1 tokens.\n\n"
    )
    cols = (
        "| config | family | kind | input | params | fp16 MB | train fp32 | train bf16 "
        f"| greedy p50 / p90 ms | beam-{args.beam} p50 / p90 ms |\n"
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )

    def bf16_cell(r: dict) -> str:
        if "train_bf16" not in r:
            return "n/a (no native bf16)"
        return f"{r['train_bf16']:.1f} ({r['warm_bf16']:.1f})"

    lines = [
        f"| {r['config']} | {r['family']} | {r['kind']} | {r['input']} | {r['params'] / 1e6:.2f}M "
        f"| {r['fp16_mb']:.1f} | {r['train_fp32']:.1f} ({r['warm_fp32']:.1f}) | {bf16_cell(r)} "
        f"| {r['greedy_ms'][0]:.0f} / {r['greedy_ms'][1]:.0f} "
        f"| {r['beam_ms'][0]:.0f} / {r['beam_ms'][1]:.0f} |"
        for r in rows
    ]
    return head + cols + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and return (and print, and optionally write) the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", help="config files (default: configs/*.toml)")
    p.add_argument("--quick", action="store_true", help="1-2 tiny batches: check that it runs")
    p.add_argument("--batches", type=int, default=None, help="batches per timed pass (default 12)")
    p.add_argument("--latency-samples", type=int, default=None, help="expressions (default 30)")
    p.add_argument("--beam", type=int, default=None, help="beam width (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    quick = {"batches": 2, "latency_samples": 2, "beam": 3}
    full = {"batches": 12, "latency_samples": 30, "beam": 10}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [Path(c) for c in args.configs] or sorted(
        Path(c) for c in glob.glob(str(ROOT / "configs" / "*.toml"))
    )
    n = 8 if args.quick else 64 * args.batches
    samples, vocab, source = crohme_or_synthetic(n)
    if args.quick:  # the shortest expressions: tiny batches
        samples = sorted(samples, key=lambda s: sum(len(t) for t in s.traces))[:4]
    rows = []
    for path in paths:
        t0 = time.time()
        rows.append(bench_config(path, args, samples, vocab))
        print(f"{path.stem}: {time.time() - t0:.0f} s", flush=True)
    text = table(rows, args, source)
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
