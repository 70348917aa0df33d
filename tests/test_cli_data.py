"""``hmer data ...`` and ``hmer score`` end to end on tiny hand-made InkML."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from inkml_samples import ENTITY_BOMB, write_inkml
from PIL import Image

from hmer.cli import main


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("HMER_DEBUG", raising=False)


@pytest.fixture
def inkml_dir(tmp_path):
    """Three good expressions and three broken files."""
    d = tmp_path / "ink"
    d.mkdir()
    write_inkml(d / "a.inkml", truth=r"$x+1$")
    write_inkml(d / "b.inkml", truth=r"$x^2 \lt 1$")
    write_inkml(d / "c.inkml", truth=r"$\frac{1}{x}$", segmented=False)
    (d / "empty.inkml").write_bytes(b"")
    (d / "broken.inkml").write_text("<ink><trace>1 2, 3 4", encoding="utf-8")
    (d / "bomb.inkml").write_text(ENTITY_BOMB, encoding="utf-8")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_prepare_folder_without_captions(tmp_path, inkml_dir, capsys):
    cache = tmp_path / "cache"
    args = [
        "data",
        "prepare",
        "--data-dir",
        tmp_path,
        "--cache-dir",
        cache,
        "--quiet",
        "--splits",
        f"tiny={inkml_dir}",
        "--render",
    ]
    code, out, err = run(capsys, *args)
    assert code == 1  # broken files make the batch fail, after doing the rest
    for name in ("empty", "broken", "bomb"):
        assert name in err
    assert len(err.strip().splitlines()) == 3
    assert "tiny: 3 expressions, 3 skipped (normalized InkML truth)" in out

    import pickle

    split = pickle.loads((cache / "crohme-tiny-v1.pkl").read_bytes())
    tokens = {s.id: " ".join(s.tokens) for s in split.samples}
    assert tokens == {"a": "x + 1", "b": "x ^ { 2 } < 1", "c": r"\frac { 1 } { x }"}
    assert split.samples[0].truth == "$x+1$"

    png = cache / "images" / "tiny" / "a.png"
    img = np.asarray(Image.open(png))
    assert img.dtype == np.uint8 and img.ndim == 2
    assert img[0, 0] == 0 and img.max() == 255  # white ink on black
    assert sorted(p.name for p in png.parent.iterdir()) == ["a.png", "b.png", "c.png"]

    # Idempotent: the second run reuses cache and images and reports the same.
    stamp = png.stat().st_mtime_ns
    code2, out2, err2 = run(capsys, *args)
    assert code2 == 1 and err2 == err
    assert "already cached" in out2 and "0 images written, 3 already there" in out2
    assert png.stat().st_mtime_ns == stamp


def test_prepare_with_captions_and_crohme_folder(tmp_path, capsys):
    data = tmp_path / "crohme"
    folder = data / "TestEM2014GT"
    folder.mkdir(parents=True)
    write_inkml(folder / "e1.inkml", truth="$x+1$")
    write_inkml(folder / "e2.inkml", truth="$x+1$")
    (data / "2014_caption.txt").write_text("e1\tx + 1\n", encoding="utf-8")
    code, out, err = run(
        capsys,
        "data",
        "prepare",
        "--data-dir",
        data,
        "--cache-dir",
        tmp_path / "c",
        "--splits",
        "2014",
        "--quiet",
    )
    assert code == 1 and "e2: no caption" in err
    assert "2014: 1 expressions" in out and "captions 2014_caption.txt" in out


def test_a_known_defect_of_the_official_data_is_skipped_not_failed(tmp_path, capsys):
    from hmer.data.dataset import known_defect

    ink = tmp_path / "ink"
    ink.mkdir()
    write_inkml(ink / "a.inkml")
    (ink / "MfrDB3088.inkml").write_bytes(b"")  # as in the CROHME training set
    argv = ["data", "prepare", "--data-dir", tmp_path, "--cache-dir", tmp_path / "c", "--quiet"]
    code, out, err = run(capsys, *argv, "--splits", f"tiny={ink}")
    assert code == 0 and "tiny: 1 expressions, 1 skipped" in out
    assert err.startswith("hmer: skipped ink:MfrDB3088: ") and "empty file in the CROHME" in err
    for message in ("MfrDB3088: no caption", "TrainINKML.tar.gz:MfrDB3088: no truth annotation"):
        assert known_defect(message) == "empty file in the CROHME training set"
    assert known_defect("ink:a: no truth annotation") is None


def test_a_malformed_caption_file_is_refused_by_name(tmp_path, capsys):
    from hmer.data.dataset import read_captions, read_tsv

    captions = tmp_path / "2014_caption.txt"
    captions.write_text("e1\tx + 1\ne2 x + 1\n\ne1\tx - 1\n", encoding="utf-8")
    rows, errors = read_tsv(captions)  # the reader hmer score uses, with tokens split on spaces
    assert rows == {"e1": ["x", "-", "1"]}
    assert errors == [
        f"{captions}:2: no TAB between id and LaTeX",
        f"{captions}:4: duplicate id 'e1' (the later line is used)",
    ]
    with pytest.raises(ValueError, match=r"2014_caption.txt:2: no TAB.*:4: duplicate id"):
        read_captions(captions)
    data = tmp_path / "crohme"
    (data / "TestEM2014GT").mkdir(parents=True)
    write_inkml(data / "TestEM2014GT" / "e1.inkml", truth="$x+1$")
    captions.rename(data / captions.name)
    argv = ["data", "prepare", "--data-dir", data, "--cache-dir", tmp_path / "c", "--quiet"]
    code, out, err = run(capsys, *argv, "--splits", "2014")
    assert code == 1 and "split 2014: " in err and "2014_caption.txt:2: no TAB" in err
    assert out == ""


def test_prepare_missing_source(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "data",
        "prepare",
        "--data-dir",
        tmp_path,
        "--cache-dir",
        tmp_path / "c",
        "--splits",
        "train",
        f"x={tmp_path / 'nope'}",
        "--quiet",
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "TrainINKML" in lines[0] and "nope" in lines[1]


@pytest.fixture
def prepared(tmp_path, inkml_dir, capsys):
    cache = tmp_path / "cache"
    main(
        [
            "data",
            "prepare",
            "--data-dir",
            str(tmp_path),
            "--cache-dir",
            str(cache),
            "--quiet",
            "--splits",
            f"tiny={inkml_dir}",
        ]
    )
    capsys.readouterr()
    return cache


def test_stats(prepared, capsys):
    code, out, _ = run(capsys, "data", "stats", "--split", "tiny", "--cache-dir", prepared)
    assert code == 0
    assert "split tiny: 3 expressions, 3 skipped" in out
    assert re.search(r"(^|\s)x\s+3(\s|$)", out, re.M)  # token x, seen 3 times
    assert re.search(r"\\frac\s+1(\s|$)", out, re.M)
    assert "sequence length" in out and "#" in out
    code, _, err = run(capsys, "data", "stats", "--split", "nothere", "--cache-dir", prepared)
    assert code == 1 and "not prepared" in err


def test_augment_grid(prepared, tmp_path, capsys):
    out_png = tmp_path / "grid.png"
    argv = [
        "data",
        "augment-grid",
        "--split",
        "tiny",
        "--cache-dir",
        prepared,
        "-n",
        "2",
        "--variants",
        "2",
        "--seed",
        "1",
        "-o",
        out_png,
    ]
    assert run(capsys, *argv)[0] == 0
    first = out_png.read_bytes()
    grid = np.asarray(Image.open(out_png))
    assert grid.ndim == 2 and grid.shape[1] > 3 * 128 and grid.shape[0] > 2 * 100
    assert run(capsys, *argv)[0] == 0
    assert out_png.read_bytes() == first  # same seed, same picture
    thick = [*argv, "--foreign-p", "1", "--foreign-line-ratio", "0.4"]
    assert run(capsys, *thick)[0] == 0 and out_png.read_bytes() != first
    code, _, err = run(capsys, *argv, "--foreign-line-ratio", "0.01")
    assert code == 2 and "--foreign-line-ratio must be 0, or above 0.025" in err


def test_check_normalization(prepared, capsys):
    code, out, _ = run(
        capsys, "data", "check-normalization", "--splits", "tiny", "--cache-dir", prepared
    )
    assert code == 0 and "3/3" in out and "100.00%" in out
    code, _, err = run(
        capsys,
        "data",
        "check-normalization",
        "--splits",
        "tiny",
        "--cache-dir",
        prepared,
        "--min",
        "101",
    )
    assert code == 1 and "below" in err


def test_render(tmp_path, inkml_dir, capsys):
    out_png = tmp_path / "a.png"
    code, out, _ = run(capsys, "data", "render", inkml_dir / "a.inkml", "-o", out_png, "--boxes")
    assert code == 0 and out_png.exists()
    boxed = np.asarray(Image.open(out_png))
    assert (boxed == 128).any()  # the box outlines

    code, _, _ = run(
        capsys,
        "data",
        "render",
        inkml_dir / "a.inkml",
        "-o",
        out_png,
        "--size",
        "64",
        "256",
        "--no-antialias",
        "--line-width",
        "2",
    )
    img = np.asarray(Image.open(out_png))
    assert code == 0 and img.shape == (64, 256) and set(np.unique(img)) <= {0, 255}

    out_dir = tmp_path / "many"
    code, out, err = run(
        capsys,
        "data",
        "render",
        inkml_dir / "a.inkml",
        inkml_dir / "bomb.inkml",
        inkml_dir / "missing.inkml",
        inkml_dir / "c.inkml",
        "-o",
        out_dir,
        "--boxes",
    )
    assert code == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "c.png"]
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 2 and "bomb.inkml" in errors[0] and "missing.inkml" in errors[1]
    assert "no symbol segmentation" in err  # c.inkml: a note, not a failure

    code, _, err = run(
        capsys, "data", "render", inkml_dir / "a.inkml", "--mode", "natural", "--size", "64", "64"
    )
    assert code == 2 and "--size" in err


def test_score(tmp_path, capsys):
    truth = tmp_path / "truth.tsv"
    pred = tmp_path / "pred.tsv"
    truth.write_text("a\tx ^ { 2 }\nb\t\\frac { 1 } { 2 }\nc\ty\n", encoding="utf-8")
    # "a" in plain LaTeX with another spelling; "b" wrong by one token; "c" missing.
    pred.write_text("a\tx^2\nb\t\\frac { 1 } { 3 }\nz\tq\n", encoding="utf-8")
    code, out, err = run(capsys, "score", pred, truth, "--json", "--normalize", "equivalent")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["n"] == 3 and result["exact"] == 1
    assert result["exprate"] == pytest.approx(100 / 3)
    assert result["missing"] == ["c"] and result["extra"] == ["z"]
    assert result["normalization"] == "equivalent"

    code, out, _ = run(capsys, "score", pred, truth, "--json")  # default: exact tokens
    result = json.loads(out)
    assert result["normalization"] == "none"
    assert result["exact"] == 0  # "x^2" differs from "x ^ { 2 }" token by token

    code, out, _ = run(capsys, "score", pred, truth, "--normalize", "equivalent")
    assert code == 0 and "ExpRate" in out and "33.33" in out and "missing: c" in out
    assert "normalization          equivalent" in out


def test_score_matches_official_bitmap_ids(tmp_path, capsys):
    # The official offline bitmaps are ID_0.bmp: "18_em_0_0" is expression "18_em_0".
    truth = tmp_path / "caption.txt"
    truth.write_text("18_em_0\tx\n18_em_1\ty\nk_0\tz\nk\tw\n", encoding="utf-8")
    pred = tmp_path / "pred.tsv"
    # "k_0" is a truth id itself: never renamed; "18_em_1" and "18_em_1_0" would collide.
    pred.write_text("18_em_0_0\tx\n18_em_1\ty\n18_em_1_0\tq\nk_0\tz\n", encoding="utf-8")
    code, out, _ = run(capsys, "score", pred, truth, "--json")
    result = json.loads(out)
    assert code == 0 and result["n_matched_without_0"] == 1
    assert result["exact"] == 3 and result["missing"] == ["k"] and result["extra"] == ["18_em_1_0"]
    code, out, _ = run(capsys, "score", pred, truth)
    assert "matched as ID_0        1" in out


def test_score_bad_input(tmp_path, capsys):
    truth = tmp_path / "truth.tsv"
    truth.write_text("a\tx\nno tab here\n\na\ty\n", encoding="utf-8")
    pred = tmp_path / "pred.tsv"
    pred.write_bytes(b"a\t\xff\xfe x\n")
    code, out, err = run(capsys, "score", pred, truth)
    assert code == 1
    assert f"{pred}: not UTF-8" in err
    assert f"{truth}:2: no TAB" in err and f"{truth}:4: duplicate id" in err
    assert "ExpRate" in out  # scored what could be read

    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    code, out, err = run(capsys, "score", truth, empty)
    assert code == 1 and f"{empty}: no ID<TAB>LaTeX lines" in err and out == ""
    code, _, err = run(capsys, "score", tmp_path / "nope.tsv", empty)
    assert code == 1 and "nope.tsv: cannot read" in err
