"""Provenance: what an output was made from, so that a re-run reuses it only when nothing changed.

One mechanism for every stage.  A *record* is a JSON-able dict naming the inputs (model fingerprint,
input files' identities) and the arguments that change the result (depth, max lengths, pooling, seed,
...).  Binary outputs (encodings, shard rankings) carry their record inside the file; folder outputs
(tokenized splits, training groups, models) carry it in the folder's ``.complete`` file, written
last.  Before working, a stage builds the record it would write and calls :func:`reuse_decision`:
equal records mean the output is up to date and is skipped; otherwise the stage says in one line
what changed and redoes the work.
"""
from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Mapping

from tevatron.files import atomic_text_writer

logger = logging.getLogger(__name__)

RECORD_FILE = ".complete"
MODEL_CONFIG_FILE = "tevatron_config.json"
# Files whose identity stands for a model folder that was not saved by this toolkit.
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_config.json",
                "tokenizer.json", "vocab.txt", "tokenizer_config.json")


def file_identity(path) -> dict:
    """Absolute path, size and modification time of an input file.

    Hashing the content would cost minutes on an 8.8M-passage corpus; any rewrite of a file changes
    its modification time, which is what a stale output follows from."""
    path = Path(path)
    stat = path.stat()
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
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


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
    changed = changed_inputs(recorded, wanted)
    if not changed:
        logger.info("%s is up to date (same model, inputs and arguments); skipping (--overwrite redoes it)", output)
        return True
    logger.info("%s changed since %s was written; %s (%s)", " and ".join(changed), output, redo,
                "; ".join(differences(recorded, wanted))[:500])
    return False


# --------------------------------------------------------------------------- folder records
def read_folder_record(folder) -> dict | None:
    """The ``.complete`` record of a finished folder output (``{"provenance": ..., "stats": ...}``), or None."""
    try:
        record = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("provenance"), dict) else None


def write_folder_record(folder, provenance: Mapping, stats: Mapping | None = None) -> None:
    """Mark ``folder`` finished, with what it was made from; written atomically, and last."""
    with atomic_text_writer(Path(folder) / RECORD_FILE) as out:
        json.dump({"provenance": provenance, "stats": dict(stats or {})}, out, indent=1, sort_keys=True)
        out.write("\n")


def clear_folder_record(folder) -> None:
    """Forget that ``folder`` is finished before rewriting it, so a crash half-way is never taken as done."""
    (Path(folder) / RECORD_FILE).unlink(missing_ok=True)
