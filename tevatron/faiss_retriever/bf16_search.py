"""Exact search whose GEMM runs in bf16: a cheap first pass that bounds every score, an exact second pass.

CPUs with AMX (Intel Sapphire Rapids and later) multiply bf16 matrices several times faster than fp32,
but a bf16 score can be off by ~1% of ``|q| |p|``, far more than the gaps in a ranking.  So the bf16
product only *selects*: for each query, every passage whose bf16 score could still reach the top k (it is
within a proven error bound of the k-th score held so far) is kept, and the kept passages are re-scored
exactly in fp32.  The result is the exact top-k; the bf16 error only decides how many are re-scored.

Error bound (:class:`ErrorBound`).  With q' = bf16(q), e_q = q - q' (exact in fp32), likewise p' and e_p:
``q.p = q'.p' + q'.e_p + e_q.p``, so the bf16 GEMM's result o (fp32 accumulation of q'.p', rounded to
bf16) and the exact fp32 score r of the same pair differ by at most

    |q'| |e_p| + |e_q| |p| + gamma (|q'| |p'| + |q| |p|) + u |o| / (1 - u)

(Cauchy-Schwarz on the two cross terms; gamma = dim x 2^-24 bounds any fp32 summation order, for the GEMM
and for the re-scoring; u = 2^-8 is bf16's rounding of the result).  The actual rounding errors e_q and
e_p are measured, not assumed: they are ~0.4 u |q| on average, three times tighter than the worst case.
Each passage block keeps the largest |p|, |p'| and |e_p| of its rows.  The bound holds for any bf16 GEMM
kernel (the products of two bf16 numbers are exact in fp32).

Exact scores are fp32 dot products of each pair computed the same way whatever the batch, block or shard
it is in (one product-and-sum per pair), so a per-shard search gives every passage the score the search
of all shards gives it; they can differ from the fp32 GEMM's scores (``torch`` backend) in the last bits,
as FAISS's do.  The ranking rule is the same: score descending, ties by position ascending.

A block where the bound keeps too many passages (near-duplicates, a query that scores every passage
alike) is selected again with an fp32 GEMM, whose bound has no bf16 terms.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from tevatron.faiss_retriever.topk import entries_above, merge_topk, ranked_candidates

BF16_UNIT_ROUNDOFF = 2.0 ** -8
FP32_UNIT_ROUNDOFF = 2.0 ** -24
NORM_MARGIN = 1 + 1e-4  # norms are themselves computed in fp32


@dataclass
class VectorNorms:
    """Largest (passage block) or per-row (queries) norms of x, bf16(x) and x - bf16(x)."""

    exact: torch.Tensor
    rounded: torch.Tensor
    rounding_error: torch.Tensor

    @classmethod
    def of_rows(cls, vectors: torch.Tensor, rounded: torch.Tensor) -> "VectorNorms":
        vectors = vectors.to(torch.float32)
        rounded_fp32 = rounded.to(torch.float32)
        return cls(vectors.norm(dim=1, keepdim=True), rounded_fp32.norm(dim=1, keepdim=True),
                   (vectors - rounded_fp32).norm(dim=1, keepdim=True))

    def largest(self) -> "VectorNorms":
        return VectorNorms(*(values.max() if values.numel() else values.new_zeros(())
                             for values in (self.exact, self.rounded, self.rounding_error)))


@dataclass
class ErrorBound:
    """``|o - r| <= absolute + relative x |o|`` per query row (see the module docstring)."""

    absolute: torch.Tensor  # [q, 1]
    relative: float

    @classmethod
    def bf16(cls, queries: VectorNorms, block: VectorNorms, dim: int) -> "ErrorBound":
        gamma = dim * FP32_UNIT_ROUNDOFF * 1.01
        cross = queries.rounded * block.rounding_error + queries.rounding_error * block.exact
        accumulation = gamma * (queries.rounded * block.rounded + queries.exact * block.exact)
        return cls((cross + accumulation) * NORM_MARGIN, BF16_UNIT_ROUNDOFF / (1 - BF16_UNIT_ROUNDOFF) * NORM_MARGIN)

    @classmethod
    def fp32(cls, queries: VectorNorms, block: VectorNorms, dim: int) -> "ErrorBound":
        gamma = dim * FP32_UNIT_ROUNDOFF * 1.01
        return cls(2 * gamma * queries.exact * block.exact * NORM_MARGIN, 0.0)

    def below(self, threshold: torch.Tensor) -> torch.Tensor:
        """The lowest approximate score whose exact score can exceed ``threshold`` (exact scores)."""
        return threshold - (self.absolute + self.relative * threshold.abs()) / (1 - self.relative)

    def window(self, largest_magnitude: torch.Tensor) -> torch.Tensor:
        """Error bound of every entry of a row whose approximate scores are at most this large in magnitude."""
        return self.absolute + self.relative * largest_magnitude


def rescored(queries: torch.Tensor, block: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Exact fp32 scores of the pairs ``(queries[rows], block[columns])`` (fp32 block; ``rows`` ascending).

    A sampled matrix product (SDDMM) computes one dot product per listed pair without copying the
    passages out (~5x faster than gathering them), and each pair's sum is the same whatever else is listed.
    """
    if rows.numel() == 0:
        return torch.empty(0, dtype=torch.float32)
    row_starts = torch.zeros(queries.shape[0] + 1, dtype=torch.int64)
    row_starts[1:] = torch.bincount(rows, minlength=queries.shape[0]).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the one op used here is tested
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(row_starts, columns, torch.zeros(rows.numel()),
                                          (queries.shape[0], block.shape[0]), check_invariants=False)
        products = torch.sparse.sampled_addmm(pattern, queries, block.T, beta=0.0)
    return products.values()


