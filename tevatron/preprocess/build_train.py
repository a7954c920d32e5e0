"""Build tokenised training groups ``{"query", "positives", "negatives"}`` (JSON lines, ``split00.json`` ...).

One implementation serves both sources of negatives: BM25 negatives (``qid \\t pid,pid,...``) and hard
negatives mined from a dense ranking (``qid \\t pid \\t score``, ranks ``(skip_top, depth]``); see
:mod:`tevatron.preprocess.build_train_hn`.

For each query with positives and negatives: positives are all judged-relevant passages; negatives
are the candidates minus the positives, shuffled by a generator seeded with ``(seed, qid)`` and cut to
``n_sample``.  Seeding per query makes a group depend only on the seed and its own candidates, not on
file order or on the other queries.

With ``--format text`` the groups are written as raw text in Tevatron v2's training schema
(``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}], "negative_passages": [...]}``),
the same groups, to be tokenized on the fly by the training collator; ``--query_prefix`` /
``--passage_prefix`` go in front of every text tokenized here.

Memory stays proportional to what is used: the collection is read twice (once for its ids, once to
tokenise only the sampled passages), and negatives are sampled line by line.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import re
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from tevatron.argument_checks import POSITIVE, SEED, TOKEN_LENGTH, int_arg
from tevatron.cli import command
from tevatron.files import InputError, atomic_text_writer, check_output_dir
from tevatron.text_formats import iter_collection, iter_negatives, positives_from_qrels, read_qrels, read_queries
from tevatron.preprocess.common import real_title
from tevatron.provenance import (begin_folder_output, file_identity, finish_folder_output, folder_up_to_date,
                                 model_identity)
from tevatron.preprocess.tokenize import (DEFAULT_BATCH_SIZE, TEXT, TOKENIZED, add_format_arguments, iter_batches,
                                         passage_text, prefix_record, query_text, refuse_prefix_on_text,
                                         tokenize_batch)
from tevatron.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

BM25_SHARD_SUFFIX = ".json"  # split00.json ...; hard-negative groups are split00.hn.json (build_train_hn)


def shard_path(save_to, index: int, suffix: str = BM25_SHARD_SUFFIX) -> Path:
    return Path(save_to) / f"split{index:02d}{suffix}"


def shard_files(save_to, suffix: str = BM25_SHARD_SUFFIX) -> list[Path]:
    """The shards one builder wrote in ``save_to``, never the other's: v1's stage-2 folder holds both sets
    (``split00.hn.json`` beside links to ``split00.json``)."""
    name = re.compile(r"split\d+" + re.escape(suffix))
    return sorted(path for path in Path(save_to).glob("split*") if name.fullmatch(path.name))


@dataclass(frozen=True)
class TrainSetOptions:
    """How groups are sampled and tokenised; recorded in the output's provenance record."""
    n_sample: int = 30
    seed: int = 42
    q_max_len: int = 32
    p_max_len: int = 128
    shard_size: int = 45000
    query_prefix: str = ""
    passage_prefix: str = ""
    format: str = TOKENIZED

    def record(self) -> dict:
        """The options for the provenance record (prefixes and format only when not the default)."""
        fields = {key: value for key, value in asdict(self).items()
                  if key not in ("query_prefix", "passage_prefix", "format")}
        if self.format == TEXT:  # raw text is cut by training, not here
            del fields["q_max_len"], fields["p_max_len"]
        return {**fields, **prefix_record(self.query_prefix, self.passage_prefix, self.format)}


@dataclass
class TrainingGroup:
    """One query's sampled group, with passages as collection row numbers (4 bytes each)."""
    qid: str
    positive_rows: np.ndarray
    negative_rows: np.ndarray


# --------------------------------------------------------------------------- sampling
def sample_negatives(candidates: Sequence[str], positives: Iterable[str], n_sample: int, seed: int,
                     qid: str) -> list[str]:
    """Candidates minus positives (first occurrence kept), shuffled with a (seed, qid) generator, cut to n_sample.

    A string seed is hashed with SHA-512 by :mod:`random`, so the result is the same in every process
    and Python version, whatever PYTHONHASHSEED says.
    """
    excluded = set(positives)
    pool = list(dict.fromkeys(pid for pid in candidates if pid not in excluded))
    random.Random(f"{seed}\t{qid}").shuffle(pool)
    return pool[:n_sample]


