"""Exact search: torch, torch_bf16 and faiss IndexFlatIP, tie rule, batching, shards, command line."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tevatron.faiss_retriever.bf16_search import Bf16RescoredSearcher
from tevatron.faiss_retriever.retriever import (FaissFlatIPSearcher, TorchFlatIPSearcher, load_passage_shards,
                                                main, measured_backend, search_passages)
from tevatron.faiss_retriever.topk import merge_topk, order_by_score_then_position
from tevatron.tensor_files import load_shard_ranking, save_encodings
from tevatron.text_formats import read_run

REPO_ROOT = Path(__file__).resolve().parents[1]
EXACT_BACKENDS = ("torch", "torch_bf16", "faiss")


# --------------------------------------------------------------------------- data
def distinct_score_data(passages: int, queries: int, dim: int, seed: int = 0):
    """Vectors whose inner products are computed exactly in float32 and are all distinct per query.

    Entries in {-1, 0, 1} give integer partial sums below 2**10; a last coordinate holding a unique
    multiple of 2**-14 (the query has 1 there) makes every score distinct, and 10 + 14 bits fit the
    24-bit mantissa, so every BLAS and summation order yields bit-identical scores.
    """
    assert passages <= 1 << 14 and dim <= 1000
    rng = np.random.default_rng(seed)
    passage_reps = rng.integers(-1, 2, size=(passages, dim)).astype(np.float32)
    passage_reps[:, -1] = rng.permutation(passages) / float(1 << 14)
    query_reps = rng.integers(-1, 2, size=(queries, dim)).astype(np.float32)
    query_reps[:, -1] = 1.0
    return query_reps, passage_reps


def tied_data(passages: int, queries: int, dim: int = 6, seed: int = 0):
    """Small integer vectors: many exactly equal scores, including at the k-th place."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(queries, dim)).astype(np.float32),
            rng.integers(-2, 3, size=(passages, dim)).astype(np.float32))


def reference_ranking(query_reps: np.ndarray, passage_reps: np.ndarray, depth: int) -> np.ndarray:
    """Brute force: score descending, then position ascending (float64, exact for small integers)."""
    scores = query_reps.astype(np.float64) @ passage_reps.astype(np.float64).T
    positions = np.arange(passage_reps.shape[0])
    return np.stack([np.lexsort((positions, -row))[:depth] for row in scores])


def split_rows(array: np.ndarray, bounds: list[int]) -> list[torch.Tensor]:
    return [torch.from_numpy(part) for part in np.split(array, bounds)]


def save_shards(folder: Path, passage_reps: np.ndarray, ids: list[str], bounds: list[int]) -> list[Path]:
    paths = []
    starts = [0, *bounds]
    ends = [*bounds, len(ids)]
    for number, (start, end) in enumerate(zip(starts, ends)):
        path = folder / f"corpus.{number:02d}.pt"
        save_encodings(path, passage_reps[start:end], ids[start:end])
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- backends
@pytest.mark.parametrize("depth", [1, 10, 200])
def test_torch_backend_ids_identical_to_indexflatip(depth):
    query_reps, passage_reps = distinct_score_data(passages=3000, queries=150, dim=768)
    index = faiss.IndexFlatIP(passage_reps.shape[1])
    index.add(passage_reps)
    expected_scores, expected_ids = index.search(query_reps, depth)

    for searcher in (TorchFlatIPSearcher(split_rows(passage_reps, [1100, 1900]), block_rows=512),
                     Bf16RescoredSearcher(split_rows(passage_reps, [1100, 1900]), block_rows=512)):
        scores, positions = searcher.search(torch.from_numpy(query_reps), depth)

        np.testing.assert_array_equal(positions.numpy(), expected_ids)
        np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=0, atol=1e-4)


