"""Model registry: each family registers a constructor under a name; configs pick one by name."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    """Class or function decorator adding a model family to the registry."""

    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def create_model(name: str, vocab_size: int, **config) -> nn.Module:
    """Build a registered model; ``config`` are the family's keyword arguments."""
    import hmer.models  # noqa: F401  (imports every family so that it registers)

    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](vocab_size=vocab_size, **config)


def list_models() -> list[str]:
    import hmer.models  # noqa: F401

    return sorted(_MODELS)
