"""Exact inner-product search of query encodings against (sharded) passage encodings.

Three backends return the same ranking:

* ``torch`` multiplies query batches with passage blocks (one GEMM each) and keeps a running top-k.
  On CPU it runs close to the fp32 matmul peak, because the only per-element work besides the GEMM
  is either one ``topk`` (first blocks) or one comparison against the running k-th score.
* ``torch_bf16`` does the same GEMM in bf16 to select, within a proven error bound, the passages that
  can reach the top k, and re-scores those exactly (:mod:`tevatron.faiss_retriever.bf16_search`):
  faster where the CPU multiplies bf16 natively (AMX, AVX512-BF16).
* ``faiss`` uses ``IndexFlatIP``; it is kept so that other FAISS index types can be plugged in.
* ``auto`` (default) times them once per process on a random sample shaped like the search
  (:func:`measured_backend`) and uses the fastest: which one wins depends on the CPU and its BLAS.

float16 encodings are widened to float32 just before use: one passage block per GEMM (torch), one
shard at a time into the index (faiss), so the search equals one over float32 copies of the same values.

Ranking rule (every backend): score descending, then passage position ascending, where the position
is the row in the concatenation of the sorted shard files.  FAISS alone breaks ties arbitrarily, so
its output is normalised to this rule.

``--index FACTORY`` other than ``Flat`` searches a FAISS index instead (IVF, HNSW, PQ, SQ, OPQ ...; built,
saved and reused by :mod:`tevatron.faiss_retriever.index`): approximate, so its ranking is recorded
with the factory string and the search knobs.

The output records what it was searched from (:func:`search_provenance`: the encodings files and
their own records, depth, format); an existing output is kept only when that record is
unchanged, so a search into an old file after re-encoding, or with another depth, is redone.
"""
from __future__ import annotations

import functools
import glob
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from tqdm import tqdm

from tevatron.argument_checks import NON_NEGATIVE, POSITIVE, SEED, check_ranges, parse_dataclasses
from tevatron.cpu_kernels import onednn_matmul_bt
from tevatron.cli import command
from tevatron.faiss_retriever.bf16_search import Bf16RescoredSearcher
from tevatron.faiss_retriever.index import (DEFAULT_TRAIN_SIZE, FLAT, FaissIndexSearcher, IndexSettings,
                                           check_settings, default_index_path, effective_knobs, load_or_build_index)
from tevatron.faiss_retriever.topk import candidates_above, exact_topk, merge_topk, order_by_score_then_position
from tevatron.files import InputError, check_output_file
from tevatron.provenance import file_identity, read_file_record, up_to_date, write_file_record
from tevatron.tensor_files import encodings_provenance, load_encodings, save_shard_ranking, shard_ranking_provenance
from tevatron.text_formats import write_ranking

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "torch_bf16", "faiss")
# One GEMM multiplies at most QUERY_CHUNK_ROWS queries with DEFAULT_BLOCK_ROWS passages: a 128 MiB
# score buffer whatever --batch_size is.  Wide passage blocks matter more than tall query chunks: the
# running top-k is merged once per block, so fewer, wider blocks mean less merging per query, while
# 1024 queries already keep the GEMM at full speed and re-reading the passages per chunk is cheap.
QUERY_CHUNK_ROWS = 1024
DEFAULT_BLOCK_ROWS = 32768
# auto takes torch_bf16 only when it beats the others by this factor on random vectors (see measured_backend)
BF16_MARGIN = 1.15
# auto times each backend on 1, 2 and this many (> 2) blocks (see measured_backend and expected_seconds)
MEASURE_BLOCKS = 4


