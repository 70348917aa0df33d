"""Datasets: CROHME InkML with its caption tokens (cached), and a user's images with a TSV of
captions."""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hmer.data.files import atomic_open
from hmer.data.inkml import Ink, InkMLError, parse_inkml

CACHE_VERSION = 1


@dataclass
class Sample:
    """One expression: id, pen traces, caption tokens, raw truth; or, for a user's bitmap, no
    traces and the ``image`` as recognition prepares it (uint8, white ink on black)."""

    id: str
    traces: list[np.ndarray]
    tokens: list[str]
    truth: str = ""
    # (pickles from before it load with the class default; arrays do not compare with ==)
    image: np.ndarray | None = field(default=None, compare=False)


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


def read_tsv(
    path: str | Path, parse: Callable[[str], list[str]] = str.split
) -> tuple[dict[str, list[str]], list[str]]:
    """Read ``ID<TAB>text`` lines (caption files, predictions) into id -> ``parse(text)``.

    The one reader of these files: returns the rows and one message per problem, each naming the
    file (and line): unreadable or non-UTF-8 file, a line without TAB or with an empty id, a
    duplicate id (the later line is used), no lines at all. Blank lines are skipped.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return {}, [f"{path}: cannot read ({exc.strerror or exc})"]
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    rows: dict[str, list[str]] = {}
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            errors.append(f"{path}:{lineno}: no TAB between id and LaTeX")
            continue
        key, _, value = line.partition("\t")
        key = key.strip()
        if not key:
            errors.append(f"{path}:{lineno}: empty id")
            continue
        if key in rows:
            errors.append(f"{path}:{lineno}: duplicate id {key!r} (the later line is used)")
        rows[key] = parse(value)
    if not rows and not errors:
        errors.append(f"{path}: no ID<TAB>LaTeX lines")
    return rows, errors


def read_captions(path: str | Path) -> dict[str, list[str]]:
    """Read a caption file (``ID<TAB>space separated tokens`` lines, :func:`read_tsv`).

    Captions are the training truth, so any problem in the file is a ``ValueError`` naming it.
    """
    rows, errors = read_tsv(path)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ValueError("; ".join(errors[:3]) + more)
    return rows


def caption_tokens(latex: str) -> list[str]:
    r"""The caption tokens of a user's caption, plain LaTeX (``x^2+\text{if }y``) or
    space-tokenized (``x ^ { 2 }``): the caption conventions of
    :func:`hmer.data.latex.normalize_tokens`, keeping the written order of ``^`` and ``_``, so
    that the CROHME caption lines come back as they are written."""
    from hmer.data.latex import normalize_tokens

    return normalize_tokens(latex, canonical=False)


def _image_beside(folder: Path, key: str) -> Path | None:
    from hmer.data.images import IMAGE_SUFFIXES

    path = folder / key
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        return path
    for suffix in sorted(IMAGE_SUFFIXES | {s.upper() for s in IMAGE_SUFFIXES}):
        cand = path.with_name(path.name + suffix)
        if cand.is_file():
            return cand
    return None


def read_image_captions(path: str | Path, limit: int = 0) -> Split:
    """A user's dataset: ``ID<TAB>LaTeX`` lines (:func:`caption_tokens`) whose ids name images
    in the TSV's folder (``ID`` itself, or ``ID`` plus an image suffix such as ``.png``); with
    ``limit``, only the first ``limit`` lines are read into samples (their images prepared).

    Each image is prepared as ``hmer recognize`` prepares it, so a model trains on what it
    will read. Captions are the training truth: a missing or unreadable image, an empty caption
    or a malformed line is a ``ValueError`` naming it (the first few of them).
    """
    from hmer.data.images import ImageError, prepare_image

    path = Path(path)
    rows, errors = read_tsv(path, caption_tokens)
    samples = []
    for key, tokens in list(rows.items())[: limit or None]:
        image_path = _image_beside(path.parent, key)
        if image_path is None:
            errors.append(f"{path}: {key}: no image {key} (or {key}.png, .jpg...) in {path.parent}")
        elif not tokens:
            errors.append(f"{path}: {key}: empty caption")
        else:
            try:
                image = prepare_image(image_path, str(image_path))
            except (ImageError, OSError) as exc:
                errors.append(str(exc))
                continue
            samples.append(Sample(key, [], tokens, image=image))
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ValueError("; ".join(errors[:3]) + more)
    return Split(path.stem, samples)


def write_tsv(path: str | Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write ``ID<TAB>text`` lines that :func:`read_tsv` reads back, atomically.

    Tabs and line breaks inside a value would break the format, so they become spaces.
    """
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        for key, value in rows:
            fh.write(f"{key}\t{' '.join(str(value).split())}\n")


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


