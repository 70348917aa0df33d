"""Training the symbol classifier, read top to bottom: crops, loop, evaluation, release.

The crops are rendered once into a cache file (``.npz``, no pickles): every training symbol
``variants`` times with the ink and render augmentation of the expression models (random
geometry, line widths 1.5-4 px, anti-aliasing or not), the held-out and 2014 test symbols once,
drawn as at inference. Epoch ``e`` reads variant ``e % variants`` with a small random shift and
zoom on top. Batches are a pure function of (seed, epoch, batch), so ``resume`` continues from
the exact batch of the last checkpoint, like ``hmer train``.

Validation is the symbols of the expression models' 500-expression random hold-out (no writer's
expression is in both); the best validation top-1 is kept as ``best.pt``. The 2014 test symbols
are scored once, on ``best.pt``, at the end: never used for selection.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hmer.data.augment import InkAugment
from hmer.data.batching import RenderAugment
from hmer.data.dataset import default_cache_dir, default_data_dir, find_source, read_inks
from hmer.data.files import atomic_open
from hmer.data.inkml import Ink
from hmer.data.render import RenderStyle
from hmer.data.symbols import cut_symbols, render_symbol
from hmer.data.vocab import Vocab
from hmer.models.symbols import FAMILY, SymbolCNN
from hmer.training.config import SymbolConfig
from hmer.training.train import (
    LOG_HEADER,
    crohme_vocab,
    fresh_state,
    lr_at,
    plain,
    restore,
    save_checkpoint,
    split_holdout,
    trim_csv,
)

CROPS_VERSION = 1
EVAL_HEADER = ["epoch", "step", "cpu_hours", "split", "top1", "top5"]
LOG_EVERY = 50


# -- crops --------------------------------------------------------------------------------------
@dataclass
class SymbolCrops:
    """Rendered symbols of the three splits (uint8, white on black) and their classes."""

    classes: list[str]  # caption tokens; a label is an index into this list
    train: np.ndarray  # (variants, N, S, S)
    train_labels: np.ndarray  # (N,)
    val: np.ndarray  # (M, S, S)
    val_labels: np.ndarray
    test: np.ndarray  # (T, S, S)
    test_labels: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)  # unusable labels -> count

    @property
    def size(self) -> int:
        return int(self.train.shape[-1])

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz`` (arrays and JSON text only: loads without pickle)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        arrays["classes"] = np.array(json.dumps(self.classes))
        arrays["skipped"] = np.array(json.dumps(self.skipped))
        arrays["version"] = np.array(CROPS_VERSION)
        with atomic_open(path) as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> SymbolCrops:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CROPS_VERSION:
                raise ValueError(f"{path}: crop cache of another version; delete it to rebuild")
            values = {f.name: z[f.name] for f in dataclasses.fields(cls)}
        values["classes"] = json.loads(str(values["classes"]))
        values["skipped"] = json.loads(str(values["skipped"]))
        return cls(**values)


def _augmented(
    strokes: list[np.ndarray], size: int, rng: np.random.Generator, ink_aug: InkAugment
) -> np.ndarray:
    """One training render: augmented ink, a random line width and anti-aliasing or not."""
    render_aug = RenderAugment()
    style = RenderStyle(
        line_width=float(rng.uniform(*render_aug.line_width)) * size / 32,
        antialias=bool(rng.random() < render_aug.antialias_p),
    )
    return render_symbol(ink_aug(strokes, rng), size, style)


def build_crops(
    train_inks: Iterable[tuple[str, Ink]],
    test_inks: Iterable[tuple[str, Ink]],
    val_ids: set[str],
    vocab: Vocab,
    size: int = 32,
    variants: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> SymbolCrops:
    """Cut and render the symbols of segmented expressions: training inks whose id is in
    ``val_ids`` give the validation symbols. Labels that are no token of ``vocab`` are skipped
    and counted, as are test symbols of a class no training symbol has."""
    tokens = set(vocab.itos[4:])
    skipped: Counter = Counter()
    train, val = [], []
    for key, ink in train_inks:
        symbols, bad = cut_symbols(ink, tokens)
        skipped.update(bad)
        (val if key in val_ids else train).extend(symbols)
    seen = {s.token for s in train}
    classes = [t for t in vocab.itos if t in seen]  # vocabulary order
    index = {t: i for i, t in enumerate(classes)}
    test = []
    for _, ink in test_inks:
        symbols, bad = cut_symbols(ink, tokens)
        skipped.update(bad)
        test.extend(symbols)
    for split in (val, test):
        for s in split:
            if s.token not in index:
                skipped[f"{s.token} (no training symbol)"] += 1
        split[:] = [s for s in split if s.token in index]

    ink_aug = InkAugment()
    shape = (variants, len(train), size, size)
    train_images = np.zeros(shape, np.uint8)
    for i, s in enumerate(tqdm(train, desc="render train symbols", disable=not progress)):
        for v in range(variants):
            rng = np.random.default_rng([seed, i, v])
            train_images[v, i] = _augmented(s.strokes, size, rng, ink_aug)

    def plain_renders(symbols: list) -> np.ndarray:
        out = np.zeros((len(symbols), size, size), np.uint8)
        for i, s in enumerate(symbols):
            out[i] = render_symbol(s.strokes, size)
        return out

    def labels(symbols: list) -> np.ndarray:
        return np.array([index[s.token] for s in symbols], np.int64)

    return SymbolCrops(
        classes,
        train_images,
        labels(train),
        plain_renders(val),
        labels(val),
        plain_renders(test),
        labels(test),
        dict(skipped),
    )


def crops_path(cfg: SymbolConfig, cache_dir: Path | None = None) -> Path:
    """Where the CROHME crops of ``cfg`` are cached (outside the repository)."""
    name = f"symbols-{cfg.size}px-x{cfg.variants}-val{cfg.val_size}-v{CROPS_VERSION}.npz"
    return (cache_dir or default_cache_dir()) / name


def crohme_crops(cfg: SymbolConfig, path: Path | None = None) -> SymbolCrops:
    """The CROHME training / hold-out / 2014 test crops, from ``path`` or built and cached there
    (a few minutes: every training symbol is rendered ``cfg.variants`` times)."""
    from hmer.data.dataset import load_cached

    path = path or crops_path(cfg)
    if path.exists():
        return SymbolCrops.load(path)
    data_dir = default_data_dir()
    # The expression models' hold-out: the same split of the same cached samples.
    _, held = split_holdout(load_cached("train").samples, cfg.val_size)
    crops = build_crops(
        read_inks(find_source("train", data_dir)[0]),
        read_inks(find_source("2014", data_dir)[0]),
        {s.id for s in held},
        crohme_vocab(),
        cfg.size,
        cfg.variants,
        cfg.seed,
        progress=True,
    )
    crops.save(path)
    return crops


# -- batches --------------------------------------------------------------------------------------
def batch_indices(n: int, batch_size: int, seed: int, epoch: int, k: int) -> np.ndarray:
    """Training examples of batch ``k`` of ``epoch``: a fixed shuffle of the epoch, cut in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size : (k + 1) * batch_size]


