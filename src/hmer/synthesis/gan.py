"""Handwriting-like training images from printed formula renders, through a trained GAN
generator (``hmer gan train``; the networks are :mod:`hmer.models.gan`).

The images on both sides are the image models' inputs: white ink on black with symbols at about
``SYMBOL_PX`` (``prepare_image``), the convention of ``read_image_captions``. The generator
works on them scaled by its training ``scale``; its output is scaled back to the size of its
input, so generated images mix with CROHME renders and users' images without another fit.
The result is a ``.tsv`` image dataset (``ID.png`` files and ``captions.tsv``) that
``data.train`` and ``data.extra_train`` take as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hmer.data.files import is_regular_file, save_png
from hmer.models.gan import BLOCKS, GENERATOR, HANDWRITTEN, Generator, build_generator

CAPTIONS = "captions.tsv"


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 image resized to (height, width): Lanczos when shrinking, bilinear otherwise."""
    if image.shape == (height, width):
        return image
    shrink = height < image.shape[0] or width < image.shape[1]
    method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), method))


def to_canvas(
    image: np.ndarray, height: int, width: int, scale: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """A uint8 input-convention image scaled by ``scale`` (less when it would not fit) at the
    top left of a black ``height`` x ``width`` float canvas (ink about 1); returns the canvas
    and the (height, width) the image takes on it."""
    s = min(scale, height / image.shape[0], width / image.shape[1])
    h = min(height, max(1, round(image.shape[0] * s)))
    w = min(width, max(1, round(image.shape[1] * s)))
    canvas = np.zeros((height, width), np.float32)
    canvas[:h, :w] = _resize(image, h, w).astype(np.float32) / 255.0
    return canvas, (h, w)


def _round_up(n: int) -> int:
    step = 2**BLOCKS
    return max(step, int(math.ceil(n / step)) * step)


def noise(z_dim: int, seed: int, index: int) -> torch.Tensor:
    """The (1, z_dim) noise of image ``index`` of a generation seeded ``seed``."""
    value = int(np.random.default_rng([seed, index]).integers(2**62))
    return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(value))


@torch.no_grad()
def translate(generator: Generator, image: np.ndarray, scale: float, z: torch.Tensor) -> np.ndarray:
    """One printed image (uint8, input convention) as the generator writes it by hand: the same
    size, uint8, white on black. The canvas is the image's own scaled size rounded up to the
    generator's stride (the networks are convolutional), so nothing is shrunk to fit."""
    h = max(1, round(image.shape[0] * scale))
    w = max(1, round(image.shape[1] * scale))
    canvas, (ch, cw) = to_canvas(image, _round_up(h), _round_up(w), scale)
    was = generator.training
    generator.eval()
    x = torch.from_numpy(canvas)[None, None]
    out = generator(x, z, torch.tensor([HANDWRITTEN]))[0, 0, :ch, :cw]
    generator.train(was)
    pixels = (out.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return _resize(pixels, *image.shape)


class GeneratorError(RuntimeError):
    """A generator file that is missing or is no GAN generator checkpoint."""


def load_generator(path: str | Path) -> tuple[Generator, dict]:
    """The generator (eval mode) of a ``hmer gan train`` checkpoint and its training config."""
    from hmer.weights import WeightsError, load_checkpoint

    path = Path(path)
    if not is_regular_file(path):
        raise GeneratorError(f"{path}: generator file not found (a hmer gan train checkpoint)")
    try:
        ckpt = load_checkpoint(path)
    except WeightsError as exc:
        raise GeneratorError(str(exc)) from exc
    model = ckpt["config"].get("model", {})
    if model.get("name") != GENERATOR or "gan" not in ckpt["config"]:
        raise GeneratorError(
            f"{path}: not a GAN generator checkpoint (model {model.get('name')!r}); "
            "hmer gan train writes one: RUN_DIR/last.pt"
        )
    generator = build_generator(model)
    generator.load_state_dict(ckpt["model"])
    return generator.eval(), ckpt["config"]["gan"]


def sample_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, str]], cell: tuple[int, int] = (96, 320)
) -> np.ndarray:
    """Rows of [printed input | generated output] under their caption, uint8 (white on black,
    grey frame); images are shrunk to fit a ``cell`` (height, width), never enlarged."""
    ch, cw = cell
    label_h, gap = 14, 2
    grid = np.full((len(rows) * (ch + label_h + gap) + gap, 2 * (cw + gap) + gap), 60, np.uint8)
    for r, (source, output, _) in enumerate(rows):
        top = gap + r * (ch + label_h + gap) + label_h
        for c, img in enumerate((source, output)):
            f = min(1.0, ch / img.shape[0], cw / img.shape[1])
            h, w = max(1, int(img.shape[0] * f)), max(1, int(img.shape[1] * f))
            left = gap + c * (cw + gap)
            grid[top : top + ch, left : left + cw] = 0
            grid[top : top + h, left : left + w] = _resize(img, h, w)
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for r, (_, _, text) in enumerate(rows):
        draw.text((gap + 2, gap + r * (ch + label_h + gap) + 1), text[:120], fill=255)
    return np.asarray(canvas)


@dataclass
class SynthReport:
    """What :func:`synthesize` wrote: ids, one message per image skipped, the grid's path."""

    written: list[str]
    skipped: list[str] = field(default_factory=list)
    grid: Path | None = None


def synthesize(
    generator_path: str | Path,
    printed: str | Path,
    out_dir: str | Path,
    count: int = 0,
    seed: int = 0,
    grid: str | Path | None = None,
    grid_count: int = 12,
) -> SynthReport:
    """Translate the printed images of a ``.tsv`` image dataset (``hmer data render-latex``
    writes one) with a generator file and write ``out_dir/ID.png`` and ``out_dir/captions.tsv``
    (the first ``count`` images; 0: all). An output in which image preparation finds no ink is
    skipped with a message, so that the dataset always loads with ``read_image_captions``.
    ``grid``: also write a PNG of the first ``grid_count`` inputs beside their outputs.

    Raises :class:`GeneratorError` for a bad generator file and ``ValueError`` for a printed
    dataset that does not load or has no images.
    """
    from hmer.data.dataset import read_image_captions, write_tsv
    from hmer.data.images import ImageError, normalize_bitmap

    generator, gan = load_generator(generator_path)
    samples = read_image_captions(printed, count).samples  # ValueError naming file and line
    if not samples:
        raise ValueError(f"{printed}: no printed images to translate")
    out_dir = Path(out_dir)
    report = SynthReport([])
    rows, shown = [], []
    for index, sample in enumerate(samples):
        z = noise(generator.z_dim, seed, index)
        image = translate(generator, sample.image, float(gan["scale"]), z)
        try:
            normalize_bitmap(image, source=sample.id)
        except ImageError as exc:
            report.skipped.append(f"{sample.id}: generated image unusable ({exc})")
            continue
        save_png(image, out_dir / f"{sample.id}.png")
        rows.append((sample.id, " ".join(sample.tokens)))
        report.written.append(sample.id)
        if len(shown) < grid_count:
            shown.append((sample.image, image, " ".join(sample.tokens)))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / CAPTIONS, rows)
    if grid is not None and shown:
        save_png(sample_grid(shown), grid)
        report.grid = Path(grid)
    return report