def collection_rows(collection_path) -> dict[str, int]:
    """Row number of every passage id (the first of the two passes over the collection).

    Passages with neither text nor title are left out (and counted in one warning): they would become
    empty token lists, which training rejects; qrels or negatives naming them count as unknown ids.
    """
    rows = {}
    empty: list[str] = []
    for row, (_, pid, title, text) in enumerate(tqdm(iter_collection(collection_path), desc="read passage ids",
                                                     unit=" passages", mininterval=5)):
        if not text and not real_title(title):
            empty.append(pid)
            continue
        rows[pid] = row
    if empty:
        logger.warning("%s: skipped %d passages with empty text (e.g. %s)", collection_path, len(empty), empty[0])
    if not rows:
        raise InputError(collection_path, "empty corpus")
    return rows


def plan_groups(candidate_groups: Iterable[tuple[str, list[str]]], source, queries: dict[str, str],
                positives: dict[str, list[str]], pid_rows: dict[str, int], options: TrainSetOptions
                ) -> tuple[list[TrainingGroup], Counter]:
    """Sample the group of every query that has text, positives and negatives; count what was skipped.

    Unknown ids (not in the queries or the collection) are dropped and counted, not fatal: qrels and
    negatives files often cover a slightly different corpus version.
    """
    counts: Counter = Counter()
    seen: set[str] = set()
    groups: list[TrainingGroup] = []
    for qid, candidates in candidate_groups:
        if qid in seen:
            raise InputError(source, f"query {qid} appears in more than one block")
        seen.add(qid)
        if qid not in queries:
            counts["unknown query ids"] += 1
            continue
        known_positives = [pid for pid in positives.get(qid, ()) if pid in pid_rows]
        counts["unknown positive ids"] += len(positives.get(qid, ())) - len(known_positives)
        known_candidates = [pid for pid in candidates if pid in pid_rows]
        counts["unknown negative ids"] += len(candidates) - len(known_candidates)
        if not known_positives:
            counts["queries without positives"] += 1
            continue
        negatives = sample_negatives(known_candidates, positives.get(qid, ()), options.n_sample, options.seed, qid)
        if not negatives:
            counts["queries without negatives"] += 1
            continue
        groups.append(TrainingGroup(qid, np.array([pid_rows[p] for p in known_positives], dtype=np.int32),
                                    np.array([pid_rows[p] for p in negatives], dtype=np.int32)))
    counts["queries without negatives"] += sum(1 for qid in positives if qid not in seen and qid in queries
                                               and any(p in pid_rows for p in positives[qid]))
    counts["unknown judged query ids"] += sum(1 for qid in positives if qid not in queries)
    return groups, counts


# --------------------------------------------------------------------------- tokenising what was sampled
class TokenStore:
    """Token ids of the sampled passages only, packed in one array, looked up by collection row."""

    def __init__(self, n_rows: int, vocab_size: int):
        self.slot_of_row = np.full(n_rows, -1, dtype=np.int64)
        self.tokens = array("H" if vocab_size <= 1 << 16 else "i")
        self.offsets = array("q", [0])

    def add(self, row: int, token_ids: list[int]) -> None:
        self.slot_of_row[row] = len(self.offsets) - 1
        self.tokens.extend(token_ids)
        self.offsets.append(len(self.tokens))

    def get(self, row: int) -> list[int]:
        slot = self.slot_of_row[row]
        return self.tokens[self.offsets[slot]:self.offsets[slot + 1]].tolist()


def tokenize_needed_passages(collection_path, needed_rows: np.ndarray, tokenizer, p_max_len: int,
                             batch_size: int = DEFAULT_BATCH_SIZE, prefix: str = "") -> TokenStore:
    """Second pass over the collection: tokenise only the rows the groups use, in batches."""
    needed = np.zeros(int(needed_rows.max()) + 1 if len(needed_rows) else 0, dtype=bool)
    needed[needed_rows] = True
    store = TokenStore(len(needed), len(tokenizer))

    def wanted():
        for row, (_, _, title, text) in enumerate(iter_collection(collection_path)):
            if row >= len(needed):
                return
            if needed[row]:
                yield row, passage_text(title, text, tokenizer.sep_token, prefix)

    with tqdm(total=len(needed_rows), desc="tokenize sampled passages", unit=" passages", mininterval=5) as bar:
        for batch in iter_batches(wanted(), batch_size):
            for (row, _), token_ids in zip(batch, tokenize_batch(tokenizer, [t for _, t in batch], p_max_len)):
                store.add(row, token_ids)
            bar.update(len(batch))
    return store


