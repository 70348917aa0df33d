"""Release weights: safetensors files with their config and vocabulary, checked by SHA-256.

The package ships its default models in ``hmer/weights/``; ``MANIFEST.json`` there lists each file
with its checksum and the input kind it is the default for. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hmer.data.files import atomic_open, is_regular_file
from hmer.data.vocab import Vocab
from hmer.models import create_model

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = "MANIFEST.json"
# The fitted combination of the shipped image and stroke models for pen input (hmer.fusion).
FUSION_PARAMS = WEIGHTS_DIR / "fusion.json"


class WeightsError(RuntimeError):
    """Missing, corrupt or mismatching weights."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path = WEIGHTS_DIR) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def save_release(
    model: torch.nn.Module,
    model_config: dict,
    vocab: Vocab,
    path: str | Path,
    fp16: bool = True,
    default_for: str | None = None,
    info: dict | None = None,
) -> Path:
    """Write ``model`` as safetensors (fp16 floats unless told otherwise) and list it in the
    folder's manifest with its checksum. ``model_config`` must include the registry ``name``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        tensors[k] = v.half() if fp16 and v.is_floating_point() else v
    meta = {
        "config": json.dumps(model_config),
        "vocab": vocab.to_json(),
        "info": json.dumps(info or {}),
    }
    save_file(tensors, str(path), metadata=meta)
    manifest = read_manifest(path.parent)
    entry = {"sha256": sha256(path), "input_kind": model.input_kind}
    if default_for:
        entry["default_for"] = default_for
        for other in manifest.values():
            if other.get("default_for") == default_for:
                other.pop("default_for")
    manifest[path.name] = entry
    # atomic: a torn manifest would make every release in the folder unloadable
    with atomic_open(path.parent / MANIFEST, "w", durable=True, encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a safetensors release (checksum verified when its folder's manifest lists it)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    entry = read_manifest(path.parent).get(path.name)
    if entry and entry["sha256"] != sha256(path):
        raise WeightsError(f"{path}: checksum mismatch (file corrupt or replaced)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            meta = dict(fh.metadata() or {})
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, {
        "config": json.loads(meta.get("config", "{}")),
        "vocab": meta.get("vocab"),
        "info": json.loads(meta.get("info", "{}")),
    }


def build_model(model_config: dict, vocab: Vocab, state: dict) -> torch.nn.Module:
    """The model a ``[model]`` config describes (``name`` and the family's keyword arguments),
    holding ``state``, in eval mode: the one way releases and checkpoints become models."""
    cfg = dict(model_config)
    model = create_model(cfg.pop("name"), len(vocab), **cfg)
    model.load_state_dict(state)
    return model.eval()


def _expression_family(path: str | Path, model_config: dict) -> None:
    """Refuse weights of a family that is no expression model (the symbol classifier)."""
    from hmer.models.registry import list_models
    from hmer.models.symbols import FAMILY

    name = model_config.get("name")
    if name == FAMILY:
        raise WeightsError(
            f"{path}: a symbol classifier, not an expression model: hmer symbol reads with it"
        )
    if name not in list_models():
        raise WeightsError(f"{path}: unknown model family {name!r}")


def load_model(path: str | Path) -> tuple[torch.nn.Module, Vocab, dict]:
    """Build the model a release describes and load its weights (eval mode)."""
    state, meta = load_weights(path)
    if not meta["vocab"] or "name" not in meta["config"]:
        raise WeightsError(f"{path}: no model config/vocabulary in the file's metadata")
    _expression_family(path, meta["config"])
    vocab = Vocab.from_json(meta["vocab"])
    return build_model(meta["config"], vocab, state), vocab, meta


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint (``.pt``) without running any code it might hold.

    Only tensors and plain data (numbers, strings, lists, dicts) are loaded
    (``torch.load(weights_only=True)``); a file holding other objects is refused with
    :class:`WeightsError`, as is anything that is not an hmer training checkpoint.
    """
    path = Path(path)
    if not is_regular_file(path):
        raise WeightsError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: refused: the file holds objects other than tensors and plain data, and "
            "loading them could run code; only checkpoints written by hmer train are loaded"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise WeightsError(f"{path}: not a readable checkpoint file") from exc
    if not isinstance(ckpt, dict) or not {"model", "config", "vocab"} <= set(ckpt):
        raise WeightsError(f"{path}: not an hmer training checkpoint")
    return ckpt


def average_checkpoints(paths: list[str | Path]) -> dict:
    """One checkpoint whose weights are the mean of those of ``paths`` (the same model trained
    on; the last checkpoint's config, vocabulary and run state), as weight averaging of the
    last epochs' checkpoints uses. Integer tensors (BatchNorm's step counts) are the last's."""
    ckpts = [load_checkpoint(p) for p in paths]
    last = ckpts[-1]
    for path, ckpt in zip(paths, ckpts, strict=True):
        same = ckpt["config"]["model"] == last["config"]["model"] and ckpt["vocab"] == last["vocab"]
        if not same or ckpt["model"].keys() != last["model"].keys():
            raise WeightsError(f"{path}: not the same model as {paths[-1]}; cannot average them")
    mean = {}
    for key, tensor in last["model"].items():
        if tensor.is_floating_point():
            mean[key] = torch.stack([c["model"][key].float() for c in ckpts]).mean(0)
            mean[key] = mean[key].to(tensor.dtype)
        else:
            mean[key] = tensor
    epochs = [c["state"].get("epoch") for c in ckpts]
    return {**last, "model": mean, "state": {**last["state"], "averaged_epochs": epochs}}


def load_checkpoint_model(
    path: str | Path, ckpt: dict | None = None
) -> tuple[torch.nn.Module, Vocab, dict]:
    """The model (eval mode) and vocabulary of a training checkpoint, and the checkpoint
    (``ckpt``: the checkpoint of ``path``, already loaded)."""
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    _expression_family(path, ckpt["config"]["model"])
    vocab = Vocab.from_json(ckpt["vocab"])
    return build_model(ckpt["config"]["model"], vocab, ckpt["model"]), vocab, ckpt


def load_any(path: str | Path | None) -> tuple[torch.nn.Module, Vocab, str]:
    """(model, vocabulary, name) from a release file, a training checkpoint (``.pt``, named by
    its run folder), an ONNX export folder (``hmer export --onnx``) or, without a path, the
    shipped default image model."""
    if path is not None and str(path).endswith(".pt"):
        model, vocab, _ = load_checkpoint_model(path)
        return model, vocab, Path(path).parent.name
    if path is not None and Path(path).is_dir():
        from hmer.onnx import load_onnx

        model, vocab = load_onnx(path)
        return model, vocab, Path(path).name
    p = weights_for("image", path)
    model, vocab, _ = load_model(p)
    return model, vocab, p.stem


def default_weights(input_kind: str) -> Path:
    """The shipped default model file for "image" or "strokes" input, or the "symbol"
    classifier."""
    for name, entry in read_manifest().items():
        if entry.get("default_for") == input_kind:
            return WEIGHTS_DIR / name
    raise WeightsError(f"no default {input_kind} model is shipped in {WEIGHTS_DIR}")


# Which kinds of model read each kind of input, preferred first: pen input (.inkml, drawn
# strokes) goes to a stroke model, else it is rendered for an image model; bitmaps only an image
# model reads.
READERS = {"image": ("image",), "strokes": ("strokes", "image")}


def weights_for(input_kind: str, model: str | Path | None = None, render_ink: bool = True) -> Path:
    """The model file that reads ``input_kind`` input ("image" or "strokes"): where hmer decides
    which model reads which input.

    ``model`` when given (it reads every input); else the shipped default of the first kind in
    :data:`READERS` that has one, so pen input goes to the shipped image model, rendered, when no
    stroke model is the default. ``render_ink=False`` takes only a default of ``input_kind``
    itself. Raises :class:`WeightsError` when none is shipped.
    """
    if model:
        return Path(model)
    kinds = READERS.get(input_kind, (input_kind,)) if render_ink else (input_kind,)
    for kind in kinds[:-1]:
        try:
            return default_weights(kind)
        except WeightsError:
            continue
    return default_weights(kinds[-1])


def shipped_weights(input_kind: str) -> Path:
    """A shipped model file of ``input_kind``: its default, else the first one the manifest lists
    (a stroke model can ship without being the default reader of pen input)."""
    try:
        return default_weights(input_kind)
    except WeightsError:
        for name, entry in read_manifest().items():
            if entry.get("input_kind") == input_kind:
                return WEIGHTS_DIR / name
        raise


# How pen input can be read: rendered for the image model, by the stroke model, or by both fused.
ROUTES = ("image", "strokes", "fusion")


def ink_route() -> str:
    """Which route reads pen input when none is asked for: "fusion" when the shipped fusion
    parameters say so (``default_for_ink``), else "strokes" when a stroke model is the default,
    else "image" (rendered), as :func:`weights_for` decides."""
    if FUSION_PARAMS.is_file():
        try:
            default = json.loads(FUSION_PARAMS.read_text()).get("default_for_ink") is True
        except (ValueError, AttributeError) as exc:
            raise WeightsError(f"{FUSION_PARAMS}: not a fusion parameter file ({exc})") from exc
        if default:
            return "fusion"
    try:
        default_weights("strokes")
    except WeightsError:
        return "image"
    return "strokes"


def shipped_models() -> dict[str, dict]:
    """The manifest of shipped weights: file name -> checksum, input kind, default role."""
    return read_manifest()
