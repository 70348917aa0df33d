"""CPU time per training step of the printed-to-handwritten GAN (``hmer gan train``) for a few
canvas sizes and channel widths, with and without the frozen recognizer's task loss.

CPU seconds (``time.process_time``) are measured rather than wall time: on a shared machine
they stay close to what the step costs alone. Run with one thread, as training here does::

    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --printed DIR/captions.tsv
    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --printed DIR/captions.tsv \\
        --sizes 48x192x8,64x256x16 --task-model runs/small/best.pt --steps 5 --json

Each row: canvas height x width, channels, batch, task loss on or off, parameters of G and D,
CPU seconds per step (mean over ``--steps`` after one warm-up step) and steps per CPU hour.

``--recognizers`` instead compares what the task loss costs with the frozen shipped
recognizer against a small transformer that would have to be trained alongside (its frozen
pass on the fakes plus a training pass on real images), on a batch of 8 at 96 x 384 (a 48 x 192
canvas at scale 0.5)::

    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --recognizers
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hmer.training.config import gan_config
from hmer.training.gan import TaskLoss, build_networks, load_domains, make_batch, train_step


def measure(overrides: list[str], steps: int, domains=None) -> dict:
    """Mean CPU and wall seconds per step of the config ``overrides`` give."""
    cfg = gan_config({}, overrides)
    domains = domains or load_domains(cfg)
    g, d = build_networks(cfg)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    task = TaskLoss(cfg.task_model, cfg.scale) if cfg.lambda_task > 0 else None
    train_step(g, d, opt_g, opt_d, task, make_batch(domains, cfg, 0), cfg)  # warm-up
    cpu, wall = time.process_time(), time.time()
    for step in range(1, steps + 1):
        train_step(g, d, opt_g, opt_d, task, make_batch(domains, cfg, step), cfg)
    cpu, wall = (time.process_time() - cpu) / steps, (time.time() - wall) / steps
    return {
        "height": cfg.height,
        "width": cfg.width,
        "channels": cfg.channels,
        "batch": cfg.batch_size,
        "task": cfg.lambda_task > 0,
        "g_params": sum(p.numel() for p in g.parameters()),
        "d_params": sum(p.numel() for p in d.parameters()),
        "cpu_s_per_step": round(cpu, 3),
        "wall_s_per_step": round(wall, 3),
        "steps_per_cpu_hour": round(3600 / cpu),
    }


def recognizer_costs(passes: int = 3) -> dict:
    """CPU seconds of one forward and backward pass of the task loss, by recognizer."""
    from hmer.models import create_model
    from hmer.weights import load_any

    x = torch.rand(8, 1, 96, 384, requires_grad=True).contiguous(memory_format=torch.channels_last)
    masks = torch.zeros(8, 96, 384, dtype=torch.bool)
    tokens = [list(range(5, 15))] * 8

    def cost(model, train_params: bool) -> float:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(train_params)
        model(x, masks, tokens, 0.0).backward()  # warm-up
        t = time.process_time()
        for _ in range(passes):
            model(x, masks, tokens, 0.0).backward()
        return round((time.process_time() - t) / passes, 3)

    comer, vocab, name = load_any(None)
    small = create_model(
        "transformer",
        len(vocab),
        encoder="densenet",
        encoder_cfg={"growth": 8, "depth": 4, "dropout": 0.0},
        d_model=64,
        nhead=4,
        num_layers=1,
        ffn=128,
        dropout=0.0,
    )
    return {
        f"{name} frozen ({sum(p.numel() for p in comer.parameters()) / 1e6:.2f}M)": cost(
            comer, False
        ),
        f"small frozen ({sum(p.numel() for p in small.parameters()) / 1e6:.2f}M)": cost(
            small, False
        ),
        "small training pass": cost(small, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--printed", help="captions.tsv of printed renders")
    ap.add_argument("--handwritten", default="train", help="handwritten domain (default train)")
    ap.add_argument("--sizes", default="48x192x8,64x256x16,64x256x32", help="HxWxCHANNELS,...")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--task-model", default="", help="recognizer of the task loss (default shipped)"
    )
    ap.add_argument("--limit", type=int, default=300, help="samples of each domain to load")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--recognizers", action="store_true", help="task loss costs by recognizer")
    args = ap.parse_args()
    if args.recognizers:
        for name, seconds in recognizer_costs().items():
            print(f"{name}: {seconds:.3f} CPU s per pass")
        return
    if not args.printed:
        ap.error("--printed is required (captions.tsv of hmer data render-latex)")
    base = [
        f"printed={args.printed}",
        f"handwritten={args.handwritten}",
        f"printed_limit={args.limit}",
        f"handwritten_limit={args.limit}",
        f"batch_size={args.batch}",
        f"task_model={args.task_model}",
    ]
    domains = load_domains(gan_config({}, base))
    rows = []
    for size in args.sizes.split(","):
        h, w, c = size.split("x")
        for task in (0, 1):
            sets = [*base, f"height={h}", f"width={w}", f"channels={c}", f"lambda_task={task}"]
            row = measure(sets, args.steps, domains)
            rows.append(row)
            if not args.json:
                print(
                    f"{row['height']}x{row['width']} c{row['channels']} b{row['batch']} "
                    f"task {'on ' if row['task'] else 'off'}  G {row['g_params'] / 1e6:.2f}M "
                    f"D {row['d_params'] / 1e6:.2f}M  {row['cpu_s_per_step']:.2f} CPU s/step "
                    f"({row['steps_per_cpu_hour']} steps per CPU hour)",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
