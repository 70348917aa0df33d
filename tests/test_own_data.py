"""A user's own data: a folder of images with a TSV of captions, its own vocabulary (words in
formulas included, ``\\text{if }x>0``), trained, exported and recognized from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from hmer.cli import main
from hmer.data.dataset import read_image_captions

# What each image shows (typeset by Pillow's own font) and its caption, as a user writes it.
ROWS = {
    "cond": ("if x>0", r"\text{if }x>0"),
    "sum": ("x+1", "x+1"),
    "diff": ("2-x", "2-x"),
    "big": ("x>1", "x > 1"),
    "two.png": ("2x+1", "2x+1"),  # an id may name the file with its suffix
}
TINY_MODEL = """[model]
name = "transformer"
encoder_cfg = { growth = 8, depth = 3, dropout = 0.0 }
d_model = 64
nhead = 4
num_layers = 1
ffn = 128
dropout = 0.0
max_len = 40
"""


def make_dataset(folder: Path) -> Path:
    """Images of ROWS in ``folder`` and their captions.tsv; returns the TSV."""
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=36)
    for key, (shown, _) in ROWS.items():
        img = Image.new("L", (40 + 22 * len(shown), 60), 255)
        ImageDraw.Draw(img).text((12, 6), shown, font=font, fill=0)
        img.save(folder / (key if key.endswith(".png") else f"{key}.png"))
    tsv = folder / "captions.tsv"
    tsv.write_text("".join(f"{key}\t{latex}\n" for key, (_, latex) in ROWS.items()))
    return tsv


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_config(
    path: Path, tsv: Path, vocab: Path, epochs: int, model: str = TINY_MODEL, extra: bool = True
) -> Path:
    # The TSV trains, and one of its images is held out for validation; extra_train gives that
    # one back to training, so that the tiny model can learn all five.
    more = f'extra_train = ["{tsv}"]\n' if extra else ""
    path.write_text(
        f'vocab = "{vocab}"\n{model}[data]\ntrain = "{tsv}"\n{more}'
        'val_size = 1\ntest = ""\npixels_per_batch = 40000\n'
        f"[train]\nepochs = {epochs}\nlr = 3e-3\nwarmup_steps = 5\nlabel_smoothing = 0.0\n"
        "bf16 = false\nnum_workers = 0\n"
    )
    return path


def test_own_images_and_vocabulary_train_export_and_recognize(capsys, tmp_path):
    tsv = make_dataset(tmp_path / "data")
    vocab = tmp_path / "vocab.json"
    code, out, _ = run(capsys, "data", "vocab", tsv, "-o", vocab)
    assert code == 0 and f"wrote {vocab}: 13 tokens from 5 captions" in out
    tokens = json.loads(vocab.read_text())
    assert {r"\text", "{", "}", "~", "i", "f", ">", "0", "x", "1", "2", "+", "-"} == set(tokens)
    assert tokens[0] == "x"  # most frequent first

    config = write_config(tmp_path / "own.toml", tsv, vocab, epochs=25)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", config, "--run-dir", run_dir)
    assert code == 0, err
    rows = (run_dir / "eval.csv").read_text().splitlines()
    assert len(rows) == 26 and rows[-1].split(",")[3] == "val"
    assert (run_dir / "curves.png").exists()

    release = tmp_path / "own.safetensors"
    assert run(capsys, "export", run_dir / "last.pt", "-o", release)[0] == 0
    # The words keep their command, a space is ~: pasted, it renders "if x>0".
    image = tmp_path / "data" / "cond.png"
    code, out, err = run(capsys, "recognize", image, "--model", release, "--format", "json")
    assert code == 0 and err == ""
    body = json.loads(out)
    assert body["latex"] == r"\text{if~}x>0"
    assert body["tokens"] == [r"\text", "{", "i", "f", "~", "}", "x", ">", "0"]

    args = ["--model", release, "--split", tsv, "--json", "--perplexity"]
    code, out, _ = run(capsys, "evaluate", *args)
    metrics = json.loads(out)
    assert code == 0 and metrics["n"] == 5 and metrics["exprate"] >= 80.0  # (it trained on them)
    assert 1.0 <= metrics["perplexity"] < 1.5, metrics["perplexity"]  # sure of the truth
    code, out, _ = run(capsys, "evaluate", "--model", release, "--split", tsv, "--max-len", "2")
    assert code == 0  # two tokens are too few for any of the captions
    assert "exprate  0.00" in out


def test_a_dataset_reads_each_image_as_recognition_prepares_it(tmp_path):
    from hmer.data.images import prepare_image

    tsv = make_dataset(tmp_path)
    split = read_image_captions(tsv)
    assert [s.id for s in split.samples] == list(ROWS)
    cond = split.samples[0]
    assert cond.tokens == [r"\text", "{", "i", "f", "~", "}", "x", ">", "0"] and cond.traces == []
    assert np.array_equal(cond.image, prepare_image(tmp_path / "cond.png"))
    assert split.samples[3].tokens == ["x", ">", "1"]  # spaces between tokens are not content


def test_bad_own_data_is_named_without_a_traceback(capsys, tmp_path):
    tsv = make_dataset(tmp_path / "data")
    with open(tsv, "a") as fh:
        fh.write("ghost\tx+2\nno tab here\n")
    with pytest.raises(ValueError, match="ghost: no image ghost") as err:
        read_image_captions(tsv)
    assert "no TAB" in str(err.value)

    code, _, err = run(capsys, "data", "vocab", tsv, "-o", tmp_path / "v.json")
    assert code == 1 and "no TAB between id and LaTeX" in err and "no vocabulary written" in err
    assert not (tmp_path / "v.json").exists()

    good = make_dataset(tmp_path / "good")
    vocab = tmp_path / "vocab.json"
    assert run(capsys, "data", "vocab", good, "-o", vocab)[0] == 0
    config = write_config(tmp_path / "bad.toml", tsv, vocab, epochs=1)
    code, _, err = run(capsys, "train", config, "--run-dir", tmp_path / "run")
    assert code == 1 and "ghost: no image ghost" in err and "Traceback" not in err

    strokes = '[model]\nname = "strokes"\nconv_channels = [8]\nconv_strides = [2]\n'
    strokes += "context_layers = 1\nd_model = 16\nnhead = 2\nnum_layers = 1\nffn = 32\n"
    config = write_config(tmp_path / "strokes.toml", good, vocab, epochs=1, model=strokes)
    code, _, err = run(capsys, "train", config, "--run-dir", tmp_path / "run2")
    assert code == 1 and "is an image" in err and "reads pen strokes" in err

    config = write_config(tmp_path / "small.toml", good, vocab, epochs=1, extra=False)
    argv = ["train", config, "--run-dir", tmp_path / "run3", "--set", "data.val_size=500"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and "data.val_size = 500 holds out all of" in err