def batch_generator(seed: int, epoch: int, k: int) -> torch.Generator:
    """The torch random stream of batch ``k``'s jitter: the same on every run and resume."""
    value = int(np.random.default_rng([seed, epoch, k]).integers(2**62))
    return torch.Generator().manual_seed(value)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 squares (B, S, S) -> the network's float (B, 1, S, S), ink about 1."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)[:, None]
    return x.contiguous(memory_format=torch.channels_last)


def jitter(x: torch.Tensor, gen: torch.Generator, shift: float = 0.08, zoom: float = 0.1):
    """A random shift (a share of the half-side) and zoom of each image, on top of the
    augmented renders: the crops of users' ink are never centred as exactly as renders."""
    b = x.shape[0]
    s = torch.exp((torch.rand(b, generator=gen) * 2 - 1) * math.log(1 + zoom))
    t = (torch.rand(b, 2, generator=gen) * 2 - 1) * shift
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False).contiguous(memory_format=torch.channels_last)


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(model: SymbolCNN, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> dict:
    """Top-1 and top-5 accuracy (percent) of ``model`` on crops, and their number."""
    was = model.training
    model.eval()
    hit1 = hit5 = 0
    for k in range(0, len(images), batch):
        logits = model(to_input(images[k : k + batch]))
        y = torch.from_numpy(labels[k : k + batch])
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 += int((top[:, 0] == y).sum())
        hit5 += int((top == y[:, None]).any(dim=1).sum())
    model.train(was)
    n = max(1, len(images))
    return {"top1": 100.0 * hit1 / n, "top5": 100.0 * hit5 / n, "n": len(images)}


# -- the loop -------------------------------------------------------------------------------------
def model_config(cfg: SymbolConfig) -> dict:
    """The release's ``[model]``-like description: family name, network options, crop size."""
    return {"name": FAMILY, "width": cfg.width, "dropout": cfg.dropout, "size": cfg.size}


def build_network(config: dict, num_classes: int) -> SymbolCNN:
    """The network a release's or checkpoint's model config describes."""
    return SymbolCNN(num_classes, width=int(config["width"]), dropout=float(config["dropout"]))


def _checkpoint(path, model, optimizer, state, cfg: SymbolConfig, classes: list[str]) -> None:
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": plain(optimizer.state_dict()),
            "torch_rng": torch.get_rng_state(),
            "state": plain(state),
            "config": {"model": model_config(cfg), "symbols": dataclasses.asdict(cfg)},
            "vocab": Vocab(classes).to_json(),
        },
    )


