"""Training the printed-to-handwritten GAN, read top to bottom: domains, batches, losses, loop.

Unpaired translation: each step draws printed images (with their captions) and, separately,
handwritten ones. The generator writes each printed image in the handwritten domain (``fake``)
and, when ``lambda_identity`` > 0, in the printed domain (``ident``). The discriminator learns
hinge losses for both domains through its projection head (real handwritten vs ``fake``, real
printed vs ``ident``); the generator learns to raise its scores, to keep ``ident`` equal to its
input (L1), and to keep every symbol: ``lambda_task`` times the teacher-forced loss of a frozen
recognizer reading ``fake`` as the source caption. Adam (beta1 0, beta2 0.9, as SAGAN) with
lr 2e-4 for D and 5e-5 for G.

Batches and noise are pure functions of (seed, step) and nothing else draws random numbers, so
``resume`` from ``last.pt`` (weights, both optimizers, spectral-norm and batch-norm buffers)
continues exactly as an uninterrupted run, like ``hmer train``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hmer.data.augment import InkAugment
from hmer.data.batching import BucketSpec, RenderAugment, draw_plan, plan_render
from hmer.data.dataset import Sample
from hmer.data.files import save_png
from hmer.models.gan import (
    HANDWRITTEN,
    PRINTED,
    Discriminator,
    Generator,
    d_hinge_loss,
    g_hinge_loss,
    generator_config,
)
from hmer.synthesis.gan import noise, sample_grid, to_canvas, translate
from hmer.training.config import GanConfig
from hmer.training.train import (
    SetupError,
    as_input,
    load_samples,
    plain,
    save_checkpoint,
    trim_csv,
)

LOG_HEADER = [
    "step",
    "d_loss",
    "g_adv",
    "task",
    "identity",
    "wall_s_per_step",
    "cpu_s_per_step",
    "cpu_hours",
]
GRID_ROWS = 8


# -- domains --------------------------------------------------------------------------------------
@dataclass
class Domains:
    """The samples of both domains: printed images with captions, handwritten ink or images."""

    printed: list[Sample]
    handwritten: list[Sample]


def load_domains(cfg: GanConfig) -> Domains:
    """The printed and handwritten samples ``cfg`` names (:class:`SetupError` when unusable)."""
    if not cfg.printed:
        raise SetupError(
            "gan.printed is not set: a captions.tsv of printed renders "
            "(hmer data render-latex CAPTIONS -o DIR writes DIR/captions.tsv)"
        )
    printed = load_samples(cfg.printed)
    if cfg.printed_limit:
        printed = printed[: cfg.printed_limit]
    handwritten = load_samples(cfg.handwritten)
    if cfg.handwritten_limit and cfg.handwritten_limit < len(handwritten):
        keep = np.random.default_rng(0).permutation(len(handwritten))[: cfg.handwritten_limit]
        handwritten = [handwritten[i] for i in sorted(keep)]
    for name, samples in (("printed", printed), ("handwritten", handwritten)):
        if not samples:
            raise SetupError(f"gan.{name}: no samples in {getattr(cfg, name)}")
    return Domains(printed, handwritten)


# Handwriting is rendered as hmer train renders it, but without the random rescale: printed
# images come at one symbol size, and a size the generator cannot copy would only teach the
# discriminator to tell the domains apart by it.
INK_AUG = InkAugment()
RENDER_AUG = RenderAugment(scale=(1.0, 1.0))
SPEC = BucketSpec()


def sample_image(sample: Sample, rng: np.random.Generator | None) -> np.ndarray:
    """A sample as the image models see it (uint8, white on black): its bitmap, or its ink
    rendered (with augmentation when ``rng`` is given)."""
    if sample.image is not None:
        return sample.image
    aug = (INK_AUG, RENDER_AUG) if rng is not None else (None, None)
    return draw_plan(plan_render(sample.traces, rng, SPEC, *aug))


@dataclass
class Batch:
    printed: torch.Tensor  # (B, 1, H, W)
    extents: list[tuple[int, int]]  # each printed image's (height, width) on the canvas
    tokens: list[list[str]]  # their captions
    handwritten: torch.Tensor  # (B, 1, H, W)
    z: torch.Tensor  # (B, z_dim)


def make_batch(domains: Domains, cfg: GanConfig, step: int) -> Batch:
    """Batch ``step`` of a run: the same on every run and resume."""
    rng = np.random.default_rng([cfg.seed, step])
    pi = rng.integers(len(domains.printed), size=cfg.batch_size)
    hi = rng.integers(len(domains.handwritten), size=cfg.batch_size)
    printed, extents, handwritten = [], [], []
    for i in pi:
        canvas, extent = to_canvas(sample_image(domains.printed[i], None), *_shape(cfg))
        printed.append(canvas)
        extents.append(extent)
    for j, i in enumerate(hi):
        image = sample_image(domains.handwritten[i], np.random.default_rng([cfg.seed, step, j]))
        handwritten.append(to_canvas(image, *_shape(cfg))[0])
    first = step * cfg.batch_size  # noise of its own stream (seed + 1): not the batch's draws
    z = torch.cat([noise(cfg.z_dim, cfg.seed + 1, first + j) for j in range(len(pi))])
    return Batch(
        torch.from_numpy(np.stack(printed))[:, None],
        extents,
        [domains.printed[i].tokens for i in pi],
        torch.from_numpy(np.stack(handwritten))[:, None],
        z,
    )


def _shape(cfg: GanConfig) -> tuple[int, int, float]:
    return cfg.height, cfg.width, cfg.scale


# -- the task loss --------------------------------------------------------------------------------
class TaskLoss:
    """The teacher-forced loss of a frozen recognizer reading generated images as their source
    captions: it is low only while every symbol stays legible. The canvas is scaled back to the
    recognizer's input scale (symbols about ``SYMBOL_PX``) and masked outside each image."""

    def __init__(self, path: str, scale: float):
        from hmer.weights import WeightsError, load_any

        try:
            self.model, self.vocab, self.name = load_any(path or None)
        except (WeightsError, OSError, ValueError) as exc:
            raise SetupError(f"gan.task_model: {exc}") from exc
        if self.model.input_kind != "image":
            raise SetupError(
                f"gan.task_model: {self.name} reads {self.model.input_kind}, not images"
            )
        self.model.eval()  # dropout off: the loss is a function of the image alone
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.scale = scale

    def __call__(
        self, images: torch.Tensor, extents: list[tuple[int, int]], tokens: list[list[str]]
    ) -> torch.Tensor:
        f = 1.0 / self.scale
        x = F.interpolate(images, scale_factor=f, mode="bilinear", align_corners=False)
        masks = torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool)
        for j, (h, w) in enumerate(extents):
            masks[j, : math.ceil(h * f), : math.ceil(w * f)] = False
        ids = [self.vocab.encode(t) for t in tokens]
        return self.model(as_input(x), masks, ids, 0.0)


