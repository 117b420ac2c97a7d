"""Writing files so that a reader never sees half of one, and a report directory never
mixes two runs.

``atomic_write`` writes one file through a temporary file renamed into place.
``replace_files`` writes a set of files (a report) into a staging directory beside them,
then, with stop signals held, moves them into place and removes the files of the same set
that this run did not write (a plot of an implementation no longer audited): the directory
then holds the new report, or, if the writing failed or was stopped before the move, the
previous one untouched. ``output_directory`` checks a directory up front, before a long run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from stabcheck import _signals
from stabcheck.errors import InvalidArgument

Writer = tuple[Callable[[Any], Any], bool]  # write(file), binary


def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = False) -> Path:
    """Write through ``write(file)`` into a temporary file beside ``path``, then rename.

    Where the system allows (Linux ``O_TMPFILE``) the file has no name while it is written
    and gets its temporary one only for the instant before the rename, so a process killed
    outright (SIGKILL, which nothing can catch) almost never leaves one behind; the next
    ``replace_files`` of the same set removes any that is left."""
    fd, tmp = _unnamed(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8",
                       closefd=False) as f:  # fmt: skip
            write(f)
        if tmp is None:
            tmp = _name(fd, path)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return path


def _unnamed(path: Path) -> tuple[int, str | None]:
    """An open file in the folder of ``path``: unnamed (``O_TMPFILE``, name None) where
    the system supports it, else a temporary file named after ``path``."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(path.parent, flag | os.O_WRONLY, 0o644)
        except OSError:
            pass
        else:
            os.fchmod(fd, 0o644)
            return fd, None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)
    return fd, tmp


def _name(fd: int, path: Path) -> str:
    """Give the unnamed file ``fd`` a temporary name beside ``path`` (``linkat`` with
    ``AT_SYMLINK_FOLLOW``, which ``os.link`` uses only when given a directory fd)."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            name = f".{path.name}.{os.urandom(4).hex()}.tmp"
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
                return str(path.parent / name)
            except FileExistsError:
                continue
    finally:
        os.close(folder)


def output_directory(path: str | Path, name: str = "out") -> Path:
    """``path`` as a directory that exists and can be written, or ``InvalidArgument``
    naming the option, the value and the fix."""
    if str(path).strip() == "":
        raise InvalidArgument(f"{name}={str(path)!r} is empty; give a directory for the files")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{name}={str(path)!r} is a file, not a directory; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".stabcheck-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidArgument(
            f"{name}={str(path)!r} cannot be used as a directory to write to "
            f"({exc.strerror or exc}); give a directory you can write"
        ) from None
    return path


def writable_file(path: str | Path, name: str) -> Path:
    """``path`` as a file that can be written (its folder made if needed), checked up front."""
    if str(path).strip() == "":
        raise InvalidArgument(f"{name}={str(path)!r} is empty; give a file name")
    path = Path(path)
    if path.is_dir():
        raise InvalidArgument(f"{name}={str(path)!r} is a directory; give a file name")
    output_directory(path.parent, f"the folder of {name}")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidArgument(f"{name}={str(path)!r} cannot be written; check its permissions")
    return path


def replace_files(
    directory: Path, files: Mapping[str, Writer], owned: Iterable[str] = ()
) -> list[Path]:
    """Write ``files`` (relative path -> (write, binary)) into ``directory`` as one set:
    staged first, then moved into place with signals held. Files matching the glob
    patterns ``owned`` (relative to ``directory``) that the set does not include are
    removed, and so are the temporary files and staging folders of a run that was killed.
    Returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(".stabcheck-staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".stabcheck-staging-", dir=directory))
    try:
        for name, (write, binary) in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(staging / name, write, binary)
        with _signals.held():
            for name in files:
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / name, directory / name)
            for stale in _stale(directory, set(files), owned):
                stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [directory / name for name in files]


def _stale(directory: Path, kept: set[str], owned: Iterable[str]) -> list[Path]:
    """The files of ``owned`` not in ``kept``, and ``atomic_write``'s leftovers of them."""
    found = []
    for pattern in owned:
        folder, _, base = pattern.rpartition("/")
        for glob in (pattern, f"{folder}/.{base}.*.tmp" if folder else f".{base}.*.tmp"):
            for path in directory.glob(glob):
                if path.is_file() and path.relative_to(directory).as_posix() not in kept:
                    found.append(path)
    return found
