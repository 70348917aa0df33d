"""Training configuration: every default once, typed, and checked before anything runs.

A config (TOML, or the JSON a run folder holds) has three sections. ``[model]`` names a registered
family (``name``) and gives its constructor's keyword arguments; their defaults live in the
family's constructor. ``[data]`` and ``[train]`` are :class:`DataConfig` and :class:`TrainConfig`,
whose defaults are what the shipped configs share, so a file states only what differs. An
optional top-level ``vocab`` (a JSON token list, or the path of a ``.json`` file holding one, as
``hmer data vocab`` writes it) replaces the CROHME dictionary; a path is read when the config is
checked, so run folders and checkpoints hold the tokens themselves.

Unknown sections or keys and values of the wrong type raise :class:`ConfigError` naming the key
(``train.lrr``, with the nearest known key); checkpoints keep the config as the plain dict of
:meth:`Config.to_dict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmer.models.targets import LABEL_SMOOTHING


class ConfigError(ValueError):
    """A config entry that is unknown, missing or of the wrong type; the message names it."""


@dataclass
class DataConfig:
    """Which samples train, select and test a model, and how they are augmented."""

    # A CROHME split name, a .pkl of samples (hmer synth) or a .tsv of ID<TAB>LaTeX lines whose
    # ids name images beside it (a user's own data; hmer.data.dataset.read_image_captions).
    train: str = "train"
    val_size: int = 500  # expressions held out of training for model selection
    val_split: str = "random"  # "random" expressions or whole "formula"s (every writer's copy)
    train_limit: int = 0  # a random subset of this many training expressions (0: all)
    extra_train: list[str] = field(default_factory=list)  # more training data, never validated on
    test: str = "2014"  # reported on every test_every epochs, never used for selection ("": none)
    pixels_per_batch: int = 16 * 96 * 320  # batch size per bucket shape (16 images of 96 x 320)
    augment: bool = True  # ink and render augmentation of the training batches
    photo_p: float = 0.0  # share of image renders that also get photometric changes
    foreign_p: float = 0.0  # share drawn in other tools' styles, then normalized as at recognition
    # > 0: their pen width a share of the symbol height, log-uniform from 0.025 up to this
    # (0: 1-7 px whatever the size)
    foreign_line_ratio: float = 0.0
    ink_swap_p: float = 0.0  # chance that neighbouring strokes swap order (stroke models)
    ink_reverse_p: float = 0.0  # chance that a stroke is drawn end to start (stroke models)
    ink_drop_p: float = 0.0  # chance that each inner pen point is dropped


@dataclass
class TrainConfig:
    """The optimization (AdamW or SGD; linear warm-up, then cosine decay or a plateau schedule),
    checkpoints, evaluation and early stopping."""

    epochs: int = 60
    lr: float = 5e-4
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw", or "sgd" with momentum (the WAP-era seeds)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    warmup_steps: int = 500
    # "cosine": decay to 1% of lr over the run. "plateau": lr times plateau_factor once
    # validation ExpRate has not improved for more than plateau_patience epochs (torch's
    # ReduceLROnPlateau), never below min_lr.
    scheduler: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-6
    label_smoothing: float = LABEL_SMOOTHING  # unused by CTC models
    clip_grad: float = 1.0
    bf16: bool | str = (
        "auto"  # "auto": on a GPU that has bf16, or a CPU with native bf16 (emulated: ~10x slower)
    )
    # "cpu", or "cuda" / "cuda:N" (a GPU; under torchrun each process takes its LOCAL_RANK's GPU).
    # A run may move between them: resume a GPU run on a CPU with --device cpu.
    device: str = "cpu"
    seed: int = 1
    checkpoint_minutes: float = 5.0
    # Stop after this many minutes of training (validation and checkpoints not counted), with a
    # validation and a checkpoint at the stop; a resumed run with a larger budget goes on from
    # that batch (0: no limit). Fixed-budget comparisons set it with epochs planned to fill it.
    max_minutes: float = 0.0
    # Keep the end-of-epoch checkpoints of the last N epochs as epoch-E.pt, for weight averaging
    # (``hmer export epoch-*.pt``); 0: only last.pt and best.pt.
    keep_epochs: int = 0
    # Epochs between validations (and so between best.pt selections, early-stopping counts and
    # plateau steps); the last epoch and a spent budget always validate. More than 1 for runs of
    # many short epochs (a GPU), where validation would take much of the time.
    val_every: int = 1
    test_every: int = 2  # epochs between test-set evaluations (0: never)
    patience: int = 0  # stop after this many validations without gain (0: never)
    eval_max_len: int = 0  # most tokens a validation decode writes (0: 8 + twice the longest truth)
    num_workers: int = 1  # data loader processes (0: batches made in the training process)


@dataclass
class SymbolConfig:
    """The symbol classifier (``hmer symbol-train``): its crops, network and optimization.

    Hold-out and test sets are those of the expression models: the symbols of the same
    ``val_size`` random training expressions, and of the 2014 test expressions.
    """

    size: int = 32  # side of the square crops, in pixels
    variants: int = 2  # renders of each training symbol in the crop cache, used in turn by epoch
    width: int = 16  # channels of the first convolution stage (2x and 4x after)
    dropout: float = 0.2
    batch_size: int = 128
    epochs: int = 10
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    label_smoothing: float = 0.05
    val_size: int = 500
    seed: int = 1
    checkpoint_minutes: float = 5.0
    max_minutes: float = 0.0  # stop (resumably) after this much training time (0: no limit)


@dataclass
class GanConfig:
    """The printed-to-handwritten GAN (``hmer gan train``): data, image size, networks, losses
    and optimization. Images are the image models' inputs (white ink on black, symbols about
    ``SYMBOL_PX``) scaled by ``scale`` and placed top-left on a ``height`` x ``width`` canvas
    (larger ones shrunk to fit)."""

    # The printed domain: captions.tsv of hmer data render-latex (a .tsv image dataset).
    printed: str = ""
    # The handwritten domain: a CROHME split name, a .pkl of samples or a .tsv image dataset.
    handwritten: str = "train"
    printed_limit: int = 0  # use only the first this many printed images (0: all)
    handwritten_limit: int = 0  # a fixed random subset of this many handwritten samples (0: all)
    height: int = 64
    width: int = 256
    scale: float = 0.5  # canvas pixels per input pixel
    channels: int = 16  # generator and discriminator widths: channels x 1, 2, 4, 8, 8
    z_dim: int = 32
    embed_dim: int = 32  # domain embedding of the generator's conditional batch norms
    self_attention: bool = True  # one self-attention layer in each network (the ablation)
    input_skip: bool = True  # the generator starts as the identity (models/gan.py Generator)
    lambda_task: float = 1.0  # weight of the recognizer's loss on generated images (0: off)
    # The frozen recognizer of the task loss: a release or checkpoint ("": the shipped default).
    task_model: str = ""
    lambda_identity: float = 1.0  # L1 of G(printed -> printed) to its input, and D on domain 0
    batch_size: int = 8
    steps: int = 10000
    lr_g: float = 5e-5
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9
    seed: int = 1
    log_every: int = 20
    checkpoint_minutes: float = 5.0
    max_minutes: float = 0.0  # stop (resumably) after this much training time (0: no limit)


SECTIONS = {"data": DataConfig, "train": TrainConfig}
CHOICES = {
    ("data", "val_split"): ("random", "formula"),
    ("train", "optimizer"): ("adamw", "sgd"),
    ("train", "scheduler"): ("cosine", "plateau"),
}
PROBABILITIES = {
    ("data", "photo_p"),
    ("data", "foreign_p"),
    ("data", "ink_swap_p"),
    ("data", "ink_reverse_p"),
    ("data", "ink_drop_p"),
    ("train", "momentum"),
    ("symbols", "dropout"),
    ("gan", "beta1"),
    ("gan", "beta2"),
}
# Numbers that must not be negative, and the one factor that must lie strictly between 0 and 1.
NON_NEGATIVE = {
    ("train", k)
    for k in (
        "min_lr",
        "plateau_patience",
        "patience",
        "eval_max_len",
        "max_minutes",
        "keep_epochs",
    )
}
FACTORS = {("train", "plateau_factor")}
POSITIVE = {("train", "val_every")}


@dataclass
class Config:
    """A whole, checked training config."""

    model: dict[str, Any]
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vocab: str | None = None

    @classmethod
    def from_dict(cls, raw: dict | Config) -> Config:
        """Check a config dict (as read from TOML/JSON or stored in a checkpoint)."""
        if isinstance(raw, Config):
            return raw
        if not isinstance(raw, dict):
            raise ConfigError("a config is a table of sections ([model], [data], [train])")
        known = {"model", "vocab", *SECTIONS}
        for key in raw:
            if key not in known:
                raise ConfigError(f"unknown config section {key!r}{_nearest(key, known)}")
        if "model" not in raw:
            raise ConfigError("the config has no [model] section")
        vocab = raw.get("vocab")
        if vocab is not None:
            vocab = _vocab_text(vocab)
        sections = {name: _section(name, raw.get(name, {})) for name in SECTIONS}
        return cls(model=check_model(raw["model"]), vocab=vocab, **sections)

    def to_dict(self) -> dict:
        """Plain data: every value, defaults included (what run folders and checkpoints keep)."""
        out = {
            "model": json.loads(json.dumps(self.model)),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }
        if self.vocab is not None:
            out["vocab"] = self.vocab
        return out


def _vocab_text(vocab) -> str:
    """The JSON token list a config's ``vocab`` gives: itself, or the content of its file."""
    if not isinstance(vocab, str):
        raise ConfigError("vocab must be a JSON list of tokens, as text, or a .json file of one")
    text = vocab
    if not vocab.lstrip().startswith("["):  # a path
        try:
            text = Path(vocab).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"vocab: cannot read {vocab} ({exc})") from exc
    try:
        tokens = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"vocab: not a JSON list of tokens ({exc})") from exc
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ConfigError("vocab: not a JSON list of tokens (non-empty strings)")
    return text


