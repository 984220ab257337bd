"""Atomic writes: a file or directory appears complete under its final name, or not at all.

Everything the pipeline writes under `artifacts/` goes through here. The content is written
to a hidden sibling, `.<name>.partial` (same filesystem, so the rename is atomic), and
renamed over the final name only when the writer finished without error. A process killed
mid-write (kill -9, out of memory) leaves at most that sibling, which no reader looks at
and the next write of the same name removes first; a failed write (disk full, permission
denied) removes it at once and re-raises.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(final: str | os.PathLike) -> Path:
    """The hidden sibling a write of `final` is staged in."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def _cleared_staging(final: str | os.PathLike) -> tuple[Path, Path]:
    """`final` and its staging path, emptied of a crashed write's leftovers; the parent directory made."""
    final = Path(final)
    staging = partial_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    return final, staging


@contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary path for one writer (`pq.write_table`, `save_file`, ...); renamed to `final` after the block."""
    final, staging = _cleared_staging(final)
    try:
        yield staging
        if not staging.is_file():
            raise FileNotFoundError(f"{staging}: the writer of {final} wrote nothing")
        with open(staging, "rb") as handle:  # on disk before the rename, so a crash never leaves an empty file
            os.fsync(handle.fileno())
        os.replace(staging, final)
    finally:
        _remove(staging)


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside `final` that replaces it when the block finishes without error."""
    final, staging = _cleared_staging(final)
    staging.mkdir()
    try:
        yield staging
        replace_dir(staging, final)
    finally:
        _remove(staging)


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the finished directory `staging` to `final`; an existing `final` is moved aside, then removed.

    A reader sees the old directory or the new one, never a mix (for a moment, none).
    """
    staging, final = Path(staging), Path(final)
    old = final.with_name(f".{final.name}.old")
    _remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    _remove(old)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_file(path) as staging:
        staging.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: object) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
