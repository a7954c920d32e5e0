"""Tokenise queries and passages into the JSON lines the encoder reads: ``{"text_id": id, "text": [ids]}``.

Token ids carry no special tokens (the model adds [CLS]/[SEP]); passages are ``title [SEP] text`` as in
Tevatron.  The corpus is cut into contiguous row ranges (``split00.json`` ...), each streamed, tokenised
in batches by the fast tokenizer in its own process and written atomically, so an interrupted run
resumes where it stopped.

With ``--format text`` the same files hold raw text instead, in Tevatron v2's schemas (``{"query_id",
"query"}``, ``{"docid", "title", "text"}``), for encoding with on-the-fly tokenization; ``--query_prefix`` /
``--passage_prefix`` (E5/BGE-style instructions) are put in front of every text before it is tokenized.

Outputs record what they were made from (tokenizer, input file, max length, splits): the corpus
folder in its ``.complete`` record, a query file in its sidecar record (:mod:`tevatron.provenance`).
A re-run reuses an output only when that record is unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from tevatron.argument_checks import POSITIVE, TOKEN_LENGTH, int_arg
from tevatron.cli import CommandError, command
from tevatron.files import InputError, atomic_text_writer, check_output_dir, check_output_file
from tevatron.text_formats import count_data_lines, iter_collection, read_queries, write_jsonl
from tevatron.preprocess.common import real_title
from tevatron.provenance import (begin_folder_output, file_identity, finish_folder_output, folder_up_to_date,
                                 model_identity, read_file_record, up_to_date, write_file_record)
from tevatron.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
SPLIT_GLOB = "split*.json"


TOKENIZED, TEXT = "tokenized", "text"  # what a data file holds: token ids (v1) or raw text (v2's schemas)


# --------------------------------------------------------------------------- shared by every builder
def passage_text(title: str, text: str, sep_token: str, prefix: str = "") -> str:
    """Tevatron's passage input: ``title [SEP] text``, or the text alone when there is no title, after
    ``prefix`` (``--passage_prefix``).  The one join of title and text: tokenizing ahead and on the fly
    both go through it."""
    title = real_title(title)
    return prefix + (f"{title} {sep_token} {text}" if title else text)


def query_text(text: str, prefix: str = "") -> str:
    """A query's input: ``--query_prefix`` then the text."""
    return prefix + text


def prefix_record(query_prefix: str = "", passage_prefix: str = "", data_format: str = TOKENIZED) -> dict:
    """The prefixes and format for a provenance record, each only when not the default (so records of
    outputs made before these options existed still match)."""
    record = {"query_prefix": query_prefix, "passage_prefix": passage_prefix}
    record = {key: value for key, value in record.items() if value}
    if data_format != TOKENIZED:
        record["format"] = data_format
    return record


def refuse_prefix_on_text(data_format: str, *prefixes: str) -> None:
    """Raw-text outputs are tokenized later (training, encoding): a prefix is given there, not here."""
    if data_format == TEXT and any(prefixes):
        raise CommandError("--format text writes raw text, tokenized later: give --query_prefix/--passage_prefix "
                           "to training and encoding instead (they record and apply them)")


