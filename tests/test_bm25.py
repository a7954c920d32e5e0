"""BM25 (tevatron.preprocess.bm25) against a brute-force Lucene BM25 written here from the formula."""
from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from tevatron.text_formats import read_negatives, read_run, write_qrels, write_tsv
from tevatron.preprocess import bm25

K1, B = 0.9, 0.4
WORDS = ("protein", "proteins", "cell", "cells", "cancer", "tumour", "gene", "genes", "expression", "mouse",
         "mice", "running", "runs", "immune", "response", "virus", "viral", "insulin", "brain", "neuron",
         "the", "of", "and", "with", "is", "receptor", "signal", "signalling", "dna", "rna")


def toy_corpus(n_docs: int = 60, seed: int = 0) -> list[tuple[str, str, str]]:
    """(pid, title, text) with varied lengths, repeated terms (tf > 1), stopwords and stem variants."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        title = " ".join(rng.choices(WORDS, k=rng.randint(0, 4)))
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
        docs.append((f"d{i:03d}", title, text))
    return docs


TOY_QUERIES = [("q1", "protein expression in mouse cells"), ("q2", "viral immune response"),
               ("q3", "the running neurons of the brain"), ("q4", "insulin receptor signalling genes"),
               ("q5", "DNA"), ("q6", "cancer tumour virus rna cell")]


def brute_force_bm25(docs: list[list[str]], query: list[str], k1: float = K1, b: float = B) -> list[float]:
    """Lucene BM25 straight from the formula, over already-tokenised documents."""
    n_docs = len(docs)
    avgdl = sum(len(d) for d in docs) / n_docs
    df = Counter(term for doc in docs for term in set(doc))
    scores = []
    for doc in docs:
        tf = Counter(doc)
        score = 0.0
        for term in query:
            if tf[term] == 0:
                continue
            idf = math.log(1 + (n_docs - df[term] + 0.5) / (df[term] + 0.5))
            score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


def bm25s_strings(texts: list[str]) -> list[list[str]]:
    """The bm25s tokenizer + English Snowball stemmer + English stopwords, as tokens (strings)."""
    import bm25s
    import Stemmer

    tokenizer = bm25s.tokenization.Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))
    return tokenizer.tokenize(texts, return_as="string", show_progress=False)


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]], k: int) -> None:
    """Same scores rank by rank (1e-4), and the same ids wherever the score is not tied at the cut."""
    assert len(got) == len(expected)
    for (_, got_score), (_, want_score) in zip(got, expected):
        assert got_score == pytest.approx(want_score, abs=1e-4)
    cut = expected[-1][1] if len(expected) == k else None
    got_ids = {pid for pid, score in got if cut is None or abs(score - cut) > 1e-4}
    want_ids = {pid for pid, score in expected if cut is None or abs(score - cut) > 1e-4}
    assert got_ids == want_ids


@pytest.mark.parametrize("k", [5, 20])
def test_bm25_matches_brute_force(k):
    docs = toy_corpus()
    index = bm25.build_index(((pid, bm25.bm25_document(t, x)) for pid, t, x in docs), k1=K1, b=B)
    doc_tokens = bm25s_strings([bm25.bm25_document(t, x) for _, t, x in docs])
    query_tokens = bm25s_strings([text for _, text in TOY_QUERIES])
    results = index.search([text for _, text in TOY_QUERIES], k=k)
    for (qid, _), query, got in zip(TOY_QUERIES, query_tokens, results):
        scores = brute_force_bm25(doc_tokens, query)
        ranked = sorted(((pid, s) for (pid, _, _), s in zip(docs, scores) if s > 0), key=lambda h: -h[1])[:k]
        assert ranked, qid
        assert_same_ranking(got, ranked, k)


def test_bm25_unknown_words_and_small_corpus():
    index = bm25.build_index([("a", "alpha beta"), ("b", "beta gamma"), ("c", "gamma delta")])
    hits = index.search(["zebra unicorn", "", "beta", "the of and"], k=1000)   # k > corpus size is clamped
    assert hits[0] == [] and hits[1] == [] and hits[3] == []
    assert {pid for pid, _ in hits[2]} == {"a", "b"}


@pytest.fixture()
def toy_data_dir(tmp_path):
    docs = toy_corpus()
    write_tsv(tmp_path / "corpus.tsv", docs)
    write_tsv(tmp_path / "train.query.txt", TOY_QUERIES[:4] + [("q9", "query without positives")])
    write_tsv(tmp_path / "dev.query.txt", TOY_QUERIES[4:])
    write_qrels(tmp_path / "qrels.train.tsv", {"q1": {"d001": 1, "d002": 1}, "q2": {"d003": 1},
                                                "q3": {"d004": 1, "d005": 0}, "q4": {"d006": 1}})
    return tmp_path


def test_negatives_and_dev_run(toy_data_dir):
    data = toy_data_dir
    assert bm25.main(["--data_dir", str(data), "--dev_run", "--depth", "10", "--threads", "2",
                      "--batch_size", "3"]) == 0
    negatives = read_negatives(data / "train.negatives.tsv")
    assert list(negatives) == ["q1", "q2", "q3", "q4"]          # only queries with positives, in file order
    index = bm25.index_collection(data / "corpus.tsv")
    positives = {"q1": {"d001", "d002"}, "q2": {"d003"}, "q3": {"d004"}, "q4": {"d006"}}
    for (qid, text), hits in zip(TOY_QUERIES[:4], index.search([t for _, t in TOY_QUERIES[:4]], k=10)):
        assert negatives[qid] == [pid for pid, _ in hits if pid not in positives[qid]]
        assert not set(negatives[qid]) & positives[qid]
    run = read_run(data / "bm25.dev.rank.tsv")
    assert set(run) == {"q5", "q6"}
    for qid, hits in run.items():
        scores = list(hits.values())
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    # Outputs up to date: a rerun is skipped without building the index (threads and batch size change
    # no result); another depth redoes the negatives only.
    before = {name: (data / name).stat().st_mtime_ns for name in ("train.negatives.tsv", "bm25.dev.rank.tsv")}
    assert bm25.main(["--data_dir", str(data), "--dev_run", "--depth", "10"]) == 0
    assert before == {name: (data / name).stat().st_mtime_ns for name in before}
    assert bm25.main(["--data_dir", str(data), "--dev_run", "--depth", "3"]) == 0
    assert (data / "train.negatives.tsv").stat().st_mtime_ns != before["train.negatives.tsv"]
    assert (data / "bm25.dev.rank.tsv").stat().st_mtime_ns == before["bm25.dev.rank.tsv"]
    assert all(len(pids) <= 3 for pids in read_negatives(data / "train.negatives.tsv").values())


def test_bm25_cli_malformed_corpus(toy_data_dir, capsys):
    with open(toy_data_dir / "corpus.tsv", "a", encoding="utf-8") as out:
        out.write("only-one-column\n")
    assert bm25.main(["--data_dir", str(toy_data_dir), "--dev_run"]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err_lines == [f"error: {toy_data_dir / 'corpus.tsv'}:61: expected 2 or 3 tab-separated columns, found 1"]
    assert not (toy_data_dir / "train.negatives.tsv").exists()
    assert not (toy_data_dir / "bm25.dev.rank.tsv").exists()
