"""Merge per-shard search results into one global ranking.

``python -m tevatron.faiss_retriever.reducer --score_dir DIR --query Q.pt --save_ranking_to FILE``

Each file in ``DIR`` (sorted by name, hidden temp files skipped) is a binary shard ranking written by
``python -m tevatron.faiss_retriever`` for one passage shard.  The merge keeps a running
``[queries, k]`` score matrix and int64 global positions (shard offset + row in the shard), so memory
is O(queries x depth) plus one compact byte array of passage ids per shard.  The merge is stable
(:func:`tevatron.faiss_retriever.topk.merge_topk`, the retriever's own block merge): earlier
shards come first on equal scores, which is the retriever's lower-position-first rule, so reducing
per-shard results equals searching the concatenated shards at once.

The output gets a provenance record (the shard files' and the query file's identities, the depth), so
a re-run with unchanged shards keeps it and leaves its modification time alone: steps that read the
ranking (hard-negative mining) then see an unchanged input.  A shard whose record says
it was searched with query encodings made from other inputs than ``--query`` now holds (e.g. before
the queries were re-encoded with a retrained model) is refused: merging it would mix two models'
rankings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from tevatron.argument_checks import POSITIVE, check_ranges, parse_dataclasses
from tevatron.faiss_retriever.topk import merge_topk, ranked_shard_rows
from tevatron.cli import command
from tevatron.files import InputError, check_output_file
from tevatron.provenance import (changed_inputs, file_identity, read_file_record, settled, up_to_date,
                                 write_file_record)
from tevatron.tensor_files import encodings_provenance, load_encodings, load_shard_ranking
from tevatron.text_formats import write_ranking

logger = logging.getLogger(__name__)

MERGE_CHUNK_QUERIES = 1024


@dataclass
class ReduceArguments:
    """Command-line flags (Tevatron v1 names)."""

    score_dir: str = field(metadata={"help": "folder of per-shard binary rankings"})
    query: str = field(metadata={"help": "the query encodings file the shards were searched with"})
    save_ranking_to: str = field(metadata={"help": "output 'qid<TAB>pid<TAB>score' ranking"})
    depth: Optional[int] = field(default=None, metadata={"help": "results per query; unset: the shards' depth"})
    overwrite: bool = field(default=False, metadata={"help": "merge again even if the output is up to date"})

    def __post_init__(self):
        check_ranges(self, {"depth": POSITIVE})


@dataclass
class MergedRanking:
    """Global top-k: ``scores``/``positions`` are [queries, k]; position -1 marks an empty slot."""

    query_ids: list[str]
    scores: torch.Tensor
    positions: torch.Tensor
    shard_offsets: list[int]
    shard_passage_ids: list[np.ndarray]


def list_shard_files(score_dir, exclude: Sequence[Path] = ()) -> list[Path]:
    """Shard rankings in name order; ``.``-prefixed files are unfinished atomic writes."""
    folder = Path(score_dir)
    if not folder.is_dir():
        raise InputError(folder, "no such directory")
    excluded = {path.resolve() for path in exclude}
    paths = sorted(path for path in folder.iterdir()
                   if path.is_file() and not path.name.startswith(".") and path.resolve() not in excluded)
    if not paths:
        raise InputError(folder, "no shard ranking files found")
    return paths


def compact_ids(ids: Sequence[str]) -> np.ndarray:
    """UTF-8 ids as one fixed-width numpy bytes array: a few bytes per id instead of a Python object."""
    return np.array([pid.encode("utf-8") for pid in ids], dtype=np.bytes_) if ids else np.array([], dtype="S1")


def check_shard(path, payload: dict, query_ids: list[str], query_file) -> None:
    if payload["query_ids"] != query_ids:
        raise InputError(path, f"ranking from a different query set than {query_file} "
                               f"({len(payload['query_ids'])} vs {len(query_ids)} queries, or different ids/order)")
    scores, indices = payload["scores"], payload["indices"]
    if scores.ndim != 2 or scores.shape != indices.shape or scores.shape[0] != len(query_ids):
        raise InputError(path, f"corrupt ranking: scores {tuple(scores.shape)}, indices {tuple(indices.shape)}")
    if indices.numel() and int(indices.max()) >= len(payload["passage_ids"]):
        raise InputError(path, f"corrupt ranking: index {int(indices.max())} beyond "
                               f"{len(payload['passage_ids'])} passages")


def check_shard_queries(path, payload: dict, query_record: dict | None, query_file) -> None:
    """Refuse a shard searched with query encodings made from other inputs than ``query_file``'s."""
    searched = (payload.get("provenance") or {}).get("queries")
    searched_with = searched.get("made_from") if isinstance(searched, dict) else None
    if searched_with is None or query_record is None:
        return  # written without records: nothing to compare
    searched_with, query_record = settled(searched_with, query_record)
    if searched_with != query_record:
        changed = ", ".join(changed_inputs(searched_with, query_record))
        raise InputError(path, f"searched with query encodings made from other inputs than {query_file} "
                               f"holds now ({changed} changed); search this shard again")