# -- the loop -------------------------------------------------------------------------------------
def generator_kwargs(cfg: GanConfig) -> dict:
    """The :class:`Generator` arguments ``cfg`` sets."""
    return {
        "channels": cfg.channels,
        "z_dim": cfg.z_dim,
        "embed_dim": cfg.embed_dim,
        "self_attention": cfg.self_attention,
        "input_skip": cfg.input_skip,
    }


def build_networks(cfg: GanConfig) -> tuple[Generator, Discriminator]:
    """Freshly initialized networks of ``cfg`` (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    g = Generator(**generator_kwargs(cfg))
    d = Discriminator(cfg.channels, cfg.self_attention)
    return g, d


def _checkpoint(path: Path, g, d, opt_g, opt_d, state: dict, cfg: GanConfig) -> None:
    model = generator_config(**generator_kwargs(cfg))
    save_checkpoint(
        path,
        {
            "model": g.state_dict(),
            "discriminator": d.state_dict(),
            "optimizer": plain(opt_g.state_dict()),
            "optimizer_d": plain(opt_d.state_dict()),
            "state": plain(state),
            "config": {"model": model, "gan": dataclasses.asdict(cfg)},
            "vocab": "[]",  # a generator writes no tokens
        },
    )


def _restore(path: Path, g, d, opt_g, opt_d, cfg: GanConfig) -> dict:
    from hmer.weights import load_checkpoint

    ckpt = load_checkpoint(path)
    was = ckpt["config"].get("gan", {})
    for key in (*generator_kwargs(cfg), "batch_size", "seed"):
        if was.get(key) != getattr(cfg, key):
            raise SetupError(
                f"{path} was trained with gan.{key} = {was.get(key)!r}, the config says "
                f"{getattr(cfg, key)!r}: resume with the run's settings or start a new run"
            )
    g.load_state_dict(ckpt["model"])
    d.load_state_dict(ckpt["discriminator"])
    opt_g.load_state_dict(ckpt["optimizer"])
    opt_d.load_state_dict(ckpt["optimizer_d"])
    return ckpt["state"]


def write_samples(g: Generator, domains: Domains, cfg: GanConfig, path: Path) -> Path:
    """A grid of the first printed images beside what the generator makes of them."""
    rows = []
    for index, sample in enumerate(domains.printed[:GRID_ROWS]):
        image = sample_image(sample, None)
        out = translate(g, image, cfg.scale, noise(cfg.z_dim, cfg.seed, index))
        rows.append((image, out, " ".join(sample.tokens)))
    save_png(sample_grid(rows), path)
    return path


def train_step(
    g: Generator,
    d: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    task: TaskLoss | None,
    batch: Batch,
    cfg: GanConfig,
) -> list[float]:
    """One discriminator and one generator update; returns the D loss, G's adversarial loss,
    the task loss and the identity L1 (0 for the terms switched off)."""
    to_hw = torch.full((cfg.batch_size,), HANDWRITTEN)
    to_pr = torch.full((cfg.batch_size,), PRINTED)
    fake = g(batch.printed, batch.z, to_hw)
    ident = g(batch.printed, batch.z, to_pr) if cfg.lambda_identity > 0 else None

    # The discriminator: real handwriting against fakes (and real printed against
    # the identity outputs, so that its projection head learns both domains).
    d_loss = d_hinge_loss(d(batch.handwritten, to_hw), d(fake.detach(), to_hw))
    if ident is not None:
        d_loss = d_loss + d_hinge_loss(d(batch.printed, to_pr), d(ident.detach(), to_pr))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # The generator, against the updated discriminator (its weights not trained here).
    d.requires_grad_(False)
    adv = g_hinge_loss(d(fake, to_hw))
    loss = adv
    identity = torch.zeros(())
    if ident is not None:
        identity = (ident - batch.printed).abs().mean()
        loss = loss + cfg.lambda_identity * (identity + g_hinge_loss(d(ident, to_pr)))
    task_loss = torch.zeros(())
    if task is not None:
        task_loss = task(fake, batch.extents, batch.tokens)
        loss = loss + cfg.lambda_task * task_loss
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    d.requires_grad_(True)
    return [v.item() for v in (d_loss, adv, task_loss, identity)]


def train_gan(
    cfg: GanConfig, run_dir: str | Path, domains: Domains | None = None, resume: bool = False
) -> dict:
    """Train as ``cfg`` says, checkpointing to ``run_dir/last.pt``, until ``cfg.steps`` or the
    time budget; returns the run state. ``domains``: the samples (default: as ``cfg`` names)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    domains = domains if domains is not None else load_domains(cfg)
    g, d = build_networks(cfg)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=betas)
    task = TaskLoss(cfg.task_model, cfg.scale) if cfg.lambda_task > 0 else None

    state, last = {"step": 0, "seconds": 0.0, "cpu_seconds": 0.0}, run_dir / "last.pt"
    if resume and last.exists():
        state = _restore(last, g, d, opt_g, opt_d, cfg)
        print(f"resumed from {last}: step {state['step']}", flush=True)
    trim_csv(run_dir / "log.csv", LOG_HEADER, "step", state["step"])
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    def checkpoint() -> None:
        _checkpoint(last, g, d, opt_g, opt_d, state, cfg)

    budget = 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    sums = np.zeros(4)
    wall0, cpu0, last_ckpt, logged = time.time(), time.process_time(), time.time(), 0
    g.train()
    d.train()
    with open(run_dir / "log.csv", "a", newline="") as log_file:
        log = csv.writer(log_file)
        while state["step"] < cfg.steps:
            step = state["step"]
            losses = train_step(g, d, opt_g, opt_d, task, make_batch(domains, cfg, step), cfg)
            state["step"] += 1
            sums += losses
            logged += 1
            now, cpu = time.time(), time.process_time()
            if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
                state["seconds"] += now - wall0
                state["cpu_seconds"] += cpu - cpu0
                means = sums / logged
                log.writerow(
                    [
                        state["step"],
                        *(f"{v:.4f}" for v in means),
                        f"{(now - wall0) / logged:.3f}",
                        f"{(cpu - cpu0) / logged:.3f}",
                        f"{state['cpu_seconds'] / 3600:.4f}",
                    ]
                )
                log_file.flush()
                print(
                    f"step {state['step']}: D {means[0]:.3f} G {means[1]:.3f} "
                    f"task {means[2]:.3f} identity {means[3]:.3f} "
                    f"({(cpu - cpu0) / logged:.2f} CPU s/step)",
                    flush=True,
                )
                sums[:], logged, wall0, cpu0 = 0.0, 0, now, cpu
            if state["seconds"] + now - wall0 >= budget:
                print(f"time budget of {cfg.max_minutes:g} min reached; resumable", flush=True)
                break
            if now - last_ckpt >= 60 * cfg.checkpoint_minutes:
                checkpoint()
                last_ckpt = now
    state["seconds"] += time.time() - wall0
    state["cpu_seconds"] += time.process_time() - cpu0
    checkpoint()
    write_samples(g, domains, cfg, run_dir / "samples.png")
    return state
