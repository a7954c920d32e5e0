"""``--index FACTORY``: FAISS index types other than exact search, built, saved, reused by provenance."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tevatron.cli import CommandError
from tevatron.faiss_retriever.index import IndexSettings, default_index_path, load_or_build_index
from tevatron.faiss_retriever.reducer import main as reduce_main
from tevatron.faiss_retriever.retriever import main as search_main
from tevatron.tensor_files import load_shard_ranking, save_encodings
from tevatron.text_formats import read_run

# One of each family: graph, inverted lists (flat and PQ codes), scalar and product quantisation, rotation.
FACTORIES = ["HNSW32", "IVF16,Flat", "IVF16,PQ8", "SQ8", "PQ8",
             pytest.param("OPQ8,IVF16,PQ8", marks=pytest.mark.slow)]  # OPQ's rotation training: ~10 s
DIM = 32


def clustered_vectors(passages: int, queries: int, clusters: int = 40, seed: int = 0):
    """Unit vectors around random centres (embedding-like: neighbours share a cluster); queries likewise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))

    def draw(count):
        points = centres[rng.integers(0, clusters, count)] + 0.35 * rng.standard_normal((count, DIM))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    return draw(queries), draw(passages)


def exact_ids(query_reps, passage_reps, depth):
    scores = query_reps.astype(np.float64) @ passage_reps.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(row) & set(truth)) / len(truth) for row, truth in zip(found.tolist(), exact.tolist())]))


@pytest.fixture()
def data(tmp_path):
    query_reps, passage_reps = clustered_vectors(passages=3000, queries=50)
    save_encodings(tmp_path / "q.pt", query_reps, [f"q{i}" for i in range(len(query_reps))])
    save_encodings(tmp_path / "p.pt", passage_reps, [f"p{i}" for i in range(len(passage_reps))])
    return {"dir": tmp_path, "queries": query_reps, "passages": passage_reps}


def search(folder: Path, output: str, *extra, passages: str = "p.pt", depth: int = 10) -> int:
    return search_main(["--query_reps", str(folder / "q.pt"), "--passage_reps", str(folder / passages),
                        "--save_ranking_to", str(folder / output), "--depth", str(depth), "--quiet", *extra])


def ranking_indices(path: Path) -> np.ndarray:
    return load_shard_ranking(path)["indices"].numpy()


@pytest.mark.parametrize("factory", FACTORIES)
def test_each_index_type_builds_searches_is_saved_and_reused(data, factory, caplog):
    caplog.set_level(logging.INFO)
    folder = data["dir"]
    assert search(folder, "first.pt", "--index", factory, "--index_train_size", "2000") == 0
    index_file = default_index_path([folder / "p.pt"], factory)
    assert index_file.is_file() and index_file.name == f"p.pt.{factory.replace(',', '_')}.faiss"
    assert "building index" in caplog.text
    first = ranking_indices(folder / "first.pt")
    assert first.shape == (50, 10) and (first >= 0).all()
    assert recall(first, exact_ids(data["queries"], data["passages"], 10)) > 0.3  # a search, not noise
    stamp = index_file.stat().st_mtime_ns
    caplog.clear()
    assert search(folder, "second.pt", "--index", factory, "--index_train_size", "2000") == 0
    assert "building index" not in caplog.text and "is up to date" in caplog.text
    assert index_file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(ranking_indices(folder / "second.pt"), first)