@dataclass
class SearchArguments:
    """Command-line flags (Tevatron v1 names)."""

    query_reps: str = field(metadata={"help": "query encodings file (tevatron.tensor_files.save_encodings)"})
    passage_reps: str = field(metadata={"help": "passage encodings file, or a glob of shards (searched in sorted order)"})
    save_ranking_to: str = field(metadata={"help": "output: binary shard ranking, or text with --save_text"})
    depth: int = field(default=1000, metadata={"help": "passages returned per query"})
    batch_size: int = field(default=4096, metadata={"help": "queries per search call (one progress step)"})
    save_text: bool = field(default=False, metadata={"help": "write 'qid<TAB>pid<TAB>score' text instead of binary"})
    backend: str = field(default="auto", metadata={"help": "auto (the fastest, measured once), torch, torch_bf16 (bf16 selection, exact re-scoring) or faiss", "choices": list(BACKENDS)})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output instead of skipping"})
    passage_block_size: int = field(default=0, metadata={"help": f"passages per GEMM block (torch; 0 = {DEFAULT_BLOCK_ROWS})"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})
    # --- FAISS index types other than exact search (tevatron.faiss_retriever.index)
    index: str = field(default=FLAT, metadata={"help": "FAISS index-factory string, inner product: Flat (exact, "
                                                       "the backends above), HNSW32, IVF4096,Flat, IVF4096,PQ64, SQ8, ..."})
    nprobe: int | None = field(default=None, metadata={"help": "IVF lists searched per query (default: FAISS's, 1)"})
    ef_search: int | None = field(default=None, metadata={"help": "HNSW search breadth (default: FAISS's, 16)"})
    index_train_size: int = field(default=DEFAULT_TRAIN_SIZE, metadata={
        "help": "passages sampled (seeded, from all shards) to train the index; all when fewer"})
    index_train_seed: int = field(default=0, metadata={"help": "seed of the training sample"})
    index_path: str | None = field(default=None, metadata={
        "help": "where the built index is saved and reused (default: beside the passage encodings, "
                "NAME.FACTORY.faiss)"})

    def __post_init__(self):
        check_ranges(self, {"depth": POSITIVE, "batch_size": POSITIVE, "passage_block_size": NON_NEGATIVE,
                            "nprobe": POSITIVE, "ef_search": POSITIVE, "index_train_size": POSITIVE,
                            "index_train_seed": SEED})

    @property
    def index_settings(self) -> IndexSettings:
        return IndexSettings(self.index, self.index_train_size, self.index_train_seed, self.nprobe, self.ef_search)


@dataclass
class PassageShards:
    """Passage vectors kept as the (memory-mapped) shard tensors, so nothing is concatenated."""

    paths: list[Path]
    reps: list[torch.Tensor]
    ids: list[str]

    @property
    def dim(self) -> int:
        return int(self.reps[0].shape[1])

    @property
    def count(self) -> int:
        return len(self.ids)


