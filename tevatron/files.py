"""Errors and atomic writes shared by every reader and writer (no torch, no heavy imports).

Readers raise :class:`InputError`, whose message is one line naming the file (and line) of the bad
input.  Writers go through :func:`atomic_output`, so an interrupted run never leaves a file that
looks finished.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

# Characters str.splitlines() breaks on: escaped in messages, so ids from JSON keep an error on one line.
_LINE_BREAKS = {ord(ch): f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
                for ch in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class InputError(ValueError):
    """Bad input: the message names the file and, where there is one, the line."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message.translate(_LINE_BREAKS)}")


class OutputError(InputError):
    """An output that cannot be written (unwritable place, disk full): one ``error: PATH: ...`` line too."""


# Write failures that are the machine's state, not a bug: reported as one line naming the output.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                 errno.ENOTDIR}


def write_failure(path, err: BaseException, own_files=()) -> OutputError | None:
    """The one-line error for ``err`` raised while writing ``path``, or None when it is not a write failure
    (an OSError naming some other file, e.g. an input read inside the writing block, is left alone)."""
    if not isinstance(err, OSError) or err.errno not in _WRITE_ERRNOS:
        return None
    if err.filename is not None and str(err.filename) not in {str(path), *map(str, own_files)}:
        return None
    return OutputError(path, f"could not write ({os.strerror(err.errno)})")


# --------------------------------------------------------------------------- atomic writes
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    except OSError as err:  # the folder cannot be made or written into
        raise OutputError(path, f"could not write ({err.strerror or err})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        failure = write_failure(path, err, [tmp, path.parent])
        if failure is not None:
            raise failure from None
        raise


@contextlib.contextmanager
def atomic_text_writer(path):
    """Open a text file for writing that appears under ``path`` only when complete."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            yield handle


@contextlib.contextmanager
def staged_files(output_dir, last: Sequence[str] = ()):
    """Yield a hidden staging folder inside ``output_dir``; when the block succeeds, rename every file
    written there into the same place under ``output_dir`` (names in ``last`` at the end), so each file
    appears only complete.  On failure nothing is moved and the staging folder is removed."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    except OSError as err:
        raise OutputError(output_dir, f"could not write ({err.strerror or err})") from None
    try:
        yield staging
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name in last)
        for path in files:
            target = output_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except OSError as err:
        if err.errno in _WRITE_ERRNOS and (err.filename is None or str(output_dir) in str(err.filename)):
            raise OutputError(output_dir, f"could not write ({os.strerror(err.errno)})") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)



# --------------------------------------------------------------------------- output pre-checks
def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` at worst)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _probe_writable(output, folder: Path) -> None:
    """Create and remove a file in ``folder``: os.access alone says yes to root on read-only mounts."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(output, f"cannot write in {folder} ({os.strerror(errno.EACCES)})")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
    except OSError as err:
        raise OutputError(output, f"cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path) -> None:
    """Fail before any work when folder ``path`` cannot be created or written into (one-line OutputError)."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        what = "is not a directory" if existing == path else f"cannot be created: {existing} is not a directory"
        raise OutputError(path, what)
    _probe_writable(path, existing)


def check_output_file(path) -> None:
    """Fail before any work when file ``path`` cannot be written: an existing directory there, a parent
    that is a file, or a folder that is read-only (one-line OutputError)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a directory; give a file name for this output")
    if not path.name or path.name in (".", ".."):
        raise OutputError(path, "is not a file name")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise OutputError(path, f"cannot be created: {parent} is not a directory")
    _probe_writable(path, parent)
