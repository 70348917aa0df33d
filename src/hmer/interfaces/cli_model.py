"""Sub-commands that use models: recognize, train, evaluate, export, models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

from hmer.evaluation.metrics import NORMALIZATIONS

# Inputs ``hmer recognize`` decodes together by default with greedy decoding (benchmarks/
# throughput.py: faster than one at a time on CPU; beam search was slower in batches).
GREEDY_BATCH = 8


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model sub-commands to the ``hmer`` parser."""
    p = sub.add_parser("recognize", help="recognize images, .inkml files or folders of them")
    p.add_argument("paths", nargs="+", help="image files, .inkml files or directories")
    p.add_argument(
        "--model", help="a .safetensors release (default: the shipped model for the input)"
    )
    p.add_argument(
        "--format",
        choices=["text", "json", "tsv"],
        default="text",
        help="text: LaTeX (several files: PATH: LATEX (CONFIDENCE)); json: n-best, confidences "
        "and timing per line; tsv: ID<TAB>tokens for hmer score (always the token form)",
    )
    p.add_argument(
        "--style",
        choices=["latex", "tokens", "mathml"],
        default="latex",
        help="latex: compact LaTeX to paste, x^{2} (default); tokens: the scorer's token form, "
        "x ^ { 2 }; mathml: presentation MathML",
    )
    p.add_argument(
        "--route",
        choices=["image", "strokes", "fusion"],
        help="who reads .inkml pen input: the image model (rendered), the stroke model, or "
        "both fused (default: the shipped rule, today the image model; with --model, that "
        "model). Images always go to the image model",
    )
    p.add_argument(
        "--stroke-model", help="stroke model for --route strokes/fusion (default: the shipped one)"
    )
    p.add_argument("--beam", type=int, default=10, help="beam size (1 = greedy)")
    max_len_option(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds of decoding allowed per input (per batch with --batch); past it the "
        "input fails with an error line (default 30; 0: no limit)",
    )
    p.add_argument(
        "--batch",
        type=int,
        help="decode N inputs of similar size together, with the answers of one at a time "
        f"(default: {GREEDY_BATCH} for greedy decoding, 1 for beam search, which batches did "
        "not speed up on a CPU)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="worker processes, the CPU threads shared among them"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=cmd_recognize)

    p = sub.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a model from a TOML config (configs/*.toml); any entry can be "
        "overridden with --set SECTION.KEY=VALUE.",
        epilog=TRAIN_OPTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config")
    p.add_argument("--run-dir", help="checkpoints and logs (default: runs/CONFIG_NAME)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init-from", help="start from released weights (fine-tuning)")
    p.add_argument(
        "--init-partial",
        action="store_true",
        help="take only the --init-from tensors whose name and shape match (e.g. a decoder)",
    )
    p.add_argument("--epochs", type=int, help="override the config's epoch count")
    p.add_argument(
        "--device",
        help="cpu (default), cuda or cuda:N: where to train (train.device); a run started on "
        "one resumes on the other",
    )
    p.add_argument(
        "--vocab",
        help="the vocabulary: a JSON token list as hmer data vocab writes it (default: the "
        "config's vocab, else the CROHME dictionary)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config entry, e.g. --set data.train_limit=500 --set train.lr=3e-4; "
        "--set train.patience=5 stops after 5 validations without gain (see below)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a model on a CROHME split")
    p.add_argument("--model", help="a .safetensors release or a training checkpoint (.pt)")
    p.add_argument(
        "--split",
        default="2014",
        help="a CROHME split (2014), a .pkl of samples, or a .tsv of ID<TAB>LaTeX lines naming "
        "images beside it (default 2014)",
    )
    p.add_argument("--beam", type=int, default=10)
    max_len_option(p)
    p.add_argument("--int8", action="store_true", help="dynamic int8 linear layers (faster)")
    p.add_argument(
        "--route",
        choices=["image", "strokes", "fusion"],
        help="read the ink as hmer recognize --route does (--model: the image model, or the "
        "stroke model of --route strokes)",
    )
    p.add_argument("--stroke-model", help="stroke model for --route strokes/fusion")
    p.add_argument("--limit", type=int, help="only the first N expressions")
    p.add_argument("--out", help="write per-expression predictions (ID<TAB>prediction<TAB>truth)")
    p.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="none",
        help="scoring convention, as in hmer score (default: exact tokens)",
    )
    p.add_argument(
        "--perplexity",
        action="store_true",
        help="also the perplexity of the truth, teacher forced (seq2seq models; the measure of "
        "the GAN paper's recognizer-on-generated-data evaluation)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="turn a training checkpoint into a release file, or a model into ONNX",
        description="CHECKPOINT.pt -> release .safetensors; with --onnx, a checkpoint or release "
        "-> a folder of ONNX graphs that --model FOLDER runs on ONNX Runtime",
    )
    p.add_argument(
        "checkpoint",
        nargs="+",
        help="a training checkpoint (.pt), or a release with --onnx; several checkpoints of one "
        "run: their weights are averaged (e.g. the last epochs')",
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors path (or folder)")
    p.add_argument("--onnx", action="store_true", help="export ONNX graphs into the -o folder")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default fp16)")
    p.add_argument(
        "--default-for",
        choices=["image", "strokes", "symbol"],
        help="mark as the shipped default (symbol: a symbol classifier checkpoint)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "explain",
        help="PNG of where each output token was read in the input (attention; for CTC "
        "models the frames that emitted it)",
    )
    p.add_argument("input", help="an image or .inkml file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument(
        "--model", help="a .safetensors release or a checkpoint (default: shipped image model)"
    )
    p.add_argument(
        "--activations",
        action="store_true",
        help="also draw how strongly each stage of the CNN encoder responds across the image "
        "(image models)",
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("curves", help="plot a training run's losses, ExpRate, WER and CER to PNG")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output")
    p.set_defaults(
        func=lambda a: print(
            __import__("hmer.evaluation.plots", fromlist=["x"]).training_curves(a.run_dir, a.output)
        )
    )

    p = sub.add_parser("models", help="list model families and shipped weights")
    p.set_defaults(func=cmd_models)


TRAIN_OPTIONS = """\
training options (config [train] keys; set them with --set train.KEY=VALUE):
  optimizer = "adamw" | "sgd"      AdamW (default) or SGD with momentum (momentum = 0.9,
                                   nesterov = false); weight_decay applies to both
  scheduler = "cosine" | "plateau" cosine: warm-up (warmup_steps), then decay to 1% of lr;
                                   plateau: warm-up, then lr x plateau_factor (0.5) once
                                   validation ExpRate has not improved for more than
                                   plateau_patience (2) epochs, down to min_lr (1e-6)
  patience = N                     early stopping: stop after N validations without gain
                                   (0, the default: never)
  eval_max_len = N                 most tokens a validation decode writes (0: 8 + twice the
                                   longest truth); the model's own limit is model.max_len
  max_minutes = M                  stop after M minutes of training, validating and saving
                                   where it stops (0: no limit); --resume with a larger M
                                   goes on from that batch
  keep_epochs = N                  keep the last N end-of-epoch checkpoints as epoch-E.pt,
                                   to average with hmer export epoch-*.pt (0: none)
  val_every = N                    validate every N epochs (1), and after the last one
  device = "cpu" | "cuda"          where to train (also --device); bf16 = "auto" uses bf16
                                   autocast where that device has it
examples:
  hmer train configs/wap.toml --set train.optimizer=sgd --set train.lr=0.05 \\
      --set train.scheduler=plateau --set train.patience=6
  hmer train my.toml --vocab vocab.json --set data.train=my/train.tsv --set data.test=my/test.tsv
      (ID<TAB>LaTeX lines; each ID names an image beside the TSV, e.g. a.png or a)
"""


def max_len_option(p: argparse.ArgumentParser) -> None:
    """``--max-len``, the output length limit of ``recognize`` and ``evaluate``."""
    p.add_argument(
        "--max-len",
        type=int,
        metavar="N",
        help="the most tokens an attention model writes per input (default 200; CTC output "
        "is bounded by its frames)",
    )


def _err(msg: str) -> None:
    print(f"hmer: error: {msg}", file=sys.stderr)


def cmd_recognize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hmer.recognize import find_inputs

    if args.batch is None:
        args.batch = GREEDY_BATCH if args.beam == 1 else 1
    if min(args.batch, args.jobs, args.beam, 1 if args.max_len is None else args.max_len) < 1:
        _err("--batch, --jobs, --beam and --max-len must be at least 1")
        return 2
    files = find_inputs(args.paths)
    if not files:
        _err("no image or .inkml files found")
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = tqdm(total=len(files), unit="file", file=sys.stderr, disable=not show)
    # Chunks of a few batches, so that each batch gathers inputs of similar size, and enough
    # chunks to keep every worker busy.
    size = min(args.batch * 4, -(-len(files) // (2 * args.jobs))) if args.batch > 1 else 1
    size = max(size, args.batch)
    chunks = [files[k : k + size] for k in range(0, len(files), size)]
    timeout = args.timeout if args.timeout > 0 else None
    work = partial(
        _recognize_chunk,
        model=args.model,
        beam=args.beam,
        batch=args.batch,
        timeout=timeout,
        route=args.route,
        stroke_model=args.stroke_model,
        max_len=args.max_len,
    )
    pool = None
    if args.jobs > 1 and len(chunks) > 1:
        import multiprocessing

        # spawn, not fork: a forked copy of a process that has used torch's threads can hang.
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(min(args.jobs, len(chunks)), _init_worker, (threads,))
        outcomes = pool.imap(work, chunks)
    else:
        outcomes = map(work, chunks)
    failed = 0
    try:
        for chunk in outcomes:
            for path, result in chunk:
                if isinstance(result, str):
                    failed += 1
                    bar.write(f"hmer: error: {result}", file=sys.stderr)
                else:
                    bar.write(_format_result(path, result, args, len(files)), file=sys.stdout)
                    sys.stdout.flush()
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if failed and len(files) > 1:
        _err(f"{failed} of {len(files)} files failed")
    return 1 if failed else 0


def _format_result(path: Path, result, args: argparse.Namespace, n_files: int) -> str:
    if args.format == "tsv":  # the scoring convention: ID<TAB>space-separated tokens
        return f"{path.stem}\t{' '.join(result.tokens)}"
    if args.format == "text":
        latex = result.latex_as(args.style)
        # Several files: each with the model's confidence, to show where it is unsure.
        return latex if n_files == 1 else f"{path}: {latex}  ({round(100 * result.score)}%)"
    out = result.to_dict(args.style)
    out["alternatives"] = [{"latex": a["latex"], "score": a["score"]} for a in out["alternatives"]]
    return json.dumps(out, ensure_ascii=False)


_RECOGNIZERS: dict = {}  # per process: loaded once, reused for every chunk


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _recognizer_for(
    path: Path,
    model: str | None,
    beam: int,
    timeout: float | None = None,
    route: str | None = None,
    stroke_model: str | None = None,
    max_len: int | None = None,
):
    from hmer.recognize import Recognizer, input_kind_of
    from hmer.weights import ink_route, weights_for

    pen = input_kind_of(path) == "strokes"
    if pen and not (route or stroke_model or model) and ink_route() == "fusion":
        route = "fusion"  # the shipped default for pen input (weights/fusion.json)
    if pen and (route or stroke_model):
        from hmer.fusion import ink_recognizer

        route = route or "strokes"  # a stroke model given for pen input reads it
        key = ("ink", route, model, stroke_model)
        if key not in _RECOGNIZERS:
            _RECOGNIZERS[key] = ink_recognizer(route, model, stroke_model, beam)
    else:
        if route not in (None, "image"):
            raise ValueError(f"{path}: --route {route} reads pen input (.inkml), not images")
        key = str(weights_for(input_kind_of(path), model))
        if key not in _RECOGNIZERS:
            _RECOGNIZERS[key] = Recognizer.load(key, beam=beam)
    _RECOGNIZERS[key].timeout_s = timeout
    _RECOGNIZERS[key].max_len = max_len
    return _RECOGNIZERS[key]


def _problem(path: Path, exc: BaseException) -> str:
    """One line naming the file and what is wrong with it."""
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(exc, IsADirectoryError):
        return f"{path}: is a folder"
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror.lower()
    return text if str(path) in text else f"{path}: {text}"


def _recognize_chunk(
    paths: list[Path],
    model: str | None,
    beam: int,
    batch: int,
    timeout: float | None = None,
    route: str | None = None,
    stroke_model: str | None = None,
    max_len: int | None = None,
) -> list:
    """[(path, Result or an error message)] for ``paths``, in order."""
    from hmer.decoding import DecodingTimeout

    errors = (ValueError, OSError, RuntimeError, DecodingTimeout)
    out: dict[int, object] = {}
    pick = partial(
        _recognizer_for,
        model=model,
        beam=beam,
        timeout=timeout,
        route=route,
        stroke_model=stroke_model,
        max_len=max_len,
    )
    if batch == 1:
        for i, path in enumerate(paths):
            try:
                rec = pick(path)
                out[i] = rec.recognize_file(path, beam=beam)
            except errors as exc:
                out[i] = _problem(path, exc)
        return [(p, out[i]) for i, p in enumerate(paths)]
    groups: dict[int, list] = {}  # recognizer -> [(index, path, input)]
    for i, path in enumerate(paths):
        try:
            rec = pick(path)
            groups.setdefault(id(rec), [rec, []])[1].append((i, path, rec.prepare_file(path)))
        except errors as exc:
            out[i] = _problem(path, exc)
    for rec, items in groups.values():
        # Similar sizes pad little; fusion's inputs are inks, decoded one by one (no sizes).
        items.sort(key=lambda item: getattr(item[2], "shape", ())[::-1])
        for k in range(0, len(items), batch):
            part = items[k : k + batch]
            try:
                results = rec.recognize_prepared(
                    [x for _, _, x in part], [str(p) for _, p, _ in part], beam=beam
                )
            except errors as exc:
                results = [_problem(p, exc) for _, p, _ in part]
            for (i, _, _), r in zip(part, results, strict=True):
                out[i] = r
    return [(p, out[i]) for i, p in enumerate(paths)]


def cmd_train(args: argparse.Namespace) -> int:
    from hmer.training.config import (
        Config,
        ConfigError,
        apply_overrides,
        check_model_builds,
        read_config,
    )
    from hmer.training.train import SetupError, train

    try:
        raw = apply_overrides(read_config(args.config), args.set)
        if args.device:
            raw.setdefault("train", {})["device"] = args.device
        if args.vocab:
            raw["vocab"] = args.vocab
        config = Config.from_dict(raw)
        check_model_builds(config)
    except (ConfigError, OSError) as e:
        print(f"hmer train: {e}", file=sys.stderr)
        return 2
    if args.epochs:
        config.train.epochs = args.epochs
    run_dir = args.run_dir or f"runs/{Path(args.config).stem}"
    try:
        state = train(
            config,
            run_dir,
            resume=args.resume,
            init_from=args.init_from,
            init_partial=args.init_partial,
        )
    except SetupError as e:  # unreadable data, or a checkpoint of another setup
        print(f"hmer train: {e}", file=sys.stderr)
        return 1
    print(
        f"done: epoch {state['epoch']}, step {state['step']}, best val ExpRate {state['best']:.2f}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hmer.evaluation.evaluate import evaluate
    from hmer.recognize import Recognizer
    from hmer.training.train import load_samples
    from hmer.weights import WeightsError, load_any

    if args.route and (args.int8 or args.perplexity):
        _err("--int8 and --perplexity apply to one model; leave out --route")
        return 2
    if min(args.beam, 1 if args.max_len is None else args.max_len) < 1:
        _err("--beam and --max-len must be at least 1")
        return 2
    try:
        if args.route:
            from hmer.fusion import ink_recognizer

            rec = ink_recognizer(args.route, args.model, args.stroke_model, args.beam)
            name = rec.name
        else:
            model, vocab, name = load_any(args.model)
    except (WeightsError, ValueError) as exc:
        _err(str(exc))
        return 1
    if args.perplexity and model.kind != "seq2seq":
        _err(f"--perplexity needs a seq2seq model; {name} is {model.kind}")
        return 2
    if not args.route:
        if args.int8:
            from hmer.models.quantize import quantize_int8

            model, name = quantize_int8(model), f"{name}-int8"
        # the same decoding and post-processing as recognize
        rec = Recognizer(model, vocab, name)
    rec.max_len = args.max_len
    try:
        samples = load_samples(args.split)[: args.limit]
        result = evaluate(rec, samples, beam=args.beam, normalize=args.normalize)
    except (ValueError, OSError) as exc:
        _err(f"split {args.split}: {exc}")
        return 1
    metrics = dict(result.metrics)
    if args.perplexity:
        from hmer.data.batching import BucketSpec
        from hmer.training.train import perplexity

        metrics["perplexity"] = perplexity(model, samples, vocab, BucketSpec())
    metrics["model"], metrics["split"], metrics["beam"] = name, args.split, args.beam
    metrics["latency_ms_p50"] = result.latency_ms(50)  # rendering included, as users wait for it
    if args.out:
        Path(args.out).write_text("\n".join(result.rows()) + "\n")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            print(f"{k:>16}  {v:.2f}" if isinstance(v, float) else f"{k:>16}  {v}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hmer.models.symbols import FAMILY as SYMBOL_FAMILY
    from hmer.weights import (
        WeightsError,
        average_checkpoints,
        load_any,
        load_checkpoint,
        load_checkpoint_model,
        save_release,
    )

    if len(args.checkpoint) > 1 and (args.onnx or args.default_for == "symbol"):
        _err("several checkpoints are averaged into a release only (not with --onnx or symbol)")
        return 2
    if args.onnx:
        from hmer.onnx import export_onnx

        try:
            model, vocab, _ = load_any(args.checkpoint[0])
            out = export_onnx(model, vocab, args.output)
        except (WeightsError, TypeError, OSError) as exc:
            _err(str(exc))
            return 1
        size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        print(f"wrote {out}/ ({size:.1f} MB): run it with --model {out}")
        return 0

    first = args.checkpoint[0]
    try:
        several = len(args.checkpoint) > 1
        ckpt = average_checkpoints(args.checkpoint) if several else load_checkpoint(first)
        if ckpt["config"].get("model", {}).get("name") == SYMBOL_FAMILY:
            from hmer.training.symbols import export_release

            default = args.default_for == "symbol"
            path = export_release(first, args.output, default, ckpt)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        if args.default_for == "symbol":
            _err(f"{first}: --default-for symbol needs a symbol classifier checkpoint")
            return 2
        model, vocab, ckpt = load_checkpoint_model(first, ckpt)
    except WeightsError as exc:
        _err(str(exc))
        return 1
    info = {
        "state": ckpt["state"],
        "train": ckpt["config"].get("train"),
        "data": ckpt["config"].get("data"),
    }
    cfg = ckpt["config"]["model"]
    path = save_release(
        model, cfg, vocab, args.output, fp16=not args.fp32, default_for=args.default_for, info=info
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from hmer.models import list_models
    from hmer.weights import shipped_models

    print("families:", ", ".join(list_models()))
    for name, entry in shipped_models().items():
        role = f" (default for {entry['default_for']})" if entry.get("default_for") else ""
        print(f"  {name}: {entry['input_kind']}{role}  sha256 {entry['sha256'][:12]}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from hmer.data.batching import pad_images
    from hmer.data.strokes import pad_points
    from hmer.decoding.explain import activation_maps, explain
    from hmer.evaluation.plots import attention_grid, stack, stroke_attention_images
    from hmer.models.encoders import STRIDE
    from hmer.recognize import Recognizer
    from hmer.weights import WeightsError, load_any

    try:
        model, vocab, name = load_any(args.model)
    except WeightsError as exc:
        _err(str(exc))
        return 1
    rec = Recognizer(model, vocab, name)
    if args.activations and rec.input_kind != "image":
        _err(
            f"--activations: model {name} reads {rec.input_kind}; CNN activations are drawn for "
            "image models"
        )
        return 1
    try:  # the input as hmer recognize makes it: a bitmap, or point features for stroke models
        x = rec.prepare_file(args.input)
    except (ValueError, OSError) as exc:
        _err(_problem(Path(args.input), exc))
        return 1
    strokes = rec.input_kind == "strokes"
    inputs, masks = pad_points([x]) if strokes else pad_images([x])
    with torch.inference_mode():
        ex = explain(model, inputs, masks)
        stages = activation_maps(model, inputs, masks) if args.activations else []
    tokens = [vocab.itos[i] if i < len(vocab) else "<unk>" for i in ex.ids]
    if ex.kind == "attention":
        tokens.append("<eos>")
    if strokes:
        picture, maps = stroke_attention_images(x, ex.maps)
    else:  # the encoder pads to its stride: show the maps over the padded image
        h, w = ex.maps.shape[1:]
        picture = np.zeros((h * STRIDE, w * STRIDE), np.uint8)
        picture[: x.shape[0], : x.shape[1]] = x
        maps = list(ex.maps)
    grids = [attention_grid(picture, maps, tokens)]
    if stages:  # each stage's map labelled with its stride, over the same padded image
        labels = [f"{n} (1/{picture.shape[0] // m.shape[0]})" for n, m in stages]
        grids.append(attention_grid(picture, [m for _, m in stages], labels))
    stack(grids).save(args.output)
    what = "attention per token" if ex.kind == "attention" else "frames emitting each token (CTC)"
    if stages:
        what += f", then the activations of {len(stages)} encoder stages"
    print(f"{' '.join(vocab.decode(ex.ids))}\nwrote {args.output}: {what}")
    return 0