def read_needed_passages(collection_path, needed_rows: np.ndarray) -> dict[int, dict]:
    """``--format text``: the raw ``{"docid", "title", "text"}`` of the rows the groups use, by row."""
    needed = set(needed_rows.tolist())
    return {row: {"docid": pid, "title": real_title(title), "text": text}
            for row, (_, pid, title, text) in enumerate(iter_collection(collection_path)) if row in needed}


# --------------------------------------------------------------------------- writing
def iter_text_group_records(groups: Sequence[TrainingGroup], queries: dict[str, str],
                            passages: dict[int, dict]) -> Iterator[dict]:
    """Training records in Tevatron v2's raw-text schema."""
    for group in groups:
        yield {"query_id": group.qid, "query": queries[group.qid],
               "positive_passages": [passages[row] for row in group.positive_rows.tolist()],
               "negative_passages": [passages[row] for row in group.negative_rows.tolist()]}


def iter_group_records(groups: Sequence[TrainingGroup], queries: dict[str, str], store: TokenStore, tokenizer,
                       q_max_len: int, batch_size: int = DEFAULT_BATCH_SIZE, prefix: str = "") -> Iterator[dict]:
    """Training records, queries tokenised a batch at a time."""
    for batch in iter_batches(groups, batch_size):
        query_ids = tokenize_batch(tokenizer, [query_text(queries[group.qid], prefix) for group in batch], q_max_len)
        for group, query in zip(batch, query_ids):
            yield {"query_id": group.qid, "query": query,
                   "positives": [store.get(row) for row in group.positive_rows.tolist()],
                   "negatives": [store.get(row) for row in group.negative_rows.tolist()]}


def write_shards(records: Iterator[dict], n_groups: int, save_to: Path, shard_size: int,
                 suffix: str = BM25_SHARD_SUFFIX) -> list[Path]:
    """``split00.json`` (or ``split00{suffix}``) ... of ``shard_size`` groups each, every one written atomically."""
    paths = []
    with tqdm(total=n_groups, desc="write training groups", unit=" groups", mininterval=5) as progress:
        for index, start in enumerate(range(0, n_groups, shard_size)):
            path = shard_path(save_to, index, suffix)
            with atomic_text_writer(path) as out:
                for _ in range(min(shard_size, n_groups - start)):
                    out.write(json.dumps(next(records)) + "\n")
                    progress.update()
            paths.append(path)
    return paths


def build_training_set(candidate_groups: Iterable[tuple[str, list[str]]], source, tokenizer_name: str,
                       qrels_path, queries_path, collection_path, save_to, options: TrainSetOptions,
                       candidates_record: dict, overwrite: bool = False,
                       shard_suffix: str = BM25_SHARD_SUFFIX) -> list[Path]:
    """The shared pipeline: sample groups, tokenise what they use, write shards, mark complete.

    ``candidate_groups`` yields ``(qid, candidate negative pids)``; ``candidates_record`` names where
    they come from (file identity, depth, ...) for the provenance record, so a rerun from the same
    inputs and options is skipped and any other rerun rebuilds the folder.
    """
    save_to = Path(save_to)
    refuse_prefix_on_text(options.format, options.query_prefix, options.passage_prefix)
    for path in (qrels_path, queries_path, collection_path):
        if not Path(path).is_file():
            raise InputError(path, "no such file")
    provenance = {**candidates_record, "tokenizer": model_identity(tokenizer_name),
                  "qrels": file_identity(qrels_path), "queries": file_identity(queries_path),
                  "collection": file_identity(collection_path), **options.record()}
    if options.format == TEXT:
        del provenance["tokenizer"]  # raw text: no tokenizer involved
    if folder_up_to_date(save_to, provenance, overwrite, redo="rebuilding"):
        return shard_files(save_to, shard_suffix)
    queries = read_queries(queries_path)
    positives = positives_from_qrels(read_qrels(qrels_path))
    pid_rows = collection_rows(collection_path)
    groups, counts = plan_groups(candidate_groups, source, queries, positives, pid_rows, options)
    _log_counts(counts, len(groups), source, qrels_path)
    if not groups:
        raise InputError(source, "no query has both positives and negatives; nothing to train on")
    needed_rows = np.unique(np.concatenate([np.concatenate([g.positive_rows, g.negative_rows]) for g in groups]))
    if options.format == TEXT:
        records = iter_text_group_records(groups, queries, read_needed_passages(collection_path, needed_rows))
    else:
        tokenizer = load_tokenizer(tokenizer_name)
        store = tokenize_needed_passages(collection_path, needed_rows, tokenizer, options.p_max_len,
                                         prefix=options.passage_prefix)
        records = iter_group_records(groups, queries, store, tokenizer, options.q_max_len,
                                     prefix=options.query_prefix)
    begin_folder_output(save_to, provenance, lambda folder: shard_files(folder, shard_suffix),
                        keep_finished=False)  # every shard is rewritten
    paths = write_shards(records, len(groups), save_to, options.shard_size, shard_suffix)
    finish_folder_output(save_to, provenance, {"groups": len(groups), "shards": len(paths), **counts})
    logger.info("wrote %d training groups in %d shards to %s", len(groups), len(paths), save_to)
    return paths


