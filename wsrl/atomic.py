"""Crash-safe writes: a file or folder appears under its final name only once it is complete."""

from __future__ import annotations

import os
import shutil
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


def replace_dir(path: Path, build: Callable[[Path], object]) -> None:
    """``build(tmp_folder)`` in a hidden folder beside ``path``, fsync it, then swap it in for
    ``path`` (whose old contents are removed); a kill leaves at most hidden folders, never a
    partial ``path``."""
    path = Path(path)
    tmp, old = (path.with_name(f".{path.name}.{what}-{os.getpid()}") for what in ("tmp", "old"))
    try:
        tmp.mkdir(parents=True)
        build(tmp)
        fsync_tree(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync(path.parent)
