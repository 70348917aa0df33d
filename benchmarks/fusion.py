"""Fusion of the image and stroke models on pen input: decode once, fit on validation, score.

Three steps, each reading the previous one's file:

    # 1. n-best lists of both models, pooled and rescored by both, cached (the slow step)
    python benchmarks/fusion.py collect --split val --limit 200 --beam 5 -o val-b5.json
    python benchmarks/fusion.py collect --split 2014 --limit 200 --beam 10 -o test-b10.json
    # (or in parts side by side, one core each, then read together by fit and score)
    python benchmarks/fusion.py collect --split 2014 --beam 10 --part 1/2 -o t1.json &
    python benchmarks/fusion.py collect --split 2014 --beam 10 --part 2/2 -o t2.json
    # 2. the stroke weight, pool depth and temperature, chosen on the VALIDATION cache only
    python benchmarks/fusion.py fit val-b5.json -o src/hmer/weights/fusion.json
    # 3. image alone, strokes alone and fusion on a cache, with calibration errors
    python benchmarks/fusion.py score test-b10.json --params src/hmer/weights/fusion.json
    python benchmarks/fusion.py score t1.json t2.json

"val" is the hold-out both models' training kept out (``split_holdout`` with the size and kind
their release metadata record; the command refuses models that held out different ones);
"2014" the CROHME 2014 test ink, never used to choose anything here. Scores are exact tokens.
Caches hold the whole pool, with each hypothesis's place in its search lists, so that the fit
can try every pool depth (``FusionParams.pool_depth``) without decoding again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from hmer.data.dataset import Sample
from hmer.data.files import atomic_open
from hmer.decoding.fusion import FusionParams
from hmer.evaluation.fusion_fit import (
    collect,
    cross_validated_exprate,
    fit_pool_depth,
    fit_strokes_weight,
    fit_temperature,
    load_cases,
    paired,
    route_metrics,
    save_cases,
)
from hmer.fusion import ROLES, FusionRecognizer, load_params
from hmer.training.config import DataConfig
from hmer.weights import ROUTES, load_checkpoint, load_weights, sha256


def holdout_of(path: Path) -> tuple[str, int, str]:
    """(training split, hold-out size, hold-out kind) a model file's training used."""
    if path.suffix == ".pt":
        data = load_checkpoint(path)["config"].get("data", {})
    else:
        data = load_weights(path)[1]["info"].get("data", {})
    d = DataConfig()
    return (
        data.get("train", d.train),
        data.get("val_size", d.val_size),
        data.get("val_split", d.val_split),
    )


def training_split(paths: dict[str, Path]) -> tuple[list[Sample], list[Sample]]:
    """(training, validation) expressions of both models: the hold-out both kept out of
    training (the same for both, or SystemExit)."""
    from hmer.training.train import load_samples, split_holdout

    kept = {role: holdout_of(p) for role, p in paths.items()}
    if len(set(kept.values())) != 1:
        raise SystemExit(f"the models held out different validation sets: {kept}")
    train, size, by = kept["image"]
    return split_holdout(load_samples(train), size, by=by)


def cmd_collect(args: argparse.Namespace) -> int:
    from hmer.data.dataset import load_cached

    torch.set_num_threads(args.threads)
    rec = FusionRecognizer.load(args.image_model, args.stroke_model, FusionParams(), args.beam)
    paths = rec.paths
    train, val = training_split(paths)
    samples = (val if args.split == "val" else load_cached(args.split).samples)[: args.limit]
    part, parts = args.part
    samples = samples[part - 1 :: parts]
    trained = {tuple(s.tokens) for s in train}
    t0 = time.perf_counter()

    def progress(k: int) -> None:
        if k % 10 == 0 or k == len(samples):
            rate = (time.perf_counter() - t0) / k
            print(f"{k}/{len(samples)}  {rate:.2f} s per expression", file=sys.stderr)

    cases = collect(rec, samples, args.beam, progress, trained)
    meta = {
        "split": args.split,
        "expressions": len(cases),
        "beam": args.beam,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "part": f"{part}/{parts}",
        "seen_marked": True,  # each case says whether its formula is a training formula
        "vocab": rec.vocab.to_json(),
        **{role: {"file": paths[role].name, "sha256": sha256(paths[role])} for role in ROLES},
    }
    save_cases(args.output, cases, meta)
    print(f"wrote {args.output}: {len(cases)} expressions, beam {args.beam}")
    return 0


