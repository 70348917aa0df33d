"""Point features of ink and the stroke batch dataset."""

from __future__ import annotations

import numpy as np
import torch
from inks import write

from hmer.data.batching import BucketSpec
from hmer.data.dataset import Sample
from hmer.data.strokes import FEATURES, N_FEATURES, SPACING, StrokeBatches, StrokeSpec, ink_features


def _col(name: str) -> int:
    return FEATURES.index(name)


def test_ink_features_flags_and_spacing():
    traces = write(["x", "+", "1"])  # 5 strokes
    f = ink_features(traces)
    assert f.shape[1] == N_FEATURES and f.dtype == np.float32
    assert f[:, _col("pen_up")].sum() == 5 and f[:, _col("stroke_end")].sum() == 5
    np.testing.assert_array_equal(f[:, _col("pen_down")] + f[:, _col("pen_up")], 1)
    assert f[0, _col("pen_up")] == 1 and f[-1, _col("stroke_end")] == 1
    down = f[:, _col("pen_down")] == 1
    direction = f[down][:, [_col("cos"), _col("sin")]]
    np.testing.assert_allclose(np.linalg.norm(direction, axis=1), 1, atol=1e-5)
    assert not f[down][:, [_col("air_dx"), _col("air_dy")]].any()
    # resampled about SPACING symbol sizes apart along each stroke
    xy = f[:, [_col("x"), _col("y")]]
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)[down[1:]]
    assert steps.max() <= SPACING * 1.01 and np.median(steps) > SPACING * 0.5


def test_ink_features_ignore_scale_and_position():
    traces = write(["2", "+", "x"])
    moved = [t * 3.7 + np.array([1000.0, -50.0], np.float32) for t in traces]
    np.testing.assert_allclose(ink_features(traces), ink_features(moved), atol=1e-4)


def test_ink_features_fit_max_points():
    traces = write(["x", "+", "1", "-", "2"] * 6)
    assert len(ink_features(traces)) > 200
    f = ink_features(traces, max_points=200)
    assert 100 < len(f) <= 200
    assert f[:, _col("pen_up")].sum() == len(traces)  # coarser, but no stroke lost


def test_stroke_batches_shapes_and_determinism(samples, vocab):
    spec = StrokeSpec(lengths=(64, 128), points_per_batch=256)
    a = StrokeBatches(samples, vocab, spec, epoch=3, seed=7)
    b = StrokeBatches(samples, vocab, spec, epoch=3, seed=7)
    c = StrokeBatches(samples, vocab, spec, epoch=4, seed=7)
    assert len(a) >= 1
    for k in range(len(a)):
        x, y = a[k], b[k]
        assert set(x) == {"inputs", "masks", "tokens", "ids"}
        n, length, feats = x["inputs"].shape
        assert length in spec.lengths and feats == N_FEATURES and x["inputs"].dtype == torch.float32
        assert x["masks"].shape == (n, length) and x["masks"].dtype == torch.bool
        assert not x["inputs"][x["masks"]].any()  # padding is zero
        assert len(x["tokens"]) == len(x["ids"]) == n
        torch.testing.assert_close(x["inputs"], y["inputs"])  # same (seed, epoch): same batch
    assert not torch.equal(a[0]["inputs"], c[0]["inputs"]) or a.batches != c.batches


def test_stroke_batches_without_augmentation_are_plain_features(samples, vocab):
    data = StrokeBatches(
        samples, vocab, StrokeSpec(lengths=(128,)), 0, 0, augment=False, shuffle=False
    )
    batch = data[0]
    for j, s in enumerate(samples):
        f = ink_features(s.traces)
        torch.testing.assert_close(batch["inputs"][j, : len(f)], torch.from_numpy(f))
        assert int((~batch["masks"][j]).sum()) == len(f)
        assert batch["tokens"][j] == vocab.encode(s.tokens)


def test_stroke_batches_accept_image_spec_and_split_ranks(vocab):
    many = [Sample(f"m{i}", write(["x", "+", "1"][: 1 + i % 3]), ["x"]) for i in range(12)]
    spec = StrokeSpec.from_bucket_spec(BucketSpec(pixels_per_batch=16 * 96 * 320))
    assert spec.points_per_batch == 16 * 384
    image_spec = BucketSpec(pixels_per_batch=80 * 4 * 128)
    r0 = StrokeBatches(many, vocab, image_spec, 0, 0, rank=0, world=2)
    r1 = StrokeBatches(many, vocab, image_spec, 0, 0, rank=1, world=2)
    assert len(r0) == len(r1) >= 1
    assert r0.spec.batch_size(128) == 4