class Searcher(Protocol):
    def search(self, queries: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scores [q, k], positions [q, k])`` with ``k = min(depth, passages)``."""


# --------------------------------------------------------------------------- loading
def resolve_shard_paths(pattern: str) -> list[Path]:
    """One existing file, or the sorted matches of a glob (sorted so positions are reproducible)."""
    if Path(pattern).is_file():
        return [Path(pattern)]
    paths = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    if not paths:
        raise InputError(pattern, "no passage encodings file matches")
    return paths


def load_passage_shards(pattern: str) -> PassageShards:
    """Load every shard (memory-mapped) and check they share one dimension."""
    paths = resolve_shard_paths(pattern)
    reps, ids, shard_ids_of = [], [], []
    for path in paths:
        shard_reps, shard_ids = load_encodings(path)
        if reps and shard_reps.shape[1] != reps[0].shape[1]:
            raise InputError(path, f"vectors have dimension {shard_reps.shape[1]}, "
                                   f"but {paths[0]} has dimension {reps[0].shape[1]}")
        shard_ids_of.append(shard_ids)
        if shard_reps.shape[0]:
            reps.append(shard_reps)
            ids.extend(shard_ids)
    if not ids:
        raise InputError(pattern, "no passage vectors found")
    check_unique_passage_ids(paths, shard_ids_of)
    return PassageShards(paths, reps, ids)


def check_unique_passage_ids(paths: Sequence[Path], shard_ids: Sequence[Sequence[str]]) -> None:
    """A passage id twice (a shard matched twice, overlapping encode inputs) would rank it twice."""
    if len(set(pid for ids in shard_ids for pid in ids)) == sum(len(ids) for ids in shard_ids):
        return
    first_shard: dict[str, Path] = {}
    for path, ids in zip(paths, shard_ids):
        for pid in ids:
            if pid in first_shard:
                where = "repeated in this file" if first_shard[pid] == path else f"also in {first_shard[pid]}"
                raise InputError(path, f"passage id {pid!r} {where}")
            first_shard[pid] = path


def check_query_file_not_a_shard(query_path, pattern: str) -> None:
    """``--passage_reps 'enc/*.pt'`` can match the query encodings too, which would be searched as passages."""
    if not Path(query_path).is_file():
        return
    for path in resolve_shard_paths(pattern):
        if path.samefile(query_path):
            raise InputError(query_path, f"the query encodings are among the passage files matched by "
                                         f"{pattern!r}; give --passage_reps a pattern that matches passages only")


def load_queries(path, passages: PassageShards) -> tuple[torch.Tensor, list[str]]:
    """Load query encodings, refusing a dimension that cannot be multiplied with the passages."""
    query_reps, query_ids = load_encodings(path)
    if query_reps.shape[1] != passages.dim:
        raise InputError(path, f"query vectors have dimension {query_reps.shape[1]}, but passage vectors in "
                               f"{passages.paths[0]} have dimension {passages.dim}")
    return query_reps, query_ids


# --------------------------------------------------------------------------- backends
def passage_blocks(shards: Sequence[torch.Tensor], block_rows: int) -> list[tuple[int, torch.Tensor]]:
    """``(first position, rows)`` views of at most ``block_rows`` rows that never cross a shard.

    Blocks aligned to shards make a per-shard search run the very same GEMMs as a search of all
    shards at once, so the two agree bit for bit.
    """
    blocks, offset = [], 0
    for shard in shards:
        for start in range(0, shard.shape[0], block_rows):
            blocks.append((offset + start, shard[start:start + block_rows]))
        offset += shard.shape[0]
    return blocks


class TorchFlatIPSearcher:
    """Blocked GEMM + running top-k; memory is one ``[query chunk, block]`` score buffer."""

    def __init__(self, shards: Sequence[torch.Tensor], block_rows: int = DEFAULT_BLOCK_ROWS,
                 query_chunk_rows: int = QUERY_CHUNK_ROWS, gemm: str = "auto"):
        from tevatron.cpu_kernels import onednn_is_faster

        # oneDNN's GEMM runs ~2x MKL's on AVX-512 AMD CPUs; "auto" measures before choosing
        self.use_onednn = gemm == "onednn" or (gemm == "auto" and onednn_is_faster())
        self.blocks = passage_blocks(shards, block_rows)
        self.total = sum(int(shard.shape[0]) for shard in shards)
        self.query_chunk_rows = query_chunk_rows
        self._buffer: torch.Tensor | None = None
        self._widened: torch.Tensor | None = None

    def _float32_block(self, block: torch.Tensor) -> torch.Tensor:
        """``block`` as float32: float16 shards are widened one block at a time into a reused buffer,
        so the whole shard is never held in float32."""
        if block.dtype == torch.float32:
            return block
        if self._widened is None or self._widened.numel() < block.numel():
            self._widened = torch.empty(block.numel(), dtype=torch.float32)
        widened = self._widened[: block.numel()].view(block.shape)
        widened.copy_(block)
        return widened

    def _score_buffer(self, elements: int) -> torch.Tensor:
        """Reuse one score buffer across blocks; re-allocating costs ~15% of the GEMM."""
        if self._buffer is None or self._buffer.numel() < elements:
            self._buffer = torch.empty(elements, dtype=torch.float32)
        return self._buffer

    def search(self, queries: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(depth, self.total)
        chunks = [self._search_chunk(queries[start:start + self.query_chunk_rows], k)
                  for start in range(0, queries.shape[0], self.query_chunk_rows)]
        if not chunks:
            return torch.empty((0, k)), torch.empty((0, k), dtype=torch.int64)
        return torch.cat([scores for scores, _ in chunks]), torch.cat([positions for _, positions in chunks])

    def _search_chunk(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = queries.to(torch.float32).contiguous()
        score_buffer = self._score_buffer(queries.shape[0] * max(b.shape[0] for _, b in self.blocks))
        best_scores = queries.new_empty((queries.shape[0], 0))
        best_positions = torch.empty((queries.shape[0], 0), dtype=torch.int64)
        for first, block in self.blocks:
            block = self._float32_block(block)
            shape = (queries.shape[0], block.shape[0])
            if self.use_onednn:
                scores = onednn_matmul_bt(queries, block)
            else:
                scores = score_buffer[: shape[0] * shape[1]].view(shape)
                torch.matmul(queries, block.T, out=scores)
            block_scores, block_columns = self._block_candidates(scores, best_scores, k)
            best_scores, best_positions = merge_topk(best_scores, best_positions, block_scores,
                                                     block_columns + first, k)
        return best_scores, best_positions

    @staticmethod
    def _block_candidates(scores, best_scores, k):
        """Once k results are held, only entries beating the current k-th score can enter."""
        if best_scores.shape[1] == k:
            packed = candidates_above(scores, best_scores[:, -1:], max_per_row=max(k, scores.shape[1] // 8))
            if packed is not None:
                return packed
        return exact_topk(scores, k)


class FaissFlatIPSearcher:
    """``faiss.IndexFlatIP`` with its tie order normalised to the ranking rule."""

    def __init__(self, shards: Sequence[torch.Tensor]):
        import faiss

        self.index = faiss.IndexFlatIP(int(shards[0].shape[1]))
        for shard in shards:  # float16 shards are widened one at a time (the index holds float32)
            self.index.add(np.ascontiguousarray(shard.numpy(), dtype=np.float32))

    def search(self, queries: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = np.ascontiguousarray(queries.to(torch.float32).numpy())
        total = int(self.index.ntotal)
        k = min(depth, total)
        fetched = min(k + 1, total)
        scores, positions = self.index.search(queries, fetched)
        if fetched > k:
            for row in np.flatnonzero(scores[:, k - 1] == scores[:, k]):
                scores[row, :k], positions[row, :k] = self._tied_row(queries[row:row + 1], scores[row, k - 1], k)
        return order_by_score_then_position(torch.from_numpy(scores[:, :k].copy()),
                                            torch.from_numpy(positions[:, :k].copy()))

    def _tied_row(self, query: np.ndarray, kth_score: np.float32, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Redo a row whose k-th score is tied: every entry near the k-th score or above, re-ranked.

        The margin makes sure rounding differences between FAISS's batched (BLAS) and single-query
        kernels cannot drop a tied entry; the re-ranking uses the single-query scores throughout.
        """
        radius = float(kth_score) - 1e-5 * max(1.0, abs(float(kth_score)))
        limits, scores, positions = self.index.range_search(query, radius)
        chosen = np.lexsort((positions, -scores))[:k]
        return scores[chosen], positions[chosen]


