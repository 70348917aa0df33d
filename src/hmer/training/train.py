"""Training loop for the image and stroke models, read top to bottom.

One process trains on its own, on the CPU or a GPU (``train.device``); under ``torchrun`` each
process takes its share of every epoch's batches and gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPUs).
Checkpoints are written atomically every few minutes and at each epoch end; ``resume`` continues
from the exact batch where the last checkpoint was taken, with optimizer, scheduler and RNG states
(bit for bit on a CPU; GPU kernels and the GPU's dropout RNG are not reproduced).

The optimizer is AdamW or SGD with momentum (``train.optimizer``); the learning rate warms up
linearly, then follows a cosine decay or, with ``train.scheduler = "plateau"``, is cut whenever
validation ExpRate stops improving. Every epoch ends with validation (loss, greedy ExpRate, WER,
CER), the selection of ``best.pt`` and optional early stopping (``train.patience``); a run can
also stop at a training-time budget (``train.max_minutes``), validating where it stops.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from hmer.data.augment import InkAugment
from hmer.data.batching import BucketSpec, EpochBatches
from hmer.data.dataset import Sample, default_data_dir, load_cached, read_image_captions
from hmer.data.files import atomic_open
from hmer.data.strokes import StrokeBatches
from hmer.data.vocab import Vocab
from hmer.evaluation.plots import training_curves
from hmer.models import create_model
from hmer.models.base import model_device
from hmer.training.config import (  # noqa: F401  (load_config, apply_overrides: public here too)
    Config,
    TrainConfig,
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


def unseen_formulas(samples: list[Sample], size: int, by: str = "random") -> set[tuple[str, ...]]:
    """The formulas of the validation hold-out :func:`split_holdout` makes that no training
    expression has: what synthetic training data must not draw, or validation on unseen formulas
    stops measuring them."""
    train, val = split_holdout(samples, size, by=by)
    return {tuple(s.tokens) for s in val} - {tuple(s.tokens) for s in train}


class SetupError(ValueError):
    """A run that cannot start: data that cannot be read, inputs its model does not read, or a
    checkpoint that does not match its config. The message says which."""


def load_samples(name: str) -> list[Sample]:
    """A CROHME split by name ("train", "2014"), a pickled Split / list of Samples by path, or a
    ``.tsv`` of ``ID<TAB>LaTeX`` lines naming images beside it (a user's own data); what cannot
    be read is a :class:`SetupError`."""
    try:
        if name.endswith(".tsv"):
            return read_image_captions(name).samples
        if name.endswith(".pkl"):
            with open(name, "rb") as fh:
                obj = pickle.load(fh)
            return list(obj.samples if hasattr(obj, "samples") else obj)
        return load_cached(name).samples
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise SetupError(f"data {name}: {exc}") from exc


LOG_HEADER = ["step", "epoch", "loss", "lr", "samples_per_s", "cpu_hours"]
EVAL_HEADER = ["epoch", "step", "cpu_hours", "split", "exprate", "le1", "le2", "loss", "wer", "cer"]
OLD_EVAL_WIDTHS = (7,)  # eval.csv rows of runs from before loss, WER and CER were logged


def trim_csv(
    path: Path, header: list[str], key: str, last: int, old_widths: tuple[int, ...] = ()
) -> None:
    """Rewrite a log with ``header`` and only its rows up to ``last`` in column ``key``.

    Rows written after the checkpoint a run restarts from are dropped, and so is anything a kill
    can leave: a missing or repeated header, a half-written last line, rows of the wrong width.
    Rows of an older layout whose columns are the first ``old_widths`` of ``header`` are kept,
    their new columns empty. The file is replaced atomically, so a kill during the rewrite loses
    nothing.
    """
    rows = []
    if path.exists():
        with open(path, newline="", errors="replace") as fh:
            for row in csv.reader(fh):
                if len(row) in old_widths:
                    row = row + [""] * (len(header) - len(row))
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


Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def make_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or SGD with momentum (L2 weight decay), as ``tc`` says."""
    if tc.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=tc.lr,
            momentum=tc.momentum,
            nesterov=tc.nesterov,
            weight_decay=tc.weight_decay,
        )
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)


