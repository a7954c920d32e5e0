"""Never reuse a stale output: every stage that skips finished work redoes it when the model, an input or
a result-changing argument changed since its output was written (saying what changed, in one line),
and skips it when nothing did."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert
from helpers import run_module, toy_corpus, write_jsonl
from test_preprocess import TOKENIZER, make_beir, make_marco, marco_data, write_ranking_file  # noqa: F401 (fixture)
from tevatron import provenance
from tevatron.driver import encode
from tevatron.faiss_retriever import reducer, retriever
from tevatron.files import InputError
from tevatron.preprocess import bm25, build_train, build_train_hn, layout, tokenize
from tevatron.preprocess.build_train import TrainSetOptions
from tevatron.tensor_files import encodings_provenance, load_encodings, load_shard_ranking, save_encodings
from tevatron.text_formats import read_run, write_qrels, write_tsv


def touch_later(path: Path) -> None:
    """Give ``path`` a later modification time, as rewriting it would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def change_content(path: Path) -> None:
    """Rewrite text file ``path`` with other content of the same size (its lines reversed), as a real
    change of an input would; a later time too, as the file system's clock may not have moved."""
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(set(lines)) > 1 and lines[-1].endswith(b"\n")
    path.write_bytes(b"".join(reversed(lines)))
    touch_later(path)


def copy_in_place(path: Path) -> None:
    """Rewrite ``path`` with the very same bytes and a new time, as ``cp`` or a re-download would."""
    path.write_bytes(path.read_bytes())
    touch_later(path)


def stamp(output: Path) -> int:
    """When ``output`` was last written (a folder: its ``.complete`` record)."""
    return (output / provenance.RECORD_FILE if output.is_dir() else output).stat().st_mtime_ns


def rerun(caplog, output: Path, action) -> str:
    """Run ``action`` over an existing ``output``: ``"skipped"`` or ``"redone"``, checked against the one
    decision line in the log."""
    before = stamp(output)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        action()
    decisions = [r.getMessage() for r in caplog.records if r.name == "tevatron.provenance" and str(output) in
                 r.getMessage() and re.search(r"is up to date|changed since|--overwrite given|no provenance record|"
                                              r"not a readable", r.getMessage())]
    assert len(decisions) == 1, decisions
    redone = stamp(output) != before
    assert ("is up to date" in decisions[0]) == (not redone), decisions[0]
    return "redone" if redone else "skipped"


# --------------------------------------------------------------------------- the mechanism
def test_records_compare_as_they_read_back_and_name_what_changed(caplog):
    wanted = {"model": {"fingerprint": "b"}, "inputs": ({"path": "/x", "mtime_ns": 2},), "depth": 10}
    recorded = json.loads(json.dumps({**wanted, "model": {"fingerprint": "a"}}))
    assert provenance.normalized(wanted)["inputs"] == [{"path": "/x", "mtime_ns": 2}]
    with caplog.at_level(logging.INFO):
        assert provenance.reuse_decision("out.pt", provenance.normalized(wanted), wanted)
        assert not provenance.reuse_decision("out.pt", recorded, wanted, redo="re-encoding")
    assert 'model changed since out.pt was written; re-encoding (model.fingerprint: "a" -> "b")' in caplog.text
    moved = {**wanted, "inputs": [{"path": "/x", "mtime_ns": 3}]}
    assert provenance.differences(wanted, moved) == ["inputs.0.mtime_ns: 2 -> 3"]


def test_file_records_describe_only_the_file_they_were_written_for(tmp_path, caplog):
    output = tmp_path / "out.tsv"
    assert not provenance.up_to_date(output, {"a": 1}, provenance.read_file_record)  # nothing there yet
    assert caplog.text == ""
    output.write_text("x\n")
    assert provenance.read_file_record(output) is None
    provenance.write_file_record(output, {"a": 1})
    assert provenance.file_record_path(output).name == ".out.tsv.provenance.json"
    assert provenance.read_file_record(output) == {"a": 1}
    assert provenance.up_to_date(output, {"a": 1}, provenance.read_file_record)
    assert not provenance.up_to_date(output, {"a": 1}, provenance.read_file_record, overwrite=True)
    output.write_text("rewritten by something else\n")
    touch_later(output)
    with pytest.raises(InputError, match="modified after its provenance record was written"):
        provenance.read_file_record(output)
    assert not provenance.up_to_date(output, {"a": 1}, provenance.read_file_record)


