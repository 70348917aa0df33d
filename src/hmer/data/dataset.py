"""CROHME datasets: read InkML with its caption tokens, cache them, and list the splits."""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hmer.data.files import atomic_open
from hmer.data.inkml import InkMLError, parse_inkml

CACHE_VERSION = 1


@dataclass
class Sample:
    """One expression: id, pen traces, caption tokens, raw truth."""

    id: str
    traces: list[np.ndarray]
    tokens: list[str]
    truth: str = ""


@dataclass
class Split:
    name: str
    samples: list[Sample]
    errors: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HMER_CACHE", Path.home() / ".cache" / "hmer"))


def default_data_dir() -> Path:
    """The CROHME folder: ``$HMER_DATA`` or ``../shared/data/crohme`` next to the project root."""
    if "HMER_DATA" in os.environ:
        return Path(os.environ["HMER_DATA"])
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        cand = parent.parent / "shared" / "data" / "crohme"
        if cand.is_dir():
            return cand
    return Path("../shared/data/crohme")


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """Read ``ID<TAB>space separated tokens`` lines."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        key, _, text = line.partition("\t")
        out[key.strip()] = text.split()
    return out


def iter_inkml(source: str | Path) -> Iterator[tuple[str, bytes | Exception]]:
    """Yield (file id, raw bytes or the read error) for every InkML in a folder or a .tar.gz."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*.inkml")):
            try:
                yield path.stem, path.read_bytes()
            except OSError as exc:
                yield path.stem, exc
    elif source.name.endswith((".tar.gz", ".tgz", ".tar")):
        # Read members in archive order: seeking backwards in a gzip stream re-reads it all.
        found: list[tuple[str, bytes | Exception]] = []
        with tarfile.open(source) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".inkml"):
                    fh = tar.extractfile(member)
                    data = fh.read() if fh else OSError(f"unreadable member {member.name}")
                    found.append((member.name, data))
        for name, data in sorted(found, key=lambda item: item[0]):
            yield Path(name).stem, data
    else:
        raise FileNotFoundError(f"{source}: not a folder of InkML or a .tar.gz archive")


def load_split(
    name: str, source: str | Path, captions: dict[str, list[str]] | None, progress: bool = True
) -> Split:
    """Read every InkML of ``source``.

    Tokens come from ``captions`` (files without one are skipped) or, when ``captions`` is None,
    from the normalized InkML truth.
    """
    split = Split(name, [])
    for stem, data in tqdm(list(iter_inkml(source)), desc=f"read {name}", disable=not progress):
        if isinstance(data, Exception):
            split.errors.append(f"{stem}: {data}")
            continue
        try:
            ink = parse_inkml(data, f"{Path(source).name}:{stem}")
        except InkMLError as exc:
            split.errors.append(str(exc))
            continue
        if captions is not None:
            if stem not in captions:
                split.errors.append(f"{stem}: no caption")
                continue
            tokens = captions[stem]
        else:
            from hmer.data.latex import normalize_tokens

            tokens = normalize_tokens(ink.truth or "")
            if not tokens:
                split.errors.append(f"{Path(source).name}:{stem}: no truth annotation")
                continue
        traces = [t[:, :2].astype(np.float32) for t in ink.traces]
        split.samples.append(Sample(stem, traces, tokens, ink.truth or ""))
    return split


CROHME_SPLITS = {
    "train": ("TrainINKML.tar.gz", "train_caption.txt"),
    "2014": ("TestEM2014GT.tar.gz", "2014_caption.txt"),
}

# Files of the official data known to be unusable; the published systems skip them too.
KNOWN_DEFECTS = {"MfrDB3088": "empty file in the CROHME training set"}


def cache_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where split ``name`` is cached."""
    return (cache_dir or default_cache_dir()) / f"crohme-{name}-v{CACHE_VERSION}.pkl"


def find_source(name: str, data_dir: Path) -> tuple[Path, Path | None]:
    """The InkML source (archive or extracted folder) of a CROHME split and its caption file.

    The caption file is None when absent: tokens then come from the normalized InkML truth.
    """
    archive, caption_file = CROHME_SPLITS[name]
    folder = data_dir / archive.removesuffix(".tar.gz")
    source = data_dir / archive if (data_dir / archive).exists() else folder
    if not source.exists():
        raise FileNotFoundError(f"{data_dir}: neither {archive} nor {folder.name}/ found")
    captions = data_dir / caption_file
    return source, captions if captions.exists() else None


def prepare_split(
    name: str,
    source: Path,
    captions: Path | None,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> tuple[Split, bool]:
    """Read and cache a split unless it is cached already; returns it and whether it was built."""
    path = cache_path(name, cache_dir)
    if path.exists() and not force:
        with open(path, "rb") as fh:
            return pickle.load(fh), False
    split = load_split(name, source, read_captions(captions) if captions else None, progress)
    save_atomic(path, split)
    return split, True


def load_cached(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> Split:
    """Load a prepared CROHME split from the cache, preparing it first if needed."""
    path = cache_path(name, cache_dir)
    if path.exists():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    source, captions = find_source(name, data_dir or default_data_dir())
    return prepare_split(name, source, captions, cache_dir)[0]


def save_atomic(path: Path, obj) -> None:
    """Pickle ``obj`` to ``path`` via a temporary file and rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