def test_index_is_rebuilt_when_encodings_factory_or_training_sample_change(data, caplog):
    caplog.set_level(logging.INFO)
    folder, index_file = data["dir"], data["dir"] / "shared.faiss"
    settings = IndexSettings("IVF16,Flat", train_size=1000, train_seed=0)
    shards = [torch.from_numpy(data["passages"])]

    def build(settings, shards=shards):
        return load_or_build_index([folder / "p.pt"], shards, settings, index_file)[1]

    assert build(settings) is True
    assert build(settings) is False  # unchanged: reused
    assert build(IndexSettings("IVF16,Flat", 1000, 0, nprobe=4)) is False  # a search knob is not part of the index
    caplog.clear()
    assert build(IndexSettings("IVF16,Flat", 1500, 0)) is True
    assert "train_size changed" in caplog.text and "rebuilding the index" in caplog.text
    caplog.clear()
    assert build(IndexSettings("IVF16,Flat", 1500, 7)) is True and "train_seed changed" in caplog.text
    caplog.clear()
    assert build(IndexSettings("SQ8", 1500, 7)) is True and "index changed" in caplog.text
    caplog.clear()
    changed = data["passages"][::-1].copy()  # re-encoded: same shape, new file
    save_encodings(folder / "p.pt", changed, [f"p{i}" for i in range(len(changed))])
    assert build(IndexSettings("SQ8", 1500, 7), [torch.from_numpy(changed)]) is True
    assert "passages changed" in caplog.text


def test_flat_index_is_todays_exact_search(data):
    folder = data["dir"]
    assert search(folder, "default.pt") == 0
    assert search(folder, "flat.pt", "--index", "Flat") == 0
    assert not list(folder.glob("*.faiss"))  # exact search builds nothing
    default, flat = load_shard_ranking(folder / "default.pt"), load_shard_ranking(folder / "flat.pt")
    assert torch.equal(default["indices"], flat["indices"]) and torch.equal(default["scores"], flat["scores"])
    np.testing.assert_array_equal(flat["indices"].numpy(), exact_ids(data["queries"], data["passages"], 10))


@pytest.mark.parametrize("factory, knobs, bound", [
    ("HNSW32", ["--ef_search", "128"], 0.97),
    ("IVF32,Flat", ["--nprobe", "8"], 0.9),
    ("IVF16,Flat", ["--nprobe", "16"], 1.0),  # every list probed: exact
    ("SQ8", [], 0.9),
])
def test_recall_with_generous_settings(data, factory, knobs, bound):
    folder = data["dir"]
    assert search(folder, "rank.pt", "--index", factory, *knobs, depth=20) == 0
    found = ranking_indices(folder / "rank.pt")
    assert recall(found, exact_ids(data["queries"], data["passages"], 20)) >= bound


def test_float16_encodings_index_like_their_float32_values(data):
    folder = data["dir"]
    half = torch.from_numpy(data["passages"]).to(torch.float16)
    ids = [f"p{i}" for i in range(len(half))]
    save_encodings(folder / "half.pt", half, ids)
    save_encodings(folder / "widened.pt", half.to(torch.float32), ids)
    for name in ("half", "widened"):
        assert search(folder, f"{name}.rank.pt", "--index", "IVF16,Flat", "--nprobe", "4", passages=f"{name}.pt") == 0
    half_rank, widened_rank = (load_shard_ranking(folder / f"{name}.rank.pt") for name in ("half", "widened"))
    assert torch.equal(half_rank["indices"], widened_rank["indices"])
    assert torch.equal(half_rank["scores"], widened_rank["scores"])


def test_search_records_the_index_and_its_knobs(data, caplog):
    caplog.set_level(logging.INFO)
    folder = data["dir"]
    assert search(folder, "rank.pt", "--index", "IVF16,Flat", "--nprobe", "2") == 0
    record = load_shard_ranking(folder / "rank.pt")["provenance"]["search"]
    assert record == {"index": "IVF16,Flat", "nprobe": 2, "ef_search": "faiss default", "train_size": 200000,
                      "train_seed": 0}
    caplog.clear()
    assert search(folder, "rank.pt", "--index", "IVF16,Flat", "--nprobe", "2") == 0
    assert "rank.pt is up to date" in caplog.text
    caplog.clear()
    assert search(folder, "rank.pt", "--index", "IVF16,Flat", "--nprobe", "16") == 0
    assert "search.nprobe: 2 -> 16" in caplog.text
    np.testing.assert_array_equal(ranking_indices(folder / "rank.pt"), exact_ids(data["queries"], data["passages"], 10))


