"""Atomic writes keep the old file on failure; augment-grid shows what training applies."""

from __future__ import annotations

import numpy as np
import pytest

from hmer.data.batching import BucketSpec, EpochBatches, augment_grid
from hmer.data.files import atomic_open
from hmer.data.vocab import Vocab


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    with atomic_open(path, "w", durable=True) as fh:
        fh.write("new")
        assert path.read_text() == "old"  # readers see the old file until the block ends
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    # Two writers of one file at once (two trainers filling one cache) must not collide.
    with atomic_open(path, "w") as first, atomic_open(path, "w") as second:
        first.write("first")
        second.write("second")
    assert path.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def _cells(grid: np.ndarray, rows: int, cols: int, cell=(128, 384)) -> list[list[np.ndarray]]:
    ch, cw = cell
    label_h, gap = 14, 2
    out = []
    for r in range(rows):
        top = gap + r * (ch + label_h + gap) + label_h
        out.append([grid[top : top + ch, gap + c * (cw + gap) :][:, :cw] for c in range(cols)])
    return out


def test_augment_grid_shows_the_training_epochs_images(samples):
    def expected(photo_p: float, foreign_p: float, epoch: int, row: int) -> np.ndarray:
        data = EpochBatches(
            chosen, Vocab([]), BucketSpec(), epoch, 7, photo_p=photo_p, foreign_p=foreign_p
        )
        return data.image(row)

    chosen = [samples[int(i)] for i in np.random.default_rng(7).choice(3, 2, replace=False)]
    grids = {}
    for photo_p, foreign_p in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
        grid = augment_grid(samples, 2, 2, seed=7, photo_p=photo_p, foreign_p=foreign_p)
        grids[photo_p, foreign_p] = grid
        for r, row in enumerate(_cells(grid, 2, 3)):
            for c in (1, 2):
                img = (np.clip(expected(photo_p, foreign_p, c, r), 0, 1) * 255).astype(np.uint8)
                h, w = img.shape  # the tiny test expressions fit a cell unscaled
                assert np.array_equal(row[c][:h, :w], img), (photo_p, foreign_p, r, c)
    plain, photo, foreign = grids.values()
    assert not np.array_equal(plain, photo)  # photometric changes show when training has them
    assert not np.array_equal(plain, foreign)  # and so do foreign styles
