"""Model families. Importing this package registers every family in the registry."""

from hmer.models import crnn, seq2seq, strokes, transformer  # noqa: F401
from hmer.models.base import CTCModel, IncrementalDecoder, Memory, Seq2SeqModel
from hmer.models.registry import create_model, list_models, model_parameters, register

__all__ = [
    "CTCModel",
    "IncrementalDecoder",
    "Memory",
    "Seq2SeqModel",
    "create_model",
    "list_models",
    "model_parameters",
    "register",
]
