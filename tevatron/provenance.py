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

Input files are identified by path, size and modification time (:func:`file_identity`), and every
record gets, as it is written, the sha256 of each input file's content (:func:`with_digests`; only
while the file still has the size and time the stage saw, so an input changed during the stage keeps
no digest and reads as changed next time).  Records are compared through :func:`settled`: a file whose
time changed but whose size did not is hashed, and when its content equals the recorded digest
(re-downloaded, copied with ``cp``, a fresh checkout) it counts as the same input, saying so in one
line, instead of redoing hours of work downstream.  A file whose time did not change is never hashed:
the check stays a ``stat``.  The limit of that shortcut: a file rewritten with other content of the
same size whose time is then set back (``os.utime``, ``touch -d``, ``rsync -t`` from a changed copy)
still reads as unchanged.  Records kept in JSON (sidecars, ``.complete``) that lack digests (written by
an older version) gain them at the next check that finds them up to date; binary outputs are not
rewritten for that.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

from tevatron.files import InputError, OutputError, atomic_text_writer

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
IDENTITY_KEYS = ("path", "bytes", "mtime_ns")
DIGEST_KEY = "sha256"
_HASH_BLOCK_BYTES = 4 << 20
_ANNOUNCED_HASH_BYTES = 1 << 30


def file_identity(path) -> dict:
    """Absolute path, size and modification time of an input file.

    Any rewrite of a file changes its modification time, so an unchanged time is taken as unchanged
    content without reading the file (hashing an 8.8M-passage corpus at every check would cost
    minutes).  The content's sha256 is added when a record is written (:func:`with_digests`) and read
    only when the time changed (:func:`settled`), to tell a copy with the same bytes from a change."""
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


