"""The ``hmer`` command line. Each group of sub-commands lives in its own interfaces module."""

from __future__ import annotations

import argparse
import sys

from hmer.interfaces import cli_data, cli_gan, cli_model, cli_serve, cli_symbol, cli_synth


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmer", description="Handwritten math to LaTeX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (cli_model, cli_data, cli_synth, cli_gan, cli_symbol, cli_serve):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