def test_torch_backend_agrees_with_indexflatip_on_gaussian_vectors():
    """Real-valued vectors: scores agree to float tolerance; ids differ only inside near-ties."""
    rng = np.random.default_rng(3)
    passage_reps = rng.standard_normal((4000, 128)).astype(np.float32)
    query_reps = rng.standard_normal((100, 128)).astype(np.float32)
    index = faiss.IndexFlatIP(128)
    index.add(passage_reps)
    expected_scores, expected_ids = index.search(query_reps, 50)
    for searcher in (TorchFlatIPSearcher([torch.from_numpy(passage_reps)], 1024),
                     Bf16RescoredSearcher([torch.from_numpy(passage_reps)], 1024)):
        scores, positions = searcher.search(torch.from_numpy(query_reps), 50)
        np.testing.assert_allclose(scores.numpy(), expected_scores, atol=1e-4)
        for row, column in np.argwhere(positions.numpy() != expected_ids):
            neighbours = expected_scores[row, max(column - 1, 0):column + 2]
            assert np.ptp(neighbours) < 1e-4, f"query {row} rank {column}: ids differ outside a near-tie"


@pytest.mark.parametrize("depth", [1, 7, 64, 5000])
def test_ties_go_to_the_lower_position_in_every_backend(depth):
    query_reps, passage_reps = tied_data(passages=1500, queries=30)
    expected = reference_ranking(query_reps, passage_reps, depth)
    shards = split_rows(passage_reps, [400, 410, 1000])
    for block_rows, query_chunk_rows in ((64, 7), (1000, 1024)):
        for searcher_class in (TorchFlatIPSearcher, Bf16RescoredSearcher):
            searcher = searcher_class(shards, block_rows, query_chunk_rows)
            _, positions = searcher.search(torch.from_numpy(query_reps), depth)
            np.testing.assert_array_equal(positions.numpy(), expected)
    _, positions = FaissFlatIPSearcher(shards).search(torch.from_numpy(query_reps), depth)
    np.testing.assert_array_equal(positions.numpy(), expected)


def test_batching_gives_the_same_result_as_one_batch():
    query_reps, passage_reps = tied_data(passages=900, queries=50)
    passages = load_shards_from_arrays(passage_reps)
    queries = torch.from_numpy(query_reps)
    whole_scores, whole_positions = search_passages(queries, passages, depth=20, batch_size=1000)
    for batch_size in (1, 7, 49):
        for backend in EXACT_BACKENDS:
            scores, positions = search_passages(queries, passages, depth=20, batch_size=batch_size, backend=backend)
            assert torch.equal(positions, whole_positions)
            assert torch.equal(scores, whole_scores)


def test_depth_beyond_the_collection_returns_every_passage():
    query_reps, passage_reps = distinct_score_data(passages=40, queries=5, dim=16)
    passages = load_shards_from_arrays(passage_reps)
    for backend in EXACT_BACKENDS:
        scores, positions = search_passages(torch.from_numpy(query_reps), passages, depth=1000, backend=backend)
        assert positions.shape == (5, 40)
        np.testing.assert_array_equal(positions.numpy(), reference_ranking(query_reps, passage_reps, 40))
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_float16_encodings_search_exactly_like_their_values_stored_as_float32(tmp_path, backend):
    """float16 shards are widened block by block; the result equals a float32 search of the same values."""
    rng = np.random.default_rng(7)
    half_passages = rng.standard_normal((900, 48)).astype(np.float16)
    half_queries = rng.standard_normal((25, 48)).astype(np.float16)
    ids = [f"p{i}" for i in range(900)]
    for dtype, folder in ((np.float16, tmp_path / "half"), (np.float32, tmp_path / "full")):
        folder.mkdir()
        for number, (start, end) in enumerate(((0, 300), (300, 310), (310, 900))):
            save_encodings(folder / f"corpus.{number}.pt", torch.from_numpy(half_passages[start:end].astype(dtype)),
                           ids[start:end])
    half, full = load_passage_shards(str(tmp_path / "half" / "corpus.*.pt")), load_passage_shards(str(tmp_path / "full" / "corpus.*.pt"))
    assert {shard.dtype for shard in half.reps} == {torch.float16}
    assert {shard.dtype for shard in full.reps} == {torch.float32}
    half_scores, half_positions = search_passages(torch.from_numpy(half_queries), half, depth=50, batch_size=10,
                                                  backend=backend, block_rows=128)
    full_scores, full_positions = search_passages(torch.from_numpy(half_queries.astype(np.float32)), full, depth=50,
                                                  batch_size=10, backend=backend, block_rows=128)
    assert half_scores.dtype == torch.float32
    assert torch.equal(half_positions, full_positions) and torch.equal(half_scores, full_scores)


