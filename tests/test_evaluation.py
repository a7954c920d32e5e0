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
    value = evaluation.ndcg([(1, "b"), (2, "c"), (3, "a")], judged)
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
    assert "nDCG@10: " in result.stdout
    # a depth-3 run: Recall@50/100/1000 would be Recall@3 under another name, so they are left out
    for name in ("Recall@50", "Recall@100", "Recall@1000"):
        assert name not in result.stdout
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].endswith("rank.txt ranks 2 of the 3 queries in " + str(small_files / "qrels.tsv")
                                + "; the other 1 count as 0 in every average")
    assert warnings[1].endswith("rank.txt ranks passages only down to rank 3; leaving out Recall@50, Recall@100, "
                                "Recall@1000 (deeper than the run)")
    metrics = json.loads((small_files / "metrics.json").read_text())
    assert metrics["MRR@10"] == pytest.approx(0.5) and metrics["QueriesInQrels"] == 3
    assert metrics["RunFormat"] == "score" and metrics["RunDepth"] == 3
    assert not [key for key in metrics if key.startswith("Recall@")]


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


# --------------------------------------------------------------------------- parity of the command lines
def test_cli_on_every_run_format_agrees_with_ir_measures(scifact_runs, tmp_path, capsys):
    """The ranking file, its .marco (ranks) and .trec conversions evaluated by the command line: all
    equal ir_measures on the same ranking, with every metric (the run is 1000 deep)."""
    qrels, _, run = scifact_runs
    write_qrels(tmp_path / "qrels.tsv", qrels)
    write_ranking(tmp_path / "rank.txt", [(qid, sorted(hits.items(), key=lambda h: -h[1])) for qid, hits in run.items()])
    evaluation.convert_ranking(tmp_path / "rank.txt", trec=True)
    theirs = ir_measures_per_query(qrels, run)
    expected = {name: sum(values[their] for values in theirs.values()) / len(qrels)
                for name, their in IR_MEASURES_NAMES.items()}
    for name, run_format in (("rank.txt", "score"), ("rank.txt.marco", "rank"), ("rank.txt.trec", "trec")):
        out = tmp_path / f"{name}.json"
        assert evaluation.main([str(tmp_path / "qrels.tsv"), str(tmp_path / name), "--json", str(out)]) == 0
        metrics = json.loads(out.read_text())
        assert metrics["RunFormat"] == run_format and metrics["RunDepth"] == RUN_DEPTH
        for metric, value in expected.items():
            assert metrics[metric] == pytest.approx(value, abs=1e-6), (name, metric)
    capsys.readouterr()
    script = run_cli(str(EVAL_SCRIPT), str(tmp_path / "qrels.tsv"), str(tmp_path / "rank.txt.marco"))
    assert script.returncode == 0 and f"MRR @10: {expected['MRR@10']:.4f}" in script.stdout, script.stderr
    assert f"Recall@1000: {expected['Recall@1000']:.4f}" in script.stdout and "WARNING" not in script.stderr


