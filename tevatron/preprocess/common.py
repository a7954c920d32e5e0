"""Helpers every preprocessing step shares: completion markers, TSV-safe text.

Each step is resumable: single-file outputs are written atomically (so an existing file is a finished
file), and directory outputs get a ``.complete`` marker, written last, that records the parameters
they were built with.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tevatron.files import InputError, atomic_text_writer

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"


# --------------------------------------------------------------------------- completion markers
def read_complete_marker(directory) -> dict | None:
    """The parameters a finished directory output was built with, or None if it is not finished."""
    marker = Path(directory) / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(directory, params: dict) -> bool:
    """True when ``directory`` was finished with exactly ``params`` (so rebuilding would change nothing)."""
    recorded = read_complete_marker(directory)
    return recorded is not None and recorded.get("params") == params


def mark_complete(directory, params: dict, stats: dict | None = None) -> None:
    """Record that ``directory`` is finished; written last, atomically, so it never lies."""
    with atomic_text_writer(Path(directory) / COMPLETE_MARKER) as out:
        json.dump({"params": params, "stats": stats or {}}, out, indent=1, sort_keys=True)
        out.write("\n")


def clear_complete_marker(directory) -> None:
    """Forget a finished state before rewriting a directory, so a crash mid-way is not taken as done."""
    (Path(directory) / COMPLETE_MARKER).unlink(missing_ok=True)


# --------------------------------------------------------------------------- text fields
def tsv_safe(text: str) -> str:
    """``text`` with tabs and line breaks turned into spaces, so it fits one TSV field."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()


def real_title(title: str | None) -> str:
    """RocketQA marks a missing title with '-'; downstream, no title is the empty string."""
    title = (title or "").strip()
    return "" if title == "-" else title


def check_id(path, number: int | None, value: str, what: str) -> str:
    """An id that can be written into a TSV column (no tabs or line breaks)."""
    if any(ch in value for ch in "\t\r\n"):
        raise InputError(path, f"{what} {value!r} contains a tab or line break", number)
    return value


STARTED_MARKER = ".started"


def start_directory_output(directory, params: dict, output_glob: str) -> bool:
    """Get ``directory`` ready for a (possibly resumed) run; True when it is already complete.

    Files matching ``output_glob`` left by a run with the same ``params`` are kept (each was written
    atomically, so each is finished); files from a run with other parameters are deleted, because
    mixing them would silently produce a corrupt data set.
    """
    directory = Path(directory)
    if is_complete(directory, params):
        return True
    started = directory / STARTED_MARKER
    recorded = read_complete_marker(directory)
    try:
        previous = json.loads(started.read_text(encoding="utf-8")) if started.is_file() else None
    except (OSError, json.JSONDecodeError):
        previous = {}
    stale = (recorded is not None) or (previous is not None and previous != params)
    if stale:
        removed = sorted(directory.glob(output_glob))
        for path in removed:
            path.unlink()
        if removed:
            logger.info("%s: removed %d files built with other parameters", directory, len(removed))
    clear_complete_marker(directory)
    with atomic_text_writer(started) as out:
        json.dump(params, out, sort_keys=True)
    return False


def finish_directory_output(directory, params: dict, stats: dict | None = None) -> None:
    """Mark ``directory`` complete and drop the in-progress record."""
    mark_complete(directory, params, stats)
    (Path(directory) / STARTED_MARKER).unlink(missing_ok=True)


def file_signature(path) -> dict:
    """Path, size and modification time of an input, so a completion marker goes stale when it changes."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