def _log_counts(counts: Counter, n_groups: int, source, qrels_path) -> None:
    """One line for skipped queries, and warnings for ids the other files do not know."""
    logger.info("%d training groups; skipped %d queries without positives and %d without negatives",
                n_groups, counts["queries without positives"], counts["queries without negatives"])
    for what, where in (("unknown query ids", source), ("unknown negative ids", source),
                        ("unknown positive ids", qrels_path), ("unknown judged query ids", qrels_path)):
        if counts[what]:
            logger.warning("%s: skipped %d %s (not in the queries/collection)", where, counts[what], what)


# --------------------------------------------------------------------------- BM25 negatives entry point
def iter_negative_file(path) -> Iterator[tuple[str, list[str]]]:
    for _, qid, pids in iter_negatives(path):
        yield qid, pids


def build_train(tokenizer_name: str, negative_file, qrels, queries, collection, save_to,
                options: TrainSetOptions = TrainSetOptions(), overwrite: bool = False) -> list[Path]:
    """Training groups with negatives from a ``qid \\t pid,pid,...`` file (BM25 top 200 minus positives)."""
    if not Path(negative_file).is_file():
        raise InputError(negative_file, "no such file")
    return build_training_set(iter_negative_file(negative_file), negative_file, tokenizer_name, qrels, queries,
                              collection, save_to, options, {"negatives": file_identity(negative_file)}, overwrite)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments both builders take (the Tevatron v1 names)."""
    parser.add_argument("--tokenizer_name", required=True)
    parser.add_argument("--qrels", required=True)
    parser.add_argument("--queries", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--save_to", required=True, help="output folder for split00.json ...")
    parser.add_argument("--n_sample", type=int_arg(POSITIVE), default=30, help="negatives per query")
    parser.add_argument("--seed", type=int_arg(SEED), default=42)
    parser.add_argument("--q_max_len", type=int_arg(TOKEN_LENGTH), default=32)
    parser.add_argument("--p_max_len", type=int_arg(TOKEN_LENGTH), default=128)
    parser.add_argument("--shard_size", type=int_arg(POSITIVE), default=45000, help="groups per split file")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the folder is up to date")
    add_format_arguments(parser, "--query_prefix", "--passage_prefix")


def options_from_args(args: argparse.Namespace) -> TrainSetOptions:
    return TrainSetOptions(n_sample=args.n_sample, seed=args.seed, q_max_len=args.q_max_len,
                           p_max_len=args.p_max_len, shard_size=args.shard_size, query_prefix=args.query_prefix,
                           passage_prefix=args.passage_prefix, format=args.format)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--negative_file", required=True, help="qid \\t pid,pid,... (train.negatives.tsv)")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    check_output_dir(args.save_to)
    build_train(args.tokenizer_name, args.negative_file, args.qrels, args.queries, args.collection, args.save_to,
                options_from_args(args), args.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    return command(_main)(argv)
