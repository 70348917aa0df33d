"""Image-level augmentation: deterministic, normalized, and actually changing the image."""

from __future__ import annotations

import numpy as np
import pytest
from inkml_samples import x_plus_one

from hmer.data.augment import ImageAugment, InkAugment, normalize_intensity
from hmer.data.render import render_natural


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return render_natural([t * 3 for t in x_plus_one()[0]])


def test_deterministic_under_a_seed(image):
    aug = ImageAugment()
    a = aug(image, np.random.default_rng(7))
    b = aug(image, np.random.default_rng(7))
    c = aug(image, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.allclose(a, c)


def test_output_is_normalized(image):
    aug = ImageAugment()
    for seed in range(12):
        out = aug(image, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.ndim == 2
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.median(out) < 0.1  # background
        ink = out > 0.5
        assert ink.mean() > 0.01 and np.median(out[ink]) > 0.85  # ink near 1
        assert max(out.shape) <= aug.max_side


def test_identity_settings_keep_the_image(image):
    still = ImageAugment(
        rotate_deg=0,
        shear=0,
        scale=(1, 1),
        aspect=0,
        padding=(0, 0),
        stroke_p=0,
        brightness=0,
        background=0,
        blur_p=0,
        noise=0,
    )
    out = still(image, np.random.default_rng(0))
    assert out.shape == image.shape
    assert np.abs(out - image / 255.0).max() < 0.02


def test_geometry_changes_size_and_padding(image):
    big = ImageAugment(
        rotate_deg=0, shear=0, scale=(2, 2), aspect=0, padding=(5, 5), stroke_p=0, blur_p=0, noise=0
    )
    out = big(image, np.random.default_rng(0))
    h, w = image.shape
    assert abs(out.shape[0] - (2 * h + 10)) <= 3 and abs(out.shape[1] - (2 * w + 10)) <= 3
    assert out[:4].max() == 0 and out[:, :4].max() == 0  # the added margin is background


def test_stroke_width_changes_ink_area(image):
    base = dict(
        rotate_deg=0,
        shear=0,
        scale=(1, 1),
        aspect=0,
        padding=(0, 0),
        blur_p=0,
        noise=0,
        brightness=0,
        background=0,
        stroke_p=1.0,
    )
    areas = {(ImageAugment(**base)(image, np.random.default_rng(s)) > 0.5).sum() for s in range(8)}
    assert min(areas) < (image > 127).sum() < max(areas)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        ImageAugment()(np.zeros((0, 5), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        ImageAugment()(np.zeros((4, 5, 3), np.uint8), np.random.default_rng(0))


def test_normalize_intensity():
    x = np.full((20, 20), 40, np.uint8)
    x[5:15, 9:11] = 200
    out = normalize_intensity(x)
    assert out[0, 0] == 0.0 and out[10, 10] == pytest.approx(1.0)
    assert not normalize_intensity(np.zeros((5, 5), np.uint8)).any()


def test_ink_augment_unchanged():
    # The ink-level augmentation keeps its behaviour (training runs depend on it).
    traces = [t.astype(np.float32) for t in x_plus_one()[0]]
    a = InkAugment()(traces, np.random.default_rng(0))
    b = InkAugment()(traces, np.random.default_rng(0))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_too_large_output_is_shrunk_not_cropped():
    wide = np.zeros((40, 600), np.uint8)
    wide[10:30, 5:15] = 255  # ink at both ends
    wide[10:30, 585:595] = 255
    aug = ImageAugment(
        rotate_deg=0,
        shear=0,
        scale=(2, 2),
        aspect=0,
        padding=(0, 0),
        stroke_p=0,
        blur_p=0,
        noise=0,
        max_side=400,
    )
    out = aug(wide, np.random.default_rng(0))
    assert max(out.shape) <= 400
    cols = np.flatnonzero(out.max(axis=0) > 0.5)
    assert cols[0] < 20 and cols[-1] > out.shape[1] - 20


def test_ink_order_noise_swaps_and_reverses_strokes():
    traces = [np.array([[0, 0], [1, 0]], np.float32) + 10 * k for k in range(6)]
    plain = InkAugment(
        rotate_deg=0, shear=0, aspect=0, stroke_shift=0, stroke_scale=0, point_noise=0
    )
    same = plain(traces, np.random.default_rng(0))
    assert all(np.allclose(p, q) for p, q in zip(same, traces, strict=True))
    noisy = InkAugment(**{**plain.__dict__, "swap_p": 1.0, "reverse_p": 1.0})
    out = noisy(traces, np.random.default_rng(0))
    assert not np.allclose(out[0], traces[0])  # stroke 0 moved one place on
    assert np.allclose(out[0], traces[1][::-1])  # ...and runs end to start
    # The same strokes, only in another order and direction: the bitmap would not change.
    key = sorted(tuple(np.sort(t, axis=0).ravel()) for t in out)
    assert key == sorted(tuple(np.sort(t, axis=0).ravel()) for t in traces)


def test_ink_point_drop_keeps_each_strokes_ends():
    line = np.stack([np.arange(50), np.zeros(50)], 1).astype(np.float32)
    dot = np.array([[3, 3]], np.float32)
    plain = InkAugment(
        rotate_deg=0, shear=0, aspect=0, stroke_shift=0, stroke_scale=0, point_noise=0
    )
    sparse = InkAugment(**{**plain.__dict__, "drop_p": 0.5})
    out = sparse([line, dot], np.random.default_rng(0))
    assert 5 < len(out[0]) < 45 and np.allclose(out[0][[0, -1]], line[[0, -1]])
    assert np.allclose(out[1], dot)  # nothing inside to drop
    # Off (the default), it draws nothing: seeded augmentation is what it was.
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    InkAugment()([line], rng_a)
    InkAugment(drop_p=0.0)([line], rng_b)
    assert rng_a.random() == rng_b.random()


def test_photometric_training_augmentation_keeps_buckets(samples, vocab):
    from hmer.data.batching import BucketSpec, EpochBatches

    plain = EpochBatches(samples, vocab, BucketSpec(), 0, 3)
    photo = EpochBatches(samples, vocab, BucketSpec(), 0, 3, photo_p=1.0)
    assert [b[0] for b in plain.batches] == [b[0] for b in photo.batches]
    a, b = plain[0], photo[0]
    assert a["inputs"].shape == b["inputs"].shape and bool((a["masks"] == b["masks"]).all())
    assert not np.allclose(a["inputs"].numpy(), b["inputs"].numpy())
    assert float(b["inputs"].min()) >= 0.0 and float(b["inputs"].max()) <= 1.0
    again = EpochBatches(samples, vocab, BucketSpec(), 0, 3, photo_p=1.0)[0]
    assert np.array_equal(again["inputs"].numpy(), b["inputs"].numpy())  # deterministic


def test_foreign_render_draws_varied_styles_and_reads_them_back():
    from hmer.data.augment import ForeignRender
    from hmer.data.images import LINE_WIDTH_RANGE, stroke_width

    traces = [t * 3 for t in x_plus_one()[0]]
    foreign = ForeignRender()
    drawn = [foreign.draw(traces, np.random.default_rng(s)) for s in range(24)]
    dark_paper = [float(np.median(d)) < 127 for d in drawn]
    assert any(dark_paper) and not all(dark_paper)  # both polarities
    assert len({d.shape for d in drawn}) > 12  # sizes vary
    for seed in range(12):
        out = foreign(traces, np.random.default_rng(seed), (64, 160))
        assert out.dtype == np.uint8 and out.shape[0] <= 64 and out.shape[1] <= 160
        assert np.median(out) == 0 and out.max() == 255  # white ink on black, as renders
        # Thick or thin, strokes come back at about the widths training renders have.
        assert LINE_WIDTH_RANGE[0] - 1 <= stroke_width(out > 127) <= LINE_WIDTH_RANGE[1] + 1.5
    again = foreign(traces, np.random.default_rng(3), (64, 160))
    assert np.array_equal(again, foreign(traces, np.random.default_rng(3), (64, 160)))


def test_foreign_render_line_ratio_sizes_the_pen_to_the_symbols(monkeypatch):
    from hmer.data import augment
    from hmer.data.render import ink_symbol_size

    seen: list[float] = []  # pen width / median symbol height of each drawing

    def spy(placed, w, h, style):
        seen.append(style.line_width / ink_symbol_size(placed))
        return np.zeros((h, w), np.uint8)

    monkeypatch.setattr(augment, "_draw", spy)
    traces = [t * 3 for t in x_plus_one()[0]]
    for render in (augment.ForeignRender(), augment.ForeignRender(line_ratio=0.4)):
        for s in range(200):
            render.draw(traces, np.random.default_rng(s))
    default, relative = np.array(seen[:200]), np.array(seen[200:])
    assert relative.min() >= augment.LINE_RATIO_MIN * 0.99 and relative.max() <= 0.4 * 1.01
    assert (relative >= 0.3).mean() > 2 * (default >= 0.3).mean()  # thick pens: far more often
    assert 0.08 < np.median(relative) < 0.12  # the log-uniform median, sqrt(0.025 * 0.4)


def test_foreign_training_augmentation_keeps_buckets(samples, vocab):
    from hmer.data.batching import BucketSpec, EpochBatches

    plain = EpochBatches(samples, vocab, BucketSpec(), 0, 3)
    foreign = EpochBatches(samples, vocab, BucketSpec(), 0, 3, foreign_p=1.0)
    assert [b[0] for b in plain.batches] == [b[0] for b in foreign.batches]
    a, b = plain[0], foreign[0]
    assert a["inputs"].shape == b["inputs"].shape
    assert not np.allclose(a["inputs"].numpy(), b["inputs"].numpy())
    assert float(b["inputs"].min()) >= 0.0 and float(b["inputs"].max()) <= 1.0
    again = EpochBatches(samples, vocab, BucketSpec(), 0, 3, foreign_p=1.0)[0]
    assert np.array_equal(again["inputs"].numpy(), b["inputs"].numpy())  # deterministic
    # Off (the default), the epoch is what it was before the option existed.
    off = EpochBatches(samples, vocab, BucketSpec(), 0, 3, foreign_p=0.0)[0]
    assert np.array_equal(off["inputs"].numpy(), a["inputs"].numpy())