def test_model_identity_changes_when_a_model_is_saved_again(tmp_path):
    model = make_tiny_bert(tmp_path / "model")
    first = provenance.model_identity(model)
    assert provenance.model_identity(model) == first
    make_tiny_bert(tmp_path / "model", seed=1)
    assert provenance.model_identity(model) != first
    (model / "tevatron_config.json").write_text(json.dumps({"pooling": "cls", "fingerprint": "f1"}))
    assert provenance.model_identity(model) == {"fingerprint": "f1"}
    assert provenance.model_identity("bert-base-uncased") == {"name": "bert-base-uncased"}


def test_folder_outputs_resume_only_a_run_from_the_same_record(tmp_path):
    folder = tmp_path / "out"
    assert provenance.begin_folder_output(folder, {"a": 1}, "split*.json") == []
    (folder / "split00.json").write_text("{}\n")         # an interrupted run left one finished split
    assert provenance.begin_folder_output(folder, {"a": 1}, "split*.json") == [folder / "split00.json"]
    assert provenance.begin_folder_output(folder, {"a": 2}, "split*.json") == []   # other inputs: removed
    assert not (folder / "split00.json").exists()
    provenance.finish_folder_output(folder, {"a": 2}, {"splits": 0})
    assert provenance.read_folder_record(folder) == {"provenance": {"a": 2}, "stats": {"splits": 0}}
    assert not (folder / provenance.STARTED_FILE).exists()
    assert provenance.folder_up_to_date(folder, {"a": 2}) and not provenance.folder_up_to_date(folder, {"a": 3})
    (folder / provenance.RECORD_FILE).write_text("")     # an empty marker (older versions, shell touch)
    assert not provenance.folder_up_to_date(folder, {"a": 2})


# --------------------------------------------------------------------------- content digests
def made_from(tmp_path, content: bytes = b"a\tb\nc\td\n") -> tuple:
    """An input, an output with a sidecar record naming it, and the output's up-to-date check."""
    source, output = tmp_path / "in.tsv", tmp_path / "out.tsv"
    source.write_bytes(content)
    output.write_text("made\n")

    def check() -> bool:
        return provenance.up_to_date(output, {"inputs": [provenance.file_identity(source)], "depth": 3},
                                     provenance.read_file_record)

    provenance.write_file_record(output, {"inputs": [provenance.file_identity(source)], "depth": 3})
    return source, output, check


def sidecar(output: Path) -> dict:
    return json.loads(provenance.file_record_path(output).read_text())


def content_unchanged_line(source: Path) -> str:
    return f"{source.resolve()}: modification time changed, content unchanged (sha256); treated as the same input"