def read_inks(source: str | Path) -> list[tuple[str, Ink]]:
    """(file id, ink) of every readable InkML of a folder or archive; unreadable files are
    skipped (:func:`load_split` reports them)."""
    out = []
    for stem, data in iter_inkml(source):
        if isinstance(data, Exception):
            continue
        try:
            out.append((stem, parse_inkml(data, stem)))
        except InkMLError:
            continue
    return out


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


def known_defect(message: str) -> str | None:
    """Why a read error of :func:`load_split` (``Split.errors``) is a known defect, else None.

    The messages start with the file: ``STEM: ...`` (unreadable file, no caption) or
    ``SOURCE:STEM: ...`` (InkML errors, no truth annotation).
    """
    stem = message.split(":", 2)[1] if message.count(":") >= 2 else message.split(":", 1)[0]
    return KNOWN_DEFECTS.get(stem.strip())


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


def split_source(spec: str, data_dir: Path) -> tuple[str, Path, Path | None]:
    """(name, InkML source, caption file or None) of a split given as ``hmer data prepare`` takes
    it: a CROHME name (train, 2014) found in ``data_dir``, ``NAME=PATH``, or a bare folder or
    archive named after itself. A caption file ``NAME_caption.txt`` in ``data_dir`` is used when
    there is one."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        source = Path(path).expanduser()
    elif spec in CROHME_SPLITS:
        return (spec, *find_source(spec, data_dir))
    else:  # a bare path: name it after the folder or archive
        source = Path(spec).expanduser()
        name = source.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or archive")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{spec}: bad split name {name!r}")
    captions = data_dir / f"{name}_caption.txt"
    return name, source, captions if captions.exists() else None


def load_prepared(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> Split:
    """A prepared split by name: a CROHME split (prepared first if needed) or one that
    ``hmer data prepare`` cached; an unprepared or unreadable one is an error saying what to run.
    """
    path = cache_path(name, cache_dir)
    try:
        if name in CROHME_SPLITS:
            return load_cached(name, data_dir, cache_dir)
        if not path.exists():
            raise FileNotFoundError(
                f"split {name!r} is not prepared ({path} missing): run "
                f"hmer data prepare --splits {name}=PATH"
            )
        with open(path, "rb") as fh:
            split = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: unreadable cache file ({exc}); rebuild it with hmer data prepare --force"
        ) from exc
    if not isinstance(split, Split):
        raise ValueError(f"{path}: not a prepared split; rebuild it with hmer data prepare --force")
    return split


def render_split(
    split: Split, out_dir: Path, force: bool = False, progress: bool = True
) -> tuple[int, list[str]]:
    """Write each sample's natural render as ``out_dir/ID.png`` (existing files are kept unless
    ``force``); returns how many were written and one message per sample that failed."""
    from hmer.data.files import WriteError, save_png
    from hmer.data.render import render_natural

    written, errors = 0, []
    for sample in tqdm(split.samples, desc=f"render {split.name}", disable=not progress):
        path = out_dir / f"{sample.id}.png"
        if path.exists() and not force:
            continue
        try:
            save_png(render_natural(sample.traces), path)
            written += 1
        except WriteError as exc:
            errors.append(str(exc))
        except ValueError as exc:
            errors.append(f"{split.name}:{sample.id}: cannot render ({exc})")
    return written, errors


def save_atomic(path: Path, obj) -> None:
    """Pickle ``obj`` to ``path`` via a temporary file and rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
