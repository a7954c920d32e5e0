"""Metrics (vs ir_measures on a real SciFact run), official MRR semantics, CLIs and run conversion."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tevatron import evaluation
from tevatron.files import InputError
from tevatron.text_formats import read_collection, read_qrels, read_queries, read_run, write_qrels, write_ranking

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = REPO_ROOT / "msmarco-passage-ranking" / "ms_marco_eval.py"
MARCO_SCRIPT = REPO_ROOT / "msmarco-passage-ranking" / "score_to_marco.py"
IR_MEASURES_NAMES = {"MRR@10": "RR@10", "Recall@50": "R@50", "Recall@100": "R@100", "Recall@1000": "R@1000",
                     "nDCG@10": "nDCG@10"}
RUN_DEPTH = 1000


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


# --------------------------------------------------------------------------- a real run on SciFact
def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tfidf_scores(corpus: dict[str, tuple[str, str]], pids: list[str], queries: list[str]) -> np.ndarray:
    """Cosine TF-IDF (log tf) scores [queries, passages] through an inverted index: a BM25-ish baseline."""
    term_counts = [Counter(tokenize(f"{title} {text}")) for title, text in (corpus[pid] for pid in pids)]
    document_frequency = Counter(term for counts in term_counts for term in counts)
    idf = {term: math.log(len(pids) / df) for term, df in document_frequency.items()}
    postings: dict[str, tuple[list[int], list[float]]] = {}
    for doc, counts in enumerate(term_counts):
        weights = {term: (1 + math.log(tf)) * idf[term] for term, tf in counts.items()}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        for term, weight in weights.items():
            postings.setdefault(term, ([], []))[0].append(doc)
            postings[term][1].append(weight / norm)
    scores = np.zeros((len(queries), len(pids)))
    for row, query in enumerate(queries):
        for term, tf in Counter(tokenize(query)).items():
            if term in postings:
                docs, weights = postings[term]
                scores[row, docs] += (1 + math.log(tf)) * idf[term] * np.asarray(weights)
    return scores


@pytest.fixture(scope="module")
def scifact_runs(scifact_dir):
    """``(qrels, run with the real scores, the same ranking with tie-free scores)`` over all test queries."""
    qrels = read_qrels(scifact_dir / "qrels" / "test.tsv")
    queries = read_queries(scifact_dir / "queries.jsonl")
    corpus = read_collection(scifact_dir / "corpus.jsonl")
    pids = sorted(corpus)  # index order == passage id order, the evaluation tie-break
    qids = list(qrels)
    scores = tfidf_scores(corpus, pids, [queries[qid] for qid in qids])
    scored_run, tie_free_run = {}, {}
    for row, qid in enumerate(qids):
        top = np.lexsort((np.arange(len(pids)), -scores[row]))[:RUN_DEPTH]
        scored_run[qid] = {pids[i]: float(scores[row, i]) for i in top}
        tie_free_run[qid] = {pids[i]: float(RUN_DEPTH - rank) for rank, i in enumerate(top)}
    return qrels, scored_run, tie_free_run


def ir_measures_per_query(qrels, run) -> dict[str, dict[str, float]]:
    import ir_measures

    measures = [ir_measures.parse_measure(name) for name in IR_MEASURES_NAMES.values()]
    values: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(measures, qrels, run):
        values.setdefault(metric.query_id, {})[str(metric.measure)] = metric.value
    return values


def test_metrics_agree_with_ir_measures_on_scifact(scifact_runs):
    qrels, _, run = scifact_runs
    ours = evaluation.per_query(qrels, run)
    theirs = ir_measures_per_query(qrels, run)
    assert set(theirs) == set(qrels) == set(ours)
    for qid in qrels:
        for name, their_name in IR_MEASURES_NAMES.items():
            assert ours[qid][name] == pytest.approx(theirs[qid][their_name], abs=1e-6), (qid, name)
    aggregate = evaluation.evaluate(qrels, run)
    for name, their_name in IR_MEASURES_NAMES.items():
        mean = sum(values[their_name] for values in theirs.values()) / len(qrels)
        assert aggregate[name] == pytest.approx(mean, abs=1e-6)
    assert 0.3 < aggregate["MRR@10"] < 0.9 and aggregate["Recall@1000"] > aggregate["Recall@100"]


def test_queries_missing_from_the_run_count_as_zero(scifact_runs):
    qrels, _, run = scifact_runs
    partial = {qid: hits for number, (qid, hits) in enumerate(run.items()) if number % 5}
    theirs = ir_measures_per_query(qrels, partial)
    ours = evaluation.evaluate(qrels, partial)
    for name, their_name in IR_MEASURES_NAMES.items():
        total = sum(theirs.get(qid, {}).get(their_name, 0.0) for qid in partial)
        assert ours[name] == pytest.approx(total / len(qrels), abs=1e-6)
    assert ours["MRR@10"] < evaluation.evaluate(qrels, run)["MRR@10"]


def test_ties_are_ranked_by_passage_id(scifact_runs):
    """The real TF-IDF scores (ties included) evaluate exactly like the tie-free copy of our order."""
    qrels, scored_run, tie_free_run = scifact_runs
    assert any(len(set(hits.values())) < len(hits) for hits in scored_run.values()), "expected tied scores"
    assert evaluation.evaluate(qrels, scored_run) == evaluation.evaluate(qrels, tie_free_run)
    assert evaluation.ranked_passages({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]


def test_official_mrr_definition():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1, "d": 0}}
    run = {"q1": {"x": 3.0, "a": 2.0},                      # relevant at rank 2
           "q2": {f"n{i:02d}": 20.0 - i for i in range(10)} | {"b": 1.0},  # rank 11: outside the top 10
           "q9": {"c": 1.0}}                                # not judged: ignored
    metrics = evaluation.evaluate(qrels, run)
    assert metrics["MRR@10"] == pytest.approx(0.5 / 3)
    assert metrics["Recall@50"] == pytest.approx(2 / 3)
    assert evaluation.query_counts(qrels, run) == {"QueriesRanked": 3, "QueriesInQrels": 3,
                                                   "QueriesRankedAndJudged": 2}
    only_negative = evaluation.evaluate({"q": {"z": 0}}, {"q": {"z": 1.0}})
    assert all(value == 0.0 for value in only_negative.values())


def test_graded_ndcg():
    judged = {"a": 2, "b": 1, "c": 0}
    value = evaluation.ndcg(["b", "c", "a"], judged)
    ideal = 2 + 1 / math.log2(3)
    assert value == pytest.approx((1 + 2 / math.log2(4)) / ideal)


# --------------------------------------------------------------------------- command lines
@pytest.fixture()
def small_files(tmp_path):
    qrels = {"1": {"p1": 1}, "2": {"p7": 1}, "3": {"p3": 1}}
    ranking = [("1", [("p5", 3.5), ("p1", 2.25), ("p9", 2.25)]),
               ("2", [("p7", 9.0), ("p2", 1.0)]),
               ("4", [("p3", 1.0)])]
    write_qrels(tmp_path / "qrels.tsv", qrels)
    write_ranking(tmp_path / "rank.txt", ranking)
    return tmp_path


@pytest.mark.slow
def test_eval_cli_end_to_end_with_json(small_files):
    result = run_cli(str(EVAL_SCRIPT), str(small_files / "qrels.tsv"), str(small_files / "rank.txt"),
                     "--json", str(small_files / "metrics.json"))
    assert result.returncode == 0, result.stderr
    assert "MRR @10: 0.5000" in result.stdout
    assert "QueriesRanked: 3" in result.stdout and "QueriesInQrels: 3" in result.stdout
    for name in ("Recall@50", "Recall@100", "Recall@1000", "nDCG@10"):
        assert f"{name}: " in result.stdout
    metrics = json.loads((small_files / "metrics.json").read_text())
    assert metrics["MRR@10"] == pytest.approx(0.5) and metrics["QueriesInQrels"] == 3


@pytest.mark.slow
def test_score_to_marco_script_and_all_run_formats_agree(small_files):
    result = run_cli(str(MARCO_SCRIPT.relative_to(REPO_ROOT)), str(small_files / "rank.txt"), "--trec", "--tag", "dr")
    assert result.returncode == 0, result.stderr
    marco = (small_files / "rank.txt.marco").read_text().splitlines()
    assert marco[:3] == ["1\tp5\t1", "1\tp1\t2", "1\tp9\t3"] and marco[3:] == ["2\tp7\t1", "2\tp2\t2", "4\tp3\t1"]
    trec = (small_files / "rank.txt.trec").read_text().splitlines()
    assert trec[0] == "1 Q0 p5 1 3.5 dr" and trec[2] == "1 Q0 p9 3 2.25 dr" and len(trec) == 6
    qrels = read_qrels(small_files / "qrels.tsv")
    results = [evaluation.evaluate(qrels, read_run(small_files / name))
               for name in ("rank.txt", "rank.txt.marco", "rank.txt.trec")]
    assert results[0] == results[1] == results[2]


def test_score_to_marco_orders_ties_like_the_evaluation(tmp_path):
    write_ranking(tmp_path / "r.txt", [("q", [("b", 1.0), ("a", 1.0), ("c", 5.0)])])
    evaluation.convert_ranking(tmp_path / "r.txt")
    assert (tmp_path / "r.txt.marco").read_text().splitlines() == ["q\tc\t1", "q\ta\t2", "q\tb\t3"]


@pytest.mark.slow
@pytest.mark.parametrize("target, content, message", [
    ("run", "1\tp1\t2.0\n1\tp2\n", "rank.txt:2: run line must have 3 columns, found 2"),
    ("run", "1\tp1\t2.0\n1\tp2\thigh\n", "rank.txt:2: score 'high' is not a number"),
    ("qrels", "1 0 p1 1\n2 0 p2 1 extra\n", "qrels.tsv:2: qrels line must have 3 (BEIR) or 4 (TREC) columns"),
    ("qrels", "1\tQ0\tp1\t1\t3.2\tbm25\n", "qrels.tsv:1: qrels line must have 3 (BEIR) or 4 (TREC) columns"),
])
def test_eval_cli_bad_input_is_one_line_and_leaves_no_output(small_files, target, content, message):
    name = "rank.txt" if target == "run" else "qrels.tsv"
    (small_files / name).write_text(content)
    json_path = small_files / "metrics.json"
    result = run_cli("-m", "tevatron.evaluation", str(small_files / "qrels.tsv"), str(small_files / "rank.txt"),
                     "--json", str(json_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""
    assert not json_path.exists()
    assert not [p for p in small_files.iterdir() if p.name.startswith(".")]


def test_score_to_marco_bad_input_leaves_no_file(tmp_path):
    (tmp_path / "r.txt").write_text("q\tp\t1.0\nq\tp2\tnan?\n")
    with pytest.raises(InputError, match=r"r.txt:2: score 'nan\?' is not a number"):
        evaluation.convert_ranking(tmp_path / "r.txt", trec=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
