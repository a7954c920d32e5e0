"""Provenance: what an output was made from, so that a re-run reuses it only when nothing changed.

One mechanism for every stage.  A *record* is a JSON-able dict naming the inputs (model fingerprint,
input files' identities) and the arguments that change the result (depth, max lengths, pooling, seed,
...).  Where the record lives depends on the kind of output:

* binary outputs (encodings, shard rankings) carry it inside the file (a ``provenance`` key);
* folder outputs (tokenized splits, training groups, models) carry it in the folder's ``.complete``
  file, written last (:func:`begin_folder_output` / :func:`finish_folder_output`);
* single text files (tokenized queries, normalised data files, BM25 negatives and runs, text
  rankings) carry it in a hidden sidecar ``.NAME.provenance.json`` beside them, which also records
  the size and modification time of the file it describes, so a file rewritten by anything else is
  never taken for the one the record speaks of.  (One sidecar per file rather than one shared record
  per folder: several stages write into the same folder, sometimes at once, and a shared file would
  need read-modify-write locking.)

Before working, a stage builds the record it would write and calls :func:`up_to_date` (or
:func:`folder_up_to_date`): equal records mean the output is up to date and is skipped; otherwise
the stage says in one line what changed and redoes the work.
"""
from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Callable, Mapping

from tevatron.files import InputError, atomic_text_writer

logger = logging.getLogger(__name__)

RECORD_FILE = ".complete"
STARTED_FILE = ".started"
MODEL_CONFIG_FILE = "tevatron_config.json"
# Files whose identity stands for a model folder that was not saved by this toolkit.
_WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_MODEL_FILES = (_WEIGHT_FILES + ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "vocab.txt",
                                 "tokenizer_config.json", MODEL_CONFIG_FILE, "pooler.safetensors")
                + tuple(f"{side}/{name}" for side in ("query_model", "passage_model") for name in _WEIGHT_FILES))


def file_identity(path) -> dict:
    """Absolute path, size and modification time of an input file.

    Hashing the content would cost minutes on an 8.8M-passage corpus; any rewrite of a file changes
    its modification time, which is what a stale output follows from."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror or err})") from None
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def new_model_fingerprint() -> str:
    """A fresh id written into a model folder at every save, so a retrained model never looks unchanged."""
    return uuid.uuid4().hex


def model_identity(name_or_path) -> dict:
    """What identifies a model: the fingerprint this toolkit saved with it, else its files' identities
    (a hub id that is not a local folder is identified by its name)."""
    path = Path(str(name_or_path))
    if not path.is_dir():
        return {"name": str(name_or_path)}
    try:
        saved = json.loads((path / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and isinstance(saved.get("fingerprint"), str):
        return {"fingerprint": saved["fingerprint"]}  # the folder may move; the fingerprint stays
    identity: dict = {"path": str(path.resolve())}
    identity["files"] = {name: [stat.st_size, stat.st_mtime_ns] for name in _MODEL_FILES
                         if (path / name).is_file() for stat in [(path / name).stat()]}
    return identity


def _flatten(record: Mapping, prefix: str = "") -> dict:
    flat = {}
    items = record.items() if isinstance(record, Mapping) else enumerate(record)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)) and value:
            flat.update(_flatten(value, name + "."))  # lists (e.g. input shards) compare item by item
        else:
            flat[name] = value
    return flat


def normalized(record: Mapping | None) -> dict | None:
    """``record`` as it reads back from JSON (tuples become lists, keys strings), so a record built in
    memory compares equal to the same record read from a file."""
    return None if record is None else json.loads(json.dumps(record, sort_keys=True))


def differences(recorded: Mapping, wanted: Mapping) -> list[str]:
    """``"name: old -> new"`` for every entry that differs (nested records are compared leaf by leaf)."""
    old, new = _flatten(recorded), _flatten(wanted)
    missing = object()
    lines = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, missing), new.get(name, missing)
        if before != after:
            show = lambda value: "(none)" if value is missing else json.dumps(value)  # noqa: E731
            lines.append(f"{name}: {show(before)} -> {show(after)}")
    return lines


def changed_inputs(recorded: Mapping, wanted: Mapping) -> list[str]:
    """Top-level names whose values differ (``model``, ``input``, ``depth``, ...), for one-line messages."""
    keys = sorted(set(recorded) | set(wanted))
    return [key for key in keys if recorded.get(key) != wanted.get(key)]


def reuse_decision(output, recorded: Mapping | None, wanted: Mapping, overwrite: bool = False,
                   redo: str = "redoing") -> bool:
    """True when ``output`` (which exists and is complete) may be reused; logs one line either way.

    ``recorded`` is the record found with the output (None: none was found, e.g. an output written by
    an older version); ``wanted`` is the record this run would write.
    """
    if overwrite:
        logger.info("%s exists; --overwrite given, %s", output, redo)
        return False
    if recorded is None:
        logger.info("%s has no provenance record (written by an older version?); %s", output, redo)
        return False
    recorded, wanted = normalized(recorded), normalized(wanted)
    changed = changed_inputs(recorded, wanted)
    if not changed:
        logger.info("%s is up to date (made from the same inputs and arguments); skipping (--overwrite redoes it)",
                    output)
        return True
    logger.info("%s changed since %s was written; %s (%s)", " and ".join(changed), output, redo,
                "; ".join(differences(recorded, wanted))[:500])
    return False


def up_to_date(output, wanted: Mapping, read_record: Callable, overwrite: bool = False,
               redo: str = "redoing") -> bool:
    """True when ``output`` exists and ``read_record(output)`` equals ``wanted``; logs one line unless
    there is no output yet.

    ``read_record`` returns the record kept with the output (None: it has none) and raises
    :class:`~tevatron.files.InputError` when the output is not a readable one of its kind (a directory,
    an empty or truncated file): such an output is redone, saying why.
    """
    output = Path(output)
    if not output.exists():
        return False
    if overwrite:
        return reuse_decision(output, None, wanted, overwrite=True, redo=redo)
    try:
        recorded = read_record(output)
    except InputError as err:
        logger.info("%s; %s", err, redo)
        return False
    return reuse_decision(output, recorded, wanted, overwrite, redo)


# --------------------------------------------------------------------------- single-file records
def file_record_path(output) -> Path:
    """The hidden sidecar that holds the record of a single text file."""
    output = Path(output)
    return output.with_name(f".{output.name}.provenance.json")


def _own_identity(path: Path) -> dict:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_file_record(output, provenance: Mapping) -> None:
    """Record what the (finished) file ``output`` was made from; call right after writing it."""
    output = Path(output)
    with atomic_text_writer(file_record_path(output)) as out:
        json.dump({"provenance": provenance, "output": _own_identity(output)}, out, indent=1, sort_keys=True)
        out.write("\n")


def read_file_record(output) -> dict | None:
    """The record of text file ``output`` (None when it has none); InputError when ``output`` is not a
    file, or was rewritten after its record was written (then the record does not describe it)."""
    output = Path(output)
    if not output.is_file():
        raise InputError(output, "not a file")
    try:
        record = json.loads(file_record_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("provenance"), dict):
        return None
    if record.get("output") != _own_identity(output):
        raise InputError(output, "was modified after its provenance record was written")
    return record["provenance"]


# --------------------------------------------------------------------------- folder records
def read_folder_record_file(path) -> dict | None:
    """A ``{"provenance": ..., ...}`` JSON record file, or None when missing, unreadable or of another shape."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("provenance"), dict) else None


