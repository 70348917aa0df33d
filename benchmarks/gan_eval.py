"""The GAN paper's evaluation at this CPU's scale (issue #17, part 3): two tables, each row one
resumable chain of ``hmer`` commands.

``ablate``: one GAN per variant (``full``: task loss and self-attention; ``no-task``:
``lambda_task = 0``; ``no-attention``), each trained for the same minutes, generates the same
printed formulas; a recognizer trained from scratch on those images alone for a fixed budget is
scored on CROHME 2014 by perplexity of the truth and greedy ExpRate, as the paper scores its
generators (a generator that keeps the symbols teaches a reader more).

``mix``: the image model trained for one fixed budget on CROHME alone, and on CROHME plus each
kind of extra data: ``synth`` (glyph compositions, ``hmer synth``), ``gan`` (the ``full``
variant's images), ``printed`` (the printed renders themselves); scored on 2014 at beam 10.
By default each arm starts from the shipped release, since a from-scratch image model reads
almost nothing after an hour here (``benchmarks/families.py``: 2.9% for comer-small).

    python benchmarks/gan_eval.py ablate --printed P/captions.tsv [--gan-minutes 120] ...
    python benchmarks/gan_eval.py mix --printed P/captions.tsv --synth S.pkl [--minutes 60] ...
    python benchmarks/gan_eval.py table [--dir runs/gan-eval]

The printed domain is ``hmer data render-latex CAPTIONS -o P`` (KaTeX; needs the browser of
``scripts/setup-browser.sh``); keep CROHME 2014 formulas out of CAPTIONS. Every step is skipped
when its output exists and training steps resume, so an interrupted table goes on where it
stopped. Steps and results: ``DIR/TABLE/ROW/steps.log`` and ``row.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import ROOT, hmer, run_step  # noqa: E402  (one step runner for both tables)

VARIANTS = {"full": [], "no-task": ["lambda_task=0"], "no-attention": ["self_attention=false"]}
ARMS = ("crohme", "synth", "gan", "printed")
GAN_CONFIG = "configs/gan/small.toml"
RECOGNIZER = "configs/comer-small.toml"
SHIPPED = "src/hmer/weights/comer-small.safetensors"


def sets(pairs: list[str]) -> list[str]:
    return [a for kv in pairs for a in ("--set", kv)]


def planned_epochs(args: argparse.Namespace, n_train: int) -> int:
    """Epochs that the budget fills at the planned rate, so the cosine ends with the budget."""
    return max(1, round(60 * args.minutes * args.rate / n_train))


def gan_run(d: Path, variant: str, args: argparse.Namespace, log: Path) -> Path:
    """Train (or resume) one variant's GAN to its minutes, then generate its images; the
    generated dataset's captions.tsv."""
    run = d / "gan"
    pairs = [f"printed={args.printed}", f"max_minutes={args.gan_minutes}", *VARIANTS[variant]]
    pairs += args.gan_set
    run_step(
        hmer("gan", "train", args.gan_config, "--run-dir", str(run), "--resume", *sets(pairs)),
        log,
        args.threads,
    )
    data = d / "data"
    if not (data / "captions.tsv").exists():
        cmd = hmer("synth", "--method", "gan", "--generator", str(run / "last.pt"))
        cmd += ["--printed", args.printed, "--count", str(args.count), "--seed", "1"]
        run_step([*cmd, "--out", str(data), "--preview", str(d / "samples.png")], log, args.threads)
    return data / "captions.tsv"


def train_and_score(
    d: Path, log: Path, args: argparse.Namespace, pairs: list[str], init: list[str], beams: tuple
) -> dict:
    """Train the recognizer for the budget (resumably), then score its best checkpoint on 2014
    at each beam (with perplexity); the results by beam."""
    run = d / "run"
    pairs = ["train.test_every=0", f"train.max_minutes={args.minutes}", *pairs, *args.set]
    run_step(
        hmer("train", args.recognizer, "--run-dir", str(run), "--resume", *init, *sets(pairs)),
        log,
        args.threads,
    )
    results = {}
    for beam in beams:
        out = d / f"beam{beam}.json"
        cmd = hmer("evaluate", "--model", str(run / "best.pt"), "--split", "2014")
        cmd += ["--beam", str(beam), "--perplexity", "--json"]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        if not out.exists():
            run_step(cmd, log, args.threads, output=out)
        results[f"beam{beam}"] = json.loads(out.read_text())
    return results