def exact_searcher(backend: str, shards: Sequence[torch.Tensor], block_rows: int = DEFAULT_BLOCK_ROWS) -> Searcher:
    """The searcher of an explicit exact backend (``torch``, ``torch_bf16`` or ``faiss``)."""
    if backend == "faiss":
        return FaissFlatIPSearcher(shards)
    if backend == "torch_bf16":
        return Bf16RescoredSearcher(shards, block_rows)
    return TorchFlatIPSearcher(shards, block_rows)


@functools.lru_cache(maxsize=None)  # read once per process and search shape
def measured_backend(dim: int, depth: int, search_blocks: int, block_rows: int = DEFAULT_BLOCK_ROWS,
                     queries: int = 256, repeats: int = 2) -> str:
    """The fastest exact backend on this machine for a search of this shape (see :func:`timed_backend`),
    measured once per machine and kept (:func:`tevatron.cpu_kernels.measured_on_this_machine`): the backends'
    scores differ in the last bits, so a choice made anew in each run could order near-ties differently
    between two runs of one search."""
    from tevatron.cpu_kernels import machine_choices_file, measured_on_this_machine

    name = (f"search_backend dim {dim} depth {min(depth, block_rows)} blocks {search_blocks} "
            f"block_rows {block_rows} queries {queries}")
    timed = []
    choice = measured_on_this_machine(
        name, lambda: timed.append(1) or timed_backend(dim, depth, search_blocks, block_rows, queries, repeats), str,
        allowed=BACKENDS[1:])
    if not timed:
        logger.info("search backend auto: %s (measured earlier on this machine for dim %d, depth %d, %d blocks; "
                    "recorded in %s)", choice, dim, min(depth, block_rows), search_blocks, machine_choices_file())
    return choice