def make_plateau(optimizer: torch.optim.Optimizer, tc: TrainConfig) -> Plateau | None:
    """The plateau schedule on validation ExpRate (higher is better), or None for cosine."""
    if tc.scheduler != "plateau":
        return None
    return Plateau(
        optimizer,
        mode="max",
        factor=tc.plateau_factor,
        patience=tc.plateau_patience,
        min_lr=tc.min_lr,
    )


def learning_rate(step: int, total: int, tc: TrainConfig, plateau: Plateau | None) -> float:
    """The rate of optimizer step ``step``: :func:`lr_at` (cosine), or the plateau schedule's
    current rate, scaled down linearly during the warm-up."""
    if plateau is None:
        return lr_at(step, total, tc.lr, tc.warmup_steps)
    held = plateau.get_last_lr()[0]
    return held * min(1.0, (step + 1) / max(1, tc.warmup_steps))


def step_plateau(plateau: Plateau, optimizer: torch.optim.Optimizer, exprate: float) -> None:
    """Feed one validation ExpRate to the plateau schedule; a cut applies to its own rate, not
    to the warm-up's (which :func:`train_step` writes into the optimizer every step)."""
    for group, lr in zip(optimizer.param_groups, plateau.get_last_lr(), strict=True):
        group["lr"] = lr
    plateau.step(exprate)


def bf16_fast() -> bool:
    """Whether this CPU has native bf16 (AVX-512 BF16 or AMX); without it bf16 is emulated.

    Measured on an AVX2-only EPYC: a DenseNet + Transformer training step took 18 s in bf16
    autocast against 1.7 s in fp32, so bf16 must follow the hardware, not the config alone.
    """
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def use_bf16(setting: bool | str, device: torch.device | None = None) -> bool:
    """Resolve a config's ``bf16`` (true, false or "auto") for ``device`` (default: the CPU)."""
    if setting == "auto":
        if device is not None and device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return bf16_fast()
    if not isinstance(setting, bool):
        raise ValueError(f'train.bf16 must be true, false or "auto", not {setting!r}')
    return setting


def training_device(setting: str, distributed: bool) -> torch.device:
    """The device ``train.device`` names; under torchrun a ``cuda`` run takes the GPU of its
    ``LOCAL_RANK``. A :class:`SetupError` where torch sees no such GPU."""
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SetupError(
            f"train.device = {setting!r}, but this torch ({torch.__version__}) sees no CUDA "
            "device; train with --device cpu"
        )
    if setting == "cuda":
        setting = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) if distributed else 0}"
    device = torch.device(setting)
    if device.index >= torch.cuda.device_count():
        raise SetupError(f"train.device = {setting!r}: torch sees {torch.cuda.device_count()} GPUs")
    torch.cuda.set_device(device)
    return device


def autocast(model: torch.nn.Module, bf16: bool) -> torch.autocast:
    """bf16 autocast (when ``bf16``) on the device that holds ``model``."""
    return torch.autocast(model_device(model).type, dtype=torch.bfloat16, enabled=bf16)


def batches_for(model) -> type:
    """The batch dataset a model reads: point sequences for stroke models, else rendered images."""
    return StrokeBatches if model.input_kind == "strokes" else EpochBatches


def as_input(x: torch.Tensor) -> torch.Tensor:
    """Image batches go channels-last (faster convolutions here); point sequences stay as is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def model_inputs(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's inputs (:func:`as_input`) and masks on ``device``."""
    inputs = as_input(batch["inputs"].to(device, non_blocking=True))
    return inputs, batch["masks"].to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model,
    samples: list[Sample],
    vocab: Vocab,
    spec: BucketSpec,
    bf16: bool,
    max_len: int = 0,
) -> tuple[dict, list]:
    """Greedy validation through :func:`hmer.evaluation.evaluate.evaluate_batched` (the path
    ``hmer evaluate`` takes, in batches of the training buckets), writing at most ``max_len``
    tokens (0: 8 + twice the longest truth); returns :func:`~hmer.evaluation.metrics.score`'s
    metrics and (id, prediction) pairs."""
    from hmer.evaluation.evaluate import evaluate_batched
    from hmer.recognize import Recognizer

    # An unconverged model may never write the end token: the cap bounds its time.
    max_len = max_len or 8 + 2 * max(len(s.tokens) for s in samples)
    with autocast(model, bf16):
        result = evaluate_batched(Recognizer(model, vocab), samples, spec, max_len=max_len)
    model.train()
    return result.metrics, [(i, " ".join(p)) for i, p in result.predictions.items()]


