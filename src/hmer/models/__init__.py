"""Model families. Importing this package registers every family in the registry."""

from hmer.models import crnn, seq2seq, strokes, transformer  # noqa: F401
from hmer.models.registry import create_model, list_models, register

__all__ = ["create_model", "list_models", "register"]
