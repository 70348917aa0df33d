"""Training loop for the image and stroke models, read top to bottom.

One process trains on its own; under ``torchrun`` each process takes its share of every epoch's
batches and gradients are averaged by DistributedDataParallel (gloo on CPU).
Checkpoints are written atomically every few minutes and at each epoch end; ``resume`` continues
from the exact batch where the last checkpoint was taken, with optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from hmer.data.augment import InkAugment
from hmer.data.batching import BucketSpec, EpochBatches
from hmer.data.dataset import Sample, default_data_dir, load_cached
from hmer.data.files import atomic_open
from hmer.data.strokes import StrokeBatches
from hmer.data.vocab import Vocab
from hmer.evaluation.plots import training_curves
from hmer.models import create_model
from hmer.training.config import (  # noqa: F401  (load_config, apply_overrides: public here too)
    Config,
    apply_overrides,
    load_config,
)


def split_holdout(
    samples: list[Sample], size: int, seed: int = 0, by: str = "random"
) -> tuple[list[Sample], list[Sample]]:
    """Deterministically hold about ``size`` samples out of ``samples`` for validation.

    ``by="random"`` picks expressions; ``by="formula"`` picks whole formulas (every writer's copy
    of a held-out formula leaves training), so validation measures formulas never seen, as a
    test set does. CROHME repeats many formulas, which makes random hold-outs optimistic.
    """
    rng = np.random.default_rng(seed)
    if by == "random":
        held = set(rng.permutation(len(samples))[:size].tolist())
    elif by == "formula":
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s.tokens), []).append(i)
        keys = list(groups)
        held = set()
        for k in rng.permutation(len(keys)):
            if len(held) >= size:
                break
            held.update(groups[keys[k]])
    else:
        raise ValueError(f"unknown hold-out kind {by!r} (random or formula)")
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


def load_samples(name: str) -> list[Sample]:
    """A CROHME split by name ("train", "2014") or a pickled Split / list of Samples by path."""
    if name.endswith(".pkl"):
        with open(name, "rb") as fh:
            obj = pickle.load(fh)
        return list(obj.samples if hasattr(obj, "samples") else obj)
    return load_cached(name).samples


LOG_HEADER = ["step", "epoch", "loss", "lr", "samples_per_s", "cpu_hours"]
EVAL_HEADER = ["epoch", "step", "cpu_hours", "split", "exprate", "le1", "le2"]


def trim_csv(path: Path, header: list[str], key: str, last: int) -> None:
    """Rewrite a log with ``header`` and only its rows up to ``last`` in column ``key``.

    Rows written after the checkpoint a run restarts from are dropped, and so is anything a kill
    can leave: a missing or repeated header, a half-written last line, rows of the wrong width.
    The file is replaced atomically, so a kill during the rewrite loses nothing.
    """
    rows = []
    if path.exists():
        with open(path, newline="", errors="replace") as fh:
            for row in csv.reader(fh):
                if len(row) != len(header) or row == header:
                    continue
                try:
                    value = int(row[header.index(key)])
                except ValueError:
                    continue
                if value <= last:
                    rows.append(row)
    with atomic_open(path, "w", durable=True, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def crohme_vocab() -> Vocab:
    return Vocab.from_dictionary(default_data_dir() / "dictionary.txt")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 1% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))


def bf16_fast() -> bool:
    """Whether this CPU has native bf16 (AVX-512 BF16 or AMX); without it bf16 is emulated.

    Measured on an AVX2-only EPYC: a DenseNet + Transformer training step took 18 s in bf16
    autocast against 1.7 s in fp32, so bf16 must follow the hardware, not the config alone.
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def use_bf16(setting: bool | str) -> bool:
    """Resolve a config's ``bf16`` (true, false or "auto") on this machine."""
    if setting == "auto":
        return bf16_fast()
    if not isinstance(setting, bool):
        raise ValueError(f'train.bf16 must be true, false or "auto", not {setting!r}')
    return setting


def batches_for(model) -> type:
    """The batch dataset a model reads: point sequences for stroke models, else rendered images."""
    return StrokeBatches if model.input_kind == "strokes" else EpochBatches


def as_input(x: torch.Tensor) -> torch.Tensor:
    """Image batches go channels-last (faster convolutions here); point sequences stay as is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.no_grad()
def evaluate(
    model, samples: list[Sample], vocab: Vocab, spec: BucketSpec, bf16: bool
) -> tuple[dict, list]:
    """Greedy validation through :func:`hmer.evaluation.evaluate.evaluate_batched` (the path
    ``hmer evaluate`` takes, in batches of the training buckets); returns
    :func:`~hmer.evaluation.metrics.score`'s metrics and (id, prediction) pairs."""
    from hmer.evaluation.evaluate import evaluate_batched
    from hmer.recognize import Recognizer

    max_len = 8 + 2 * max(len(s.tokens) for s in samples)  # an unconverged model never stops
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        result = evaluate_batched(Recognizer(model, vocab), samples, spec, max_len=max_len)
    model.train()
    return result.metrics, [(i, " ".join(p)) for i, p in result.predictions.items()]