@torch.no_grad()
def teacher_forced_losses(
    model,
    samples: list[Sample],
    vocab: Vocab,
    spec: BucketSpec,
    label_smoothing: float,
    bf16: bool,
    seed: int = 0,
) -> list[tuple[float, int, int]]:
    """(mean loss, expressions, target tokens) of each batch of ``samples``, teacher forced,
    without augmentation or dropout (the model is left in training mode)."""
    model.eval()
    batches = batches_for(model)(samples, vocab, spec, 0, seed, augment=False, shuffle=False)
    device = model_device(model)
    out = []
    for k in range(len(batches)):
        batch = batches[k]
        inputs, masks = model_inputs(batch, device)
        with autocast(model, bf16):
            loss = model(inputs, masks, batch["tokens"], label_smoothing)
        n_tokens = sum(len(t) + 1 for t in batch["tokens"])  # + the end token
        out.append((float(loss), len(batch["ids"]), n_tokens))
    model.train()
    return out


def validation_loss(
    model, samples: list[Sample], vocab: Vocab, spec: BucketSpec, tc: TrainConfig, bf16: bool
) -> float:
    """The training loss (``tc.label_smoothing`` included, so that it compares with log.csv's)
    on ``samples``, batch means weighted by batch size."""
    losses = teacher_forced_losses(model, samples, vocab, spec, tc.label_smoothing, bf16, tc.seed)
    return sum(loss * n for loss, n, _ in losses) / len(samples)


def perplexity(model, samples: list[Sample], vocab: Vocab, spec: BucketSpec) -> float:
    """exp of the mean negative log-likelihood per target token (end token included, no label
    smoothing) of a seq2seq model reading ``samples`` teacher forced; bidirectional models
    average both directions. CTC models have no per-token likelihood: ``TypeError``."""
    if model.kind != "seq2seq":
        raise TypeError(f"perplexity needs a seq2seq model, not a {model.kind} one")
    losses = teacher_forced_losses(model, samples, vocab, spec, 0.0, bf16=False)
    return math.exp(sum(loss * t for loss, _, t in losses) / sum(t for *_, t in losses))


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


def keep_epoch(run_dir: Path, last: Path, epoch: int, keep: int) -> None:
    """Copy the end-of-epoch checkpoint ``last`` to ``epoch-{epoch}.pt`` and delete the copies
    older than the last ``keep`` epochs (``keep`` 0: keep none)."""
    if keep <= 0:
        return
    with atomic_open(run_dir / f"epoch-{epoch}.pt") as dst, open(last, "rb") as src:
        shutil.copyfileobj(src, dst)
    for old in run_dir.glob("epoch-*.pt"):
        number = old.stem.removeprefix("epoch-")
        if number.isdigit() and int(number) <= epoch - keep:
            old.unlink()


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


LOG_EVERY = 20  # steps between log.csv rows


@dataclass
class TrainingData:
    """The samples a run trains on, selects by (val) and reports on (test), and its batching."""

    vocab: Vocab
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    spec: BucketSpec


def setup_data(cfg: Config, samples: dict[str, list[Sample]] | None = None) -> TrainingData:
    """The vocabulary and splits ``cfg`` names, or the given ``samples`` splits (image samples,
    from a user's ``.tsv``, train image models only)."""
    dc = cfg.data
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
    if not train_set:
        raise SetupError(
            f"no training samples: data.val_size = {dc.val_size} holds out all of {dc.train} "
            "for validation (lower it)"
            if samples is None
            else "no training samples"
        )
    spec = BucketSpec(pixels_per_batch=dc.pixels_per_batch)
    return TrainingData(vocab, train_set, val_set, test_set, spec)


