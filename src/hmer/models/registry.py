"""Model registry: each family registers its class under a name; configs pick one by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class decorator adding a model family to the registry.

    The constructor takes ``vocab_size`` first and the config's keyword arguments, each with its
    default: that signature is what :func:`model_parameters` (and so config checking) reads.
    """

    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def _family(name: str) -> Callable[..., nn.Module]:
    import hmer.models  # noqa: F401  (imports every family so that it registers)

    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(name: str, vocab_size: int, **config) -> nn.Module:
    """Build a registered model; ``config`` are the family's keyword arguments."""
    return _family(name)(vocab_size=vocab_size, **config)


def model_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments a family's constructor takes (``vocab_size`` excluded)."""
    params = inspect.signature(_family(name)).parameters
    return {
        k: p
        for k, p in params.items()
        if k != "vocab_size" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def list_models() -> list[str]:
    """Names of the registered families."""
    import hmer.models  # noqa: F401

    return sorted(_MODELS)