def test_sharded_search_with_an_index_per_shard_reduces_like_one_search(data):
    """Each shard run builds its own index beside its shard; exact-probing IVF makes the merge comparable."""
    folder = data["dir"]
    passage_ids = [f"p{i}" for i in range(3000)]
    for number, (start, end) in enumerate([(0, 1200), (1200, 3000)]):
        save_encodings(folder / f"split{number}.pt", data["passages"][start:end], passage_ids[start:end])
        (folder / "ranks").mkdir(exist_ok=True)
        assert search(folder, f"ranks/split{number}", "--index", "IVF8,Flat", "--nprobe", "8",
                      passages=f"split{number}.pt") == 0
    assert sorted(p.name for p in folder.glob("*.faiss")) == ["split0.pt.IVF8_Flat.faiss", "split1.pt.IVF8_Flat.faiss"]
    assert reduce_main(["--score_dir", str(folder / "ranks"), "--query", str(folder / "q.pt"), "--save_ranking_to",
                        str(folder / "merged.tsv"), "--depth", "10"]) == 0
    run = read_run(folder / "merged.tsv")
    exact = exact_ids(data["queries"], data["passages"], 10)
    for row, qid in enumerate(f"q{i}" for i in range(50)):
        ranked = sorted(run[qid], key=lambda pid: -run[qid][pid])
        assert ranked == [passage_ids[i] for i in exact[row]]


def test_fewer_hits_than_depth_are_left_out_of_text_rankings(data):
    """IVF with one probed list can find fewer than k passages: FAISS's -1 slots must not name a passage."""
    folder = data["dir"]
    assert search(folder, "rank.tsv", "--index", "IVF64,Flat", "--nprobe", "1", "--save_text", depth=200) == 0
    run = read_run(folder / "rank.tsv")
    assert any(len(hits) < 200 for hits in run.values())
    scores = data["queries"] @ data["passages"].T
    for row, qid in enumerate(f"q{i}" for i in range(50)):
        for pid, score in run[qid].items():
            assert score == pytest.approx(float(scores[row, int(pid[1:])]), abs=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--index", "IVF16,Bogus"], "--index 'IVF16,Bogus' is not an index FAISS can build for 32-d vectors"),
    (["--index", "HNSW32", "--nprobe", "4"], "--nprobe applies to IVF indexes only, and --index 'HNSW32' has none"),
    (["--index", "IVF16,Flat", "--ef_search", "4"], "--ef_search applies to HNSW indexes only"),
    (["--nprobe", "4"], "--nprobe applies to IVF/HNSW indexes, not to exact search"),
    (["--index", "IVF4096,Flat"], "--index 'IVF4096,Flat' needs at least 4096 training vectors, but the sample "
                                  "has 3000"),
    (["--index", "IVF64,Flat", "--index_train_size", "50"], "needs at least 64 training vectors, but the sample has 50"),
])
def test_bad_index_settings_are_one_line_and_write_nothing(data, extra, message):
    folder = data["dir"]
    with pytest.raises(CommandError) as caught:
        _run_unwrapped(folder, extra)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (folder / "rank.pt").exists() and not list(folder.glob("*.faiss"))


def _run_unwrapped(folder, extra):
    """The command's body without the CLI wrapper, so the CommandError itself can be inspected."""
    from tevatron.faiss_retriever.retriever import parse_arguments, run_search

    run_search(parse_arguments(["--query_reps", str(folder / "q.pt"), "--passage_reps", str(folder / "p.pt"),
                                "--save_ranking_to", str(folder / "rank.pt"), "--quiet", *extra]))


def test_non_positive_nprobe_is_refused_when_parsed():
    from tevatron.faiss_retriever.retriever import SearchArguments

    with pytest.raises(ValueError, match="--nprobe must be at least 1, not 0"):
        SearchArguments("q.pt", "p.pt", "rank.pt", index="IVF16,Flat", nprobe=0)
