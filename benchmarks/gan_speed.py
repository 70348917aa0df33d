"""CPU time per training step of the printed-to-handwritten GAN (``hmer gan train``) for a few
canvas sizes and channel widths, with and without the frozen recognizer's task loss.

CPU seconds (``time.process_time``) are measured rather than wall time: on a shared machine
they stay close to what the step costs alone. Run with one thread, as training here does::

    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --printed DIR/captions.tsv
    OMP_NUM_THREADS=1 python benchmarks/gan_speed.py --printed DIR/captions.tsv \\
        --sizes 48x192x8,64x256x16 --task-model runs/small/best.pt --steps 5 --json

Each row: canvas height x width, channels, batch, task loss on or off, parameters of G and D,
CPU seconds per step (mean over ``--steps`` after one warm-up step) and steps per CPU hour.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--printed", required=True, help="captions.tsv of printed renders")
    ap.add_argument("--handwritten", default="train", help="handwritten domain (default train)")
    ap.add_argument("--sizes", default="48x192x8,64x256x16,64x256x32", help="HxWxCHANNELS,...")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument(
        "--task-model", default="", help="recognizer of the task loss (default shipped)"
    )
    ap.add_argument("--limit", type=int, default=300, help="samples of each domain to load")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
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