# --------------------------------------------------------------------------- MS MARCO ranks as given
def test_marco_ranks_count_as_given_like_the_official_script():
    """The official ms_marco_eval.py puts the passage of rank r in slot r-1 and scores slots 0-9: a first
    relevant passage at rank 5 is worth 1/5 however many lines precede it, and rank 11 is outside."""
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"x": -5.0, "a": -6.0},           # ranks start at 5: the relevant passage sits at rank 6
           "q2": {"b": -11.0},                      # one line, but at rank 11: outside MRR@10
           "q3": {"c": -2.0, "y": -1.0}}
    given = evaluation.evaluate(qrels, run, given_ranks=True)
    assert given["MRR@10"] == pytest.approx((1 / 6 + 0 + 1 / 2) / 3)
    assert given["nDCG@10"] == pytest.approx((1 / math.log2(7) + 0 + 1 / math.log2(3)) / 3)
    assert given["Recall@50"] == pytest.approx(1.0)
    as_positions = evaluation.evaluate(qrels, run)  # what ignoring the ranks would give
    assert as_positions["MRR@10"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert evaluation.run_depth(run, given_ranks=True) == 11 and evaluation.run_depth(run) == 2


def test_marco_ranks_from_file_at_the_command_line(tmp_path, capsys):
    write_qrels(tmp_path / "qrels.tsv", {"q1": {"a": 1}})
    (tmp_path / "run.tsv").write_text("q1\tx\t5\nq1\ta\t6\n")
    assert evaluation.main([str(tmp_path / "qrels.tsv"), str(tmp_path / "run.tsv")]) == 2
    assert "pass --run_format rank or --run_format score" in capsys.readouterr().err
    assert evaluation.main([str(tmp_path / "qrels.tsv"), str(tmp_path / "run.tsv"), "--run_format", "rank",
                            "--json", str(tmp_path / "m.json")]) == 0
    assert "MRR @10: 0.1667" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["RunFormat"] == "rank"
    assert evaluation.main([str(tmp_path / "qrels.tsv"), str(tmp_path / "run.tsv"), "--run_format", "score"]) == 0
    assert "MRR @10: 1.0000" in capsys.readouterr().out      # 6 is the higher score


# --------------------------------------------------------------------------- run formats by content
def read_text_run(tmp_path, text: str, name: str = "run.txt", kind: str = "auto"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    from tevatron.text_formats import read_run_with_format
    return read_run_with_format(tmp_path / name, kind)


@pytest.mark.parametrize("name", ["run.tsv", "run.marco", "run"])
def test_run_format_is_decided_by_content_not_name(tmp_path, name):
    ranks = "q\tp1\t1\nr\tp9\t1\nq\tp2\t2\n"                       # interleaved queries are fine
    assert read_text_run(tmp_path, ranks, name) == ({"q": {"p1": -1.0, "p2": -2.0}, "r": {"p9": -1.0}}, "rank")
    scores = "q\tp1\t2.5\nq\tp2\t3\n"
    assert read_text_run(tmp_path, scores, name) == ({"q": {"p1": 2.5, "p2": 3.0}}, "score")
    float_ranks = "q\tp1\t1.0\nq\tp2\t2.0\n"                       # not integers: scores (p2 is better)
    assert read_text_run(tmp_path, float_ranks, name)[1] == "score"
    trec = "q Q0 p1 1 2.5 t\nq Q0 p2 2 1e-3 t\n"
    assert read_text_run(tmp_path, trec, name) == ({"q": {"p1": 2.5, "p2": 0.001}}, "trec")


@pytest.mark.parametrize("text, line, detail", [
    ("q\tp1\t5\nq\tp2\t6\n", 1, "query q's value number 1 is 5"),    # ranks from 5, or ascending scores?
    ("q\tp1\t1\nq\tp2\t3\n", 2, "query q's value number 2 is 3"),
    ("q\tp1\t9\nq\tp2\t8\nr\tp1\t1\n", 1, "query q's value number 1 is 9"),
    ("q\tp1\t1\nq\tp2\t1\n", 2, "query q's value number 2 is 1"),
    ("q\tp1\t0\n", 1, "query q's value number 1 is 0"),
])
def test_all_integer_runs_that_are_not_ranks_1_2_3_are_ambiguous(tmp_path, text, line, detail):
    with pytest.raises(InputError) as caught:
        read_text_run(tmp_path, text)
    assert str(caught.value) == (f"{tmp_path / 'run.txt'}:{line}: ambiguous run: the third column holds only "
                                 f"integers, but not ranks 1, 2, 3... per query ({detail}); pass --run_format rank "
                                 "or --run_format score")
    assert read_text_run(tmp_path, text, kind="score")[1] == "score"     # an explicit format is taken


def test_explicit_formats(tmp_path):
    assert read_text_run(tmp_path, "q\tp1\t1\nq\tp2\t2\n", kind="score")[0] == {"q": {"p1": 1.0, "p2": 2.0}}
    assert read_text_run(tmp_path, "q\tp1\t7\nq\tp2\t5\n", kind="rank")[0] == {"q": {"p1": -7.0, "p2": -5.0}}
    assert read_text_run(tmp_path, "q Q0 p1 1 2 t\n", kind="trec")[0] == {"q": {"p1": 2.0}}


@pytest.mark.parametrize("text, kind, message", [
    ("q\tp1\t1\nq\tp2\t2.5\n", "rank", "run.txt:2: rank '2.5' is not a positive integer (of at most 18 digits)"),
    ("q\tp1\t0\n", "rank", "run.txt:1: rank '0' is not a positive integer (of at most 18 digits)"),
    ("q\tp1\t" + "9" * 5000 + "\n", "rank",
     "run.txt:1: rank '" + "9" * 5000 + "' is not a positive integer (of at most 18 digits)"),
    ("q\tp1\t1\nr\tp1\t1\nq\tp2\t1\n", "rank", "run.txt:3: rank 1 given twice for query q (first on line 1)"),
    ("q Q0 p1 1 2.0 t\nq\tp2\t1.5\n", "auto", "run.txt:2: run line must have 6 columns, found 3"),
    ("q\tp1\t1.5\nq Q0 p2 1 2.0 t\n", "auto", "run.txt:2: run line must have 3 columns, found 6"),
    ("q\tp1\t1.5\nq\tp2\tnan\n", "auto", "run.txt:2: score 'nan' is not a finite number"),
    ("q\tp1\tinf\n", "score", "run.txt:1: score 'inf' is not a finite number"),
    ("q\tp1\t-Infinity\n", "auto", "run.txt:1: score '-Infinity' is not a finite number"),
    ("q\tp1\t1e999\n", "auto", "run.txt:1: score '1e999' is not a finite number"),
    ("q Q0 p1 1 NaN t\n", "trec", "run.txt:1: score 'NaN' is not a finite number"),
    ("q Q0 p1 1 nan t\n", "auto", "run.txt:1: score 'nan' is not a finite number"),
    ("\tp1\t1.5\n", "auto", "run.txt:1: empty query or passage id"),
])
def test_bad_run_lines(tmp_path, text, kind, message):
    with pytest.raises(InputError) as caught:
        read_text_run(tmp_path, text, kind=kind)
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_qrels_relevance_must_be_a_finite_integer(tmp_path):
    for value, problem in (("nan", "is not a finite number"), ("inf", "is not a finite number"),
                           ("-inf", "is not a finite number"), ("0.5", "is not an integer")):
        (tmp_path / "qrels.tsv").write_text(f"q\t0\tp\t1\nq\t0\tr\t{value}\n")
        with pytest.raises(InputError, match=rf"qrels.tsv:2: relevance '{re.escape(value)}' {problem}$"):
            read_qrels(tmp_path / "qrels.tsv")
    (tmp_path / "qrels.tsv").write_text("q\t0\tp\t2.0\n")
    assert read_qrels(tmp_path / "qrels.tsv") == {"q": {"p": 2}}


# --------------------------------------------------------------------------- empty, disjoint, partial, shallow runs
@pytest.mark.parametrize("run_text, message", [
    ("", "run.tsv: empty run: it ranks no query (2 queries in {qrels})"),
    ("\n  \n", "run.tsv: empty run: it ranks no query (2 queries in {qrels})"),
    ("q7\tp1\t1.5\nq8\tp1\t1.5\n", "run.tsv: none of the run's 2 queries is in {qrels} (2 queries); wrong qrels or "
                                   "wrong query set?"),
])
def test_empty_or_disjoint_run_is_an_error(tmp_path, capsys, run_text, message):
    write_qrels(tmp_path / "qrels.tsv", {"q1": {"p1": 1}, "q2": {"p2": 1}})
    (tmp_path / "run.tsv").write_text(run_text)
    status = evaluation.main([str(tmp_path / "qrels.tsv"), str(tmp_path / "run.tsv"), "--json", str(tmp_path / "m.json")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.strip() == f"error: {tmp_path}/" + message.format(qrels=tmp_path / "qrels.tsv")
    assert not (tmp_path / "m.json").exists()


def test_supported_metrics_follow_the_run_depth():
    assert evaluation.supported_metrics(1000) == evaluation.METRIC_NAMES
    assert evaluation.supported_metrics(999) == ("MRR@10", "Recall@50", "Recall@100", "nDCG@10")
    assert evaluation.supported_metrics(50) == ("MRR@10", "Recall@50", "nDCG@10")
    assert evaluation.supported_metrics(10) == ("MRR@10", "nDCG@10")
    assert evaluation.evaluate({"q": {"a": 1}}, {"q": {"a": 1.0}}, names=("MRR@10",)) == {"MRR@10": 1.0}


# --------------------------------------------------------------------------- writers never write what cannot be read back
@pytest.mark.parametrize("writer", ["ranking", "marco", "trec"])
@pytest.mark.parametrize("bad_id", ["a\tb", "a\nb", "a\rb", " a", "a ", "", "\ufeffa"])
def test_writers_refuse_ids_that_would_not_read_back(tmp_path, writer, bad_id):
    from tevatron.text_formats import write_marco_run, write_trec_run
    write = {"ranking": write_ranking, "marco": write_marco_run, "trec": write_trec_run}[writer]
    for ranking in ([("q1", [("p1", 1.5)]), (bad_id, [("p1", 1.0)])], [("q1", [("p1", 1.5), (bad_id, 1.0)])]):
        with pytest.raises(InputError, match=r"^.*/out: cannot write (query|passage) id .*could not be read back$"):
            write(tmp_path / "out", ranking)
        assert list(tmp_path.iterdir()) == []


def test_trec_writer_refuses_inner_whitespace_and_non_finite_scores(tmp_path):
    from tevatron.text_formats import write_trec_run
    with pytest.raises(InputError, match="cannot write passage id 'p 1': it contains whitespace"):
        write_trec_run(tmp_path / "out", [("q", [("p 1", 1.0)])])
    with pytest.raises(InputError, match="cannot write score nan for query q: not a finite number"):
        write_trec_run(tmp_path / "out", [("q", [("p", float("nan"))])])
    write_marco_run_ok = tmp_path / "ok"
    from tevatron.text_formats import write_marco_run
    write_marco_run(write_marco_run_ok, [("q", [("p 1", 1.0)])])     # tabs separate MS MARCO columns
    assert read_run(write_marco_run_ok) == {"q": {"p 1": -1.0}}
    assert list(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_ranking_scores_are_never_read_as_ranks(tmp_path):
    """Integral float scores get a decimal point, so a ranking with scores 1.0, 2.0 stays a score run."""
    write_ranking(tmp_path / "r.tsv", [("q", [("a", 1.0), ("b", 2.0), ("c", 3)]), ("r", [("a", 1e20)])])
    assert (tmp_path / "r.tsv").read_text().splitlines() == ["q\ta\t1.0", "q\tb\t2.0", "q\tc\t3.0", "r\ta\t1e+20"]
    assert read_run(tmp_path / "r.tsv") == {"q": {"a": 1.0, "b": 2.0, "c": 3.0}, "r": {"a": 1e20}}
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InputError, match=r"r2.tsv: cannot write score .*: not a finite number"):
            write_ranking(tmp_path / "r2.tsv", [("q", [("a", bad)])])
        assert not (tmp_path / "r2.tsv").exists()


def test_score_to_marco_refuses_whitespace_ids_for_trec_and_writes_nothing(tmp_path):
    (tmp_path / "r.txt").write_text("q1\tp1\t2.0\nq 2\tp1\t1.0\n")
    with pytest.raises(InputError) as caught:
        evaluation.convert_ranking(tmp_path / "r.txt", trec=True)
    assert str(caught.value) == f"{tmp_path}/r.txt:2: query id 'q 2' contains whitespace, which a TREC run cannot hold"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
    evaluation.convert_ranking(tmp_path / "r.txt")                   # without --trec the id is fine
    assert read_run(tmp_path / "r.txt.marco") == {"q1": {"p1": -1.0}, "q 2": {"p1": -1.0}}


@pytest.mark.parametrize("content, message", [
    ("q\tp1\t1\nq\tp2\t2\n", "r.txt: holds MS MARCO ranks (1, 2, 3... per query), not scores; give the "
                              "qid<TAB>pid<TAB>score ranking"),
    ("q\tp1\t1.5\nq\tp2\t-inf\n", "r.txt:2: score '-inf' is not a finite number"),
    ("", "r.txt: empty ranking: no qid<TAB>pid<TAB>score lines"),
])
def test_score_to_marco_refuses_ranks_non_finite_scores_and_empty_input(tmp_path, content, message):
    (tmp_path / "r.txt").write_text(content)
    with pytest.raises(InputError) as caught:
        evaluation.convert_ranking(tmp_path / "r.txt", trec=True)
    assert str(caught.value) == f"{tmp_path}/{message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]
