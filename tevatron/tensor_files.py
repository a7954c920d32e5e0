"""Binary outputs: encodings and shard rankings, as torch zip files of tensors and string lists
(loadable with ``torch.load(weights_only=True)``; nothing here unpickles objects).

Both may carry a ``provenance`` record (:mod:`tevatron.provenance`: what they were made from); files
written without one (older versions, other writers) still load, and are never taken as up to date.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tevatron.files import InputError, atomic_output
from tevatron.provenance import with_digests

ENCODINGS_FORMAT = "tevatron.encodings"
RANKING_FORMAT = "tevatron.ranking"
FORMAT_VERSION = 1
# Encodings are stored as float32, or as float16 (half the disk and memory; --encode_dtype float16).
# Readers convert float16 to float32 block by block just before computing with it.
ENCODING_DTYPES = (torch.float32, torch.float16)
# rows checked for NaN/inf at a time when reading: bounds the temporary mask (a whole shard's would be ~700 MB)
FINITE_CHECK_ROWS = 65536


class _WriteErrorKeeper:
    """A file wrapper that keeps the OSError of a failed ``write``: torch's zip writer replaces it
    with an uninformative RuntimeError, and the errno (disk full, file too large) is what the user needs."""

    def __init__(self, handle):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.handle.flush()


def _save_payload(payload: dict, path) -> None:
    """``torch.save`` into an atomic output; a failed write raises its OSError (see files.atomic_output)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        writer = _WriteErrorKeeper(handle)
        try:
            torch.save(payload, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


# --------------------------------------------------------------------------- encodings
def save_encodings(path, reps, ids: Sequence[str], provenance: dict | None = None) -> None:
    """Save vectors and their string ids (torch zip format, loadable with ``weights_only=True``), with
    the record of what they were made from when given.  float16 tensors stay float16; anything else
    is stored as float32."""
    reps = torch.as_tensor(np.asarray(reps, dtype=np.float32) if not torch.is_tensor(reps) else reps)
    dtype = torch.float16 if reps.dtype == torch.float16 else torch.float32
    reps = reps.detach().to("cpu", dtype).contiguous()
    ids = [str(i) for i in ids]
    if reps.ndim != 2 or reps.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for vectors of shape {tuple(reps.shape)}")
    payload = {"format": ENCODINGS_FORMAT, "version": FORMAT_VERSION, "reps": reps, "ids": ids}
    if provenance is not None:
        payload["provenance"] = with_digests(provenance)
    _save_payload(payload, path)


def _torch_load(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"a directory, not a {what} file" if path.is_dir() else f"no such {what} file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, foreign pickle, garbage
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a readable {what} file (truncated or wrong format: {reason[:200]})") from None
    return payload


def load_encodings(path) -> tuple[torch.Tensor, list[str]]:
    """Load ``(reps [N, dim], ids)`` written by :func:`save_encodings`; ``reps`` is float32 or float16
    as saved (memory-mapped, so a float16 file is not widened here).  A NaN or infinite value is refused:
    it would rank its passage first or last (or, in a bf16 search, void the error bound of its block)."""
    payload = _load_encodings_payload(path)
    reps, ids = payload["reps"], payload["ids"]
    bad_rows = torch.cat([(~torch.isfinite(reps[start:start + FINITE_CHECK_ROWS])).any(dim=1).nonzero().flatten() + start
                          for start in range(0, reps.shape[0], FINITE_CHECK_ROWS)] or [torch.empty(0, dtype=torch.int64)])
    if bad_rows.numel():
        first = int(bad_rows[0])
        raise InputError(path, f"{bad_rows.numel()} of {reps.shape[0]} vectors hold NaN or inf (the first is row "
                               f"{first}, id {ids[first]!r})")
    return reps, ids


def encodings_provenance(path) -> dict | None:
    """The provenance record of a readable encodings file (None: written without one); InputError
    when ``path`` is not a complete encodings file."""
    return _provenance(_load_encodings_payload(path))


def _provenance(payload: dict) -> dict | None:
    record = payload.get("provenance")
    return record if isinstance(record, dict) else None


def _load_encodings_payload(path) -> dict:
    payload = _torch_load(path, "encodings")
    if not isinstance(payload, dict) or payload.get("format") != ENCODINGS_FORMAT:
        raise InputError(path, "not a tevatron encodings file")
    reps, ids = payload.get("reps"), payload.get("ids")
    if not torch.is_tensor(reps) or not _is_string_list(ids):
        raise InputError(path, "corrupt encodings: 'reps' must be a tensor and 'ids' a list of strings")
    if reps.ndim != 2 or reps.shape[0] != len(ids):
        raise InputError(path, f"corrupt encodings: {len(ids)} ids for vectors of shape {tuple(reps.shape)}")
    if reps.dtype not in ENCODING_DTYPES:
        raise InputError(path, f"corrupt encodings: vectors are {str(reps.dtype).replace('torch.', '')}, "
                               f"not float32 or float16")
    return payload


def _is_string_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# --------------------------------------------------------------------------- rankings
def save_shard_ranking(path, query_ids: Sequence[str], passage_ids: Sequence[str], scores, indices,
                       provenance: dict | None = None) -> None:
    """Save one shard's search result: top-k ``scores``/``indices`` [Q, k] into ``passage_ids`` (and the
    record of what it was searched from, when given)."""
    scores = torch.as_tensor(scores, dtype=torch.float32).contiguous()
    indices = torch.as_tensor(indices, dtype=torch.int64).contiguous()
    if scores.shape != indices.shape or scores.shape[0] != len(query_ids):
        raise ValueError("scores, indices and query ids disagree in shape")
    payload = {"format": RANKING_FORMAT, "version": FORMAT_VERSION, "query_ids": [str(q) for q in query_ids],
               "passage_ids": [str(p) for p in passage_ids], "scores": scores, "indices": indices}
    if provenance is not None:
        payload["provenance"] = with_digests(provenance)
    _save_payload(payload, path)


def shard_ranking_provenance(path) -> dict | None:
    """The provenance record of a readable shard ranking (None: written without one); InputError when
    ``path`` is not a complete shard ranking."""
    return _provenance(load_shard_ranking(path))


def load_shard_ranking(path) -> dict:
    """The ranking's payload: ``query_ids``, ``passage_ids``, ``scores``, ``indices`` (and ``provenance``)."""
    payload = _torch_load(path, "ranking")
    if not isinstance(payload, dict) or payload.get("format") != RANKING_FORMAT:
        raise InputError(path, "not a tevatron shard ranking file")
    if not (_is_string_list(payload.get("query_ids")) and _is_string_list(payload.get("passage_ids"))
            and torch.is_tensor(payload.get("scores")) and torch.is_tensor(payload.get("indices"))):
        raise InputError(path, "corrupt ranking: needs 'query_ids'/'passage_ids' string lists and "
                               "'scores'/'indices' tensors")
    return payload