def load_caches(paths: list[str]) -> tuple[dict, list]:
    """(meta, cases) of one cache or of the parts of one (``collect --part``): the same split,
    beam and model files, each part once."""
    meta, cases = load_cases(paths[0])
    parts = {meta.get("part", "1/1")}
    for path in paths[1:]:
        more, extra = load_cases(path)
        same = ("split", "beam", "image", "strokes", "seen_marked")
        if any(more.get(k) != meta.get(k) for k in same) or more.get("part", "1/1") in parts:
            raise SystemExit(f"{path}: not another part of the cache of {paths[0]}")
        parts.add(more.get("part", "1/1"))
        cases += extra
        meta = {**meta, "expressions": meta["expressions"] + more["expressions"]}
        meta["seconds"] = round(meta["seconds"] + more["seconds"], 1)
    if len(paths) > 1:
        meta["part"] = ",".join(sorted(parts))
    return meta, cases


def part_of(text: str) -> tuple[int, int]:
    """``--part K/N``: the K-th of N interleaved shares of the expressions."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be 1 to N")
    return k, n


def _vocab(meta: dict):
    from hmer.data.vocab import Vocab

    return Vocab.from_json(meta["vocab"])


def cmd_fit(args: argparse.Namespace) -> int:
    meta, cases = load_caches(args.cache)
    if meta["split"] != "val":
        raise SystemExit(f"{args.cache[0]} holds split {meta['split']!r}: fit on 'val' only")
    if args.formulas == "unseen" and not meta.get("seen_marked"):
        raise SystemExit(f"{args.cache[0]} does not mark training formulas: --formulas all")
    vocab, beam = _vocab(meta), meta["beam"]
    chosen = [c for c in cases if not c.seen] if args.formulas == "unseen" else cases
    weight, table = fit_strokes_weight(chosen, vocab, beam)
    uncalibrated = FusionParams(weight, 1.0)
    depth, depths = None, {}
    if args.pool_depth:
        if cases[0].cands.place is None:
            raise SystemExit(f"{args.cache[0]} does not record list places: collect it again")
        depth, depths = fit_pool_depth(chosen, vocab, beam, uncalibrated)
    uncalibrated = replace(uncalibrated, pool_depth=depth)
    temperature = fit_temperature(chosen, uncalibrated, vocab, beam)
    params = replace(uncalibrated, temperature=temperature)

    def exprates(subset: list) -> dict:
        return {
            r: round(route_metrics(subset, r, params, vocab, beam)["exprate"], 2) for r in ROUTES
        }

    ece = {
        "temperature_1": route_metrics(chosen, "fusion", uncalibrated, vocab, beam)["ece"],
        "fitted": route_metrics(chosen, "fusion", params, vocab, beam)["ece"],
    }
    params.fitted = {
        "how": "stroke weight: highest fused ExpRate over the grid (middle of ties); "
        "pool depth: the smallest whose fused ExpRate equals the whole pool's; "
        "temperature: least log loss of the answer's confidence against its exactness",
        "split": "val: the random hold-out of the training set both models kept out",
        "formulas": (
            "unseen: only the expressions whose formula is not a training formula (as in a "
            "test set)"
            if args.formulas == "unseen"
            else "all"
        ),
        "expressions": meta["expressions"],
        "fitted_on": len(chosen),
        "beam": beam,
        "exprate_by_strokes_weight": {f"{w:.2f}": round(r, 2) for w, r in table.items()},
        "exprate_by_pool_depth": {str(d): round(r, 2) for d, r in depths.items()},
        "val_exprate_fitted_on": exprates(chosen),
        "val_exprate_all": exprates(cases),
        "val_fusion_exprate_2fold": round(cross_validated_exprate(chosen, vocab, beam), 2),
        "val_ece": ece,
        "image": meta["image"],
        "strokes": meta["strokes"],
        "commands": [
            f"python benchmarks/fusion.py collect --split val --limit {meta['expressions']} "
            f"--beam {beam} --threads {meta['threads']} -o {Path(args.cache[0]).name}",
            f"python benchmarks/fusion.py fit {' '.join(Path(c).name for c in args.cache)} "
            f"--formulas {args.formulas} "
            f"{'' if args.pool_depth else '--whole-pool '}-o {args.output or 'OUT'}",
        ],
    }
    text = params.to_json()
    if args.output:
        with atomic_open(Path(args.output), "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.output}")
    print(text, end="")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    meta, cases = load_caches(args.cache)
    params = load_params(args.params)
    vocab, beam = _vocab(meta), meta["beam"]
    for role in ROLES:
        fitted = params.fitted.get(role, {}).get("sha256")
        if fitted and fitted != meta[role]["sha256"]:
            print(f"warning: the parameters were fitted for another {role} model", file=sys.stderr)
    report = {
        "split": meta["split"],
        "expressions": meta["expressions"],
        "beam": beam,
        "strokes_weight": params.strokes_weight,
        "temperature": round(params.temperature, 4),
        "pool_depth": params.pool_depth,
    }
    for route in ROUTES:
        m = route_metrics(cases, route, params, vocab, beam)
        report[route] = {k: round(m[k], 2) for k in ("exprate", "le1", "le2", "wer", "ece")}
    for single in ("image", "strokes"):
        report[f"fusion_vs_{single}"] = paired(cases, "fusion", single, params, vocab, beam)
    t1 = replace(params, temperature=1.0)
    report["fusion_ece_temperature_1"] = route_metrics(cases, "fusion", t1, vocab, beam)["ece"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            print(f"{k:>26}  {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="decode a split with both models and cache the n-best")
    c.add_argument("--split", default="val", help="'val' (the models' hold-out) or a test split")
    c.add_argument("--limit", type=int, help="only the first N expressions")
    c.add_argument("--beam", type=int, default=10, help="beam width (1: the greedy mode)")
    c.add_argument("--image-model", help="image model file (default: the shipped one)")
    c.add_argument("--stroke-model", help="stroke model file (default: the shipped one)")
    c.add_argument("--threads", type=int, default=1, help="torch threads")
    c.add_argument(
        "--part",
        type=part_of,
        default=(1, 1),
        metavar="K/N",
        help="only every N-th expression from the K-th (parts collected side by side; fit and "
        "score take all the parts' files)",
    )
    c.add_argument("-o", "--output", required=True, help="cache file (JSON)")
    c.set_defaults(func=cmd_collect)
    f = sub.add_parser("fit", help="choose weight and temperature on a validation cache")
    f.add_argument("cache", nargs="+", help="a cache, or the files of its parts")
    f.add_argument("-o", "--output", help="write the parameters here (e.g. weights/fusion.json)")
    f.add_argument(
        "--formulas",
        choices=["unseen", "all"],
        default="unseen",
        help="fit on the validation expressions whose formula no training expression has "
        "(default: what new writing is like) or on all",
    )
    f.add_argument(
        "--whole-pool",
        dest="pool_depth",
        action="store_false",
        help="pool every hypothesis of each search list (default: fit the pool depth)",
    )
    f.set_defaults(func=cmd_fit)
    s = sub.add_parser("score", help="ExpRate and calibration of each route on a cache")
    s.add_argument("cache", nargs="+", help="a cache, or the files of its parts")
    s.add_argument("--params", help="fusion parameters (default: the shipped file)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_score)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
