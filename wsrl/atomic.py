"""Crash-safe writes: a file or folder appears under its final name only once it is complete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def fsync(path: Path) -> None:
    """Flush a file's or a folder's (i.e. its entries') contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    for p in sorted(Path(folder).rglob("*"), reverse=True):
        fsync(p)
    fsync(folder)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp_path)`` next to ``path``, fsync, rename over ``path``; on any error (or a kill)
    only a hidden temporary file can be left, never a partial ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)