def ablate(args: argparse.Namespace) -> None:
    for variant in args.rows or list(VARIANTS):
        d = args.dir / "ablate" / variant
        d.mkdir(parents=True, exist_ok=True)
        log = d / "steps.log"
        data = gan_run(d, variant, args, log)
        # Generated images only: they train and (a held-out 5%) select the recognizer.
        val = max(1, args.count // 20)
        pairs = [f"data.train={data}", f"data.val_size={val}", "data.test="]
        pairs.append(f"train.epochs={planned_epochs(args, args.count - val)}")
        record = {"variant": variant, "gan_minutes": args.gan_minutes, "images": args.count}
        record |= train_and_score(d, log, args, pairs, [], (1,))
        (d / "row.json").write_text(json.dumps(record, indent=2))


def mix(args: argparse.Namespace) -> None:
    from hmer.training.train import load_samples

    extra = {"crohme": None, "synth": args.synth, "printed": args.printed}
    for arm in args.rows or list(ARMS):
        d = args.dir / "mix" / arm
        d.mkdir(parents=True, exist_ok=True)
        log = d / "steps.log"
        if arm == "gan":
            extra["gan"] = str(gan_run(args.dir / "ablate" / "full", "full", args, log))
        if arm != "crohme" and not extra[arm]:
            raise SystemExit(f"arm {arm} needs --{arm}")
        n_train = len(load_samples("train")) - 500  # the default random hold-out
        n_train += len(load_samples(extra[arm])) if extra[arm] else 0
        epochs = planned_epochs(args, n_train)
        pairs = [f"train.epochs={epochs}", f"train.lr={args.lr}", "train.warmup_steps=150"]
        pairs += [f"data.extra_train={json.dumps([extra[arm]])}"] if extra[arm] else []
        init = ["--init-from", args.init_from] if args.init_from else []
        record = {"arm": arm, "extra": extra[arm], "init_from": args.init_from or "scratch"}
        record |= train_and_score(d, log, args, pairs, init, (1, 10))
        (d / "row.json").write_text(json.dumps(record, indent=2))


def table(out: Path) -> str:
    """Both tables, of the rows finished under ``out``, as markdown."""
    lines = [
        "| GAN variant | GAN minutes | images | 2014 perplexity | greedy ExpRate | ≤1 | ≤2 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        path = out / "ablate" / variant / "row.json"
        if path.exists():
            r = json.loads(path.read_text())
            b = r["beam1"]
            lines.append(
                f"| {variant} | {r['gan_minutes']:g} | {r['images']} | {b['perplexity']:.2f} "
                f"| {b['exprate']:.2f} | {b['le1']:.2f} | {b['le2']:.2f} |"
            )
    lines += [
        "",
        "| training data | from | beam 10 ExpRate | ≤1 | ≤2 | WER | greedy ExpRate | perplexity |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        path = out / "mix" / arm / "row.json"
        if path.exists():
            r = json.loads(path.read_text())
            b, g = r["beam10"], r["beam1"]
            lines.append(
                f"| CROHME{'' if arm == 'crohme' else ' + ' + arm} | {Path(r['init_from']).name} "
                f"| {b['exprate']:.2f} | {b['le1']:.2f} | {b['le2']:.2f} | {b['wer']:.2f} "
                f"| {g['exprate']:.2f} | {g['perplexity']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, rows in (("ablate", VARIANTS), ("mix", ARMS)):
        p = sub.add_parser(name, help=f"run {name} rows (all by default: {', '.join(rows)})")
        p.add_argument("rows", nargs="*", help=f"default: all of {', '.join(rows)}")
        p.add_argument("--printed", required=name == "ablate", help="printed renders' .tsv")
        p.add_argument("--gan-config", default=GAN_CONFIG)
        p.add_argument("--gan-minutes", type=float, default=120.0, help="each GAN's budget")
        p.add_argument("--gan-set", action="append", default=[], help="GAN overrides, K=V")
        p.add_argument("--count", type=int, default=3000, help="images each GAN generates")
        p.add_argument("--recognizer", default=RECOGNIZER, help="recognizer config")
        p.add_argument("--minutes", type=float, default=60.0, help="recognizer's budget")
        p.add_argument(
            "--rate",
            type=float,
            default=5.0,
            help="its samples/s, to plan the cosine (5: "
            "comer-small on one core of the 2-core EPYC)",
        )
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--limit", type=int, default=0, help="score only the first N (smoke)")
        p.add_argument("--set", action="append", default=[], help="recognizer overrides, K=V")
        p.add_argument("--dir", type=Path, default=ROOT / "runs" / "gan-eval")
        if name == "mix":
            p.add_argument("--synth", help="the glyph-composition arm's .pkl (hmer synth)")
            p.add_argument("--init-from", default=SHIPPED, help="'' trains from scratch")
            p.add_argument("--lr", type=float, default=2e-4)
    p = sub.add_parser("table", help="the markdown tables of finished rows")
    p.add_argument("--dir", type=Path, default=ROOT / "runs" / "gan-eval")
    args = ap.parse_args(argv)
    known = {"ablate": VARIANTS, "mix": ARMS}.get(args.cmd, ())
    if unknown := sorted(set(getattr(args, "rows", [])) - set(known)):
        ap.error(f"unknown rows {unknown}; known: {', '.join(known)}")
    if args.cmd == "ablate":
        ablate(args)
    elif args.cmd == "mix":
        mix(args)
    print(table(args.dir), end="")


if __name__ == "__main__":
    main()
