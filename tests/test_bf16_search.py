"""torch_bf16: bf16 GEMM selection with a proven error bound, exact float64 re-scoring of the selected."""
from __future__ import annotations

import pytest
import torch

import tevatron.faiss_retriever.bf16_search as bf16_search
from tevatron.faiss_retriever.bf16_search import Bf16RescoredSearcher, ErrorBound, VectorNorms, rescored

# B, A, then two lower-scoring passages (see the adversarial test)
ADVERSARIAL_PASSAGES = [[0.003, 0.0], [1.0038, 1.0], [0.0, 0.5], [0.1, 0.2]]


def reference_search(queries: torch.Tensor, passages: torch.Tensor, k: int):
    """Every pair scored by ``rescored`` (the searcher's exact scores), ranked by score then position."""
    rows = torch.arange(queries.shape[0]).repeat_interleave(passages.shape[0])
    columns = torch.arange(passages.shape[0]).repeat(queries.shape[0])
    scores = rescored(queries, passages, rows, columns).view(queries.shape[0], passages.shape[0])
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores[:, :k], order[:, :k]


def passages_of(kind: str, count: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn((count, dim), generator=generator)
    if kind == "near duplicates":  # differences far below bf16's resolution: bf16 scores all tie
        return torch.randn((1, dim), generator=generator) + 1e-4 * torch.randn((count, dim), generator=generator)
    if kind == "duplicates":  # exact ties everywhere: the lower position must win
        return torch.randn((count // 10, dim), generator=generator).repeat(10, 1)
    raise ValueError(kind)


@pytest.mark.parametrize("dim", [16, 768, 4096])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_bf16_scores_stay_within_the_bound(dim, scale):
    """|bf16 score - exact| <= the bound for every pair; from measured rounding errors, it is tighter than
    the worst case 3 u |q| |p| (u = 2^-8)."""
    generator = torch.Generator().manual_seed(dim)
    queries = scale * torch.randn((64, dim), generator=generator)
    passages = torch.cat([torch.randn((200, dim), generator=generator),
                          torch.rand((200, dim), generator=generator)])  # all-positive: errors add up
    approximate = torch.matmul(queries.to(torch.bfloat16), passages.to(torch.bfloat16).T).float()
    query_norms = VectorNorms.of_rows(queries, queries.to(torch.bfloat16))
    passage_norms = VectorNorms(*(values.T for values in vars(VectorNorms.of_rows(passages, passages.to(torch.bfloat16))).values()))
    bound = ErrorBound.bf16(query_norms, passage_norms, dim)
    allowed = bound.absolute + bound.relative * approximate.abs()
    exact = queries.double() @ passages.double().T
    rows = torch.arange(64).repeat_interleave(400)
    fp32_rescored = rescored(queries, passages, rows, torch.arange(400).repeat(64)).view(64, 400)
    assert bool(((approximate.double() - exact).abs() <= allowed.double()).all())
    assert bool(((approximate - fp32_rescored).abs() <= allowed).all())
    relative_to_norms = bound.absolute / (query_norms.exact * passage_norms.exact)
    assert float(relative_to_norms.max()) < 2.01 * 2.0 ** -8 + 2.1 * dim * 2.0 ** -24  # never above the worst case
    if dim >= 768:  # measured rounding errors: about a third of the worst case (3 roundings of |q| |p|)
        assert float(relative_to_norms.mean()) < 2.0 ** -8


def test_a_pair_that_bf16_ranks_the_wrong_way_round_comes_out_exact():
    """A = (1.0038, 1) scores 0.0038 against q = (1, -1), but 1.0038 rounds to 1.0 in bf16 (score 0);
    B = (0.003, 0) scores 0.003 in both: bf16 puts B first, the exact ranking A.

    A selection without the error bound (slack 0) would keep only B (next test).
    """
    query = torch.tensor([[1.0, -1.0]])
    passages = torch.tensor(ADVERSARIAL_PASSAGES)
    approximate = torch.matmul(query.to(torch.bfloat16), passages.to(torch.bfloat16).T).float()
    assert approximate[0, 0] > approximate[0, 1]  # bf16's order: B before A

    scores, positions = Bf16RescoredSearcher([passages], block_rows=2).search(query, 1)
    assert positions.tolist() == [[1]]
    assert scores[0, 0].item() == pytest.approx(0.0038, abs=1e-7)


def test_without_the_bound_the_adversarial_pair_would_be_lost(monkeypatch):
    """The same searcher with its slack set to 0 returns B: proof that the bound is what keeps A."""
    monkeypatch.setattr(bf16_search.ErrorBound, "bf16",
                        classmethod(lambda cls, queries, block, dim: cls(torch.zeros_like(queries.exact), 0.0)))
    query = torch.tensor([[1.0, -1.0]])
    passages = torch.tensor(ADVERSARIAL_PASSAGES)
    _, positions = Bf16RescoredSearcher([passages], block_rows=2).search(query, 1)
    assert positions.tolist() == [[0]]


@pytest.mark.parametrize("kind", ["gaussian", "near duplicates", "duplicates"])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_equals_the_exact_ranking_bit_for_bit(kind, k):
    generator = torch.Generator().manual_seed(k)
    passages = passages_of(kind, 3000, 64, generator)
    queries = torch.randn((37, 64), generator=generator)
    expected_scores, expected_positions = reference_search(queries, passages, k)
    shards = [passages[:1100], passages[1100:1105], passages[1105:]]
    for block_rows, query_chunk_rows in ((256, 16), (1000, 1024), (4096, 5)):
        scores, positions = Bf16RescoredSearcher(shards, block_rows, query_chunk_rows).search(queries, k)
        assert torch.equal(positions, expected_positions), (block_rows, query_chunk_rows)
        assert torch.equal(scores, expected_scores), (block_rows, query_chunk_rows)


def test_near_duplicates_are_selected_again_in_fp32(monkeypatch):
    """When bf16 cannot tell a block's passages apart, fp32 selects instead (and the result stays exact)."""
    generator = torch.Generator().manual_seed(0)
    passages = passages_of("near duplicates", 2048, 32, generator)
    queries = torch.randn((8, 32), generator=generator)
    selections = []
    original = Bf16RescoredSearcher._selected

    def recording(self, approximate, *args, **kwargs):
        selected = original(self, approximate, *args, **kwargs)
        selections.append((approximate.dtype, selected is None))
        return selected

    monkeypatch.setattr(Bf16RescoredSearcher, "_selected", recording)
    scores, positions = Bf16RescoredSearcher([passages], block_rows=512).search(queries, 10)
    assert (torch.bfloat16, True) in selections and (torch.float32, False) in selections
    expected_scores, expected_positions = reference_search(queries, passages, 10)
    assert torch.equal(positions, expected_positions) and torch.equal(scores, expected_scores)


def test_float16_shards_search_like_their_float32_values():
    generator = torch.Generator().manual_seed(5)
    passages = torch.randn((1500, 48), generator=generator).half()
    queries = torch.randn((20, 48), generator=generator)
    halves = Bf16RescoredSearcher([passages[:700], passages[700:]], 256).search(queries, 30)
    widened = Bf16RescoredSearcher([passages[:700].float(), passages[700:].float()], 256).search(queries, 30)
    assert torch.equal(halves[0], widened[0]) and torch.equal(halves[1], widened[1])


def test_each_shard_alone_scores_its_passages_as_the_whole_search_does():
    """Exact scores do not depend on the block or batch a pair is in: per-shard results are bit-identical."""
    generator = torch.Generator().manual_seed(9)
    shards = [torch.randn((900, 40), generator=generator), torch.randn((1300, 40), generator=generator)]
    queries = torch.randn((33, 40), generator=generator)
    whole_scores, whole_positions = Bf16RescoredSearcher(shards, 512).search(queries, 2200)
    offset = 0
    for shard in shards:
        scores, positions = Bf16RescoredSearcher([shard], 300, 7).search(queries, shard.shape[0])
        in_shard = (whole_positions >= offset) & (whole_positions < offset + shard.shape[0])
        assert torch.equal(scores, whole_scores[in_shard].view(33, -1))
        assert torch.equal(positions + offset, whole_positions[in_shard].view(33, -1))
        offset += shard.shape[0]
