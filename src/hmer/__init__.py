"""hmer: handwritten mathematical expressions to LaTeX, on a CPU, offline."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import hmer` stays cheap for the CLI and the data tools.
    if name == "Recognizer":
        from hmer.recognize import Recognizer

        return Recognizer
    if name == "FusionRecognizer":
        from hmer.fusion import FusionRecognizer

        return FusionRecognizer
    raise AttributeError(name)