def check_inputs(data: TrainingData, model: torch.nn.Module) -> None:
    """Refuse bitmaps for a model that reads pen strokes, before any time is spent."""
    if model.input_kind != "strokes":
        return
    for split in (data.train, data.val, data.test):
        bitmap = next((s for s in split if s.image is not None), None)
        if bitmap is not None:
            raise SetupError(
                f"sample {bitmap.id} is an image, and a {type(model).__name__} model reads pen "
                "strokes: train an image family on image data"
            )


def unknown_tokens(data: TrainingData) -> dict[str, int]:
    """Caption tokens of the training split that the vocabulary lacks (trained as ``<unk>``)."""
    counts: dict[str, int] = {}
    for s in data.train:
        for t in s.tokens:
            if t not in data.vocab:
                counts[t] = counts.get(t, 0) + 1
    return counts


def setup_model(
    cfg: Config,
    vocab_size: int,
    init_from: str | None,
    init_partial: bool,
    main: bool,
    device: torch.device | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """The seeded model (optionally from released weights) on ``device`` (default: the CPU),
    its optimizer and trained parameters."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    mc = dict(cfg.model)  # a copy: the config keeps its name for the checkpoints
    name = mc.pop("name")
    model = create_model(name, vocab_size, **mc).to(memory_format=torch.channels_last)
    if init_from:
        n = init_weights(model, init_from, partial=init_partial)
        if main:
            print(f"initialized {n} of {len(model.state_dict())} tensors from {init_from}")
    model.to(device or "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    return model, make_optimizer(params, tc), params


def fresh_state() -> dict:
    """The run state of a new run (checkpoints hold it as plain data)."""
    return {"epoch": 0, "batch": 0, "step": 0, "best": -1.0, "seconds": 0.0, "stale": 0}


def restore(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plateau: Plateau | None = None,
    tc: TrainConfig | None = None,
) -> tuple[dict, torch.Tensor]:
    """Load a checkpoint's weights, optimizer and plateau-schedule states; returns its run state
    and the torch RNG state to set once the data loader has drawn its seed (see
    :func:`epoch_loader`). Given ``tc``, a run resumes only with the optimizer and schedule it
    started with (the symbol classifier's loop has no choice of them)."""
    from hmer.weights import load_checkpoint

    ckpt = load_checkpoint(path)  # tensors and plain data only: never runs code
    was = ckpt["config"].get("train", {})
    for key in ("optimizer", "scheduler") if tc is not None else ():
        before, now = was.get(key, getattr(TrainConfig, key)), getattr(tc, key)  # old: defaults
        if before != now:
            raise SetupError(
                f"{path} was trained with train.{key} = {before!r}, the config says {now!r}: "
                "resume with the setting the run started with, or start a new run"
            )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if plateau is not None:
        plateau.load_state_dict(ckpt["scheduler"])
    return ckpt["state"], ckpt["torch_rng"]


def checkpoint_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    plateau: Plateau | None,
    state: dict,
    cfg: Config,
    vocab: Vocab,
) -> dict:
    """What a checkpoint holds, as tensors and plain data (``torch.load(weights_only=True)``)."""
    out = {
        "model": model.state_dict(),
        "optimizer": plain(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "state": plain(state),
        "config": cfg.to_dict(),
        "vocab": vocab.to_json(),
    }
    if plateau is not None:
        out["scheduler"] = plain(plateau.state_dict())
    return out


def epoch_loader(
    data: torch.utils.data.Dataset,
    start: int,
    num_workers: int,
    rng: torch.Tensor | None,
    pin_memory: bool = False,
) -> tuple[Iterator[dict], int]:
    """An iterator over batches ``start``... of one epoch's ``data``, and how many there are.

    ``rng`` (a resumed run's torch RNG state, else None) is set where the checkpoint took it;
    ``pin_memory`` speeds copies to a GPU.
    """
    order = list(range(start, len(data)))
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=None,
        sampler=order,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
    )
    # Creating the iterator draws a seed from the torch RNG: a checkpoint from inside an epoch
    # holds the RNG after that draw, one from an epoch's end holds it before.
    if rng is not None and start == 0:
        torch.set_rng_state(rng)
    batches = iter(loader)
    if rng is not None and start > 0:
        torch.set_rng_state(rng)
    return batches, len(order)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: dict,
    lr: float,
    tc: TrainConfig,
    bf16: bool,
) -> float:
    """One optimizer step on ``batch`` at learning rate ``lr``; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, masks = model_inputs(batch, model_device(model))
    with autocast(model, bf16):
        loss = model(inputs, masks, batch["tokens"], tc.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, tc.clip_grad)
    optimizer.step()
    return loss.item()


class Meter:
    """Samples seen since ``t0`` and the mean loss since the last log row."""

    def __init__(self) -> None:
        self.start(time.time())
        self.loss_sum, self.loss_n = 0.0, 0

    def start(self, now: float) -> None:
        """Count samples and seconds from ``now`` on."""
        self.t0, self.seen = now, 0

    def add(self, n: int, loss: float) -> None:
        self.seen += n
        self.loss_sum += loss
        self.loss_n += 1

    def take_loss(self) -> float:
        """The mean loss since the last call."""
        mean = self.loss_sum / self.loss_n
        self.loss_sum, self.loss_n = 0.0, 0
        return mean


class RunLog:
    """Rank 0's record of a run: ``log.csv`` (training), ``eval.csv`` and TensorBoard scalars.

    The CSV logs are first cut back to ``state`` (a resumed run's checkpoint, or nothing), so
    they restart where the run does; :meth:`close` releases the files.
    """

    def __init__(self, run_dir: Path, state: dict):
        # Rows past the checkpoint (or all, for a fresh start) go, as does whatever a kill left
        # half-written.
        trim_csv(run_dir / "log.csv", LOG_HEADER, "step", state["step"])
        trim_csv(run_dir / "eval.csv", EVAL_HEADER, "epoch", state["epoch"], OLD_EVAL_WIDTHS)
        # Opened after trim_csv wrote its header (and flushed it): a kill at any step leaves a
        # log that starts with its header.
        self.file = open(run_dir / "log.csv", "a", newline="")  # noqa: SIM115 (closed by close)
        self.rows = csv.writer(self.file)
        self.eval_path = run_dir / "eval.csv"
        self.tb = tensorboard_writer(run_dir / "tb")

    def training(
        self, state: dict, epoch: int, lr: float, rate: float, cpu_h: float, loss: float
    ) -> None:
        """A log.csv row (flushed) and the training scalars."""
        row = [state["step"], epoch, f"{loss:.4f}", f"{lr:.2e}", f"{rate:.1f}", f"{cpu_h:.3f}"]
        self.rows.writerow(row)
        self.file.flush()
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, state["step"])
            self.tb.add_scalar("train/lr", lr, state["step"])
            self.tb.add_scalar("train/samples_per_s", rate, state["step"])

    def evaluation(self, state: dict, cpu_h: float, split: str, metrics: dict) -> None:
        """An eval.csv row, a printed line and the split's scalars (``metrics``: the rates of
        :func:`~hmer.evaluation.metrics.score` and the split's ``loss``)."""
        keys = EVAL_HEADER[4:]  # exprate ... cer
        cells = [f"{metrics[k]:.4f}" if k == "loss" else f"{metrics[k]:.2f}" for k in keys]
        with open(self.eval_path, "a") as fh:
            fh.write(f"{state['epoch']},{state['step']},{cpu_h:.3f},{split},{','.join(cells)}\n")
        shown = {k: round(metrics[k], 4 if k == "loss" else 2) for k in keys}
        print(f"epoch {state['epoch']} {split}: {shown}", flush=True)
        if self.tb is not None:
            for key in keys:
                self.tb.add_scalar(f"{split}/{key}", metrics[key], state["step"])
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def validate(
    model: torch.nn.Module,
    data: TrainingData,
    state: dict,
    tc: TrainConfig,
    bf16: bool,
    cpu_h: float,
    log: RunLog,
    run_dir: Path,
    checkpoint: Callable[[Path], None],
) -> float | None:
    """Rank 0 after an epoch: validate (and test every ``tc.test_every`` epochs) and keep the
    best validation (:func:`improves`) as ``best.pt``, counting evaluations without gain for early
    stopping; returns the validation ExpRate (None without a validation split)."""
    splits = [("val", data.val)]
    if data.test and tc.test_every and state["epoch"] % tc.test_every == 0:
        splits.append(("test", data.test))
    val_rate = None
    for split_name, split in splits:
        if not split:
            continue
        metrics, rows = evaluate(model, split, data.vocab, data.spec, bf16, tc.eval_max_len)
        metrics["loss"] = validation_loss(model, split, data.vocab, data.spec, tc, bf16)
        log.evaluation(state, cpu_h, split_name, metrics)
        (run_dir / f"pred-{split_name}.tsv").write_text("".join(f"{i}\t{p}\n" for i, p in rows))
        if split_name == "val":
            val_rate = metrics["exprate"]
            if improves(metrics, state):
                state["best"], state["best_wer"] = metrics["exprate"], metrics["wer"]
                state["stale"] = 0
                checkpoint(run_dir / "best.pt")
            else:
                state["stale"] = state.get("stale", 0) + 1  # older checkpoints lack "stale"
    return val_rate


def improves(metrics: dict, state: dict) -> bool:
    """Whether a validation beats the run's best: a higher ExpRate, or the same with a lower WER
    (which still ranks models that read no expression whole, early in training)."""
    if metrics["exprate"] != state["best"]:
        return metrics["exprate"] > state["best"]
    return metrics["wer"] < state.get("best_wer", -math.inf)  # older checkpoints: as before


def from_rank0(value: float | None, distributed: bool) -> float | None:
    """Rank 0's ``value`` (None: no value) on every rank."""
    if not distributed:
        return value
    shared = torch.tensor([math.nan if value is None else value], dtype=torch.float64)
    dist.broadcast(shared, 0)
    return None if math.isnan(shared.item()) else shared.item()


def early_stop(state: dict, patience: int, main: bool, distributed: bool) -> bool:
    """Whether rank 0 saw ``patience`` validations without gain; every rank gets its answer."""
    stop = torch.tensor([int(main and patience > 0 and state.get("stale", 0) >= patience)])
    if distributed:
        dist.broadcast(stop, 0)
    if stop.item() and main:
        print(f"early stop: no validation gain in {patience} evaluations", flush=True)
    return bool(stop.item())


def train(
    config: Config | dict,
    run_dir: str | Path,
    resume: bool = False,
    init_from: str | None = None,
    init_partial: bool = False,
    samples: dict[str, list[Sample]] | None = None,
) -> dict:
    """Train a model as ``config`` (checked by :class:`Config`) says, writing checkpoints and logs
    to ``run_dir``; returns the final run state.

    ``samples`` may give the splits directly ({"train", "val", "test"}), as the tests do; otherwise
    the CROHME splits are read from the cache (prepared on first use).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_dict(config)
    tc, dc = cfg.train, cfg.data

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = training_device(tc.device, distributed)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log: RunLog | None = None
    try:  # the logs and the process group are released however the run ends
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
        main = rank == 0

        # ---- data, model and optimizer ---------------------------------------------------------
        data = setup_data(cfg, samples)
        vocab = data.vocab
        model, optimizer, params = setup_model(
            cfg, len(vocab), init_from, init_partial, main, device
        )
        check_inputs(data, model)
        missing = unknown_tokens(data)
        if missing and main:
            shown = " ".join(sorted(missing, key=lambda t: -missing[t])[:10])
            print(f"{sum(missing.values())} training tokens are not in the vocabulary: {shown}")
        plateau = make_plateau(optimizer, tc)
        bf16 = use_bf16(tc.bf16, device)
        make_batches = batches_for(model)
        ink_aug = InkAugment(swap_p=dc.ink_swap_p, reverse_p=dc.ink_reverse_p, drop_p=dc.ink_drop_p)
        aug_kwargs: dict = {"ink_aug": ink_aug}
        if make_batches is EpochBatches:
            aug_kwargs["photo_p"] = dc.photo_p
            aug_kwargs["foreign_p"] = dc.foreign_p
            aug_kwargs["foreign_line_ratio"] = dc.foreign_line_ratio
        seed = tc.seed
        steps_per_epoch = len(
            make_batches(data.train, vocab, data.spec, 0, seed, rank=rank, world=world)
        )
        total_steps = tc.epochs * steps_per_epoch

        # ---- restore ---------------------------------------------------------------------------
        state, rng_to_restore = fresh_state(), None
        ckpt_path = run_dir / "last.pt"
        if resume and ckpt_path.exists():
            state, rng_to_restore = restore(ckpt_path, model, optimizer, plateau, tc)
            if main:
                print(f"resumed from {ckpt_path}: epoch {state['epoch']} batch {state['batch']}")
        log = RunLog(run_dir, state) if main else None
        ddp = model
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

        def checkpoint(path: Path = ckpt_path) -> None:
            if main:
                save_checkpoint(
                    path, checkpoint_state(model, optimizer, plateau, state, cfg, vocab)
                )

        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

        # ---- loop ------------------------------------------------------------------------------
        last_ckpt = time.time()
        budget_s = 60 * tc.max_minutes or math.inf
        model.train()
        while state["epoch"] < tc.epochs and state["seconds"] < budget_s:
            epoch = state["epoch"]
            epoch_data = make_batches(
                data.train,
                vocab,
                data.spec,
                epoch,
                seed,
                augment=dc.augment,
                rank=rank,
                world=world,
                **aug_kwargs,
            )
            batches, n_batches = epoch_loader(
                epoch_data, state["batch"], tc.num_workers, rng_to_restore, device.type == "cuda"
            )
            rng_to_restore = None
            bar = tqdm(
                batches, total=n_batches, desc=f"epoch {epoch}", disable=not main, mininterval=30
            )
            meter = Meter()
            spent = False
            for batch in bar:
                lr = learning_rate(state["step"], total_steps, tc, plateau)
                loss = train_step(ddp, optimizer, params, batch, lr, tc, bf16)
                state["step"] += 1
                state["batch"] += 1
                meter.add(len(batch["ids"]), loss)
                now = time.time()
                if state["step"] % LOG_EVERY == 0 and log is not None:
                    rate = meter.seen * world / (now - meter.t0)
                    cpu_h = (state["seconds"] + now - meter.t0) * world / 3600
                    loss_mean = meter.take_loss()
                    log.training(state, epoch, lr, rate, cpu_h, loss_mean)
                    bar.set_postfix(loss=f"{loss_mean:.3f}", sps=f"{rate:.1f}")
                if now - last_ckpt > 60 * tc.checkpoint_minutes:
                    state["seconds"] += now - meter.t0
                    meter.start(now)
                    checkpoint()
                    last_ckpt = now
                if state["seconds"] + now - meter.t0 >= budget_s:
                    spent = True  # validated and checkpointed below, mid-epoch
                    break
            state["seconds"] += time.time() - meter.t0
            if spent:
                print(f"training budget of {tc.max_minutes:g} minutes spent", flush=True)
            else:
                state["epoch"] += 1
                state["batch"] = 0

            # ---- evaluation, selection (rank 0) and the plateau schedule (every rank) ---------
            val_rate = None
            last = spent or state["epoch"] >= tc.epochs or state["seconds"] >= budget_s
            if log is not None and (last or state["epoch"] % tc.val_every == 0):  # rank 0
                cpu_h = state["seconds"] * world / 3600
                val_rate = validate(model, data, state, tc, bf16, cpu_h, log, run_dir, checkpoint)
            if plateau is not None:
                val_rate = from_rank0(val_rate, distributed)
                if val_rate is not None:
                    step_plateau(plateau, optimizer, val_rate)
            if log is not None:
                checkpoint()
                if not spent:
                    keep_epoch(run_dir, ckpt_path, state["epoch"], tc.keep_epochs)
                training_curves(run_dir)
                last_ckpt = time.time()
            if early_stop(state, tc.patience, main, distributed):
                break
        if distributed:
            dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        if log is not None:
            log.close()
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    return state