def read_folder_record(folder) -> dict | None:
    """The ``.complete`` record of a finished folder output (``{"provenance": ..., "stats": ...}``), or None."""
    return read_folder_record_file(Path(folder) / RECORD_FILE)


def write_folder_record(folder, provenance: Mapping, stats: Mapping | None = None) -> None:
    """Mark ``folder`` finished, with what it was made from; written atomically, and last."""
    with atomic_text_writer(Path(folder) / RECORD_FILE) as out:
        json.dump({"provenance": provenance, "stats": dict(stats or {})}, out, indent=1, sort_keys=True)
        out.write("\n")


def clear_folder_record(folder) -> None:
    """Forget that ``folder`` is finished before rewriting it, so a crash half-way is never taken as done."""
    (Path(folder) / RECORD_FILE).unlink(missing_ok=True)


def folder_up_to_date(folder, wanted: Mapping, overwrite: bool = False, redo: str = "rebuilding") -> bool:
    """True when ``folder`` was finished from exactly ``wanted``; logs one line when it was finished at all."""
    folder = Path(folder)
    if not (folder / RECORD_FILE).exists():
        return False  # never finished: nothing to reuse (begin_folder_output resumes an interrupted run)
    record = read_folder_record(folder)
    return reuse_decision(folder, record["provenance"] if record else None, wanted, overwrite, redo)


def begin_folder_output(folder, wanted: Mapping, outputs, keep_finished: bool = True) -> list[Path]:
    """Get ``folder`` ready to be (re)written from ``wanted``; returns the output files kept.

    ``outputs`` is a glob, or a function listing the folder's output files (when a glob would also match
    another builder's files in the same folder).  Output files survive only when an interrupted run from exactly ``wanted`` left
    them (its ``.started`` record says so, and each was written atomically, so each is finished) and
    ``keep_finished`` allows it; any other such file is deleted, because mixing files made from other
    inputs into the output would silently corrupt it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clear_folder_record(folder)
    started = read_folder_record_file(folder / STARTED_FILE)
    existing = sorted(folder.glob(outputs)) if isinstance(outputs, str) else sorted(outputs(folder))
    if keep_finished and started is not None and started["provenance"] == normalized(wanted):
        return existing
    for path in existing:
        path.unlink()
    if existing:
        logger.info("%s: removed %d files left by a run from other (or unrecorded) inputs and arguments", folder,
                    len(existing))
    with atomic_text_writer(folder / STARTED_FILE) as out:
        json.dump({"provenance": wanted}, out, indent=1, sort_keys=True)
        out.write("\n")
    return []


def finish_folder_output(folder, provenance: Mapping, stats: Mapping | None = None) -> None:
    """Mark ``folder`` finished (record written last) and drop the in-progress record."""
    write_folder_record(folder, provenance, stats)
    (Path(folder) / STARTED_FILE).unlink(missing_ok=True)
