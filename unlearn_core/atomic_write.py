"""Write a file so that readers see either nothing or the whole file, and never lose another file.

The content is written to a hidden temporary file in the target folder (``.<name>.<random>.partial``:
dot-prefixed and without the target's extension, so a ComfyUI folder listing never shows it), flushed
to disk with ``fsync``, and only then published under its final name: ``os.replace`` for a given path,
or, for a numbered name, a hard link, which fails with ``FileExistsError`` instead of overwriting, so
that threads and processes saving with one name prefix each claim a different number. The file gets the
mode the process's umask gives (not the 0600 of ``tempfile.mkstemp``). A failed write removes the
temporary file; a killed process leaves it hidden in the folder.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Callable

MAX_NUMBER = 99999
"""Numbered names run from ``_00001`` to ``_99999``."""


def _fsync_folder(folder: Path) -> None:
    """Make a new directory entry durable (POSIX; Windows cannot open folders and needs no call)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_hidden(folder: Path, name: str, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_path)`` on a new hidden temporary file in ``folder`` and fsync it; removed on failure."""
    tmp = folder / f".{name}.{secrets.token_hex(6)}.partial"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask decides the mode
    mode = os.stat(tmp).st_mode
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors >= 0.8 replaces the file with its own, of mode 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}
"""What ``os.link`` raises on a file system without hard links (exFAT, some network shares)."""


def _claim(tmp: Path, path: Path) -> bool:
    """Publish ``tmp``'s content as ``path`` unless ``path`` exists (then False); never overwrites."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in NO_HARD_LINKS:
            raise
    try:  # no hard links here: claim the name with an exclusive create, then move the content onto it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        return False
    os.replace(tmp, path)
    return True


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write (or replace) ``path`` through ``write(tmp_path)``; readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_hidden(path.parent, path.name, write)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def write_numbered(folder: str | os.PathLike, stem: str, suffix: str, write: Callable[[str], None]) -> Path:
    """Write ``<folder>/<stem>_<NNNNN><suffix>`` with the first number no other file has, claimed atomically.

    The content is written once; a concurrent writer (thread or process) that claims a number first
    makes this one move on to the next number, so no file is ever overwritten.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _write_hidden(folder, stem + suffix, write)
    try:
        taken = {p.name for p in folder.iterdir()}
        for number in range(1, MAX_NUMBER + 1):
            path = folder / f"{stem}_{number:05d}{suffix}"
            if path.name not in taken and _claim(tmp, path):
                _fsync_folder(folder)
                return path
    finally:
        tmp.unlink(missing_ok=True)
    raise FileExistsError(f"{folder}: every name from {stem}_00001{suffix} to {stem}_{MAX_NUMBER}{suffix} is "
                          "taken: use another filename prefix")