def test_an_input_rewritten_with_the_same_content_is_the_same_input(tmp_path, caplog):
    source, output, check = made_from(tmp_path)
    assert sidecar(output)["provenance"]["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    before = (output.stat().st_mtime_ns, sidecar(output)["output"])
    copy_in_place(source)
    with caplog.at_level(logging.INFO):
        assert check()
    assert content_unchanged_line(source) in caplog.messages and "is up to date" in caplog.text
    assert (output.stat().st_mtime_ns, sidecar(output)["output"]) == before and output.read_text() == "made\n"
    # The record now holds the new time: the next check is a stat again, no hashing and no such line.
    assert sidecar(output)["provenance"]["inputs"][0]["mtime_ns"] == source.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert check()
    assert content_unchanged_line(source) not in caplog.messages


def test_an_input_with_other_content_of_the_same_size_is_a_change(tmp_path, caplog):
    source, output, check = made_from(tmp_path)
    assert "sha256" in sidecar(output)["provenance"]["inputs"][0]   # redone for the digest, not for its absence
    change_content(source)
    with caplog.at_level(logging.INFO):
        assert not check()
    assert "inputs changed since" in caplog.text and "inputs.0.mtime_ns:" in caplog.text
    assert "content unchanged" not in caplog.text and "sha256" not in caplog.text


def test_an_input_changed_during_the_stage_is_recorded_without_digest(tmp_path):
    source, steady, output = tmp_path / "in.tsv", tmp_path / "steady.tsv", tmp_path / "out.tsv"
    source.write_text("a\tb\nc\td\n")
    steady.write_text("e\tf\n")
    wanted = {"inputs": [provenance.file_identity(source), provenance.file_identity(steady)]}  # before the work
    copy_in_place(source)                                        # ... during which one input is rewritten
    output.write_text("made\n")
    provenance.write_file_record(output, wanted)
    recorded = sidecar(output)["provenance"]["inputs"]
    assert "sha256" not in recorded[0] and "sha256" in recorded[1]
    assert not provenance.up_to_date(output, {"inputs": [provenance.file_identity(source),
                                                         provenance.file_identity(steady)]},
                                     provenance.read_file_record)


def test_records_of_older_versions_gain_digests_at_the_next_up_to_date_check(tmp_path, caplog):
    source, output, check = made_from(tmp_path)
    old = sidecar(output)
    del old["provenance"]["inputs"][0]["sha256"]                 # as the previous version wrote it
    provenance.file_record_path(output).write_text(json.dumps(old))
    output_before = (output.read_bytes(), output.stat().st_mtime_ns)
    assert check()
    assert sidecar(output)["provenance"]["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert sidecar(output)["output"] == old["output"] and (output.read_bytes(), output.stat().st_mtime_ns) == \
        output_before
    # Without a recorded digest a new time is a change, as before.
    provenance.file_record_path(output).write_text(json.dumps(old))
    copy_in_place(source)
    with caplog.at_level(logging.INFO):
        assert not check()
    assert "inputs changed since" in caplog.text


def test_folder_records_and_resumes_follow_the_content(tmp_path, caplog):
    source = tmp_path / "in.tsv"
    source.write_text("a\tb\nc\td\n")
    folder = tmp_path / "out"

    def wanted():
        return {"input": provenance.file_identity(source), "n": 2}

    assert provenance.begin_folder_output(folder, wanted(), "split*.json") == []
    assert "sha256" in json.loads((folder / provenance.STARTED_FILE).read_text())["provenance"]["input"]
    (folder / "split00.json").write_text("{}\n")
    copy_in_place(source)                                          # re-provisioned while interrupted
    assert provenance.begin_folder_output(folder, wanted(), "split*.json") == [folder / "split00.json"]
    provenance.finish_folder_output(folder, wanted(), {"splits": 1})
    copy_in_place(source)
    with caplog.at_level(logging.INFO):
        assert provenance.folder_up_to_date(folder, wanted())
    assert content_unchanged_line(source) in caplog.messages
    record = provenance.read_folder_record(folder)
    assert record["stats"] == {"splits": 1} and record["provenance"]["input"]["mtime_ns"] == source.stat().st_mtime_ns
    change_content(source)
    assert not provenance.folder_up_to_date(folder, wanted())


def test_a_checkpoint_of_a_run_on_copied_data_is_resumed(tmp_path):
    from tevatron.trainer import checkpoint_to_resume, mark_checkpoint_complete

    data = tmp_path / "train.jsonl"
    data.write_text('{"query": [1]}\n{"query": [2]}\n')

    def wanted():
        return {"training data": {"files": [provenance.file_identity(data)]}, "learning_rate": 0.001}

    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    mark_checkpoint_complete(checkpoint, 2, wanted())
    copy_in_place(data)
    assert checkpoint_to_resume(str(tmp_path / "out"), wanted()) == str(checkpoint)
    change_content(data)
    with pytest.raises(InputError, match=r"interrupted run with other inputs \(training data changed\)"):
        checkpoint_to_resume(str(tmp_path / "out"), wanted())


def test_digests_never_make_records_differ():
    identity = {"path": "/nowhere/x", "bytes": 3, "mtime_ns": 5}
    recorded = {"inputs": [{**identity, "sha256": "ab"}], "made_from": {"file": {**identity, "sha256": "cd"}}}
    assert provenance.same_record(recorded, {"inputs": [identity], "made_from": {"file": identity}})
    moved = {**identity, "mtime_ns": 6}
    assert provenance.same_record(recorded["made_from"], {"file": {**moved, "sha256": "cd"}})  # both carry one
    assert not provenance.same_record(recorded["made_from"], {"file": {**moved, "sha256": "ef"}})
    assert not provenance.same_record(recorded, {"inputs": [moved], "made_from": {"file": identity}})


# --------------------------------------------------------------------------- encoding
def encode_argv(model, in_path: Path, output: Path, *extra) -> list[str]:
    return ["--output_dir", str(output.parent), "--model_name_or_path", str(model), "--encode_in_path", str(in_path),
            "--encoded_save_path", str(output), "--p_max_len", "64", "--q_max_len", "16",
            "--per_device_eval_batch_size", "16", *map(str, extra)]


ENCODE_CHANGES = [  # (first run's extra flags, second run's extra flags, outcome)
    ((), (), "skipped"),
    ((), ("--pooling", "mean"), "redone"),
    ((), ("--normalize",), "redone"),
    ((), ("--p_max_len", 32), "redone"),
    ((), ("--q_max_len", 8), "skipped"),                     # passages never use the query length
    (("--encode_is_qry",), ("--encode_is_qry", "--q_max_len", 8), "redone"),
    (("--encode_is_qry",), ("--encode_is_qry", "--p_max_len", 32), "skipped"),
    ((), ("--encode_is_qry",), "redone"),
    ((), ("--encode_num_shard", 2), "redone"),
    (("--encode_num_shard", 2), ("--encode_num_shard", 2, "--encode_shard_index", 1), "redone"),
    ((), ("--tokenizer_name", TOKENIZER), "redone"),
    (("--p_max_len", 160), ("--p_max_len", 400), "skipped"),  # both cut to the model's 160 positions
    ((), ("--per_device_eval_batch_size", 3), "skipped"),
    ((), ("--temperature", 0.05), "skipped"),                 # scales training similarities, not vectors
    ((), ("--fp16",), "redone" if torch.cuda.is_available() else "skipped"),  # fp32 on CPU either way
    ((), ("--overwrite",), "redone"),
    ((), ("--encode_dtype", "float16"), "redone"),            # a float32 file is not a float16 one
    (("--encode_dtype", "float16"), ("--encode_dtype", "float32"), "redone"),
    ((), ("--encode_dtype", "float32"), "skipped"),           # the default, recorded as before
]


@pytest.mark.parametrize("first, second, expected", ENCODE_CHANGES,
                         ids=[" ".join(map(str, second)) or "unchanged" for _, second, _ in ENCODE_CHANGES])
def test_encoding_is_redone_exactly_when_a_result_changing_argument_changed(tiny_bert_dir, tmp_path, caplog,
                                                                            first, second, expected):
    in_path = write_jsonl(tmp_path / "corpus.json", toy_corpus(12, max_len=40))
    output = tmp_path / "enc" / "p.pt"
    assert encode.main(encode_argv(tiny_bert_dir, in_path, output, *first)) == 0
    assert rerun(caplog, output, lambda: encode.main(encode_argv(tiny_bert_dir, in_path, output, *second))) == expected


def test_encoding_is_redone_when_the_model_or_the_input_changed(tiny_bert_dir, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    in_path = write_jsonl(tmp_path / "corpus.json", toy_corpus(12, max_len=40))
    output = tmp_path / "enc" / "p.pt"

    def run(model_dir=model):
        assert encode.main(encode_argv(model_dir, in_path, output)) == 0

    run()
    old_reps = load_encodings(output)[0]
    make_tiny_bert(model, seed=1)                          # retrained into the same folder
    assert rerun(caplog, output, run) == "redone"
    assert "model changed since" in caplog.text and "re-encoding" in caplog.text
    assert not torch.allclose(load_encodings(output)[0], old_reps)
    assert rerun(caplog, output, run) == "skipped"
    assert rerun(caplog, output, lambda: run(tiny_bert_dir)) == "redone"      # another model folder
    write_jsonl(in_path, toy_corpus(12, max_len=40, seed=5))
    assert rerun(caplog, output, lambda: run(tiny_bert_dir)) == "redone"
    assert "inputs changed since" in caplog.text
    record = encodings_provenance(output)
    assert record["inputs"] == [provenance.with_digests(provenance.file_identity(in_path))]
    assert record["side"] == "passage"


# --------------------------------------------------------------------------- search and reduction
@pytest.fixture()
def encodings(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    paths = {"queries": tmp_path / "q.pt", "shards": [tmp_path / "corpus.0.pt", tmp_path / "corpus.1.pt"]}
    save_encodings(paths["queries"], rng.standard_normal((7, 8)), [f"q{i}" for i in range(7)], {"model": "A"})
    for number, shard in enumerate(paths["shards"]):
        save_encodings(shard, rng.standard_normal((40, 8)), [f"p{number}-{i}" for i in range(40)], {"model": "A"})
    return paths


def search(queries, passages, output, *extra) -> None:
    assert retriever.main(["--query_reps", str(queries), "--passage_reps", str(passages), "--save_ranking_to",
                           str(output), "--quiet", *map(str, extra)]) == 0


@pytest.mark.parametrize("save_text", [False, True])
def test_search_into_a_shallower_output_gives_the_new_depth(encodings, tmp_path, caplog, save_text):
    output = tmp_path / ("rank.tsv" if save_text else "rank.pt")
    text = ("--save_text",) if save_text else ()
    search(encodings["queries"], encodings["shards"][0], output, "--depth", 10, *text)
    assert rerun(caplog, output, lambda: search(encodings["queries"], encodings["shards"][0], output,
                                                "--depth", 1000, *text)) == "redone"
    assert "depth changed since" in caplog.text
    if save_text:
        assert {len(hits) for hits in read_run(output).values()} == {40}
    else:
        assert load_shard_ranking(output)["indices"].shape == (7, 40)


@pytest.mark.parametrize("change, expected", [
    ("nothing", "skipped"), ("query encodings", "redone"), ("passage encodings", "redone"),
    ("backend", "skipped"), ("batch size", "skipped"), ("empty file", "redone"), ("overwrite", "redone")])
def test_search_is_redone_when_an_input_or_argument_changed(encodings, tmp_path, caplog, change, expected):
    output = tmp_path / "scores" / "corpus.0.rank.pt"
    passages = tmp_path / "corpus.*.pt"
    search(encodings["queries"], passages, output, "--depth", 5)
    extra = ()
    if change == "query encodings":     # re-encoded with another model: same ids, other vectors
        save_encodings(encodings["queries"], torch.ones(7, 8), [f"q{i}" for i in range(7)], {"model": "B"})
    elif change == "passage encodings":
        save_encodings(encodings["shards"][1], torch.ones(40, 8), [f"p1-{i}" for i in range(40)], {"model": "A"})
    elif change == "backend":  # both backends give the same ranking: recorded as "exact", not by name
        extra = ("--backend", "faiss")
    elif change == "batch size":
        extra = ("--batch_size", 2)
    elif change == "empty file":
        output.write_bytes(b"")
    elif change == "overwrite":
        extra = ("--overwrite",)
    assert rerun(caplog, output, lambda: search(encodings["queries"], passages, output, "--depth", 5,
                                                *extra)) == expected
    record = load_shard_ranking(output)["provenance"]
    assert record["queries"]["file"] == provenance.with_digests(provenance.file_identity(encodings["queries"]))
    assert [shard["file"]["path"] for shard in record["passages"]] == [str(p.resolve()) for p in encodings["shards"]]


def test_search_warns_when_queries_and_passages_come_from_different_models(encodings, tmp_path, caplog):
    save_encodings(encodings["queries"], torch.ones(7, 8), [f"q{i}" for i in range(7)], {"model": "B"})
    with caplog.at_level(logging.WARNING):
        search(encodings["queries"], encodings["shards"][0], tmp_path / "rank.pt")
    assert "is one of them stale?" in caplog.text


def test_reduction_is_redone_when_a_shard_changed_and_refuses_stale_shards(encodings, tmp_path, caplog):
    score_dir = tmp_path / "scores"
    for shard in encodings["shards"]:
        search(encodings["queries"], shard, score_dir / f"{shard.stem}.rank.pt", "--depth", 5)
    output = tmp_path / "rank.tsv"

    def reduce(*extra):
        assert reducer.main(["--score_dir", str(score_dir), "--query", str(encodings["queries"]),
                             "--save_ranking_to", str(output), *map(str, extra)]) == 0

    reduce()
    assert rerun(caplog, output, reduce) == "skipped"
    assert rerun(caplog, output, lambda: reduce("--depth", 3)) == "redone"
    assert {len(hits) for hits in read_run(output).values()} == {3}
    # Searched again to the same result (same bytes, new time): still the same shard.
    search(encodings["queries"], encodings["shards"][1], score_dir / "corpus.1.rank.pt", "--depth", 5, "--overwrite")
    assert rerun(caplog, output, lambda: reduce("--depth", 3)) == "skipped"
    search(encodings["queries"], encodings["shards"][1], score_dir / "corpus.1.rank.pt", "--depth", 4)
    assert rerun(caplog, output, lambda: reduce("--depth", 3)) == "redone"
    # Queries re-encoded, but only shard 0 searched again: merging would mix two query encodings.
    save_encodings(encodings["queries"], torch.ones(7, 8), [f"q{i}" for i in range(7)], {"model": "B"})
    search(encodings["queries"], encodings["shards"][0], score_dir / "corpus.0.rank.pt", "--depth", 5)
    with pytest.raises(InputError, match="corpus.1.rank.pt: searched with query encodings made from other inputs"):
        reducer.run_reduce(reducer.ReduceArguments(str(score_dir), str(encodings["queries"]), str(output)))


# --------------------------------------------------------------------------- tokenization
def test_tokenized_queries_are_redone_when_tokenizer_length_or_input_changed(tiny_bert_dir, tmp_path, caplog):
    queries = tmp_path / "q.tsv"
    write_tsv(queries, [("a", "hello world again and again"), ("b", "another query")])
    output = tmp_path / "query" / "q.json"

    def run(tokenizer=TOKENIZER, *extra):
        assert tokenize.queries_main(["--tokenizer_name", str(tokenizer), "--query_file", str(queries),
                                      "--save_to", str(output), "--q_max_len", "8", *extra]) == 0

    run()
    assert rerun(caplog, output, run) == "skipped"
    assert rerun(caplog, output, lambda: run(TOKENIZER, "--q_max_len", "2")) == "redone"
    assert all(len(json.loads(line)["text"]) <= 2 for line in output.open())
    assert rerun(caplog, output, lambda: run(TOKENIZER, "--q_max_len", "2")) == "skipped"
    assert rerun(caplog, output, lambda: run(tiny_bert_dir, "--q_max_len", "2")) == "redone"
    change_content(queries)
    assert rerun(caplog, output, lambda: run(tiny_bert_dir, "--q_max_len", "2")) == "redone"
    assert rerun(caplog, output, lambda: run(tiny_bert_dir, "--q_max_len", "2", "--overwrite")) == "redone"


@pytest.mark.parametrize("change", ["p_max_len", "n_splits", "corpus", "tokenizer", "overwrite"])
def test_tokenized_passages_are_redone_when_an_input_or_argument_changed(tiny_bert_dir, tmp_path, caplog, change):
    corpus = tmp_path / "corpus.tsv"
    write_tsv(corpus, [(f"p{i}", f"T{i}", f"text number {i} " * (i % 7 + 1)) for i in range(9)])
    out = tmp_path / "corpus"
    arguments = {"n_splits": 3, "p_max_len": 16, "num_workers": 1}
    tokenize.tokenize_passages(TOKENIZER, corpus, out, **arguments)
    assert rerun(caplog, out, lambda: tokenize.tokenize_passages(TOKENIZER, corpus, out, **arguments)) == "skipped"
    tokenizer = TOKENIZER
    if change == "corpus":
        change_content(corpus)
    elif change == "tokenizer":
        tokenizer = tiny_bert_dir
    elif change == "overwrite":
        arguments["overwrite"] = True
    else:
        arguments[change] = {"p_max_len": 4, "n_splits": 2}[change]
    assert rerun(caplog, out, lambda: tokenize.tokenize_passages(tokenizer, corpus, out, **arguments)) == "redone"
    assert len(list(out.glob("split*.json"))) == arguments["n_splits"]


# --------------------------------------------------------------------------- training groups
BUILD_CHANGES = ["n_sample", "seed", "q_max_len", "p_max_len", "shard_size", "tokenizer", "negatives", "qrels",
                 "queries", "collection", "overwrite"]


@pytest.mark.parametrize("change", BUILD_CHANGES)
def test_training_groups_are_redone_when_an_input_or_argument_changed(marco_data, tmp_path, caplog, change,
                                                                      tiny_bert_dir):
    out = tmp_path / "train"
    options = {"n_sample": 5, "seed": 1, "q_max_len": 16, "p_max_len": 32, "shard_size": 4}
    files = {"negatives": marco_data / "train.negatives.tsv", "qrels": marco_data / "qrels.train.tsv",
             "queries": marco_data / "train.query.txt", "collection": marco_data / "corpus.tsv"}

    def run(tokenizer=TOKENIZER, overwrite=False):
        build_train.build_train(tokenizer, files["negatives"], files["qrels"], files["queries"], files["collection"],
                                out, TrainSetOptions(**options), overwrite)

    run()
    assert rerun(caplog, out, run) == "skipped"
    if change in options:
        options[change] = {"n_sample": 3, "seed": 2, "q_max_len": 8, "p_max_len": 16, "shard_size": 100}[change]
        assert rerun(caplog, out, run) == "redone"
    elif change in files:
        change_content(files[change])
        assert rerun(caplog, out, run) == "redone"
    elif change == "tokenizer":
        assert rerun(caplog, out, lambda: run(tiny_bert_dir)) == "redone"
    else:
        assert rerun(caplog, out, lambda: run(overwrite=True)) == "redone"
    record = provenance.read_folder_record(out)
    assert record["provenance"]["seed"] == options["seed"]
    assert record["provenance"]["negatives"] == provenance.with_digests(provenance.file_identity(files["negatives"]))
    assert len(list(out.glob("split*.json"))) == record["stats"]["shards"]


@pytest.mark.parametrize("change", ["depth", "skip_top", "ranking"])
def test_hard_negative_groups_are_redone_when_the_ranking_or_window_changed(marco_data, tmp_path, caplog, change):
    ranking = write_ranking_file(marco_data)
    out = tmp_path / "train-hn"
    window = {"depth": 12, "skip_top": 0}

    def run():
        build_train_hn.build_train_hn(TOKENIZER, ranking, marco_data / "qrels.train.tsv",
                                      marco_data / "train.query.txt", marco_data / "corpus.tsv", out,
                                      options=TrainSetOptions(n_sample=4), **window)

    run()
    assert rerun(caplog, out, run) == "skipped"
    if change == "ranking":
        change_content(ranking)                            # a new ranking after retraining
    else:
        window[change] = {"depth": 20, "skip_top": 3}[change]
    assert rerun(caplog, out, run) == "redone"
    assert f"{'hn_file' if change == 'ranking' else change} changed since" in caplog.text


# --------------------------------------------------------------------------- data preparation and BM25
def test_prepared_files_are_rewritten_only_when_their_source_changed(tmp_path, caplog):
    source = make_marco(tmp_path / "marco")
    out = tmp_path / "out"
    layout.prepare(str(source), out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    layout.prepare(str(source), out)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    write_tsv(source / "para.title.txt", [(str(1000 + 7 * i), f"new title {i}") for i in range(40)])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        layout.prepare(str(source), out)
    changed = {p.name for p in out.iterdir() if not p.name.startswith(".") and p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"corpus.tsv"} and "sources changed since" in caplog.text
    assert "new title 3" in (out / "corpus.tsv").read_text()


def test_bm25_outputs_are_redone_when_an_input_or_argument_changed(tmp_path, caplog):
    write_tsv(tmp_path / "corpus.tsv", [(f"d{i}", f"T{i}", f"word{i % 5} text{i} common") for i in range(30)])
    write_tsv(tmp_path / "train.query.txt", [(f"q{i}", f"word{i} common") for i in range(4)])
    write_tsv(tmp_path / "dev.query.txt", [("v1", "text3 common")])
    write_qrels(tmp_path / "qrels.train.tsv", {f"q{i}": {f"d{i}": 1} for i in range(4)})
    negatives, dev_run = tmp_path / "train.negatives.tsv", tmp_path / "bm25.dev.rank.tsv"

    def run(*extra):
        assert bm25.main(["--data_dir", str(tmp_path), "--dev_run", "--threads", "1", *map(str, extra)]) == 0

    run()
    for extra, redone in ((("--batch_size", 2), set()), (("--k1", 1.2), {negatives, dev_run}),
                          (("--k1", 1.2, "--dev_depth", 5), {dev_run}), (("--k1", 1.2, "--dev_depth", 5), set())):
        before = {path: stamp(path) for path in (negatives, dev_run)}
        run(*extra)
        assert {path for path in before if stamp(path) != before[path]} == redone, extra
    change_content(tmp_path / "qrels.train.tsv")
    assert rerun(caplog, negatives, lambda: run("--k1", 1.2, "--dev_depth", 5)) == "redone"


def test_re_provisioned_data_with_the_same_content_redoes_nothing(tmp_path, caplog):
    """The source folder copied again (same bytes, new times): data preparation and BM25 rewrite nothing."""
    source, marco = make_beir(tmp_path / "beir"), tmp_path / "marco"

    def prepare_and_bm25():
        assert layout.main(["--source", str(source), "--out", str(marco)]) == 0
        assert bm25.main(["--data_dir", str(marco), "--dev_run", "--threads", "1"]) == 0

    prepare_and_bm25()
    outputs = {path: path.stat().st_mtime_ns for path in marco.iterdir() if not path.name.startswith(".")}
    assert {path.name for path in outputs} >= {"corpus.tsv", "qrels.train.tsv", "train.negatives.tsv"}
    sources = sorted(path for path in source.rglob("*") if path.is_file())
    for path in sources:
        copy_in_place(path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_and_bm25()
    assert {path: path.stat().st_mtime_ns for path in outputs} == outputs, "nothing rewritten"
    assert all(content_unchanged_line(path) in caplog.messages for path in sources)
    assert "changed since" not in caplog.text and "wrote " not in caplog.text
    change_content(source / "queries.jsonl")                    # a real change is still seen
    with caplog.at_level(logging.INFO):
        assert layout.main(["--source", str(source), "--out", str(marco)]) == 0
    assert "sources changed since" in caplog.text


# --------------------------------------------------------------------------- the stale-MRR case, end to end
def _mrr(qrels: Path, run: Path) -> float:
    result = run_module("tevatron.evaluation", qrels, run)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(re.search(r"MRR @10: ([0-9.]+)", result.stdout).group(1))


def _encode_search_reduce_evaluate(model: Path, data: Path, out: Path, qrels: Path | None = None) -> Path:
    """The pipeline's commands: two corpus shards, the queries, a search per shard, the reduction."""
    def check(result):
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    for index in range(2):
        check(run_module("tevatron.driver.encode", *encode_argv(model, data / "corpus.json",
                                                                  out / "enc" / f"corpus.{index}.pt"),
                         "--encode_num_shard", 2, "--encode_shard_index", index))
    check(run_module("tevatron.driver.encode", *encode_argv(model, data / "queries.json", out / "enc" / "q.pt"),
                     "--encode_is_qry"))
    # backend pinned: runs are compared bit for bit, and auto's measured choice may differ per process
    # (the backends round scores differently in the last bits)
    for index in range(2):
        check(run_module("tevatron.faiss_retriever", "--query_reps", out / "enc" / "q.pt", "--passage_reps",
                         out / "enc" / f"corpus.{index}.pt", "--depth", 20, "--save_ranking_to",
                         out / "scores" / f"corpus.{index}.rank.pt", "--backend", "torch"))
    check(run_module("tevatron.faiss_retriever.reducer", "--score_dir", out / "scores", "--query", out / "enc" / "q.pt",
                     "--save_ranking_to", out / "rank.tsv"))
    return out / "rank.tsv"


@pytest.mark.slow
def test_rerun_after_retraining_reports_the_new_models_mrr(tmp_path):
    data = tmp_path / "data"
    corpus = toy_corpus(50, max_len=30)
    queries = [{"text_id": f"q{i}", "text": corpus[i * 3]["text"][:8]} for i in range(12)]
    write_jsonl(data / "corpus.json", corpus)
    write_jsonl(data / "queries.json", queries)
    model = make_tiny_bert(tmp_path / "model", seed=0)
    # Model A's own top passage is the judged one: A scores MRR@10 = 1 by construction.
    ranking = _encode_search_reduce_evaluate(model, data, tmp_path / "run")
    top = {qid: max(hits, key=hits.get) for qid, hits in read_run(ranking).items()}
    write_qrels(data / "qrels.tsv", {qid: {pid: 1} for qid, pid in top.items()})
    assert _mrr(data / "qrels.tsv", ranking) == 1.0

    make_tiny_bert(model, seed=1)                                 # "retrained" into the same folder
    expected = _mrr(data / "qrels.tsv", _encode_search_reduce_evaluate(model, data, tmp_path / "fresh"))
    assert expected < 1.0
    rerun_ranking = _encode_search_reduce_evaluate(model, data, tmp_path / "run")   # the very same commands
    assert _mrr(data / "qrels.tsv", rerun_ranking) == expected
    assert read_run(rerun_ranking) == read_run(tmp_path / "fresh" / "rank.tsv")