def at_or_above(scores: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` of the entries ``>= threshold`` (a float32 ``[q, 1]`` column).

    bf16 scores are compared with the threshold lowered to the bf16 value at or below it (comparing in
    bf16 is faster than promoting a whole block to fp32): never a higher threshold, so nothing is lost.
    """
    if scores.dtype == torch.bfloat16:
        threshold = (threshold - threshold.abs() * 2.0 ** -7).to(torch.bfloat16)
    return entries_above(scores, threshold, strict=False)


class Bf16RescoredSearcher:
    """Blocked search: bf16 GEMM + error-bounded selection + exact fp32 re-scoring of the selected.

    The passages are kept in bf16 too (converted once, at construction: converting per call cost as
    much as a 256-query product), so this backend holds 1.5x the fp32 backend's passage memory.  One
    ``[chunk, block]`` product at a time bounds the rest, as in the ``torch`` backend.
    """

    def __init__(self, shards: Sequence[torch.Tensor], block_rows: int, query_chunk_rows: int = 1024):
        from tevatron.faiss_retriever.retriever import passage_blocks

        self.blocks = passage_blocks(shards, block_rows)
        self.blocks_bf16 = [block.to(torch.bfloat16) for _, block in self.blocks]
        self.block_norms = [VectorNorms.of_rows(block, rounded).largest()
                            for (_, block), rounded in zip(self.blocks, self.blocks_bf16)]
        self.total = sum(int(shard.shape[0]) for shard in shards)
        self.dim = int(shards[0].shape[1])
        self.query_chunk_rows = query_chunk_rows

    def search(self, queries: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(depth, self.total)
        queries = queries.to(torch.float32).contiguous()
        chunks = [queries[start:start + self.query_chunk_rows]
                  for start in range(0, queries.shape[0], self.query_chunk_rows)]
        if not chunks:
            return torch.empty((0, k)), torch.empty((0, k), dtype=torch.int64)
        chunks_bf16 = [chunk.to(torch.bfloat16) for chunk in chunks]
        chunk_norms = [VectorNorms.of_rows(chunk, rounded) for chunk, rounded in zip(chunks, chunks_bf16)]
        held = [(chunk.new_empty((chunk.shape[0], 0)), torch.empty((chunk.shape[0], 0), dtype=torch.int64))
                for chunk in chunks]
        for (first, block), block_bf16, block_norms in zip(self.blocks, self.blocks_bf16, self.block_norms):
            block = block.to(torch.float32)  # float16 shards: widened once per call, for the exact scores
            for index, chunk in enumerate(chunks):
                approximate = torch.matmul(chunks_bf16[index], block_bf16.T)
                bound = ErrorBound.bf16(chunk_norms[index], block_norms, self.dim)
                selected = self._selected(approximate, bound, held[index][0], k, cap=True)
                if selected is None:  # the bf16 bound keeps too much of this block: select with fp32
                    approximate = torch.matmul(chunk, block.T)
                    bound = ErrorBound.fp32(chunk_norms[index], block_norms, self.dim)
                    selected = self._selected(approximate, bound, held[index][0], k, cap=False)
                held[index] = self._merged(chunk, block, first, selected, held[index], k)
        return torch.cat([scores for scores, _ in held]), torch.cat([positions for _, positions in held])

    @staticmethod
    def _merged(queries, block, first, selected, held, k):
        """The running top-k after the selected pairs of this block are re-scored exactly."""
        rows, columns = selected
        best_scores, best_positions = held
        scores = rescored(queries, block, rows, columns)
        if best_scores.shape[1] == k:  # later blocks lose ties: only strictly better entries enter
            better = scores > best_scores[rows, -1]
            rows, columns, scores = rows[better], columns[better], scores[better]
        block_scores, block_columns = ranked_candidates(rows, columns, scores, queries.shape[0])
        return merge_topk(best_scores, best_positions, block_scores, block_columns + first, k)

    def _selected(self, approximate: torch.Tensor, bound: ErrorBound, best_scores: torch.Tensor, k: int,
                  cap: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows, columns)`` of every entry whose exact score could enter the running top-k; None when
        ``cap`` and some row keeps more than an eighth of the block (then fp32 selects more tightly)."""
        most = max(2 * k, approximate.shape[1] // 8)
        # entries that can beat the held k-th score (once k are held)
        can_beat_held = bound.below(best_scores[:, -1:]) if best_scores.shape[1] == k else None
        if can_beat_held is not None:
            rows, columns = at_or_above(approximate, can_beat_held)
            if widest_row(rows) <= most:
                return rows, columns
        if approximate.shape[1] <= k:  # the whole block
            threshold = torch.full((approximate.shape[0], 1), float("-inf"))
        else:  # the block's exact top k all lie within two error bounds of its approximate k-th
            kth = torch.topk(approximate, k, dim=1).values[:, -1:].float()
            magnitude = approximate.abs().amax(dim=1, keepdim=True).float()
            threshold = kth - 2 * bound.window(magnitude)
            if can_beat_held is not None:
                threshold = torch.maximum(threshold, can_beat_held)
        rows, columns = at_or_above(approximate, threshold)
        if cap and widest_row(rows) > most:
            return None
        return rows, columns


def widest_row(rows: torch.Tensor) -> int:
    """The most entries any one row has among ``rows`` (row indices of selected entries)."""
    return int(torch.bincount(rows).max()) if rows.numel() else 0
