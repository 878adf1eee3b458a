"""Atomic file output: every result file is written to a temporary name in its folder and then
renamed, so an interrupted run never leaves a truncated file under the final name."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; on success rename it to ``path``, else remove it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give results the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str) -> str:
    """Write a text file atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return os.fspath(path)