def _eval_row(run_dir: Path, state: dict, split: str, metrics: dict) -> None:
    with open(run_dir / "eval.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(
            [
                state["epoch"],
                state["step"],
                f"{state['seconds'] / 3600:.3f}",
                split,
                f"{metrics['top1']:.2f}",
                f"{metrics['top5']:.2f}",
            ]
        )


def train_symbols(
    cfg: SymbolConfig, run_dir: str | Path, crops: SymbolCrops, resume: bool = False
) -> dict:
    """Train the classifier on ``crops`` as ``cfg`` says, checkpointing to ``run_dir``, until
    ``cfg.epochs`` or the time budget; returns the run state with the final scores of
    ``best.pt`` under ``"result"`` (also in ``result.json``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if crops.size != cfg.size:
        raise ValueError(f"crops are {crops.size} px, the config asks for {cfg.size} px")
    torch.manual_seed(cfg.seed)
    model = SymbolCNN(len(crops.classes), cfg.width, cfg.dropout)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = crops.train.shape[1]
    steps_per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch

    state, last = fresh_state(), run_dir / "last.pt"
    if resume and last.exists():
        state, rng = restore(last, model, optimizer)
        torch.set_rng_state(rng)  # dropout continues its stream
        print(f"resumed from {last}: epoch {state['epoch']} batch {state['batch']}", flush=True)
    trim_csv(run_dir / "log.csv", LOG_HEADER, "step", state["step"])
    trim_csv(run_dir / "eval.csv", EVAL_HEADER, "epoch", state["epoch"])
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    def checkpoint(path: Path = last) -> None:
        _checkpoint(path, model, optimizer, state, cfg, crops.classes)

    budget = 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    out_of_time = False
    last_ckpt = time.time()
    model.train()
    with open(run_dir / "log.csv", "a", newline="") as log_file:
        log = csv.writer(log_file)
        while state["epoch"] < cfg.epochs and not out_of_time:
            epoch = state["epoch"]
            variant = crops.train[epoch % crops.train.shape[0]]
            t0, seen, loss_sum, loss_n = time.time(), 0, 0.0, 0
            for k in range(state["batch"], steps_per_epoch):
                idx = batch_indices(n, cfg.batch_size, cfg.seed, epoch, k)
                x = jitter(to_input(variant[idx]), batch_generator(cfg.seed, epoch, k))
                y = torch.from_numpy(crops.train_labels[idx])
                lr = lr_at(state["step"], total, cfg.lr, cfg.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state["step"] += 1
                state["batch"] = k + 1
                seen += len(idx)
                loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
                now = time.time()
                if state["step"] % LOG_EVERY == 0:
                    hours = (state["seconds"] + now - t0) / 3600
                    rate = seen / max(now - t0, 1e-9)
                    row = [state["step"], epoch, f"{loss_sum / loss_n:.4f}", f"{lr:.2e}"]
                    log.writerow([*row, f"{rate:.1f}", f"{hours:.3f}"])
                    log_file.flush()
                    loss_sum, loss_n = 0.0, 0
                if state["seconds"] + now - t0 >= budget:
                    out_of_time = True
                    break
                if now - last_ckpt > 60 * cfg.checkpoint_minutes:
                    state["seconds"] += now - t0
                    t0, seen = now, 0
                    checkpoint()
                    last_ckpt = now
            state["seconds"] += time.time() - t0
            if out_of_time:
                print(f"time budget of {cfg.max_minutes:g} min reached; resumable", flush=True)
                break
            state["epoch"] += 1
            state["batch"] = 0
            metrics = accuracy(model, crops.val, crops.val_labels)
            _eval_row(run_dir, state, "val", metrics)
            print(
                f"epoch {state['epoch']} val top-1 {metrics['top1']:.2f} "
                f"top-5 {metrics['top5']:.2f}",
                flush=True,
            )
            if metrics["top1"] > state["best"]:
                state["best"] = metrics["top1"]
                checkpoint(run_dir / "best.pt")
            checkpoint()
            last_ckpt = time.time()
    checkpoint()
    state["result"] = final_scores(run_dir, crops, state)
    return state


def final_scores(run_dir: Path, crops: SymbolCrops, state: dict) -> dict:
    """Scores of ``best.pt`` (else of ``last.pt``) on the hold-out and the 2014 test symbols,
    written to ``result.json``: the test set is scored here only, after selection."""
    from hmer.weights import load_checkpoint

    path = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    ckpt = load_checkpoint(path)
    model = build_network(ckpt["config"]["model"], len(crops.classes))
    model.load_state_dict(ckpt["model"])
    seconds = ckpt["state"]["seconds"]
    result = {
        "checkpoint": path.name,
        "epoch": ckpt["state"]["epoch"],
        "step": ckpt["state"]["step"],
        "train_minutes": round(seconds / 60, 2),
        "train_symbols": int(crops.train.shape[1]),
        "val": accuracy(model, crops.val, crops.val_labels),
        "test_2014": accuracy(model, crops.test, crops.test_labels),
        "skipped_labels": crops.skipped,
        "run_minutes": round(state["seconds"] / 60, 2),
    }
    with atomic_open(run_dir / "result.json", "w") as fh:
        fh.write(json.dumps(result, indent=2) + "\n")
    return result


def export_release(
    checkpoint: str | Path, out: str | Path, default: bool = False, ckpt: dict | None = None
) -> Path:
    """A symbol training checkpoint as an fp16 release listed in its folder's manifest
    (``default``: as the shipped symbol classifier; ``ckpt``: the checkpoint, already loaded)."""
    from hmer.weights import load_checkpoint, save_release

    ckpt = ckpt if ckpt is not None else load_checkpoint(checkpoint)
    classes = json.loads(ckpt["vocab"])
    model = build_network(ckpt["config"]["model"], len(classes))
    model.load_state_dict(ckpt["model"])
    info = {"state": ckpt["state"], "symbols": ckpt["config"].get("symbols")}
    result = Path(checkpoint).parent / "result.json"
    if result.exists():
        info["result"] = json.loads(result.read_text())
    return save_release(
        model.eval(),
        ckpt["config"]["model"],
        Vocab(classes),
        out,
        fp16=True,
        default_for="symbol" if default else None,
        info=info,
    )
