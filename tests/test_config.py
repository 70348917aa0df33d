"""Training configs: defaults held once, shipped files state only what differs, mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmer.training.config import (
    Config,
    ConfigError,
    DataConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))

# What every shipped config trained with before [data]/[train] were folded into the defaults.
SHARED_DATA = {"train": "train", "val_size": 500, "test": "2014", "pixels_per_batch": 491520}
SHARED_TRAIN = {
    "epochs": 60,
    "weight_decay": 1e-4,
    "warmup_steps": 500,
    "clip_grad": 1.0,
    "bf16": "auto",
    "seed": 1,
    "checkpoint_minutes": 5,
    "test_every": 2,
    "num_workers": 1,
}
LR = {"comer-small": 5e-4, "bttr-small": 5e-4, "strokes": 5e-4, "crnn": 1e-3, "wap": 1e-3}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_resolve_to_what_they_trained_with(path):
    cfg = load_config(path)
    data, train = cfg.to_dict()["data"], cfg.to_dict()["train"]
    assert {k: data[k] for k in SHARED_DATA} == SHARED_DATA
    assert data["augment"] is True and data["photo_p"] == 0.0
    assert {k: train[k] for k in SHARED_TRAIN} == SHARED_TRAIN
    if path.stem in LR:
        assert train["lr"] == LR[path.stem]
    if cfg.model["name"] != "crnn":  # CTC has no label smoothing
        assert train["label_smoothing"] == 0.1
    assert "\n[data]" not in path.read_text()  # nothing of it differs from the defaults


def test_unknown_keys_and_wrong_types_are_refused_by_name():
    base = {"model": {"name": "transformer"}}
    for raw, words in [
        ({**base, "train": {"lrr": 1}}, "train.lrr (did you mean train.lr?)"),
        ({**base, "data": {"photo": 0.1}}, "data.photo (did you mean data.photo_p?)"),
        ({**base, "trian": {}}, "unknown config section 'trian'"),
        ({**base, "train": {"lr": "fast"}}, "train.lr must be a number"),
        ({**base, "train": {"epochs": 2.5}}, "train.epochs must be an integer"),
        ({**base, "train": {"bf16": "sometimes"}}, "train.bf16 must be true, false or"),
        ({**base, "data": {"augment": 1}}, "data.augment must be true or false"),
        ({**base, "data": {"photo_p": 1.5}}, "data.photo_p is a probability"),
        ({**base, "data": {"val_split": "writer"}}, "data.val_split must be one of"),
        ({**base, "data": {"foreign_line_ratio": 0.01}}, "data.foreign_line_ratio must be 0, or"),
        ({**base, "data": {"foreign_line_ratio": 1.5}}, "data.foreign_line_ratio must be 0, or"),
        ({**base, "data": {"extra_train": "a.pkl"}}, "data.extra_train must be a list"),
        ({"model": {"name": "transformr"}}, "did you mean transformer?"),
        ({"model": {"name": "transformer", "d_modl": 8}}, "model.d_modl for family"),
        ({"model": {"name": "transformer", "d_model": "big"}}, "model.d_model must be an int"),
        ({"model": {"name": "strokes", "conv_strides": 2}}, "model.conv_strides must be a list"),
        ({"data": {}}, "no [model] section"),
        ({**base, "train": {"optimizer": "adam"}}, "train.optimizer must be one of adamw, sgd"),
        ({**base, "train": {"scheduler": "step"}}, "train.scheduler must be one of cosine"),
        ({**base, "train": {"plateau_factor": 1.0}}, "train.plateau_factor must be between 0"),
        ({**base, "train": {"momentum": 1.5}}, "train.momentum is a probability"),
        ({**base, "train": {"min_lr": -1e-6}}, "train.min_lr must not be negative"),
        ({**base, "train": {"patience": -1}}, "train.patience must not be negative"),
        ({**base, "train": {"nesterov": "yes"}}, "train.nesterov must be true or false"),
        ({**base, "vocab": "missing/vocab.json"}, "vocab: cannot read missing/vocab.json"),
        ({**base, "vocab": '["a", 1]'}, "vocab: not a JSON list of tokens"),
        ({**base, "vocab": "[1, 2"}, "vocab: not a JSON list of tokens"),
    ]:
        with pytest.raises(ConfigError) as err:
            Config.from_dict(raw)
        assert words in str(err.value), (raw, str(err.value))


def test_defaults_and_round_trip_through_plain_data():
    cfg = Config.from_dict({"model": {"name": "crnn", "hidden": 32}, "train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data == DataConfig() and cfg.train.epochs == TrainConfig().epochs
    plain = cfg.to_dict()
    assert Config.from_dict(plain) == cfg  # what a checkpoint stores loads back the same
    # A checkpoint's config from before the defaults moved: every key spelled out.
    old = {
        "model": {"name": "transformer", "d_model": 32, "nhead": 2},
        "data": {"train": "train", "val_size": 500, "test": "2014", "augment": True},
        "train": {"epochs": 60, "lr": 5e-4, "label_smoothing": 0.1, "bf16": "auto", "seed": 1},
    }
    assert Config.from_dict(old).model == old["model"]


def test_the_training_options_and_a_vocabulary_file(tmp_path):
    cfg = Config.from_dict({"model": {"name": "crnn"}})
    assert (cfg.train.optimizer, cfg.train.scheduler) == ("adamw", "cosine")  # as before
    assert cfg.train.eval_max_len == 0 and cfg.train.patience == 0
    raw = {"model": {"name": "crnn"}}
    apply_overrides(raw, ["train.optimizer=sgd", "train.nesterov=true", "train.scheduler=plateau"])
    apply_overrides(raw, ["train.plateau_factor=0.3", "train.min_lr=1e-5", "train.eval_max_len=50"])
    cfg = Config.from_dict(raw)
    assert cfg.train.optimizer == "sgd" and cfg.train.nesterov is True
    assert cfg.train.plateau_factor == 0.3 and cfg.train.min_lr == 1e-5
    assert cfg.train.scheduler == "plateau" and cfg.train.eval_max_len == 50
    # A vocabulary file is read when the config is checked: checkpoints hold the tokens.
    (tmp_path / "vocab.json").write_text('["x", "\\\\text", "~"]')
    cfg = Config.from_dict({"model": {"name": "crnn"}, "vocab": str(tmp_path / "vocab.json")})
    assert cfg.vocab == '["x", "\\\\text", "~"]'
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_overrides_know_the_fields():
    raw = {"model": {"name": "transformer"}}
    apply_overrides(raw, ["data.test=2016", "train.bf16=false", "train.patience=3"])
    cfg = Config.from_dict(raw)
    assert cfg.data.test == "2016"  # a text field keeps the text, though it reads as a number
    assert cfg.train.bf16 is False and cfg.train.patience == 3
    with pytest.raises(ConfigError, match=r"train\.lrr \(did you mean train\.lr\?\)"):
        apply_overrides(raw, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config section"):
        apply_overrides(raw, ["trian.lr=1"])


def test_train_cli_names_the_bad_entry_without_a_traceback(capsys, tmp_path):
    from hmer.cli import main

    config = str(ROOT / "configs" / "comer-small.toml")
    run = str(tmp_path / "run")
    for extra, words in [
        (["--set", "train.lrr=1"], "unknown config key train.lrr"),
        (["--set", "model.encoder_cfg.depthh=3"], "cannot be built"),
        (["--set", "model.nhead=7"], "cannot be built"),
        (["--set", "model.name=nope"], "unknown model family"),
        (["--vocab", str(tmp_path / "nope.json")], "vocab: cannot read"),
        (["--set", "train.scheduler=steps"], "train.scheduler must be one of cosine, plateau"),
    ]:
        assert main(["train", config, "--run-dir", run, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hmer train: ") and words in err and "Traceback" not in err
    assert not Path(run).exists()  # refused before anything was written


def test_train_help_documents_the_training_options(capsys):
    from hmer.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for words in ["--set train.patience=", "early stopping", 'optimizer = "adamw" | "sgd"']:
        assert words in text, words
    for key in ["scheduler", "plateau_factor", "plateau_patience", "min_lr", "eval_max_len"]:
        assert key in text and key in TrainConfig.__dataclass_fields__, key
    assert "--vocab" in text and "hmer data vocab" in text
