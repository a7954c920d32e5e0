"""BM25 (bm25s, Lucene variant, k1=0.9, b=0.4, English stopwords and Snowball stemming) for training
negatives (top 200 minus positives) and a dev-query run (the results table's BM25 row).

Scale is MS MARCO: 8.8M passages, 500k training queries.  So the corpus is tokenised in chunks
into one flat int32 array (not 8.8M Python lists), bm25s builds its index from a lazy view of it,
and queries are searched in batches whose results are written as they come.

Scores are reported in the classic form ``sum idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))``
with ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``; bm25s (like Lucene >= 8) leaves out the constant
factor ``k1 + 1``, which changes no ranking, and it is put back so scores match the textbook formula.
"""
from __future__ import annotations

import argparse
import logging
import os
from array import array
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from tevatron.argument_checks import NON_NEGATIVE, POSITIVE, float_arg, fraction, int_arg
from tevatron.cli import command
from tevatron.files import InputError, check_output_file
from tevatron.text_formats import (iter_collection, positives_from_qrels, read_qrels, read_queries,
                                   write_negatives, write_ranking)
from tevatron.preprocess.common import real_title
from tevatron.provenance import file_identity, read_file_record, up_to_date, write_file_record

logger = logging.getLogger(__name__)

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
NEGATIVE_DEPTH = 200
DEV_RUN_DEPTH = 1000
CORPUS_CHUNK = 100_000
QUERY_BATCH = 1000


def make_bm25_tokenizer():
    """bm25s's tokenizer with English stopwords and the English Snowball stemmer (PyStemmer)."""
    import bm25s
    import Stemmer

    return bm25s.tokenization.Tokenizer(lower=True, stopwords="en", stemmer=Stemmer.Stemmer("english"))


def bm25_document(title: str, text: str) -> str:
    """What BM25 indexes: the title (if any) followed by the text."""
    title = real_title(title)
    return f"{title} {text}" if title else text


