"""``hmer recognize``: output styles and formats, progress, batches and workers, error messages."""

from __future__ import annotations

import json
import re

import pytest
from serve_helpers import png_bytes, tiny_image_release

from hmer.cli import main
from hmer.data.latex import detokenize


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> str:
    return tiny_image_release(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, size in enumerate([(120, 48), (200, 60), (90, 40), (300, 80), (150, 50)]):
        (folder / f"e{i}.png").write_bytes(png_bytes(size=size))
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["recognize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compact_latex_by_default_tokens_on_request(capsys, release, images):
    one = str(images / "e0.png")
    code, out, _ = run(capsys, one, "--model", release, "--format", "json", "--beam", "2")
    assert code == 0
    body = json.loads(out)
    tokens = body["tokens"]
    assert len(tokens) > 1  # spaces between tokens are what the styles differ in
    assert body["latex"] == detokenize(tokens, compact=True) != " ".join(tokens)
    assert all(" " not in a["latex"] or "\\" in a["latex"] for a in body["alternatives"])

    assert run(capsys, one, "--model", release, "--beam", "2")[1] == body["latex"] + "\n"
    _, out, _ = run(capsys, one, "--model", release, "--beam", "2", "--style", "tokens")
    assert out == " ".join(tokens) + "\n"
    _, out, _ = run(capsys, one, "--model", release, "--format", "json", "--style", "tokens")
    assert json.loads(out)["latex"] == " ".join(json.loads(out)["tokens"])
    _, out, _ = run(capsys, one, "--model", release, "--beam", "2", "--style", "mathml")
    assert out.startswith("<math") and out.rstrip().endswith("</math>")
    # TSV is the scoring convention: always tokens, whatever the style.
    _, out, _ = run(capsys, one, "--model", release, "--beam", "2", "--format", "tsv")
    assert out == "e0\t" + " ".join(tokens) + "\n"


def test_batches_and_workers_give_the_same_answers(capsys, release, images):
    base = ["--model", release, "--format", "tsv", "--beam", "1"]
    code, plain, err = run(capsys, str(images), *base, "--batch", "1")
    assert code == 0 and len(plain.splitlines()) == 5 and err == ""
    assert run(capsys, str(images), *base)[1] == plain  # greedy: batches by default
    assert run(capsys, str(images), *base, "--batch", "3")[1] == plain
    beam = ["--model", release, "--format", "json", "--beam", "2"]
    alone = run(capsys, str(images), *beam, "--batch", "1")[1]
    together = run(capsys, str(images), *beam, "--batch", "3")[1]
    alternatives = [
        [a["latex"] for a in json.loads(line)["alternatives"]] for line in alone.splitlines()
    ]
    assert alternatives == [
        [a["latex"] for a in json.loads(line)["alternatives"]] for line in together.splitlines()
    ]
    # Two worker processes on three chunks of two batched files each.
    assert run(capsys, str(images), *base, "--batch", "2", "--jobs", "2")[1] == plain


def test_progress_bar_on_stderr_only_when_asked_or_on_a_terminal(capsys, release, images):
    base = [str(images), "--model", release, "--beam", "1"]
    _, out, err = run(capsys, *base, "--progress")
    assert "5/5" in err and "file" in err
    assert "5/5" not in out and len(out.splitlines()) == 5
    assert run(capsys, *base)[2] == ""  # stderr is not a terminal under pytest


@pytest.mark.parametrize("beam", ["1", "3"])
def test_max_len_limits_what_an_attention_model_writes(capsys, release, images, beam):
    base = [str(images / "e0.png"), "--model", release, "--beam", beam, "--style", "tokens"]
    code, unlimited, _ = run(capsys, *base)
    assert code == 0 and len(unlimited.split()) > 3  # an untrained model runs on
    code, limited, _ = run(capsys, *base, "--max-len", "3")
    assert code == 0 and 0 < len(limited.split()) <= 3
    code, _, err = run(capsys, *base, "--max-len", "0")
    assert code == 2 and "--max-len must be at least 1" in err


def test_errors_name_the_file_and_the_problem(capsys, release, images, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "blank.png").write_bytes(png_bytes(blank=True))
    good = str(images / "e0.png")
    missing = str(tmp_path / "missing.png")
    code, out, err = run(capsys, str(tmp_path), missing, good, "--model", release, "--beam", "1")
    assert code == 1 and out.count("\n") == 1 and out.startswith(good + ": ")
    assert re.fullmatch(r".*  \(\d{1,3}%\)\n", out)  # with several files, each's confidence
    lines = err.splitlines()
    problems = {"blank": "no ink", "empty": "empty", "notes": "not a readable image"}
    for stem, words in problems.items():
        line = next(x for x in lines if f"{tmp_path / stem}.png: " in x)
        assert line.startswith("hmer: error: ") and words in line.lower()
    assert any(f"{missing}: " in x and "no such file" in x.lower() for x in lines)
    assert lines[-1] == "hmer: error: 4 of 5 files failed"
    assert "Traceback" not in err and "Exception" not in err


def test_every_shipped_example_has_a_well_formed_truth():
    from pathlib import Path

    import hmer
    from hmer.data.latex import is_valid

    folder = Path(hmer.__file__).parent / "examples"
    truths = dict(line.split("\t") for line in (folder / "truth.tsv").read_text().splitlines())
    assert {p.stem for p in folder.glob("*.png")} == set(truths) and len(truths) >= 8
    assert all(is_valid(t.split()) for t in truths.values())