def _nearest(key: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _type_error(where: str, want: str, value) -> ConfigError:
    return ConfigError(f"{where} must be {want}, not {value!r}")


def _check_value(where: str, annotation: str, value):
    """``value`` as a field annotated ``annotation`` holds it, or a ConfigError."""
    if annotation == "bool":
        if not isinstance(value, bool):
            raise _type_error(where, "true or false", value)
    elif annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(where, "an integer", value)
    elif annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(where, "a number", value)
        value = float(value)
    elif annotation == "str":
        if not isinstance(value, str):
            raise _type_error(where, "text", value)
    elif annotation == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(where, "a list of text", value)
    elif annotation == "bool | str":  # bf16
        if not (isinstance(value, bool) or value == "auto"):
            raise _type_error(where, 'true, false or "auto"', value)
    else:  # a new field type must be taught here
        raise TypeError(f"{where}: no check for type {annotation}")
    return value


def _section(name: str, raw, kind: type | None = None):
    """The dataclass ``kind`` (default: the config section ``name``) checked from ``raw``."""
    kind = kind or SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    values = {}
    for key, value in raw.items():
        where = f"{name}.{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {where}{_nearest(key, fields, f'{name}.')}")
        value = _check_value(where, str(fields[key].type), value)
        choices = CHOICES.get((name, key))
        if choices and value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}, not {value!r}")
        if (name, key) in PROBABILITIES and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where} is a probability (0 to 1), not {value!r}")
        if (name, key) in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{where} must not be negative, not {value!r}")
        if (name, key) in POSITIVE and value < 1:
            raise ConfigError(f"{where} must be at least 1, not {value!r}")
        if (name, key) in FACTORS and not 0.0 < value < 1.0:
            raise ConfigError(f"{where} must be between 0 and 1 (exclusive), not {value!r}")
        if (name, key) == ("data", "foreign_line_ratio"):
            # numpy and scipy: only when asked
            from hmer.data.augment import LINE_RATIO_MIN, valid_line_ratio

            if not valid_line_ratio(value):
                raise ConfigError(
                    f"{where} must be 0, or above {LINE_RATIO_MIN} up to 1, not {value!r}"
                )
        if (name, key) == ("train", "device") and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ConfigError(f'{where} must be "cpu", "cuda" or "cuda:N", not {value!r}')
        values[key] = value
    return kind(**values)