class FlatDocuments:
    """Token ids of every document in one int32 array plus offsets, read by bm25s one list at a time.

    8.8M Python lists of ints would take several GB (8-byte pointers plus list headers); this takes
    4 bytes per token.
    """

    def __init__(self, token_ids: np.ndarray, offsets: np.ndarray):
        self.token_ids = token_ids
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> list[int]:
        return self.token_ids[self.offsets[index]:self.offsets[index + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(len(self)):
            yield self[index]


class Bm25Index:
    """A bm25s index over a collection, plus the passage ids in index order."""

    def __init__(self, retriever, tokenizer, passage_ids: np.ndarray, k1: float):
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.passage_ids = passage_ids
        self.score_scale = 1.0 + k1
        self.empty_token_id = tokenizer.get_vocab_dict().get("")

    @property
    def num_docs(self) -> int:
        return len(self.passage_ids)

    def query_token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Query tokens known to the index (unknown words cannot score; the empty marker is dropped)."""
        ids = self.tokenizer.tokenize(list(texts), update_vocab=False, return_as="ids", show_progress=False)
        return [[token for token in query if token != self.empty_token_id] for query in ids]

    def search(self, texts: Sequence[str], k: int, n_threads: int = 0) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(pid, score)`` per query, best first; passages matching no query term are left out."""
        k = min(k, self.num_docs)
        token_ids = self.query_token_ids(texts)
        results: list[list[tuple[str, float]]] = [[] for _ in texts]
        searchable = [i for i, ids in enumerate(token_ids) if ids]
        if not searchable or k == 0:
            return results
        found = self.retriever.retrieve([token_ids[i] for i in searchable], k=k, n_threads=n_threads,
                                        show_progress=False, sorted=True)
        for row, query_index in enumerate(searchable):
            scores = found.scores[row] * self.score_scale
            keep = scores > 0
            results[query_index] = [(str(pid), float(score)) for pid, score in
                                    zip(self.passage_ids[found.documents[row][keep]], scores[keep])]
        return results


def _tokenize_corpus(tokenizer, documents: Iterable[tuple[str, str]], chunk_size: int
                     ) -> tuple[FlatDocuments, np.ndarray]:
    """Tokenise ``(pid, text)`` pairs chunk by chunk into flat arrays (memory: 4 bytes per token)."""
    flat, lengths, id_chunks, chunk_ids = array("i"), array("q"), [], []
    chunk_texts: list[str] = []

    def flush():
        for ids in tokenizer.streaming_tokenize(chunk_texts, update_vocab=True):
            flat.extend(ids)
            lengths.append(len(ids))
        id_chunks.append(np.array(chunk_ids))
        chunk_texts.clear()
        chunk_ids.clear()

    for pid, text in documents:
        chunk_ids.append(pid)
        chunk_texts.append(text)
        if len(chunk_texts) == chunk_size:
            flush()
    if chunk_texts:
        flush()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.frombuffer(lengths, dtype=np.int64), out=offsets[1:])
    passage_ids = np.concatenate(id_chunks) if id_chunks else np.array([], dtype=str)
    return FlatDocuments(np.frombuffer(flat, dtype=np.int32), offsets), passage_ids


def build_index(documents: Iterable[tuple[str, str]], k1: float = DEFAULT_K1, b: float = DEFAULT_B,
                chunk_size: int = CORPUS_CHUNK, allow_empty: bool = False) -> Bm25Index | None:
    """Index ``(pid, text)`` pairs with bm25s (numba backend when installed, else numpy).

    An empty corpus is a ValueError, or None with ``allow_empty`` (so callers can name the file).
    """
    import bm25s

    tokenizer = make_bm25_tokenizer()
    corpus, passage_ids = _tokenize_corpus(tokenizer, documents, chunk_size)
    if len(corpus) == 0:
        if allow_empty:
            return None
        raise ValueError("cannot build a BM25 index over an empty corpus")
    vocab = tokenizer.get_vocab_dict()
    logger.info("indexing %d passages, %d tokens, %d distinct terms", len(corpus), len(corpus.token_ids),
                len(vocab))
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", backend="auto")
    # What BM25.index() does for (ids, vocab) input, minus its insistence on a real list of lists.
    retriever.scores = retriever.build_index_from_ids(unique_token_ids=list(vocab.values()),
                                                      corpus_token_ids=corpus, show_progress=True)
    retriever.vocab_dict = vocab
    retriever.unique_token_ids_set = set(vocab.values())
    return Bm25Index(retriever, tokenizer, passage_ids, k1)


def index_collection(collection_path, k1: float = DEFAULT_K1, b: float = DEFAULT_B,
                     chunk_size: int = CORPUS_CHUNK) -> Bm25Index:
    """BM25 index of a ``corpus.tsv`` (or BEIR ``corpus.jsonl``): title + text of every passage."""
    documents = ((pid, bm25_document(title, text)) for _, pid, title, text in
                 tqdm(iter_collection(collection_path), desc="BM25 tokenize corpus", unit=" passages",
                      mininterval=5))
    index = build_index(documents, k1, b, chunk_size, allow_empty=True)
    if index is None:
        raise InputError(collection_path, "empty corpus")
    return index


def iter_search(index: Bm25Index, queries: Sequence[tuple[str, str]], k: int, batch_size: int = QUERY_BATCH,
                n_threads: int = 0, desc: str = "BM25 search") -> Iterator[tuple[str, list[tuple[str, float]]]]:
    """``(qid, hits)`` for ``(qid, text)`` queries, searched ``batch_size`` at a time (bounded memory)."""
    with tqdm(total=len(queries), desc=desc, unit=" queries", mininterval=5) as progress:
        for start in range(0, len(queries), batch_size):
            batch = queries[start:start + batch_size]
            hits = index.search([text for _, text in batch], k, n_threads)
            for (qid, _), query_hits in zip(batch, hits):
                yield qid, query_hits
            progress.update(len(batch))


def iter_bm25_negatives(index: Bm25Index, queries: Sequence[tuple[str, str]], positives: dict[str, list[str]],
                   depth: int = NEGATIVE_DEPTH, batch_size: int = QUERY_BATCH, n_threads: int = 0
                   ) -> Iterator[tuple[str, list[str]]]:
    """``(qid, negative pids)``: the top ``depth`` BM25 passages minus the query's positives, in rank order."""
    for qid, hits in iter_search(index, queries, depth, batch_size, n_threads, desc="BM25 negatives"):
        judged = set(positives.get(qid, ()))
        yield qid, [pid for pid, _ in hits if pid not in judged]


def training_queries(queries_path, qrels_path) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Training queries that have a positive (the only ones negatives are useful for), and the positives."""
    queries = read_queries(queries_path)
    positives = {qid: pids for qid, pids in positives_from_qrels(read_qrels(qrels_path)).items() if pids}
    missing = [qid for qid in positives if qid not in queries]
    if missing:
        logger.warning("%s: %d queries with positives have no text in %s (e.g. %s); skipped", qrels_path,
                       len(missing), queries_path, missing[0])
    selected = [(qid, text) for qid, text in queries.items() if qid in positives]
    logger.info("%d of %d training queries have positives", len(selected), len(queries))
    return selected, positives


def run_bm25(collection, train_queries=None, train_qrels=None, negatives_out=None, dev_queries=None,
             dev_run_out=None, depth: int = NEGATIVE_DEPTH, dev_depth: int = DEV_RUN_DEPTH, k1: float = DEFAULT_K1,
             b: float = DEFAULT_B, n_threads: int | None = None, batch_size: int = QUERY_BATCH,
             overwrite: bool = False) -> list[Path]:
    """Write the training negatives and/or the dev run, skipping outputs already made from the same inputs
    and arguments (their sidecar provenance records say; threads and batch size change no result)."""
    n_threads = (os.cpu_count() or 1) if n_threads is None else n_threads
    negatives_out = Path(negatives_out) if negatives_out is not None else None
    dev_run_out = Path(dev_run_out) if dev_run_out is not None else None
    scoring = {"k1": k1, "b": b, "collection": file_identity(collection)}
    todo, records = [], {}
    for out, inputs, arguments in ((negatives_out, (train_queries, train_qrels), {"depth": depth}),
                                   (dev_run_out, (dev_queries,), {"depth": dev_depth})):
        if out is None:
            continue
        for path in inputs:
            if path is None:
                raise ValueError(f"{out} requested without its inputs")
        records[out] = {**scoring, **arguments, "inputs": [file_identity(path) for path in inputs]}
        if up_to_date(out, records[out], read_file_record, overwrite, redo="searching again"):
            continue
        todo.append(out)
    if not todo:
        return []
    # Read the queries before the (long) indexing, so bad query files fail fast.
    train = training_queries(train_queries, train_qrels) if negatives_out in todo else None
    dev = list(read_queries(dev_queries).items()) if dev_run_out in todo else None
    index = index_collection(collection, k1, b)
    if train is not None:
        queries, positives = train
        write_negatives(negatives_out,
                             iter_bm25_negatives(index, queries, positives, depth, batch_size, n_threads))
        write_file_record(negatives_out, records[negatives_out])
        logger.info("wrote %s", negatives_out)
    if dev is not None:
        write_ranking(dev_run_out, iter_search(index, dev, dev_depth, batch_size, n_threads, desc="BM25 dev run"))
        write_file_record(dev_run_out, records[dev_run_out])
        logger.info("wrote %s", dev_run_out)
    return todo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="marco", help="normalised data folder supplying the defaults")
    parser.add_argument("--collection", help="default: DATA_DIR/corpus.tsv")
    parser.add_argument("--queries", help="training queries (default: DATA_DIR/train.query.txt)")
    parser.add_argument("--qrels", help="training qrels (default: DATA_DIR/qrels.train.tsv)")
    parser.add_argument("--save_to", help="negatives file (default: DATA_DIR/train.negatives.tsv)")
    parser.add_argument("--no_negatives", action="store_true", help="only write the dev run")
    parser.add_argument("--dev_run", nargs="?", const="", default=None,
                        help="also write a BM25 run for the dev queries (default path: DATA_DIR/bm25.dev.rank.tsv)")
    parser.add_argument("--dev_queries", help="default: DATA_DIR/dev.query.txt")
    parser.add_argument("--depth", type=int_arg(POSITIVE), default=NEGATIVE_DEPTH, help="negatives: top-k before removing positives")
    parser.add_argument("--dev_depth", type=int_arg(POSITIVE), default=DEV_RUN_DEPTH)
    parser.add_argument("--k1", type=float_arg(NON_NEGATIVE), default=DEFAULT_K1)
    parser.add_argument("--b", type=float_arg(fraction()), default=DEFAULT_B)
    parser.add_argument("--threads", type=int_arg(POSITIVE), default=None, help="retrieval threads (default: all cores)")
    parser.add_argument("--batch_size", type=int_arg(POSITIVE), default=QUERY_BATCH, help="queries searched at a time")
    parser.add_argument("--overwrite", action="store_true")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    data = Path(args.data_dir)
    dev_run = None if args.dev_run is None else (args.dev_run or data / "bm25.dev.rank.tsv")
    negatives_out = None if args.no_negatives else (args.save_to or data / "train.negatives.tsv")
    for output in (negatives_out, dev_run):
        if output is not None:
            check_output_file(output)
    run_bm25(collection=args.collection or data / "corpus.tsv",
             train_queries=args.queries or data / "train.query.txt",
             train_qrels=args.qrels or data / "qrels.train.tsv",
             negatives_out=negatives_out,
             dev_queries=args.dev_queries or data / "dev.query.txt", dev_run_out=dev_run,
             depth=args.depth, dev_depth=args.dev_depth, k1=args.k1, b=args.b, n_threads=args.threads,
             batch_size=args.batch_size, overwrite=args.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    return command(_main)(argv)