def test_torch_backend_widens_float16_one_block_at_a_time():
    shard = torch.randn(1000, 16).to(torch.float16)
    searcher = TorchFlatIPSearcher([shard], block_rows=100)
    searcher.search(torch.randn(4, 16), 5)
    assert searcher._widened.numel() == 100 * 16, "the whole shard was widened at once"


def test_auto_backend_is_measured_once_per_shape_and_logged_in_one_line(caplog, monkeypatch, tmp_path):
    from tevatron.faiss_retriever import retriever

    monkeypatch.setenv("TEVATRON_CACHE", str(tmp_path))
    caplog.set_level(logging.INFO, logger="tevatron.faiss_retriever.retriever")
    measured_backend.cache_clear()
    choice = measured_backend(24, 10, 30, block_rows=1024, queries=64)
    assert choice in EXACT_BACKENDS
    assert measured_backend(24, 10, 30, block_rows=1024, queries=64) == choice
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("search backend auto: ")]
    assert len(lines) == 1 and lines[0].startswith(f"search backend auto: {choice} (")
    assert "torch " in lines[0] and "torch_bf16 " in lines[0] and "faiss " in lines[0] and "queries/s" in lines[0]
    # a later process (here: a cleared cache) reads the machine's record instead of timing again
    measured_backend.cache_clear()
    caplog.clear()
    monkeypatch.setattr(retriever, "timed_backend", lambda *args: pytest.fail("timed again"))
    assert measured_backend(24, 10, 30, block_rows=1024, queries=64) == choice
    assert caplog.messages == [f"search backend auto: {choice} (measured earlier on this machine for dim 24, depth 10, "
                               f"30 blocks; recorded in {tmp_path / 'cpu_choices.json'})"]
    measured_backend.cache_clear()


def test_auto_measures_for_the_collections_number_of_blocks(monkeypatch):
    """One block measures only the first-block top-k; later blocks are where a large search spends its time."""
    from tevatron.faiss_retriever import retriever

    asked = []
    monkeypatch.setattr(retriever, "measured_backend", lambda dim, depth, blocks: asked.append(blocks) or "torch")
    retriever.resolve_backend("auto", 16, 10, total_passages=40_000)
    retriever.resolve_backend("auto", 16, 10, total_passages=10_000_000)
    assert asked == [2, 306]  # 32,768 passages a block
    assert retriever.MEASURE_BLOCKS >= 2


@pytest.mark.parametrize("first, a, c", [(1.0, 0.5, 0.0), (2.0, 0.25, 1.5), (0.3, 0.0, 0.8)])
def test_expected_seconds_recovers_a_search_that_follows_the_block_model(first, a, c):
    """Timings on 1, 2 and 4 blocks of a search whose block b costs a + c/(b-1) predict its time on any size."""
    from tevatron.faiss_retriever.retriever import expected_seconds

    def search_seconds(blocks):
        return first + sum(a + c / (block - 1) for block in range(2, blocks + 1))

    measured = {blocks: search_seconds(blocks) for blocks in (1, 2, 4)}
    for blocks in (1, 2, 3, 4, 31, 300):
        assert expected_seconds(measured, blocks) == pytest.approx(search_seconds(blocks), rel=1e-9)


@pytest.mark.parametrize("rates, expected", [
    ({"torch": 100.0, "torch_bf16": 110.0, "faiss": 90.0}, "torch"),   # bf16 ahead, but by less than 15%
    ({"torch": 100.0, "torch_bf16": 120.0, "faiss": 90.0}, "torch_bf16"),
    ({"torch": 100.0, "torch_bf16": 120.0, "faiss": 140.0}, "faiss"),
    ({"torch": 100.0, "torch_bf16": 40.0, "faiss": 99.0}, "torch"),    # CPUs without native bf16
])
def test_auto_takes_bf16_only_when_it_wins_clearly(rates, expected):
    from tevatron.faiss_retriever.retriever import fastest_backend

    assert fastest_backend(rates) == expected