def table_config(raw: dict, table: str, kind: type, overrides: list[str] = ()):
    """The checked dataclass ``kind`` from the one ``[table]`` table of ``raw`` (a config
    file's dict, may be empty) and ``KEY=VALUE`` overrides (values read as TOML, as in
    :func:`apply_overrides`): the config of a trainer with a single table (symbols, gan)."""
    unknown = set(raw) - {table}
    if unknown:
        raise ConfigError(f"a {table} config has only a [{table}] table, not {sorted(unknown)}")
    values = dict(raw.get(table, {}))
    types = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key = key.strip()
        values[key] = override_value(text, types.get(key) == "str")
    return _section(table, values, kind)


def symbol_config(raw: dict, overrides: list[str] = ()) -> SymbolConfig:
    """A checked :class:`SymbolConfig` from the ``[symbols]`` table of ``raw`` and overrides
    (:func:`table_config`)."""
    cfg = table_config(raw, "symbols", SymbolConfig, overrides)
    for key in ("size", "variants", "width", "batch_size", "epochs", "val_size"):
        if getattr(cfg, key) < (8 if key == "size" else 1):
            raise ConfigError(f"symbols.{key} is too small: {getattr(cfg, key)}")
    return cfg


def gan_config(raw: dict, overrides: list[str] = ()) -> GanConfig:
    """A checked :class:`GanConfig` from the ``[gan]`` table of ``raw`` and overrides
    (:func:`table_config`)."""
    cfg = table_config(raw, "gan", GanConfig, overrides)
    for key in ("height", "width"):
        value = getattr(cfg, key)
        if value < 16 or value % 16:
            raise ConfigError(f"gan.{key} must be a multiple of 16 (at least 16), not {value}")
    for key in ("channels", "z_dim", "embed_dim", "batch_size", "steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"gan.{key} is too small: {getattr(cfg, key)}")
    if cfg.batch_size < 2:
        raise ConfigError("gan.batch_size must be at least 2 (batch norm needs a batch)")
    if not 0.0 < cfg.scale <= 4.0:
        raise ConfigError(f"gan.scale must be in (0, 4], not {cfg.scale}")
    for key in ("lambda_task", "lambda_identity", "lr_g", "lr_d", "max_minutes"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"gan.{key} must not be negative, not {getattr(cfg, key)}")
    return cfg


def check_model(raw) -> dict:
    """Check a [model] section against its family's constructor; returns a copy."""
    from hmer.models.registry import list_models, model_parameters

    if not isinstance(raw, dict):
        raise ConfigError("[model] must be a table of keys")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"model.name must name a model family: {', '.join(list_models())}")
    if name not in list_models():
        raise ConfigError(
            f"unknown model family model.name = {name!r}{_nearest(name, list_models())}; "
            f"known: {', '.join(list_models())}"
        )
    params = model_parameters(name)
    for key, value in raw.items():
        if key == "name":
            continue
        where = f"model.{key}"
        if key not in params:
            raise ConfigError(
                f"unknown config key {where} for family {name!r}{_nearest(key, params, 'model.')}"
            )
        default = params[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        if isinstance(default, bool):
            want = "bool"
        elif isinstance(default, int):
            want = "int"
        elif isinstance(default, float):
            want = "float"
        elif isinstance(default, str):
            want = "str"
        elif isinstance(default, tuple | list):
            if not isinstance(value, list | tuple):
                raise _type_error(where, "a list", value)
            continue
        else:
            continue
        _check_value(where, want, value)
    return json.loads(json.dumps(raw))  # a deep copy, and plain data


def read_config(path: str | Path) -> dict:
    """The raw config dict of a TOML file (or of the JSON a run folder holds)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return json.load(fh) if path.suffix == ".json" else tomllib.load(fh)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable config ({exc})") from exc


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read, override (``section.key=value`` items, see :func:`apply_overrides`) and check."""
    return Config.from_dict(apply_overrides(read_config(path), list(overrides)))


def _field_type(section: str, key: str) -> str | None:
    kind = SECTIONS.get(section)
    if kind is None:
        return None
    for f in dataclasses.fields(kind):
        if f.name == key:
            return str(f.type)
    known = kind.__dataclass_fields__
    raise ConfigError(f"unknown config key {section}.{key}{_nearest(key, known, f'{section}.')}")


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Set dotted ``section.key=value`` entries of a raw config dict (in place; returned).

    Values are read as TOML (``1e-4``, ``false``, ``[1, 2]``, ``"text"``); a text field keeps the
    raw text (``data.test=2014`` names a split, not a number), and so does a value that is not
    TOML. Keys of [data] and [train] must exist (``train.lrr`` is refused); [model] keys are
    checked against the family when the whole config is.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} is not SECTION.KEY=VALUE")
        *path, last = key.split(".")
        if path[0] not in {"model", *SECTIONS}:
            known = ["model", *SECTIONS]
            raise ConfigError(f"unknown config section {path[0]!r}{_nearest(path[0], known)}")
        kind = _field_type(path[0], last) if len(path) == 1 else None
        node = config
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a table")
        text_field = kind == "str" or (kind is None and isinstance(node.get(last), str))
        node[last] = override_value(raw, text_field)
    return config


def override_value(raw: str, text_field: bool) -> Any:
    """An override's value: ``raw`` read as TOML, except that a text field keeps the raw text
    (``data.test=2014`` names a split, ``out=runs/x`` a path), as does text that is not TOML (the
    field's type check then names the mistake)."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return raw if text_field and not isinstance(value, str) else value


def check_model_builds(config: Config) -> None:
    """Build the configured model once, so that a bad nested value (``encoder_cfg``, a size that
    does not divide) is a :class:`ConfigError` before training starts, not a traceback."""
    import torch

    from hmer.models import create_model

    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    try:
        with torch.random.fork_rng():  # the caller's random stream is left as it was
            create_model(config.model["name"], 8, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ConfigError(f"[model] ({config.model['name']}) cannot be built: {text}") from exc