def merge_into(best_scores, best_positions, shard_scores, shard_indices, offset: int, keep: int,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge one shard into the running top-k, ``chunk`` queries at a time to bound temporaries."""
    total = shard_scores.shape[0]
    merged_scores = torch.empty((total, keep), dtype=torch.float32)
    merged_positions = torch.empty((total, keep), dtype=torch.int64)
    for start in range(0, total, chunk):
        rows = slice(start, start + chunk)
        scores, indices = ranked_shard_rows(shard_scores[rows].to(torch.float32), shard_indices[rows].to(torch.int64))
        positions = torch.where(indices < 0, indices, indices + offset)
        merged_scores[rows], merged_positions[rows] = merge_topk(best_scores[rows], best_positions[rows],
                                                                 scores, positions, keep)
    return merged_scores, merged_positions


def reduce_shards(paths: Sequence[Path], query_file, depth: int | None = None,
                  chunk: int = MERGE_CHUNK_QUERIES) -> MergedRanking:
    """Fold the shard rankings into the global top-``depth`` (default: the widest shard's depth)."""
    _, query_ids = load_encodings(query_file)
    query_record = encodings_provenance(query_file)
    best_scores = torch.empty((len(query_ids), 0), dtype=torch.float32)
    best_positions = torch.empty((len(query_ids), 0), dtype=torch.int64)
    offsets, id_tables, offset = [], [], 0
    for path in paths:
        payload = load_shard_ranking(path)
        check_shard(path, payload, query_ids, query_file)
        check_shard_queries(path, payload, query_record, query_file)
        shard_scores, shard_indices = payload["scores"], payload["indices"]
        passage_count = len(payload["passage_ids"])
        if depth is not None and shard_scores.shape[1] < min(depth, passage_count):
            logger.warning("%s holds only the top %d of %d passages; results beyond that depth may be missing",
                           path, shard_scores.shape[1], passage_count)
        keep = max(best_scores.shape[1], shard_scores.shape[1]) if depth is None else depth
        keep = min(keep, best_scores.shape[1] + shard_scores.shape[1])
        best_scores, best_positions = merge_into(best_scores, best_positions, shard_scores, shard_indices,
                                                 offset, keep, chunk)
        offsets.append(offset)
        id_tables.append(compact_ids(payload["passage_ids"]))
        offset += passage_count
        del payload
    return MergedRanking(query_ids, best_scores, best_positions, offsets, id_tables)


def positions_to_ids(positions: np.ndarray, offsets: Sequence[int], id_tables: Sequence[np.ndarray]) -> np.ndarray:
    """Look global positions up shard by shard (no concatenated id table is ever built)."""
    width = max((table.dtype.itemsize for table in id_tables), default=1)
    ids = np.zeros(positions.shape, dtype=f"S{width}")
    for offset, table in zip(offsets, id_tables):
        inside = (positions >= offset) & (positions < offset + len(table))
        ids[inside] = table[positions[inside] - offset]
    return ids


def iter_merged(merged: MergedRanking, chunk: int = MERGE_CHUNK_QUERIES) -> Iterator[tuple[str, list]]:
    """Yield ``(qid, [(pid, score), ...])`` best first, skipping empty slots."""
    for start in range(0, len(merged.query_ids), chunk):
        positions = merged.positions[start:start + chunk].numpy()
        pids = positions_to_ids(positions, merged.shard_offsets, merged.shard_passage_ids)
        scores = merged.scores[start:start + chunk].tolist()
        for row, qid in enumerate(merged.query_ids[start:start + chunk]):
            filled = positions[row] >= 0
            yield qid, [(pid.decode("utf-8"), score)
                        for pid, score, ok in zip(pids[row].tolist(), scores[row], filled.tolist()) if ok]


def run_reduce(args: ReduceArguments) -> None:
    output = Path(args.save_ranking_to)
    paths = list_shard_files(args.score_dir, exclude=[output])
    provenance = {"shards": [file_identity(path) for path in paths], "query": file_identity(args.query),
                  "depth": args.depth}
    if up_to_date(output, provenance, read_file_record, args.overwrite, redo="merging again"):
        return
    merged = reduce_shards(paths, args.query, args.depth)
    logger.info("merged %d shard rankings for %d queries (depth %d)", len(paths), len(merged.query_ids),
                merged.scores.shape[1])
    write_ranking(output, iter_merged(merged))
    write_file_record(output, provenance)
    logger.info("wrote %s", output)


def parse_arguments(argv: Sequence[str] | None) -> ReduceArguments:
    from transformers import HfArgumentParser

    (args,) = parse_dataclasses(HfArgumentParser(ReduceArguments), argv)
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    check_output_file(args.save_ranking_to)
    run_reduce(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
