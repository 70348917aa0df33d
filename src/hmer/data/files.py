"""Files: reading user files safely (regular files only, of bounded size), writing atomically."""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def read_regular_file(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    FIFOs, devices and sockets are refused without opening them (reading one could block
    forever). Raises ``OSError`` when unreadable, ``ValueError`` when not a regular file or too
    large; messages start with the path.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (a directory, FIFO or device)")
    too_large = f"{path}: {what} larger than {limit / (1024 * 1024):g} MB"
    if st.st_size > limit:
        raise ValueError(too_large)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)  # the file may have grown since stat
    if len(data) > limit:
        raise ValueError(too_large)
    return data


def is_regular_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file (following symlinks), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


_WRITERS = itertools.count()


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", durable: bool = False, **kwargs
) -> Iterator[IO]:
    """Write ``path`` through a temporary file renamed over it when the block ends.

    Readers, and a run killed mid-write, see the old file or the whole new one, never part of
    it; on an error the temporary file is removed and the old file stays. ``durable`` also
    flushes the data and the rename to the disk (checkpoints and logs that must survive a power
    cut). ``mode`` and ``kwargs`` are ``open``'s ("w" with ``newline=""`` for CSV).
    """
    path = Path(path)
    # One name per writer: two processes filling the same cache at once must not share it.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{next(_WRITERS)}.tmp")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself reaches the disk
        finally:
            os.close(fd)


class WriteError(OSError):
    """An output file that cannot be written; the message names it."""


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write a uint8 array as a PNG atomically (a rerun that skips existing files never finds a
    half-written one), creating its folder; failures are a :class:`WriteError`."""
    from PIL import Image

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as fh:
            Image.fromarray(image).save(fh, format="PNG")
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc})") from exc
