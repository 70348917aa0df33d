"""Reading user files safely: regular files only, of bounded size."""

from __future__ import annotations

import os
import stat
from pathlib import Path


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
