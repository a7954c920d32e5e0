"""Reducer: merging per-shard rankings equals searching all shards at once, ties included."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tevatron.faiss_retriever import reducer, retriever
from tevatron.files import InputError
from tevatron.tensor_files import save_encodings, save_shard_ranking

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, passage_reps: np.ndarray, query_reps: np.ndarray, bounds: list[int]) -> dict:
    """Save queries and passage shards (string ids) and return their paths."""
    passage_ids = [f"doc-α-{i}" for i in range(len(passage_reps))]
    save_encodings(folder / "queries.pt", query_reps, [f"q{i:03d}" for i in range(len(query_reps))])
    shards = []
    for number, (start, end) in enumerate(zip([0, *bounds], [*bounds, len(passage_ids)])):
        shards.append(folder / f"corpus.{number:02d}.pt")
        save_encodings(shards[-1], passage_reps[start:end], passage_ids[start:end])
    return {"queries": folder / "queries.pt", "shards": shards, "glob": str(folder / "corpus.*.pt")}


def search(queries, passages, output, depth, *extra) -> None:
    code = retriever.main(["--query_reps", str(queries), "--passage_reps", str(passages), "--depth", str(depth),
                           "--batch_size", "32", "--save_ranking_to", str(output), "--quiet", *extra])
    assert code == 0


def search_each_shard(corpus: dict, score_dir: Path, depth: int, backend: str = "torch") -> None:
    for shard in corpus["shards"]:
        search(corpus["queries"], shard, score_dir / f"{shard.stem}.rank.pt", depth, "--backend", backend)


def reduce_cli(score_dir, queries, output, *extra) -> int:
    return reducer.main(["--score_dir", str(score_dir), "--query", str(queries),
                         "--save_ranking_to", str(output), *extra])


@pytest.fixture()
def tied_corpus(tmp_path):
    """Small integer vectors, with every shard repeating some rows of the others: many cross-shard ties."""
    rng = np.random.default_rng(11)
    passage_reps = rng.integers(-2, 3, size=(700, 6)).astype(np.float32)
    passage_reps[500:560] = passage_reps[0:60]
    passage_reps[300:320] = passage_reps[520:540]
    query_reps = rng.integers(-2, 3, size=(45, 6)).astype(np.float32)
    return write_corpus(tmp_path, passage_reps, query_reps, [250, 251, 520])


@pytest.mark.parametrize("backend", ["torch", "torch_bf16", "faiss"])
def test_reduced_shards_equal_search_all_at_once_with_ties(tied_corpus, tmp_path, backend):
    score_dir = tmp_path / "scores"
    search_each_shard(tied_corpus, score_dir, depth=30, backend=backend)
    search(tied_corpus["queries"], tied_corpus["glob"], tmp_path / "all.txt", 30, "--save_text")
    assert reduce_cli(score_dir, tied_corpus["queries"], tmp_path / "reduced.txt") == 0
    reduced = (tmp_path / "reduced.txt").read_text(encoding="utf-8")
    assert reduced == (tmp_path / "all.txt").read_text(encoding="utf-8")
    assert len(reduced.splitlines()) == 45 * 30


def test_ties_are_really_present_across_shards(tied_corpus, tmp_path):
    """Guard for the test above: equal scores from different shards must occur inside the top 30."""
    search(tied_corpus["queries"], tied_corpus["glob"], tmp_path / "all.pt", 30)
    from tevatron.tensor_files import load_shard_ranking

    ranking = load_shard_ranking(tmp_path / "all.pt")
    scores, positions = ranking["scores"], ranking["indices"]
    shard_of = torch.bucketize(positions, torch.tensor([250, 251, 520]), right=True)
    same_score = scores[:, 1:] == scores[:, :-1]
    assert bool((same_score & (shard_of[:, 1:] != shard_of[:, :-1])).any())


def test_real_valued_vectors_and_smaller_depth(tmp_path):
    rng = np.random.default_rng(2)
    corpus = write_corpus(tmp_path, rng.standard_normal((900, 24)).astype(np.float32),
                          rng.standard_normal((60, 24)).astype(np.float32), [300, 600])
    score_dir = tmp_path / "scores"
    search_each_shard(corpus, score_dir, depth=20)
    search(corpus["queries"], corpus["glob"], tmp_path / "all.txt", 7, "--save_text")
    assert reduce_cli(score_dir, corpus["queries"], tmp_path / "reduced.txt", "--depth", "7") == 0
    assert (tmp_path / "reduced.txt").read_text() == (tmp_path / "all.txt").read_text()


def test_hidden_files_and_the_output_itself_are_skipped(tied_corpus, tmp_path):
    score_dir = tmp_path / "scores"
    search_each_shard(tied_corpus, score_dir, depth=10)
    (score_dir / ".corpus.04.rank.pt.abc.tmp").write_bytes(b"half-written")
    search(tied_corpus["queries"], tied_corpus["glob"], tmp_path / "all.txt", 10, "--save_text")
    output = score_dir / "zz_merged.txt"
    for _ in range(2):  # the second run must not read its own earlier output as a shard
        assert reduce_cli(score_dir, tied_corpus["queries"], output) == 0
    assert output.read_text(encoding="utf-8") == (tmp_path / "all.txt").read_text(encoding="utf-8")


@pytest.mark.slow
def test_shards_from_another_query_set_are_refused(tied_corpus, tmp_path):
    score_dir = tmp_path / "scores"
    search_each_shard(tied_corpus, score_dir, depth=5)
    other = tmp_path / "other_queries.pt"
    save_encodings(other, np.ones((3, 6), dtype=np.float32), ["x", "y", "z"])
    output = tmp_path / "reduced.txt"
    result = subprocess.run(
        [sys.executable, "-m", "tevatron.faiss_retriever.reducer", "--score_dir", str(score_dir),
         "--query", str(other), "--save_ranking_to", str(output)],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "different query set" in lines[0], result.stderr
    assert "corpus.00.rank.pt" in lines[0]
    assert not output.exists()


def test_padding_slots_and_unsorted_shard_rows_are_handled(tmp_path):
    """Shard files from other writers: -1 padding (as FAISS emits) and rows not in rank order."""
    score_dir = tmp_path / "scores"
    save_encodings(tmp_path / "q.pt", np.zeros((2, 2), dtype=np.float32), ["a", "b"])
    save_shard_ranking(score_dir / "s0.pt", ["a", "b"], ["p0", "p1"], [[0.5, 0.9, -3.0], [0.1, 0.2, 0.0]],
                       [[0, 1, -1], [1, 0, -1]])
    save_shard_ranking(score_dir / "s1.pt", ["a", "b"], ["p2"], [[0.9], [0.2]], [[0], [0]])
    merged = reducer.reduce_shards(reducer.list_shard_files(score_dir), tmp_path / "q.pt", depth=3)
    rows = list(reducer.iter_merged(merged))
    assert rows[0] == ("a", [("p1", pytest.approx(0.9)), ("p2", pytest.approx(0.9)), ("p0", pytest.approx(0.5))])
    assert rows[1] == ("b", [("p0", pytest.approx(0.2)), ("p2", pytest.approx(0.2)), ("p1", pytest.approx(0.1))])


def test_empty_score_dir_is_an_input_error(tmp_path):
    (tmp_path / "scores").mkdir()
    with pytest.raises(InputError, match="no shard ranking files"):
        reducer.list_shard_files(tmp_path / "scores")


def test_merge_in_query_chunks_matches_one_chunk(tied_corpus, tmp_path):
    score_dir = tmp_path / "scores"
    search_each_shard(tied_corpus, score_dir, depth=12)
    paths = reducer.list_shard_files(score_dir)
    whole = reducer.reduce_shards(paths, tied_corpus["queries"], chunk=1000)
    chunked = reducer.reduce_shards(paths, tied_corpus["queries"], chunk=4)
    assert torch.equal(whole.positions, chunked.positions) and torch.equal(whole.scores, chunked.scores)
    assert whole.shard_passage_ids[0].dtype.kind == "S"
