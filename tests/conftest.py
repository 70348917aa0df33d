"""Shared test fixtures: a few tiny hand-written expressions made of made-up strokes."""

from __future__ import annotations

import pytest
import torch
from inks import EXPRESSIONS, GLYPHS, write

from hmer.data.batching import BucketSpec, EpochBatches
from hmer.data.dataset import Sample
from hmer.data.strokes import StrokeBatches, StrokeSpec
from hmer.data.vocab import Vocab


@pytest.fixture(scope="session")
def vocab() -> Vocab:
    return Vocab(GLYPHS)


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return [Sample(f"s{i}", write(t), t) for i, t in enumerate(EXPRESSIONS)]


@pytest.fixture(scope="session")
def image_batch(samples, vocab) -> dict:
    data = EpochBatches(samples, vocab, BucketSpec(), 0, 0, augment=False, shuffle=False)
    assert len(data) == 1  # all three fall in one bucket
    return data[0]


@pytest.fixture(scope="session")
def stroke_batch(samples, vocab) -> dict:
    spec = StrokeSpec(lengths=(128,))
    data = StrokeBatches(samples, vocab, spec, 0, 0, augment=False, shuffle=False)
    assert len(data) == 1
    return data[0]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def pytest_configure(config):
    # Tiny models gain nothing from a second thread, and threads spin when the CPU is shared.
    torch.set_num_threads(1)