def timed_backend(dim: int, depth: int, search_blocks: int, block_rows: int = DEFAULT_BLOCK_ROWS,
                  queries: int = 256, repeats: int = 2) -> str:
    """The fastest exact backend on this machine for a search of ``search_blocks`` passage blocks, timed on
    random vectors of the search's dimension and depth and a few hundred queries.

    Which one wins depends on the CPU and the BLAS each links (torch: MKL/oneDNN, FAISS: OpenBLAS), on
    whether it multiplies bf16 natively (AMX), and on the collection's size: the torch backends pay a full
    top-k in their first block, then in block b only for the ~k/(b-1) passages that beat the running k-th
    score, while FAISS pays the same for every block.  So each backend is timed on 1, 2 and 4 full-width
    blocks (larger than CPU caches, like real shards; a few thousand passages picked the wrong backend on
    the AMD dev CPU), block b's cost is fitted as ``a + c / (b - 1)`` and summed over ``search_blocks``
    (:func:`expected_seconds`): one block alone picked FAISS on an AMX Xeon where torch_bf16 searched 1M
    passages 2.6x faster, and a straight-line extrapolation from 3 blocks still did at depth 200.
    All give the same ranking (scores may differ in the last bits), so the choice changes speed only.
    Random vectors are the bf16 backend's best case (few passages to re-score); real encodings re-score
    more, which is why it must win clearly (``BF16_MARGIN``) to be chosen.
    """
    sizes = sorted({min(blocks, search_blocks) for blocks in (1, 2, MEASURE_BLOCKS)})
    generator = torch.Generator().manual_seed(0)
    sample_passages = torch.randn((sizes[-1] * block_rows, dim), generator=generator)
    sample_queries = torch.randn((queries, dim), generator=generator)
    k = min(depth, block_rows)

    names = ("torch", "torch_bf16", "faiss")
    seconds = {key: float("inf") for key in itertools.product(names, sizes)}
    for name in names:  # one backend's searchers at a time: FAISS and bf16 hold copies of the sample
        searchers = {blocks: exact_searcher(name, [sample_passages[: blocks * block_rows]], block_rows)
                     for blocks in sizes}
        for searcher in searchers.values():
            searcher.search(sample_queries[:8], k)  # warm-up: thread pools, buffers
        for _ in range(repeats):  # best of N
            for blocks, searcher in searchers.items():
                started = time.perf_counter()
                searcher.search(sample_queries, k)
                seconds[name, blocks] = min(seconds[name, blocks], time.perf_counter() - started)
    rates = {name: queries / max(expected_seconds({blocks: seconds[name, blocks] for blocks in sizes}, search_blocks),
                                 1e-9) for name in names}
    choice = fastest_backend(rates)
    logger.info("search backend auto: %s (measured on %s blocks of %d random passages x %d queries, dim %d, "
                "depth %d; expected for %d blocks: torch %.0f, torch_bf16 %.0f, faiss %.0f queries/s)", choice,
                "/".join(map(str, sizes)), block_rows, queries, dim, k, search_blocks,
                rates["torch"], rates["torch_bf16"], rates["faiss"])
    return choice


def expected_seconds(measured: dict[int, float], search_blocks: int) -> float:
    """A search's time over ``search_blocks`` blocks from searches timed on 1, 2 and ``MEASURE_BLOCKS`` blocks.

    Block b > 1 is modelled as ``a + c / (b - 1)`` (a: the product and the scan; c: the passages that beat
    the running k-th score, fewer in each later block), fitted exactly to the three timings (a, c >= 0).
    """
    if search_blocks in measured:
        return measured[search_blocks]

    def harmonic(first: int, last: int) -> float:
        return sum(1.0 / n for n in range(first, last + 1))

    second = max(measured[2] - measured[1], 0.0)                    # a + c
    rest = max(measured[MEASURE_BLOCKS] - measured[2], 0.0)         # blocks 3..M: (M - 2) a + c H(2..M-1)
    extra_blocks, extra_harmonic = MEASURE_BLOCKS - 2, harmonic(2, MEASURE_BLOCKS - 1)
    c = max((extra_blocks * second - rest) / (extra_blocks - extra_harmonic), 0.0)
    a = max(second - c, 0.0)
    return measured[1] + a * (search_blocks - 1) + c * harmonic(1, search_blocks - 1)


