"""``hmer gan train``: the GAN that turns printed formula renders into handwriting-like images
(:mod:`hmer.training.gan`); ``hmer synth --method gan`` generates with its checkpoint."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``gan`` sub-commands to the ``hmer`` parser."""
    p = sub.add_parser(
        "gan",
        help="train the printed-to-handwritten GAN (generated images are training data)",
        description="The self-attention GAN of Springstein et al.: printed renders "
        "(hmer data render-latex) in, handwriting-like images out, trained unpaired against "
        "CROHME handwriting with a frozen recognizer keeping every symbol legible. Generate "
        "with: hmer synth --method gan --generator RUN_DIR/last.pt --printed TSV --out DIR",
    )
    gan_sub = p.add_subparsers(dest="gan_command", required=True)
    t = gan_sub.add_parser(
        "train",
        help="train the GAN as a config's [gan] table says",
        description="Train the generator and discriminator; checkpoints RUN_DIR/last.pt every "
        "few minutes (an interrupted run continues exactly with --resume), logs RUN_DIR/log.csv "
        "and writes RUN_DIR/samples.png (printed inputs beside generated outputs) at the end.",
    )
    t.add_argument("config", help="a TOML file with a [gan] table (configs/gan/*.toml)")
    t.add_argument("--run-dir", default="runs/gan", help="checkpoints and logs (runs/gan)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set printed=DIR/captions.tsv --set lambda_task=0",
    )
    t.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from hmer.training.config import ConfigError, gan_config, read_config
    from hmer.training.gan import train_gan
    from hmer.training.train import SetupError

    try:
        cfg = gan_config(read_config(args.config), args.set)
    except (ConfigError, OSError) as exc:
        print(f"hmer gan train: {exc}", file=sys.stderr)
        return 2
    try:
        state = train_gan(cfg, args.run_dir, resume=args.resume)
    except SetupError as exc:
        print(f"hmer gan train: {exc}", file=sys.stderr)
        return 1
    rate = state["step"] / max(state["cpu_seconds"], 1e-9)
    print(
        f"done: step {state['step']} of {cfg.steps} ({rate:.2f} steps per CPU second); "
        f"{args.run_dir}/last.pt, {args.run_dir}/samples.png"
    )
    return 0
