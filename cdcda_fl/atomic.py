"""Atomic file writes: a reader, a crash or Ctrl-C never sees half a file.

Every write goes to a temporary file in the target's own folder (same filesystem), is flushed and
fsynced, and is renamed over the target in one step; on any error the temporary file is removed.
One implementation for every result, report, plot, policy and index file of the project.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    For writers that want a file name (``savefig``, a GGUF assembler): they write the temp path,
    and ``path`` appears complete or not at all. ``suffix`` keeps the extension tools look at.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_filename(name: str) -> str:
    """``name`` as one safe path component: other characters become ``_``, plus a short hash when
    anything changed, so ``a/b`` and ``a_b`` never share a file. Used for user ids from any source."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: Path | str, data: Any, *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON (UTF-8, a trailing newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path | str, mode: int = 0o700) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    For folders that must appear complete or not at all (an adapter with its metadata). The old
    folder is moved aside first and removed after the swap; ``mode`` is set before the swap, so the
    folder is never visible with wider permissions (adapters are private: 0700).
    """
    import shutil
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, mode)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:6]}")
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