def fastest_backend(rates: dict[str, float]) -> str:
    """The backend with the most queries/s, where torch_bf16 counts only when it wins by ``BF16_MARGIN``."""
    discounted = {name: rate / BF16_MARGIN if name == "torch_bf16" else rate for name, rate in rates.items()}
    return max(discounted, key=discounted.get)


def resolve_backend(backend: str, dim: int, depth: int, total_passages: int | None = None) -> str:
    """An exact backend: explicit choices as given, ``auto`` by measurement for a collection of this many
    passages (unknown: 1M), except for a collection of one block (measuring would cost more than the
    search): torch."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if total_passages is not None and total_passages <= DEFAULT_BLOCK_ROWS:
        logger.info("search backend auto: torch (%d passages: fewer than measuring needs)", total_passages)
        return "torch"
    search_blocks = -(-(total_passages or 1_000_000) // DEFAULT_BLOCK_ROWS)
    return measured_backend(dim, depth, search_blocks)


def build_searcher(backend: str, passages: PassageShards, block_rows: int = DEFAULT_BLOCK_ROWS,
                   depth: int = 1000) -> Searcher:
    """``depth`` shapes the measurement of ``auto`` (see :func:`measured_backend`)."""
    return exact_searcher(resolve_backend(backend, passages.dim, depth, passages.count), passages.reps, block_rows)


# --------------------------------------------------------------------------- search driver
def search_in_batches(searcher: Searcher, query_reps: torch.Tensor, depth: int, batch_size: int,
                      total_passages: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Search ``batch_size`` queries at a time so memory never holds a [queries x passages] matrix."""
    k = min(depth, total_passages)
    all_scores = torch.empty((query_reps.shape[0], k), dtype=torch.float32)
    all_positions = torch.empty((query_reps.shape[0], k), dtype=torch.int64)
    starts = range(0, query_reps.shape[0], batch_size)
    for start in tqdm(starts, desc="search", unit="batch", disable=None if progress else True):
        batch = query_reps[start:start + batch_size]
        scores, positions = searcher.search(batch, depth)
        all_scores[start:start + batch.shape[0]] = scores
        all_positions[start:start + batch.shape[0]] = positions
    return all_scores, all_positions