def tensorboard_writer(log_dir: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed, else None (CSV logs remain)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


def plain(value):
    """``value`` with numpy scalars and tuples made plain Python data, so that a checkpoint
    loads with ``torch.load(weights_only=True)``; tensors are kept."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` atomically and durably: a kill or power cut leaves the old file or the new
    one, never a torn one."""
    with atomic_open(path, "wb", durable=True) as fh:
        torch.save(state, fh)


def init_weights(model: torch.nn.Module, path: str | Path, partial: bool = False) -> int:
    """Load released weights into ``model``; return how many tensors were set.

    ``partial`` keeps only the tensors whose name and shape match (e.g. a stroke model taking its
    decoder from an image model); the rest keep their fresh initialization.
    """
    from hmer.weights import load_weights

    loaded = load_weights(path)[0]
    if not partial:
        model.load_state_dict(loaded)
        return len(loaded)
    own = model.state_dict()
    keep = {k: v for k, v in loaded.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    return len(keep)


def train(
    config: Config | dict,
    run_dir: str | Path,
    resume: bool = False,
    init_from: str | None = None,
    init_partial: bool = False,
    samples: dict[str, list[Sample]] | None = None,
) -> dict:
    """Train a model as ``config`` (checked by :class:`Config`) says, writing checkpoints and logs
    to ``run_dir``.

    ``samples`` may give the splits directly ({"train", "val", "test"}), as the tests do; otherwise
    the CROHME splits are read from the cache (prepared on first use).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_dict(config)
    tc, dc, mc = cfg.train, cfg.data, dict(cfg.model)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    main = rank == 0

    # ---- data ------------------------------------------------------------------------------
    vocab = Vocab.from_json(cfg.vocab) if cfg.vocab is not None else crohme_vocab()
    if samples is None:
        train_all = load_samples(dc.train)
        train_set, val_set = split_holdout(train_all, dc.val_size, by=dc.val_split)
        if dc.train_limit:  # a subset, for quick runs
            keep = np.random.default_rng(0).permutation(len(train_set))[: dc.train_limit]
            train_set = [train_set[i] for i in sorted(keep)]
        for extra in dc.extra_train:  # e.g. synthetic data; never validated on
            train_set = train_set + load_samples(extra)
        test_set = load_samples(dc.test) if dc.test else []
    else:
        train_set, val_set, test_set = (
            samples["train"],
            samples.get("val", []),
            samples.get("test", []),
        )
    spec = BucketSpec(pixels_per_batch=dc.pixels_per_batch)

    # ---- model and optimizer ---------------------------------------------------------------
    torch.manual_seed(tc.seed)
    name = mc.pop("name")
    model = create_model(name, len(vocab), **mc).to(memory_format=torch.channels_last)
    if init_from:
        n = init_weights(model, init_from, partial=init_partial)
        if main:
            print(f"initialized {n} of {len(model.state_dict())} tensors from {init_from}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    bf16 = use_bf16(tc.bf16)
    make_batches = batches_for(model)
    aug_kwargs: dict = {"ink_aug": InkAugment(swap_p=dc.ink_swap_p, reverse_p=dc.ink_reverse_p)}
    if make_batches is EpochBatches:
        aug_kwargs["photo_p"] = dc.photo_p
    seed = tc.seed
    steps_per_epoch = len(make_batches(train_set, vocab, spec, 0, seed, rank=rank, world=world))
    total_steps = tc.epochs * steps_per_epoch

    state = {"epoch": 0, "batch": 0, "step": 0, "best": -1.0, "seconds": 0.0, "stale": 0}
    ckpt_path = run_dir / "last.pt"
    rng_to_restore = None
    if resume and ckpt_path.exists():
        from hmer.weights import load_checkpoint

        ckpt = load_checkpoint(ckpt_path)  # tensors and plain data only: never runs code
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        rng_to_restore = ckpt["torch_rng"]  # set once the data loader has drawn its seed
        state = ckpt["state"]
        if main:
            print(f"resumed from {ckpt_path}: epoch {state['epoch']} batch {state['batch']}")
    if main:
        # The logs restart where the run does: rows past the checkpoint (or all, for a fresh
        # start) go, as does whatever a kill left half-written.
        trim_csv(run_dir / "log.csv", LOG_HEADER, "step", state["step"])
        trim_csv(run_dir / "eval.csv", EVAL_HEADER, "epoch", state["epoch"])
    ddp = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    def checkpoint(path: Path = ckpt_path) -> None:
        if main:
            save_checkpoint(
                path,
                {
                    "model": model.state_dict(),
                    "optimizer": plain(optimizer.state_dict()),
                    "torch_rng": torch.get_rng_state(),
                    "state": plain(state),
                    "config": cfg.to_dict(),
                    "vocab": vocab.to_json(),
                },
            )

    log_path = run_dir / "log.csv"
    # Opened after trim_csv wrote its header (and flushed it): a kill at any step leaves a log
    # that starts with its header.
    log_file = open(log_path, "a", newline="")  # noqa: SIM115 (kept open for the whole run)
    log = csv.writer(log_file)
    eval_path = run_dir / "eval.csv"
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    tb = tensorboard_writer(run_dir / "tb") if main else None

    # ---- loop ------------------------------------------------------------------------------
    last_ckpt = time.time()
    model.train()
    while state["epoch"] < tc.epochs:
        epoch = state["epoch"]
        data = make_batches(
            train_set,
            vocab,
            spec,
            epoch,
            seed,
            augment=dc.augment,
            rank=rank,
            world=world,
            **aug_kwargs,
        )
        order = list(range(state["batch"], len(data)))
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            sampler=order,
            num_workers=tc.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if tc.num_workers else None,
        )
        # Creating the iterator draws a seed from the torch RNG: a checkpoint from inside an epoch
        # holds the RNG after that draw, one from an epoch's end holds it before.
        if rng_to_restore is not None and state["batch"] == 0:
            torch.set_rng_state(rng_to_restore)
            rng_to_restore = None
        batches = iter(loader)
        if rng_to_restore is not None:
            torch.set_rng_state(rng_to_restore)
            rng_to_restore = None
        bar = tqdm(
            batches, total=len(order), desc=f"epoch {epoch}", disable=not main, mininterval=30
        )
        t0, seen, loss_sum, loss_n = time.time(), 0, 0.0, 0
        for batch in bar:
            lr = lr_at(state["step"], total_steps, tc.lr, tc.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = as_input(batch["inputs"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = ddp(images, batch["masks"], batch["tokens"], tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.clip_grad)
            optimizer.step()

            state["step"] += 1
            state["batch"] += 1
            seen += len(batch["ids"])
            loss_sum += loss.item()
            loss_n += 1
            now = time.time()
            if state["step"] % 20 == 0 and main:
                rate = seen * world / (now - t0)
                cpu_h = (state["seconds"] + now - t0) * world / 3600
                log.writerow(
                    [
                        state["step"],
                        epoch,
                        f"{loss_sum / loss_n:.4f}",
                        f"{lr:.2e}",
                        f"{rate:.1f}",
                        f"{cpu_h:.3f}",
                    ]
                )
                log_file.flush()
                if tb is not None:
                    tb.add_scalar("train/loss", loss_sum / loss_n, state["step"])
                    tb.add_scalar("train/lr", lr, state["step"])
                    tb.add_scalar("train/samples_per_s", rate, state["step"])
                bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}", sps=f"{rate:.1f}")
                loss_sum, loss_n = 0.0, 0
            if now - last_ckpt > 60 * tc.checkpoint_minutes:
                state["seconds"] += now - t0
                seen, t0 = 0, now
                checkpoint()
                last_ckpt = now
        state["seconds"] += time.time() - t0
        state["epoch"] += 1
        state["batch"] = 0

        # ---- evaluation (rank 0) -----------------------------------------------------------
        if main:
            cpu_h = state["seconds"] * world / 3600
            splits = [("val", val_set)]
            if test_set and tc.test_every and state["epoch"] % tc.test_every == 0:
                splits.append(("test", test_set))
            for split_name, split in splits:
                if not split:
                    continue
                metrics, rows = evaluate(model, split, vocab, spec, bf16)
                with open(eval_path, "a") as fh:
                    fh.write(
                        f"{state['epoch']},{state['step']},{cpu_h:.3f},{split_name},"
                        f"{metrics['exprate']:.2f},{metrics['le1']:.2f},{metrics['le2']:.2f}\n"
                    )
                rates = {k: round(metrics[k], 2) for k in ("exprate", "le1", "le2")}
                print(f"epoch {state['epoch']} {split_name}: {rates}", flush=True)
                if tb is not None:
                    for key in ("exprate", "le1", "le2"):
                        tb.add_scalar(f"{split_name}/{key}", metrics[key], state["step"])
                    tb.flush()
                (run_dir / f"pred-{split_name}.tsv").write_text(
                    "".join(f"{i}\t{p}\n" for i, p in rows)
                )
                if split_name == "val":
                    if metrics["exprate"] > state["best"]:
                        state["best"], state["stale"] = metrics["exprate"], 0
                        checkpoint(run_dir / "best.pt")
                    else:
                        state["stale"] = state.get("stale", 0) + 1
            checkpoint()
            training_curves(run_dir)
            last_ckpt = time.time()
        patience = tc.patience
        stop = torch.tensor([int(main and patience > 0 and state.get("stale", 0) >= patience)])
        if distributed:
            dist.broadcast(stop, 0)
        if stop.item():
            if main:
                print(f"early stop: no validation gain in {patience} evaluations", flush=True)
            break
    log_file.close()
    if tb is not None:
        tb.close()
    if distributed:
        dist.barrier()  # no rank tears the group down while another still uses it
        dist.destroy_process_group()
    return state