# --------------------------------------------------------------------------- content digests
class _ChangedWhileHashing(Exception):
    """The file no longer has the size and time asked for (not cached, unlike a digest)."""


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The sha256 of ``path`` while it has ``size`` and ``mtime_ns``; memoised, so a file is read once per
    process."""
    digest = hashlib.sha256()
    if size >= _ANNOUNCED_HASH_BYTES:  # seconds to minutes: say why the stage pauses
        logger.info("%s: computing its sha256 (%.1f GB) for the provenance record", path, size / 1e9)
    try:
        with open(path, "rb") as handle:
            if _size_and_time(os.fstat(handle.fileno())) != (size, mtime_ns):
                raise _ChangedWhileHashing
            while block := handle.read(_HASH_BLOCK_BYTES):
                digest.update(block)
        if _size_and_time(os.stat(path)) != (size, mtime_ns):  # rewritten or replaced while being read
            raise _ChangedWhileHashing
    except OSError:
        raise _ChangedWhileHashing from None
    return digest.hexdigest()


def _size_and_time(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


def current_digest(identity: Mapping) -> str | None:
    """The sha256 of the file ``identity`` names, when the file still has the identity's size and time
    (None: it changed since, or cannot be read)."""
    try:
        return _sha256(identity["path"], identity["bytes"], identity["mtime_ns"])
    except _ChangedWhileHashing:
        return None


def _is_file_identity(value) -> bool:
    return isinstance(value, dict) and all(key in value for key in IDENTITY_KEYS) and isinstance(value["path"], str)


def _file_identities(value):
    """Every file identity in a record, at any depth (lists of inputs included)."""
    if _is_file_identity(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _file_identities(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_identities(item)


def _identity_pairs(recorded, wanted):
    """``(recorded identity, wanted identity)`` for every place where both records hold a file identity."""
    if _is_file_identity(recorded) and _is_file_identity(wanted):
        yield recorded, wanted
    elif isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in recorded.keys() & wanted.keys():
            yield from _identity_pairs(recorded[key], wanted[key])
    elif isinstance(recorded, list) and isinstance(wanted, list):
        for old, new in zip(recorded, wanted):
            yield from _identity_pairs(old, new)


def with_digests(record: Mapping | None) -> dict | None:
    """``record`` as written to disk (:func:`normalized`), each file identity in it with the sha256 of the
    file's content -- unless the file's size or time differ from the identity's now (the input changed
    during the stage: left without, so the next check sees the change).  Digests already there (records
    of upstream outputs nested in this one) are kept."""
    record = normalized(record)
    for identity in _file_identities(record):
        if DIGEST_KEY not in identity:
            digest = current_digest(identity)
            if digest is not None:
                identity[DIGEST_KEY] = digest
    return record


def _same_content(recorded: Mapping, wanted: Mapping) -> bool:
    """True when the file of ``wanted`` has a new time but the content ``recorded`` describes."""
    if (not recorded.get(DIGEST_KEY) or recorded["mtime_ns"] == wanted["mtime_ns"]
            or (recorded["path"], recorded["bytes"]) != (wanted["path"], wanted["bytes"])):
        return False
    return (wanted.get(DIGEST_KEY) or current_digest(wanted)) == recorded[DIGEST_KEY]


def _without_digests(record):
    if isinstance(record, dict):
        return {key: _without_digests(value) for key, value in record.items()
                if not (key == DIGEST_KEY and _is_file_identity(record))}
    if isinstance(record, list):
        return [_without_digests(item) for item in record]
    return record


def settled(recorded: Mapping | None, wanted: Mapping | None) -> tuple[dict | None, dict | None]:
    """``(recorded, wanted)`` ready to compare (every comparison of a recorded record with a wanted one
    goes through here): normalised, a file whose time changed but whose content equals the recorded
    sha256 given the recorded time (logged once per file), and the digests themselves dropped, so they
    never make two records differ.  Identities recorded without a digest compare by size and time."""
    recorded, wanted = normalized(recorded), normalized(wanted)
    if recorded is not None and wanted is not None:
        told = set()
        for old, new in _identity_pairs(recorded, wanted):
            if _same_content(old, new):
                if new["path"] not in told:
                    logger.info("%s: modification time changed, content unchanged (sha256); treated as the same input",
                                new["path"])
                    told.add(new["path"])
                new["mtime_ns"] = old["mtime_ns"]
    return _without_digests(recorded), _without_digests(wanted)


def same_record(recorded: Mapping | None, wanted: Mapping | None) -> bool:
    """Whether ``recorded`` and ``wanted`` name the same inputs and arguments (see :func:`settled`)."""
    old, new = settled(recorded, wanted)
    return old == new


def refresh_record_file(record_file, recorded: Mapping, wanted: Mapping) -> None:
    """After a check found the output of JSON record file ``record_file`` up to date: store the current
    identities with their digests (a record of an older version gains them; a file whose time changed
    with the same content is recorded with its new time, so the next check needs no hashing).  Other
    entries of the file (a sidecar's ``output`` identity, ``stats``) stay as they are; nothing is
    written when nothing changes."""
    recorded, current = normalized(recorded), normalized(wanted)
    for old, new in _identity_pairs(recorded, current):
        if DIGEST_KEY in old and DIGEST_KEY not in new and all(old[key] == new[key] for key in IDENTITY_KEYS):
            new[DIGEST_KEY] = old[DIGEST_KEY]  # known already: no need to read the file again
    current = with_digests(current)
    if current == recorded:
        return
    record_file = Path(record_file)
    stored = read_folder_record_file(record_file)
    if stored is None:
        return
    stored["provenance"] = current
    try:
        with atomic_text_writer(record_file) as out:
            json.dump(stored, out, indent=1, sort_keys=True)
            out.write("\n")
    except OutputError as err:  # a read-only data folder: the output is still up to date, only not refreshed
        logger.info("%s; content digests not recorded", err)


# --------------------------------------------------------------------------- comparing records
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
                   redo: str = "redoing", record_file=None) -> bool:
    """True when ``output`` (which exists and is complete) may be reused; logs one line either way.

    ``recorded`` is the record found with the output (None: none was found, e.g. an output written by
    an older version); ``wanted`` is the record this run would write.  ``record_file``: the JSON file
    holding ``recorded``, refreshed with digests when the output is up to date (:func:`refresh_record_file`).
    """
    if overwrite:
        logger.info("%s exists; --overwrite given, %s", output, redo)
        return False
    if recorded is None:
        logger.info("%s has no provenance record (written by an older version?); %s", output, redo)
        return False
    old, new = settled(recorded, wanted)
    changed = changed_inputs(old, new)
    if not changed:
        logger.info("%s is up to date (made from the same inputs and arguments); skipping (--overwrite redoes it)",
                    output)
        if record_file is not None:
            refresh_record_file(record_file, recorded, wanted)
        return True
    logger.info("%s changed since %s was written; %s (%s)", " and ".join(changed), output, redo,
                "; ".join(differences(old, new))[:500])
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
    # A JSON sidecar gains digests when found up to date; a binary output (encodings, rankings) carries its
    # record inside and is not rewritten for that (rewriting a 27 GB encodings file is not worth it).
    record_file = file_record_path(output) if read_record is read_file_record else None
    return reuse_decision(output, recorded, wanted, overwrite, redo, record_file)


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
        json.dump({"provenance": with_digests(provenance), "output": _own_identity(output)}, out, indent=1,
                  sort_keys=True)
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
        json.dump({"provenance": with_digests(provenance), "stats": dict(stats or {})}, out, indent=1,
                  sort_keys=True)
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
    return reuse_decision(folder, record["provenance"] if record else None, wanted, overwrite, redo,
                          folder / RECORD_FILE)


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
    if keep_finished and started is not None and same_record(started["provenance"], wanted):
        return existing
    for path in existing:
        path.unlink()
    if existing:
        logger.info("%s: removed %d files left by a run from other (or unrecorded) inputs and arguments", folder,
                    len(existing))
    with atomic_text_writer(folder / STARTED_FILE) as out:
        json.dump({"provenance": with_digests(wanted)}, out, indent=1, sort_keys=True)
        out.write("\n")
    return []


def finish_folder_output(folder, provenance: Mapping, stats: Mapping | None = None) -> None:
    """Mark ``folder`` finished (record written last) and drop the in-progress record."""
    write_folder_record(folder, provenance, stats)
    (Path(folder) / STARTED_FILE).unlink(missing_ok=True)
