"""Safe file output: atomic writes, strict JSON, a full disk named, and a lock on a folder.

Every file fnn writes (checkpoints, ``metrics.json``, ``params.npz``, figures) goes through
:func:`atomic_write`: the bytes go to a temporary created with ``O_CREAT | O_EXCL`` in the
target's folder (:func:`tempfile.mkstemp`, so a planted symlink is never followed), are
flushed and fsynced, and ``os.replace`` puts the file in place. A crash leaves the old file or
the new one, never a half-written one; a failure removes the temporary.

Example:
    >>> import os, tempfile
    >>> from fnn import files
    >>> folder = tempfile.mkdtemp()
    >>> p = files.write_json(os.path.join(folder, "r.json"), {"loss": float("nan"), "n": 2})
    >>> with open(p) as f:
    ...     f.read()
    '{\\n  "loss": null,\\n  "n": 2\\n}\\n'
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, runs are not locked
    fcntl = None

#: The name of the lock file :class:`FolderLock` holds in a folder.
LOCK_NAME = ".fnn-lock"

# mkstemp creates files readable by their owner only; outputs get the usual mode instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)

#: Prefix of every temporary fnn creates; never matches an output's name.
TMP_PREFIX = ".fnn-tmp-"


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path and the space needed."""


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


def strict(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None``: strict JSON.

    This is fnn's one policy for JSON output: a JSON reader never meets ``NaN`` or
    ``Infinity`` (not JSON), and a missing value reads as ``null``. NumPy and JAX scalars and
    arrays become numbers and lists.
    """
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    if hasattr(obj, "__array__"):
        return strict(np.asarray(obj).tolist())
    return obj


def dumps(payload) -> str:
    """Strict JSON text (indent 2, trailing newline) under :func:`strict`'s policy."""
    return json.dumps(strict(payload), indent=2, allow_nan=False) + "\n"


def output_mode(fd: int) -> None:
    """Give a file fnn created with ``mkstemp`` the usual mode (``0o666`` less the umask)."""
    os.fchmod(fd, 0o666 & ~_UMASK)


def free_bytes(folder: str) -> int | None:
    """Bytes free to this user in ``folder``'s file system (``None`` if unknown)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(path: str, need: int | None) -> DiskFullError:
    """The error for a write of ``need`` bytes to ``path`` that ran out of space."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    free = free_bytes(folder)
    need_text = "" if need is None else f" needs about {_size(need)};"
    free_text = "" if free is None else f" {_size(free)} free in {folder}"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on device writing {path}:{need_text}{free_text}; free some space "
        f"(the previous files are intact)",
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def atomic_write(
    path, write: Callable, *, size: int | None = None, suffix: str = "", by_path: bool = False
) -> str:
    """Write ``path`` atomically: ``write(f)`` fills a fresh temporary, then it is renamed.

    Args:
        path: the file to create or replace.
        write: ``write(f)`` writes the content to the binary file object ``f``.
        size: the expected size in bytes, named when the disk is full.
        suffix: the temporary's suffix (e.g. ``".png"``, for writers that read it).
        by_path: call ``write(temporary_path)`` instead, for writers that take a path.

    Returns:
        ``path``.

    Raises:
        DiskFullError: no space left (``ENOSPC``, ``EDQUOT``); the temporary is removed and
            the previous ``path`` is untouched.
        OSError: any other failure, after removing the temporary.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        output_mode(fd)
        with os.fdopen(fd, "wb") as f:
            if by_path:  # the writer opens the (fresh, exclusively created) temporary itself
                write(tmp)
            else:
                write(f)
                f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path, size) from None
        raise
    fsync_dir(folder)
    return path


def write_bytes(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), size=len(data))


def write_json(path, payload) -> str:
    """Write ``payload`` as strict JSON (:func:`dumps`) to ``path`` atomically."""
    return write_bytes(path, dumps(payload).encode())


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(path: str, flag: str, *, folder: bool = False) -> None:
    """Raise ``ValueError`` naming ``flag`` unless ``path`` can be written (nothing created).

    Args:
        path: an output file (or, with ``folder=True``, an output folder, which may not exist
            yet: then its nearest existing parent must be a writable folder).
        flag: the option that gave the path (``--json``), named in the message.
    """
    path = os.fspath(path)
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag}: {path} exists and is a file, expected a folder")
        probe = os.path.abspath(path)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise ValueError(f"{flag}: cannot create folder {path}: {probe} is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"{flag}: folder {probe} is not writable")
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a folder, expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{flag}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: folder {parent} is not writable")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a live process of another user
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder, held while one run writes it.

    The lock is a ``flock`` on ``<folder>/.fnn-lock``: the kernel releases it when the
    process exits, however it exits, so a killed run leaves no stale lock (the file stays,
    holding the last owner's pid, and is simply locked again). Use as a context manager.

    Raises:
        FolderBusyError: on entry, when another live process holds the lock.
    """

    def __init__(self, folder: str):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(self.path, flags, 0o644)
        if fcntl is None:  # pragma: no cover
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FolderBusyError(
                f"folder {self.folder} is in use by another fnn run (process {owner}); "
                f"wait for it to finish or choose another --out"
            ) from None
        self._fd = fd
        with contextlib.suppress(OSError):  # the pid is only for messages; a full disk is fine
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


__all__ = [
    "DiskFullError",
    "FolderBusyError",
    "FolderLock",
    "atomic_write",
    "check_writable",
    "disk_full",
    "fsync_dir",
    "dumps",
    "free_bytes",
    "output_mode",
    "pid_alive",
    "strict",
    "write_bytes",
    "write_json",
]
