"""Atomic outputs: everything is written under a temporary sibling name and renamed into place when complete,
so a kill at any moment leaves either the old state or the new one, never a half-written file or folder.

Shared cache entries are also built under an inter-process lock (`build_once`), so that several runs needing one
entry build it once: the first builds, the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` (a file, or a whole folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.is_dir():
            _fsync_tree(tmp)
            if path.exists():
                old = _tmp_sibling(path)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of a cache entry: a hidden sibling, `.NAME.lock`."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def file_lock(path: str | os.PathLike, *, what: str | None = None) -> Iterator[Path]:
    """Hold an exclusive inter-process lock on the cache entry `path` (lock file beside it) for the block.

    fcntl.flock, not a pid file: the kernel drops the lock when its holder dies (even by SIGKILL or OOM), so a
    lock left by a killed process is free at once and there is no staleness guess to get wrong (a pid means
    nothing on another host that shares the cache). flock works on local file systems and on NFSv4 (Linux
    emulates it with POSIX locks there). The lock file holds the holder's host and pid for people to read, and
    is never deleted: unlinking a lock file while another process waits on it would let two holders in.
    While holding the lock, temporaries that a killed builder of this entry left behind are removed.
    """
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            print(f"waiting for {holder} to finish building {what or path}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # no other builder can be writing: we hold the lock
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        yield lock
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def build_once(path: str | os.PathLike, is_built: Callable[[], bool], build: Callable[[], Any], *,
               what: str | None = None) -> bool:
    """Make sure the cache entry `path` exists: `build()` it under `file_lock` unless `is_built()` says it is there
    (checked again once the lock is held, so a process that waited reuses what the holder built).

    Returns whether this process built it. `build` must write the entry atomically (`atomic_path`).
    """
    if is_built():
        return False
    with file_lock(path, what=what):
        if is_built():
            return False
        build()
        return True
