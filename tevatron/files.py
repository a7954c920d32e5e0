"""Errors and atomic writes shared by every reader and writer (no torch, no heavy imports).

Readers raise :class:`InputError`, whose message is one line naming the file (and line) of the bad
input.  Writers go through :func:`atomic_output`, so an interrupted run never leaves a file that
looks finished.
"""
from __future__ import annotations

import contextlib
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



# --------------------------------------------------------------------------- atomic writes
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get ordinary permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output_dir))
    try:
        yield staging
        files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name in last)
        for path in files:
            target = output_dir / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