def test_auto_backend_does_not_measure_for_a_collection_smaller_than_its_sample(caplog):
    from tevatron.faiss_retriever.retriever import resolve_backend

    caplog.set_level(logging.INFO, logger="tevatron.faiss_retriever.retriever")
    measured_backend.cache_clear()
    assert resolve_backend("auto", 16, 10, total_passages=500) == "torch"
    assert resolve_backend("faiss", 16, 10, total_passages=500) == "faiss"
    assert measured_backend.cache_info().currsize == 0
    assert "search backend auto: torch (500 passages: fewer than measuring needs)" in caplog.text


def load_shards_from_arrays(passage_reps: np.ndarray):
    from tevatron.faiss_retriever.retriever import PassageShards

    return PassageShards([Path("memory")], [torch.from_numpy(passage_reps)], [str(i) for i in range(len(passage_reps))])


# --------------------------------------------------------------------------- command line
@pytest.fixture()
def encoded(tmp_path):
    """Query file plus three passage shards with non-integer, non-ASCII ids."""
    query_reps, passage_reps = distinct_score_data(passages=600, queries=40, dim=32, seed=5)
    passage_ids = [f"doc-α-{i}" for i in range(600)]
    query_ids = [f"q-{i}" for i in range(40)]
    save_encodings(tmp_path / "queries.pt", query_reps, query_ids)
    shards = save_shards(tmp_path, passage_reps, passage_ids, [200, 450])
    save_encodings(tmp_path / "all" / "corpus.pt", passage_reps, passage_ids)
    return {"dir": tmp_path, "queries": tmp_path / "queries.pt", "shards": shards, "single": tmp_path / "all" / "corpus.pt",
            "query_reps": query_reps, "passage_reps": passage_reps, "passage_ids": passage_ids, "query_ids": query_ids}


def search_cli(queries, passages, output, *extra):
    return main(["--query_reps", str(queries), "--passage_reps", str(passages), "--depth", "10",
                 "--batch_size", "16", "--save_ranking_to", str(output), "--quiet", *extra])


def test_glob_of_shards_equals_single_file(encoded):
    folder = encoded["dir"]
    assert search_cli(encoded["queries"], folder / "corpus.*.pt", folder / "sharded.pt") == 0
    assert search_cli(encoded["queries"], encoded["single"], folder / "single.pt") == 0
    sharded, single = load_shard_ranking(folder / "sharded.pt"), load_shard_ranking(folder / "single.pt")
    assert sharded["passage_ids"] == single["passage_ids"] == encoded["passage_ids"]
    assert sharded["query_ids"] == encoded["query_ids"]
    assert torch.equal(sharded["indices"], single["indices"])
    assert torch.equal(sharded["scores"], single["scores"])
    expected = reference_ranking(encoded["query_reps"], encoded["passage_reps"], 10)
    np.testing.assert_array_equal(sharded["indices"].numpy(), expected)