def search_passages(query_reps: torch.Tensor, passages: PassageShards, depth: int, batch_size: int = 4096,
                    backend: str = "auto", block_rows: int = 0, progress: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Library entry point: ``(scores [Q, k], positions [Q, k])`` into ``passages.ids``."""
    searcher = build_searcher(backend, passages, block_rows or DEFAULT_BLOCK_ROWS, depth)
    return search_in_batches(searcher, query_reps, depth, batch_size, passages.count, progress)


def iter_text_ranking(query_ids, passage_ids, scores: torch.Tensor, positions: torch.Tensor):
    """Yield ``(qid, [(pid, score), ...])`` for :func:`tevatron.text_formats.write_ranking`."""
    for row, qid in enumerate(query_ids):
        hits = zip(positions[row].tolist(), scores[row].tolist())
        # an approximate index may find fewer than k passages; its empty slots (-1) are not written
        yield qid, [(passage_ids[position], score) for position, score in hits if position >= 0]


def save_results(path, query_ids, passage_ids, scores, positions, as_text: bool,
                 provenance: dict | None = None) -> None:
    if as_text:
        write_ranking(path, iter_text_ranking(query_ids, passage_ids, scores, positions))
        if provenance is not None:
            write_file_record(path, provenance)
    else:
        save_shard_ranking(path, query_ids, passage_ids, scores, positions, provenance)


def encodings_source(path) -> dict:
    """One input of a search: the encodings file, and the record of what it was made from."""
    return {"file": file_identity(path), "made_from": encodings_provenance(path)}


def search_provenance(args: SearchArguments) -> dict:
    """What a ranking depends on.  The exact backends give the same ranking (same tie rule), so the search is
    recorded as "exact" rather than by backend: a re-run whose ``auto`` measured another backend
    faster keeps the ranking.  Batch and block sizes change nothing either.  Any other index is recorded
    by what changes its ranking: factory, training sample and seed, and the knobs given (FAISS's defaults
    otherwise, which :func:`index_search_record` spells out)."""
    return {"queries": encodings_source(args.query_reps),
            "passages": [encodings_source(path) for path in resolve_shard_paths(args.passage_reps)],
            "depth": args.depth, "search": index_search_record(args), "format": "text" if args.save_text else "binary"}


def index_search_record(args: SearchArguments) -> str | dict:
    if args.index == FLAT:
        return "exact"
    settings = args.index_settings
    return {"index": settings.factory, "train_size": settings.train_size, "train_seed": settings.train_seed,
            "nprobe": settings.nprobe if settings.nprobe is not None else "faiss default",
            "ef_search": settings.ef_search if settings.ef_search is not None else "faiss default"}


def warn_on_model_mismatch(provenance: dict, args: SearchArguments) -> None:
    """Query and passage vectors from different models give meaningless scores: one of them is stale."""
    query_model = (provenance["queries"]["made_from"] or {}).get("model")
    for shard in provenance["passages"]:
        passage_model = (shard["made_from"] or {}).get("model")
        if query_model is not None and passage_model is not None and passage_model != query_model:
            logger.warning("%s was encoded with model %s but %s with model %s; is one of them stale?",
                           args.query_reps, query_model, shard["file"]["path"], passage_model)
            return


def run_search(args: SearchArguments) -> None:
    """Decide (reuse or redo, one log line), load, check, search, save."""
    output = Path(args.save_ranking_to)
    provenance = search_provenance(args)
    read_record = read_file_record if args.save_text else shard_ranking_provenance
    if up_to_date(output, provenance, read_record, args.overwrite, redo="searching again"):
        return
    passages = load_passage_shards(args.passage_reps)
    query_reps, query_ids = load_queries(args.query_reps, passages)
    warn_on_model_mismatch(provenance, args)
    check_settings(args.index_settings, passages.dim)
    started = time.perf_counter()
    if args.index == FLAT:
        backend = resolve_backend(args.backend, passages.dim, args.depth, passages.count)
        logger.info("%d passages (dim %d) in %d shard(s); %d queries; depth %d; backend %s",
                    passages.count, passages.dim, len(passages.paths), len(query_ids), args.depth, backend)
        scores, positions = search_passages(query_reps, passages, args.depth, args.batch_size, backend,
                                            args.passage_block_size, progress=not args.quiet)
    else:
        index_path = Path(args.index_path) if args.index_path else default_index_path(passages.paths, args.index)
        index, _ = load_or_build_index(passages.paths, passages.reps, args.index_settings, index_path)
        logger.info("%d passages (dim %d) in %d shard(s); %d queries; depth %d; index %s %s",
                    passages.count, passages.dim, len(passages.paths), len(query_ids), args.depth, args.index,
                    effective_knobs(index))
        started = time.perf_counter()
        scores, positions = search_in_batches(FaissIndexSearcher(index), query_reps, args.depth, args.batch_size,
                                              passages.count, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    logger.info("searched %d queries in %.1f s (%.1f queries/s)", len(query_ids), elapsed,
                len(query_ids) / max(elapsed, 1e-9))
    save_results(output, query_ids, passages.ids, scores, positions, args.save_text, provenance)
    logger.info("wrote %s", output)


def parse_arguments(argv: Sequence[str] | None) -> SearchArguments:
    from transformers import HfArgumentParser

    (args,) = parse_dataclasses(HfArgumentParser(SearchArguments), argv)
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    check_output_file(args.save_ranking_to)
    if args.index_path:
        check_output_file(args.index_path)
    check_query_file_not_a_shard(args.query_reps, args.passage_reps)
    run_search(args)
    return 0