def tokenize_batch(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids without special tokens, truncated to ``max_len``; one fast-tokenizer call per batch."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_len)["input_ids"]


def iter_batches(items: Iterable, batch_size: int) -> Iterator[list]:
    """Consecutive lists of ``batch_size`` items (the last may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_tokenized(tokenizer, records: Iterable[tuple[str, str]], max_len: int,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[dict]:
    """``{"text_id", "text"}`` records for ``(id, text)`` pairs, tokenised a batch at a time."""
    for batch in iter_batches(records, batch_size):
        token_ids = tokenize_batch(tokenizer, [text for _, text in batch], max_len)
        for (text_id, _), ids in zip(batch, token_ids):
            yield {"text_id": text_id, "text": ids}


# --------------------------------------------------------------------------- queries
def tokenize_queries(tokenizer_name: str, query_file, save_to, q_max_len: int = 32,
                     batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False, prefix: str = "",
                     data_format: str = TOKENIZED) -> int:
    """Write ``save_to`` (JSON lines) for every query of ``query_file``; returns how many."""
    refuse_prefix_on_text(data_format, prefix)
    save_to = Path(save_to)
    if data_format == TEXT:
        provenance = {"queries": file_identity(query_file), **prefix_record(data_format=TEXT)}
    else:
        provenance = {"tokenizer": model_identity(tokenizer_name), "queries": file_identity(query_file),
                      "q_max_len": q_max_len, **prefix_record(query_prefix=prefix)}
    if up_to_date(save_to, provenance, read_file_record, overwrite, redo="re-tokenizing"):
        return 0
    queries = read_queries(query_file)
    # the tokenizer loads (and may refuse) before the progress bar draws, so an error stays one line
    tokenizer = load_tokenizer(tokenizer_name) if data_format != TEXT else None
    records = tqdm(queries.items(), total=len(queries), desc=f"tokenize {Path(query_file).name}", mininterval=5)
    if data_format == TEXT:
        write_jsonl(save_to, ({"query_id": qid, "query": text} for qid, text in records))
    else:
        prefixed = ((qid, query_text(text, prefix)) for qid, text in records)
        write_jsonl(save_to, iter_tokenized(tokenizer, prefixed, q_max_len, batch_size))
    write_file_record(save_to, provenance)
    logger.info("wrote %d tokenized queries to %s", len(queries), save_to)
    return len(queries)


# --------------------------------------------------------------------------- passages
def split_ranges(n_rows: int, n_splits: int) -> list[tuple[int, int]]:
    """``n_splits`` contiguous ``[start, stop)`` row ranges covering ``n_rows``, sizes differing by <= 1."""
    if n_splits < 1:
        raise ValueError("n_splits must be at least 1")
    base, extra = divmod(n_rows, n_splits)
    ranges, start = [], 0
    for index in range(n_splits):
        stop = start + base + (1 if index < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def split_path(save_to, index: int) -> Path:
    return Path(save_to) / f"split{index:02d}.json"


def tokenize_split(job: dict) -> tuple[int, int]:
    """Tokenise rows ``[start, stop)`` of the corpus into one split file; runs in a worker process.

    The job carries the tokenizer itself (fast tokenizers pickle), so workers never go to the hub.
    """
    tokenizer = job["tokenizer"]
    rows = iter_collection(job["corpus"], job["start"], job["stop"])
    if job["format"] == TEXT:
        output = ({"docid": pid, "title": real_title(title), "text": text} for _, pid, title, text in rows)
    else:
        records = ((pid, passage_text(title, text, tokenizer.sep_token, job["prefix"]))
                   for _, pid, title, text in rows)
        output = iter_tokenized(tokenizer, records, job["p_max_len"], job["batch_size"])
    count = 0
    with atomic_text_writer(job["path"]) as out:
        for record in output:
            out.write(json.dumps(record) + "\n")
            count += 1
    if count != job["stop"] - job["start"]:
        raise RuntimeError(f"{job['corpus']}: expected {job['stop'] - job['start']} rows in split "
                           f"{job['index']}, read {count} (file changed while tokenizing?)")
    return job["index"], count


def _tokenize_split_reporting(job: dict) -> tuple[int, int, str | None]:
    """:func:`tokenize_split` that returns bad input as a message: InputError does not survive pickling."""
    try:
        index, count = tokenize_split(job)
    except InputError as err:
        return job["index"], 0, str(err)
    return index, count, None


def _run_jobs(jobs: list[dict], num_workers: int) -> Iterator[tuple[int, int]]:
    """Run split jobs in a process pool (spawned: forked tokenizers deadlock) or inline for one worker."""
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(tokenize_split, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(min(num_workers, len(jobs))) as pool:
        for index, count, error in pool.imap_unordered(_tokenize_split_reporting, jobs):
            if error is not None:
                raise CommandError(error)
            yield index, count


def tokenize_passages(tokenizer_name: str, corpus_file, save_to, n_splits: int = 10, p_max_len: int = 128,
                      num_workers: int = 2, batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False,
                      prefix: str = "", data_format: str = TOKENIZED) -> list[Path]:
    """Write the corpus as ``split00.json`` ... in ``save_to``; splits finished by an interrupted run
    from the same tokenizer, corpus and arguments are kept."""
    refuse_prefix_on_text(data_format, prefix)
    corpus_file, save_to = Path(corpus_file), Path(save_to)
    n_rows = count_data_lines(corpus_file)
    if n_rows == 0:
        raise InputError(corpus_file, "empty corpus")
    if n_splits > n_rows:
        logger.warning("%d splits requested for %d passages; using %d", n_splits, n_rows, n_rows)
        n_splits = n_rows
    provenance = {"tokenizer": model_identity(tokenizer_name), "corpus": file_identity(corpus_file), "rows": n_rows,
                  "n_splits": n_splits, "p_max_len": p_max_len,
                  **prefix_record(passage_prefix=prefix, data_format=data_format)}
    if data_format == TEXT:  # raw text depends on neither the tokenizer nor a length
        del provenance["tokenizer"], provenance["p_max_len"]
    paths = [split_path(save_to, index) for index in range(n_splits)]
    if folder_up_to_date(save_to, provenance, overwrite, redo="re-tokenizing"):
        return paths
    begin_folder_output(save_to, provenance, SPLIT_GLOB, keep_finished=not overwrite)
    tokenizer = load_tokenizer(tokenizer_name) if data_format == TOKENIZED else None
    jobs = [{"index": index, "start": start, "stop": stop, "path": str(paths[index]), "corpus": str(corpus_file),
             "tokenizer": tokenizer, "p_max_len": p_max_len, "batch_size": batch_size, "prefix": prefix,
             "format": data_format}
            for index, (start, stop) in enumerate(split_ranges(n_rows, n_splits)) if not paths[index].is_file()]
    if len(jobs) < n_splits:
        logger.info("%d of %d splits already written; resuming", n_splits - len(jobs), n_splits)
    with tqdm(total=sum(job["stop"] - job["start"] for job in jobs), desc="tokenize passages",
              unit=" passages") as progress:
        for index, count in _run_jobs(jobs, num_workers):
            progress.update(count)
            logger.info("wrote %s (%d passages)", paths[index], count)
    finish_folder_output(save_to, provenance, {"splits": n_splits, "passages": n_rows})
    return paths


# --------------------------------------------------------------------------- command lines
def build_queries_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tokenise a query file (qid \\t text) into JSON lines.")
    parser.add_argument("--tokenizer_name", required=True)
    parser.add_argument("--query_file", required=True)
    parser.add_argument("--save_to", required=True, help="output .json file")
    parser.add_argument("--q_max_len", type=int_arg(TOKEN_LENGTH), default=32)
    parser.add_argument("--batch_size", type=int_arg(POSITIVE), default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--overwrite", action="store_true")
    add_format_arguments(parser, "--query_prefix")
    return parser


def add_format_arguments(parser: argparse.ArgumentParser, *prefix_flags: str) -> None:
    """``--format`` and the prefix flags a tokenization script takes."""
    parser.add_argument("--format", choices=(TOKENIZED, TEXT), default=TOKENIZED,
                        help="tokenized: token ids (v1); text: raw text in Tevatron v2's schema, tokenized later")
    for flag in prefix_flags:
        parser.add_argument(flag, default="", help="put in front of every text before tokenizing (e.g. 'query: ')")


def build_passages_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tokenise a corpus (pid \\t title \\t text) into split files.")
    parser.add_argument("--tokenizer_name", required=True)
    parser.add_argument("--file", required=True, help="corpus.tsv (or BEIR corpus.jsonl)")
    parser.add_argument("--save_to", required=True, help="output folder for split00.json ...")
    parser.add_argument("--n_splits", type=int_arg(POSITIVE), default=10)
    parser.add_argument("--p_max_len", type=int_arg(TOKEN_LENGTH), default=128)
    parser.add_argument("--num_workers", type=int_arg(POSITIVE), default=2)
    parser.add_argument("--batch_size", type=int_arg(POSITIVE), default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the folder is up to date")
    add_format_arguments(parser, "--passage_prefix")
    return parser


def _queries_main(argv: Sequence[str] | None) -> None:
    args = build_queries_parser().parse_args(argv)
    check_output_file(args.save_to)
    tokenize_queries(args.tokenizer_name, args.query_file, args.save_to, args.q_max_len, args.batch_size,
                     args.overwrite, args.query_prefix, args.format)


def _passages_main(argv: Sequence[str] | None) -> None:
    args = build_passages_parser().parse_args(argv)
    check_output_dir(args.save_to)
    tokenize_passages(args.tokenizer_name, args.file, args.save_to, args.n_splits, args.p_max_len,
                      args.num_workers, args.batch_size, args.overwrite, args.passage_prefix, args.format)


def queries_main(argv: Sequence[str] | None = None) -> int:
    return command(_queries_main)(argv)


def passages_main(argv: Sequence[str] | None = None) -> int:
    return command(_passages_main)(argv)