def test_text_output_with_string_ids_and_both_backends(encoded):
    folder = encoded["dir"]
    for backend in EXACT_BACKENDS:
        output = folder / f"rank.{backend}.txt"
        assert search_cli(encoded["queries"], folder / "corpus.*.pt", output, "--save_text", "--backend", backend) == 0
    lines = (folder / "rank.torch.txt").read_text(encoding="utf-8").splitlines()
    assert lines == (folder / "rank.faiss.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40 * 10
    expected = reference_ranking(encoded["query_reps"], encoded["passage_reps"], 10)
    first_query = [line.split("\t") for line in lines[:10]]
    assert [qid for qid, _, _ in first_query] == ["q-0"] * 10
    assert [pid for _, pid, _ in first_query] == [encoded["passage_ids"][i] for i in expected[0]]
    exact = encoded["query_reps"][0].astype(np.float64) @ encoded["passage_reps"][expected[0]].T.astype(np.float64)
    np.testing.assert_allclose([float(score) for _, _, score in first_query], exact, rtol=1e-5)
    run = read_run(folder / "rank.torch.txt")
    assert list(run) == encoded["query_ids"]


def test_existing_output_is_kept_only_when_up_to_date_unless_overwrite(encoded, caplog):
    caplog.set_level(logging.INFO)
    folder = encoded["dir"]
    output = folder / "rank.txt"
    output.write_text("not made by this search\n")  # no provenance record: redone
    assert search_cli(encoded["queries"], encoded["single"], output, "--save_text") == 0
    assert len(output.read_text().splitlines()) == 400
    assert "has no provenance record" in caplog.text
    stamp = output.stat().st_mtime_ns
    caplog.clear()
    assert search_cli(encoded["queries"], encoded["single"], output, "--save_text") == 0
    assert output.stat().st_mtime_ns == stamp and "is up to date" in caplog.text and "skipping" in caplog.text
    assert search_cli(encoded["queries"], encoded["single"], output, "--save_text", "--overwrite") == 0
    assert output.stat().st_mtime_ns != stamp and len(output.read_text().splitlines()) == 400


@pytest.mark.slow
def test_dimension_mismatch_is_one_line_error_naming_both_files(encoded):
    folder = encoded["dir"]
    save_encodings(folder / "wrong_dim.pt", np.ones((3, 31), dtype=np.float32), ["a", "b", "c"])
    output = folder / "never.pt"
    result = subprocess.run(
        [sys.executable, "-m", "tevatron.faiss_retriever", "--query_reps", str(folder / "wrong_dim.pt"),
         "--passage_reps", str(folder / "corpus.*.pt"), "--save_ranking_to", str(output)],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "wrong_dim.pt" in lines[0] and "corpus.00.pt" in lines[0]
    assert "31" in lines[0] and "32" in lines[0]
    assert not output.exists()


def test_missing_passage_files_is_an_input_error(encoded, capsys):
    assert search_cli(encoded["queries"], encoded["dir"] / "nothing*.pt", encoded["dir"] / "out.pt") == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_passage_shards_load_in_sorted_order(encoded):
    passages = load_passage_shards(str(encoded["dir"] / "corpus.*.pt"))
    assert [p.name for p in passages.paths] == ["corpus.00.pt", "corpus.01.pt", "corpus.02.pt"]
    assert passages.ids == encoded["passage_ids"] and passages.dim == 32


def test_scores_rising_with_position_take_the_dense_path():
    """Every block beats the running top-k, so the threshold shortcut gives way to a full top-k."""
    passage_reps = np.repeat(np.arange(3000, dtype=np.float32)[:, None] / 64, 4, axis=1)
    query_reps = np.ones((3, 4), dtype=np.float32)
    _, positions = TorchFlatIPSearcher([torch.from_numpy(passage_reps)], 256).search(torch.from_numpy(query_reps), 5)
    np.testing.assert_array_equal(positions.numpy(), reference_ranking(query_reps, passage_reps, 5))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), width_a=st.integers(0, 6), width_b=st.integers(0, 6), k=st.integers(1, 14),
       seed=st.integers(0, 2**16))
def test_merge_topk_equals_a_stable_sort_of_both_lists(rows, width_a, width_b, k, seed):
    """The binary-search merge must equal ranking the concatenation (few distinct values: many ties)."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (rows, width_a + width_b), generator=generator).float()
    positions = torch.arange(width_a + width_b).repeat(rows, 1)
    scores_a, positions_a = order_by_score_then_position(scores[:, :width_a], positions[:, :width_a])
    scores_b, positions_b = order_by_score_then_position(scores[:, width_a:], positions[:, width_a:])
    merged_scores, merged_positions = merge_topk(scores_a, positions_a, scores_b, positions_b, k)
    expected_scores, expected_positions = order_by_score_then_position(scores, positions)
    keep = min(k, width_a + width_b)
    assert torch.equal(merged_scores, expected_scores[:, :keep])
    assert torch.equal(merged_positions, expected_positions[:, :keep])
