"""Atomic file writes: a reader, a crash or Ctrl-C never sees half a file.

Every write goes to a temporary file in the target's own folder (same filesystem), is flushed and
fsynced, and is renamed over the target in one step; on any error the temporary file is removed.
One implementation for every result, report, plot, policy and index file of the project.

Appends (audit logs, error logs, ``failures.jsonl``) go through :func:`append_text`: it never
follows a symbolic link planted where the log should be (a link once made the server append
outside the run dir), and private logs are 0600 from their first byte.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
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


class UnsafePathError(PermissionError):
    """A path the project writes is a symbolic link or not a regular file: refused, never followed."""


def private_dir(path: Path | str, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) if needed and make the folder itself ``mode`` (private: 0700).

    Why chmod after mkdir: ``mkdir``'s mode is cut by the umask but never tightened, and a home
    created earlier by an older version may be 0755.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        os.chmod(path, mode)
    return path


def _open_append(path: Path, mode: int) -> int:
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):  # a symlink, or a FIFO without reader
            raise UnsafePathError(f"{path} is a symbolic link or not a regular file: refusing to write to it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file: refusing to write to it")
    return fd


def append_text(path: Path | str, text: str, *, private: bool = False, fsync: bool = False) -> None:
    """Append ``text`` (UTF-8) to the regular file ``path`` in one locked write.

    ``O_NOFOLLOW``: a symbolic link at ``path`` is refused (UnsafePathError), never followed.
    ``private``: the file is created 0600 and an existing one is narrowed to 0600. An exclusive
    ``flock`` on the file itself serializes writers across processes (Ray workers, SuperNode
    subprocesses), without a side lock file that could itself be a planted link.
    """
    import fcntl

    path = Path(path)
    fd = _open_append(path, 0o600 if private else 0o644)
    try:
        if private and stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock


def refuse_symlinks(root: Path | str, path: Path | str) -> Path:
    """``path`` (inside ``root``) if no folder between ``root`` and it is a symbolic link.

    Why: a run's ``users/`` (or ``users/<task>/``) replaced by a link once put results outside the
    run dir; an atomic rename does not follow a link at the file itself, but it does follow one
    in the folders above it.
    """
    root, path = Path(root), Path(path)
    current = root
    for part in path.relative_to(root).parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"{current} is a symbolic link: a run's folders must be real folders inside it "
                                  f"(remove the link)")
    return path
