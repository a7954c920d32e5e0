"""Property tests for every reader and writer in :mod:`tevatron.text_formats` / :mod:`tevatron.tensor_files` (and the record checks of
:mod:`tevatron.data`).

Two kinds of property:

* **Round trips.**  Whatever a writer writes, its reader gives back.
* **Garbage in, InputError out.**  Random bytes, random text lines, truncated files and random JSON
  values fed to a reader either parse or raise :class:`InputError` whose message starts with the
  file name (``file:line: message``) - never another exception type, which a command line would show
  as a traceback.

What the strategies generate, and why:

* Ids are non-empty strings without tabs, line breaks or leading/trailing whitespace.  Every text
  format is line-oriented and tab-separated, and readers strip the fields they split off, so those are
  the only ids a TSV file can carry; :func:`tevatron.preprocess.common.check_id` refuses the others when
  data is normalised.  Whitespace-separated formats (TREC runs) also exclude inner whitespace; negatives
  lists exclude commas (the list separator).  Lone surrogates are excluded everywhere: they cannot be
  written as UTF-8, so no file holds them.  Nor does an id start with U+FEFF: at the start of a file that
  is a byte-order mark, which every reader drops (the writers refuse such ids).  Binary formats
  (encodings) take any string.
* Scores are finite float32 values (as the retriever produces; NaN and infinity are refused by readers
  and writers alike); ``write_ranking`` writes 9 significant digits, which round-trips float32 exactly.
  TREC runs are written with ``str(float)``, exact for doubles.
* Relevance values are ints of magnitude below 2**31 (``read_qrels`` parses through ``float``).
* A UTF-8 byte-order mark before any file changes nothing: the reader gives what it gives without it.
"""
from __future__ import annotations

import io
import json
import os
import string
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tevatron import tensor_files, text_formats
from tevatron.data import read_encode_records, validate_train_record
from tevatron.files import InputError

# 50 examples per property keeps the file near 30 s; IO_PROPERTIES_EXAMPLES=500 for a deeper search.
SETTINGS = settings(max_examples=int(os.environ.get("IO_PROPERTIES_EXAMPLES", "50")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def scratch():
    """A fresh folder per example (pytest's tmp_path is per test, not per hypothesis example)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# --------------------------------------------------------------------------- strategies
NO_SURROGATES = st.characters(blacklist_categories=("Cs",))
LINE_SAFE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r")


def _edge_clean(text: str) -> bool:
    return text == text.strip() and not text.startswith("\ufeff")


ids = st.text(LINE_SAFE, min_size=1, max_size=12).filter(lambda s: s.strip() and _edge_clean(s))
words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: not any(ch.isspace() for ch in s) and _edge_clean(s))  # no whitespace at all (TREC runs)
list_ids = ids.filter(lambda s: "," not in s)                        # negatives lists are comma-separated
field_text = st.text(LINE_SAFE, max_size=30)                         # one TSV field
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False).map(float)
relevances = st.integers(min_value=-(2 ** 31) + 1, max_value=2 ** 31 - 1)


def unique_dict(keys, values, min_size=0, max_size=6):
    return st.dictionaries(keys, values, min_size=min_size, max_size=max_size)


def rankings(qids=ids, pids=ids, scores=float32s):
    """``[(qid, [(pid, score), ...]), ...]``: unique query ids, unique passage ids per query."""
    hits = unique_dict(pids, scores, max_size=6).map(lambda d: list(d.items()))
    return unique_dict(qids, hits, min_size=0, max_size=5).map(lambda d: list(d.items()))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(NO_SURROGATES, max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(NO_SURROGATES, max_size=6), inner, max_size=4),
    max_leaves=12)
RECORD_KEYS = ("_id", "docid", "query_id", "text_id", "title", "text", "query", "positives", "negatives")
token_lists = st.lists(st.integers(min_value=-3, max_value=40), max_size=4)
record_values = json_values | token_lists | st.lists(token_lists, max_size=3) | st.sampled_from(["", " ", "x", "0", "a\nb", "c\u2028d"])
json_records = st.dictionaries(st.sampled_from(RECORD_KEYS), record_values, max_size=len(RECORD_KEYS))
json_lines = st.one_of(
    json_records.map(lambda r: json.dumps(r, ensure_ascii=False)),
    json_values.map(json.dumps),
    json_records.map(json.dumps).flatmap(lambda s: st.integers(0, len(s)).map(lambda n: s[:n])),  # cut short
    st.text(NO_SURROGATES, max_size=30),
)

FIELD_ATOMS = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + " .,-+e", max_size=10),
    st.sampled_from(["", " ", "0", "1", "-1", "1.5", "nan", "inf", "-inf", "1e999", "Q0", "qid", "query-id",
                     "score", "\u00a0", "\u3000", "\ufeff", "a,b,,c"]),
    st.text(NO_SURROGATES, max_size=8),
)
tsv_lines = st.lists(FIELD_ATOMS, min_size=1, max_size=7).map(lambda fields: "\t".join(fields))
space_lines = st.lists(FIELD_ATOMS, min_size=1, max_size=7).map(lambda fields: " ".join(fields))
text_files = st.lists(st.one_of(tsv_lines, space_lines, json_lines), max_size=8).map(
    lambda lines: "\n".join(lines).encode("utf-8"))
byte_files = st.binary(max_size=300)


# --------------------------------------------------------------------------- the garbage property
def consume(result):
    """Readers return dicts, lists, tuples or generators; drain generators so every line is read."""
    if hasattr(result, "__next__"):
        return list(result)
    return result


def check_input_error(err: InputError, path: Path) -> None:
    """An InputError's message is one line that starts with ``path`` (and ``path:line:`` when it has a line)."""
    message = str(err)
    assert message.startswith(f"{path}:") or message.startswith(f"{path} "), message
    assert len(message.splitlines()) == 1, message                  # one line, whatever the ids hold
    assert err.line is None or (isinstance(err.line, int) and err.line >= 1)
    if err.line is not None:
        assert message.startswith(f"{path}:{err.line}: "), message


def parses_or_input_error(reader, path: Path):
    """The property: ``reader(path)`` parses, or raises an InputError that names ``path``."""
    try:
        return consume(reader(path))
    except InputError as err:
        check_input_error(err, path)
        return None


def raises_input_error(reader, path: Path) -> InputError:
    """``reader(path)`` must raise a well-formed InputError (parsing is a failure)."""
    with pytest.raises(InputError) as caught:
        consume(reader(path))
    check_input_error(caught.value, path)
    return caught.value


TEXT_READERS = {
    # name: (file suffix, reader)
    "read_qrels": (".tsv", text_formats.read_qrels),
    "read_queries_tsv": (".tsv", text_formats.read_queries),
    "read_queries_jsonl": (".jsonl", text_formats.read_queries),
    "iter_collection_tsv": (".tsv", text_formats.iter_collection),
    "iter_collection_jsonl": (".jsonl", text_formats.iter_collection),
    "read_collection_tsv": (".tsv", text_formats.read_collection),
    "iter_collection_slice": (".tsv", lambda p: text_formats.iter_collection(p, 1, 3)),
    "read_negatives": (".tsv", text_formats.read_negatives),
    "iter_negatives": (".tsv", text_formats.iter_negatives),
    "read_run_auto": (".tsv", text_formats.read_run),
    "read_run_score": (".tsv", lambda p: text_formats.read_run(p, "score")),
    "read_run_marco": (".marco", lambda p: text_formats.read_run(p, "rank")),
    "read_run_trec": (".trec", lambda p: text_formats.read_run(p, "trec")),
    "iter_ranking_groups": (".tsv", text_formats.iter_ranking_groups),
    "iter_jsonl": (".jsonl", text_formats.iter_jsonl),
    "iter_tsv": (".tsv", lambda p: text_formats.iter_tsv(p, (2, 3))),
    "read_encode_records": (".jsonl", lambda p: read_encode_records([str(p)])),
    "count_data_lines": (".tsv", text_formats.count_data_lines),
}


def _validate_all_train_records(path):
    return [validate_train_record(path, n, record, 30, True) for n, record in text_formats.iter_jsonl(path)]


TEXT_READERS["validate_train_record"] = (".jsonl", _validate_all_train_records)
READER_NAMES = sorted(TEXT_READERS)


def read_garbage(reader: str, data: bytes) -> None:
    suffix, function = TEXT_READERS[reader]
    with scratch() as folder:
        path = folder / f"input{suffix}"
        path.write_bytes(data)
        parses_or_input_error(function, path)


@pytest.mark.parametrize("reader", READER_NAMES)
@SETTINGS
@given(data=byte_files)
def test_random_bytes(reader, data):
    read_garbage(reader, data)


@pytest.mark.parametrize("reader", READER_NAMES)
@SETTINGS
@given(data=text_files)
def test_random_text_lines(reader, data):
    read_garbage(reader, data)


@pytest.mark.parametrize("reader", ["iter_jsonl", "read_queries_jsonl", "iter_collection_jsonl",
                                    "read_encode_records", "validate_train_record"])
@SETTINGS
@given(lines=st.lists(json_lines, min_size=1, max_size=6))
def test_random_json_values(reader, lines):
    suffix, function = TEXT_READERS[reader]
    with scratch() as folder:
        path = folder / f"input{suffix}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        parses_or_input_error(function, path)


@SETTINGS
@given(record=json_records, vocab=st.sampled_from([None, 5, 30]), need_negatives=st.booleans())
def test_validate_train_record_random_dicts(record, vocab, need_negatives):
    try:
        checked = validate_train_record("train.jsonl", 7, record, vocab, need_negatives)
    except InputError as err:
        assert str(err).startswith("train.jsonl:7: ")
        return
    assert set(checked) == {"query", "positives", "negatives"} and checked["query"] and checked["positives"]
    if need_negatives:
        assert checked["negatives"]


# Inputs random generation rarely reaches: each crashed with another exception type before the fix.
# Each case pins its outcome: the parsed value, or Rejected(line, message) for the InputError expected
# (``line`` is the error's line number or None; ``message`` must appear in the error's text).
@dataclass(frozen=True)
class Rejected:
    line: int | None
    message: str


EDGE_CASES = [
    ("iter_jsonl", b"1" * 5000 + b"\n",                        # int over 4300 digits: plain ValueError
     Rejected(1, "malformed JSON")),
    ("iter_jsonl", b"[" * 100_000 + b"\n",                     # RecursionError in the decoder
     Rejected(1, "malformed JSON (nested too deeply)")),
    ("iter_collection_jsonl", b"1" * 5000 + b"\n", Rejected(1, "malformed JSON")),
    ("read_encode_records", b'{"text_id": 1, "text": [' + b"9" * 5000 + b"]}\n", Rejected(1, "malformed JSON")),
    ("read_qrels", b"q\t0\tp\tinf\n",                          # int(float("inf")): OverflowError
     Rejected(1, "relevance 'inf' is not a finite number")),
    ("read_qrels", b"q\t0\tp\tnan\n", Rejected(1, "relevance 'nan' is not a finite number")),
    ("read_qrels", b"q 0 p 1e999\n", Rejected(1, "relevance '1e999' is not a finite number")),
    ("read_qrels", b"", Rejected(None, "no relevance judgements found")),
    ("read_run_trec", b"q Q0 p 1 1.5 run\nq Q0 p 2 1 run\n",  # the same passage twice
     Rejected(2, "passage p listed twice for query q")),
    ("read_run_trec", b"q Q0 p 1 nan run\n", Rejected(1, "score 'nan' is not a finite number")),
    ("read_queries_tsv", b"\xff\xfeq\tx\n", Rejected(1, "not valid UTF-8")),
    ("iter_collection_tsv", b"p\tx\n\xc3\n",                   # truncated UTF-8 on line 2
     Rejected(2, "not valid UTF-8")),
    ("read_queries_jsonl", b'{"_id": "a\\nb", "text": " "}\n',   # id with a line break in the message
     Rejected(1, "query a\\x0ab has empty text")),
    ("iter_collection_jsonl", b'{"_id": "a\\rb", "text": "x"}\n{"_id": "a\\rb", "text": "y"}\n',
     Rejected(2, "duplicate passage id a\\x0db")),
]


@pytest.mark.parametrize("reader,data,expected", EDGE_CASES,
                         ids=[f"{reader}-{index}" for index, (reader, _, _) in enumerate(EDGE_CASES)])
def test_edge_case_inputs(tmp_path, reader, data, expected):
    suffix, function = TEXT_READERS[reader]
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    if isinstance(expected, Rejected):
        err = raises_input_error(function, path)
        assert err.line == expected.line, str(err)
        assert expected.message in str(err), str(err)
    else:
        assert consume(function(path)) == expected


@pytest.mark.parametrize("reader", READER_NAMES)
def test_missing_file_is_input_error(tmp_path, reader):
    suffix, function = TEXT_READERS[reader]
    path = tmp_path / f"absent{suffix}"
    err = raises_input_error(function, path)
    assert err.line is None and "no such file" in str(err), str(err)


@pytest.mark.parametrize("function", [tensor_files.load_encodings, tensor_files.load_shard_ranking], ids=lambda f: f.__name__)
def test_missing_binary_file_is_input_error(tmp_path, function):
    path = tmp_path / "absent.pt"
    err = raises_input_error(function, path)
    assert err.line is None and "no such" in str(err), str(err)


# --------------------------------------------------------------------------- byte-order marks, NaN and infinity
UTF8_BOM = b"\xef\xbb\xbf"


def outcome(reader: str, data: bytes, folder: Path):
    """What reading ``data`` gives: ``("ok", value)`` or ``("error", message)``, at the same path each time."""
    suffix, function = TEXT_READERS[reader]
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    try:
        return "ok", consume(function(path))
    except InputError as err:
        parses_or_input_error(function, path)          # the one-line shape, checked once more
        return "error", str(err)


@pytest.mark.parametrize("reader", READER_NAMES)
@SETTINGS
@given(data=text_files)
def test_byte_order_mark_changes_nothing(reader, data):
    """Random lines (``nan``, ``inf``, ``\\ufeff`` fields included) read the same with a BOM in front:
    the same parse or the same one-line InputError, never a BOM glued to the first id."""
    if data.startswith(UTF8_BOM):      # a second BOM after the first is data, not a mark
        data = data[len(UTF8_BOM):]
    with scratch() as folder:
        assert outcome(reader, UTF8_BOM + data, folder) == outcome(reader, data, folder)


VALID_SAMPLES = {  # reader: a small valid file, LF line endings, first line holding an id
    "read_qrels": b"q1\t0\tp1\t1\nq2\t0\tp2\t2\n",
    "read_queries_tsv": b"q1\tfirst\nq2\tsecond\n",
    "read_queries_jsonl": b'{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n',
    "iter_collection_tsv": b"p1\tT\tone\np2\ttwo\np3\tthree\n",
    "iter_collection_jsonl": b'{"_id": "p1", "text": "one"}\n{"_id": "p2", "text": "two"}\n',
    "read_collection_tsv": b"p1\tT\tone\np2\ttwo\n",
    "iter_collection_slice": b"p1\tone\np2\ttwo\np3\tthree\np4\tfour\n",
    "read_negatives": b"q1\tp1,p2\nq2\tp3\n",
    "iter_negatives": b"q1\tp1,p2\nq2\tp3\n",
    "read_run_auto": b"q1\tp1\t1\nq1\tp2\t2\nq2\tp1\t1\n",
    "read_run_score": b"q1\tp1\t2.5\nq1\tp2\t1.5\n",
    "read_run_marco": b"q1\tp1\t1\nq1\tp2\t2\n",
    "read_run_trec": b"q1 Q0 p1 1 2.5 t\nq1 Q0 p2 2 1.5 t\n",
    "iter_ranking_groups": b"q1\tp1\t2.5\nq1\tp2\t1.5\nq2\tp1\t0.5\n",
    "iter_jsonl": b'{"a": 1}\n{"b": 2}\n',
    "iter_tsv": b"q1\tx\nq2\ty\tz\n",
    "read_encode_records": b'{"text_id": "p1", "text": [1, 2]}\n{"text_id": "p2", "text": [3]}\n',
    "validate_train_record": b'{"query": [1], "positives": [[2]], "negatives": [[3]]}\n',
    "count_data_lines": b"p1\tone\n\np2\ttwo\n",
}


def test_every_reader_has_a_byte_order_mark_sample():
    assert sorted(VALID_SAMPLES) == READER_NAMES


@pytest.mark.parametrize("reader", sorted(VALID_SAMPLES))
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_byte_order_mark_with_each_reader(tmp_path, reader, line_end):
    """A BOM (with LF or CRLF lines) is dropped by every reader: the same result as the plain file, and
    no U+FEFF anywhere in it (before the fix it became part of the first id: ``\\ufeffq1``)."""
    plain = outcome(reader, VALID_SAMPLES[reader], tmp_path)
    assert plain[0] == "ok", plain
    marked = outcome(reader, UTF8_BOM + VALID_SAMPLES[reader].replace(b"\n", line_end), tmp_path)
    assert marked == plain and "\ufeff" not in repr(marked)


@pytest.mark.parametrize("header", [b"query-id\tcorpus-id\tscore\n", b""])
def test_byte_order_mark_before_a_beir_qrels_header(tmp_path, header):
    """The header is recognised behind a BOM (and not read as a judgement with relevance 'score')."""
    (tmp_path / "qrels.tsv").write_bytes(UTF8_BOM + header + b"q1\tp1\t1\n")
    assert text_formats.read_qrels(tmp_path / "qrels.tsv") == {"q1": {"p1": 1}}


NON_FINITE = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "+inf", "1e999", "-1e400"])


@SETTINGS
@given(ranking=rankings(qids=words, pids=words).filter(lambda r: any(hits for _, hits in r)),
       kind=st.sampled_from(["ranking", "groups", "trec"]), which=st.integers(0, 10 ** 6), bad=NON_FINITE)
def test_non_finite_score_is_refused_naming_its_line(ranking, kind, which, bad):
    """One score of a valid ranking replaced by NaN or an infinity: an InputError naming that line."""
    with scratch() as folder:
        path, reader = _write_valid(kind, folder, ranking)
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]     # ids may hold other line breaks
        number = which % len(lines) + 1
        separator = " " if kind == "trec" else "\t"
        fields = lines[number - 1].split(separator)
        fields[4 if kind == "trec" else 2] = bad
        lines[number - 1] = separator.join(fields)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        readers = [reader] + ([lambda p: text_formats.read_run(p, "score")] if kind == "ranking" else [])
        for read in readers:
            with pytest.raises(InputError) as caught:
                consume(read(path))
            assert str(caught.value) == f"{path}:{number}: score {bad!r} is not a finite number"


@SETTINGS
@given(qrels=unique_dict(ids, unique_dict(ids, relevances, min_size=1, max_size=4), min_size=1, max_size=5),
       which=st.integers(0, 10 ** 6), bad=NON_FINITE)
def test_non_finite_relevance_is_refused_naming_its_line(qrels, which, bad):
    with scratch() as folder:
        path = folder / "qrels.tsv"
        text_formats.write_qrels(path, qrels)
        lines = path.read_text(encoding="utf-8").split("\n")[:-1]     # ids may hold other line breaks
        number = which % len(lines) + 1
        lines[number - 1] = lines[number - 1].rsplit("\t", 1)[0] + "\t" + bad
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(InputError) as caught:
            text_formats.read_qrels(path)
        assert str(caught.value) == f"{path}:{number}: relevance {bad!r} is not a finite number"


# --------------------------------------------------------------------------- truncated text files
RANKING_KINDS = {  # kind: file name, writer, reader
    "ranking": ("rank.tsv", text_formats.write_ranking, text_formats.read_run),
    "groups": ("rank.tsv", text_formats.write_ranking, text_formats.iter_ranking_groups),
    "marco": ("rank.marco", text_formats.write_marco_run, text_formats.read_run),
    "trec": ("rank.trec", text_formats.write_trec_run, text_formats.read_run),
}


def _write_valid(kind: str, folder: Path, data):
    name, write, read = RANKING_KINDS[kind]
    write(folder / name, data)
    return folder / name, read


@SETTINGS
@given(kind=st.sampled_from(sorted(RANKING_KINDS)),
       ranking=rankings(qids=words, pids=words), cut=st.floats(0.0, 1.0))
def test_truncated_ranking_files(kind, ranking, cut):
    with scratch() as folder:
        path, reader = _write_valid(kind, folder, ranking)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        parses_or_input_error(reader, path)


@SETTINGS
@given(texts=st.lists(st.text(NO_SURROGATES, min_size=1, max_size=10), min_size=1, max_size=5),
       cut=st.floats(0.0, 1.0), suffix=st.sampled_from([".tsv", ".jsonl"]))
def test_truncated_collection_and_queries(texts, cut, suffix):
    """Cutting a file anywhere, even inside a multi-byte character, gives a parse or an InputError."""
    with scratch() as folder:
        path = folder / f"c{suffix}"
        if suffix == ".tsv":
            text_formats.write_tsv(path, [(f"id{i}", text.replace("\t", " ").replace("\n", " ").replace("\r", " ") or "x")
                                for i, text in enumerate(texts)])
        else:
            text_formats.write_jsonl(path, [{"_id": f"id{i}", "text": text} for i, text in enumerate(texts)])
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        for reader in (text_formats.read_queries, text_formats.iter_collection):
            parses_or_input_error(reader, path)


# --------------------------------------------------------------------------- round trips: text formats
@SETTINGS
@given(qrels=unique_dict(ids, unique_dict(ids, relevances, min_size=1, max_size=4), min_size=1, max_size=5))
@example(qrels={"qid": {"query": 1}, "x": {"y": 0}})                  # header-like first line (was dropped)
@example(qrels={"query-id": {"corpus-id": 2}})
def test_qrels_round_trip(qrels):
    with scratch() as folder:
        text_formats.write_qrels(folder / "qrels.tsv", qrels)
        assert text_formats.read_qrels(folder / "qrels.tsv") == qrels


@SETTINGS
@given(queries=unique_dict(ids, field_text.filter(str.strip), min_size=0, max_size=6))
def test_queries_tsv_round_trip(queries):
    with scratch() as folder:
        text_formats.write_tsv(folder / "queries.tsv", queries.items())
        assert text_formats.read_queries(folder / "queries.tsv") == {qid: text.strip() for qid, text in queries.items()}


@SETTINGS
@given(queries=unique_dict(ids, st.text(NO_SURROGATES, min_size=1, max_size=20).filter(str.strip), max_size=6),
       key=st.sampled_from(["_id", "query_id"]))
def test_queries_jsonl_round_trip(queries, key):
    """JSON lines carry any text (tabs and line breaks included)."""
    with scratch() as folder:
        text_formats.write_jsonl(folder / "queries.jsonl", [{key: qid, "text": text} for qid, text in queries.items()])
        assert text_formats.read_queries(folder / "queries.jsonl") == {qid: text.strip() for qid, text in queries.items()}


@SETTINGS
@given(passages=unique_dict(ids, st.tuples(st.one_of(st.none(), field_text), field_text), min_size=1, max_size=6),
       start=st.integers(0, 7), length=st.integers(0, 7))
def test_collection_tsv_round_trip(passages, start, length):
    """``pid\\ttitle\\ttext`` (or ``pid\\ttext`` when title is None); every row reader agrees."""
    rows = [(pid, text) if title is None else (pid, title, text) for pid, (title, text) in passages.items()]
    expected = [(pid, (title or "").strip(), text.strip()) for pid, (title, text) in passages.items()]
    with scratch() as folder:
        path = folder / "corpus.tsv"
        text_formats.write_tsv(path, rows)
        assert [row[1:] for row in text_formats.iter_collection(path)] == expected
        assert text_formats.read_collection(path) == {pid: (title, text) for pid, title, text in expected}
        assert [row[1:] for row in text_formats.iter_collection(path, start, start + length)] == \
            expected[start:start + length]
        assert text_formats.count_data_lines(path) == len(expected)


@SETTINGS
@given(passages=unique_dict(ids, st.tuples(st.text(NO_SURROGATES, max_size=10), st.text(NO_SURROGATES, max_size=20)),
                            min_size=1, max_size=6),
       key=st.sampled_from(["_id", "docid"]))
def test_collection_jsonl_round_trip(passages, key):
    with scratch() as folder:
        path = folder / "corpus.jsonl"
        text_formats.write_jsonl(path, [{key: pid, "title": title, "text": text} for pid, (title, text) in passages.items()])
        expected = [(pid, title.strip(), text.strip()) for pid, (title, text) in passages.items()]
        assert [row[1:] for row in text_formats.iter_collection(path)] == expected


@SETTINGS
@given(negatives=unique_dict(ids, st.lists(list_ids, max_size=6), max_size=6))
def test_negatives_round_trip(negatives):
    with scratch() as folder:
        text_formats.write_negatives(folder / "a.tsv", negatives)
        text_formats.write_negatives(folder / "b.tsv", iter(negatives.items()))
        assert (folder / "a.tsv").read_bytes() == (folder / "b.tsv").read_bytes()
        assert text_formats.read_negatives(folder / "a.tsv") == negatives
        assert {qid: pids for _, qid, pids in text_formats.iter_negatives(folder / "a.tsv")} == negatives


def _as_float32(value) -> np.float32:
    return np.float32(float(value))


@SETTINGS
@given(ranking=rankings())
@example(ranking=[("q", [("p", 1.0000001192092896), ("r", -3.4028234663852886e38), ("s", 1e-45)])])
def test_ranking_round_trip(ranking):
    """write_ranking -> read_run and iter_ranking_groups: same ids, same float32 scores."""
    with scratch() as folder:
        path = folder / "rank.tsv"
        text_formats.write_ranking(path, ranking)
        run = text_formats.read_run(path)
        assert run == {qid: {pid: run[qid][pid] for pid, _ in hits} for qid, hits in ranking if hits}
        for qid, hits in ranking:
            for pid, score in hits:
                assert _as_float32(run[qid][pid]) == np.float32(score)
        groups = list(text_formats.iter_ranking_groups(path))
        assert [(qid, [pid for pid, _ in hits]) for qid, hits in groups] == \
            [(qid, [pid for pid, _ in hits]) for qid, hits in ranking if hits]
        for (_, read_hits), (_, hits) in zip(groups, [g for g in ranking if g[1]]):
            assert [_as_float32(s) for _, s in read_hits] == [np.float32(s) for _, s in hits]


@SETTINGS
@given(ranking=rankings())
def test_marco_run_round_trip(ranking):
    with scratch() as folder:
        path = folder / "rank.marco"
        text_formats.write_marco_run(path, ranking)
        expected = {qid: {pid: -float(rank) for rank, (pid, _) in enumerate(hits, start=1)}
                    for qid, hits in ranking if hits}
        assert text_formats.read_run(path) == expected
        assert text_formats.read_run(path, "rank") == expected


@SETTINGS
@given(ranking=rankings(qids=words, pids=words, scores=st.floats(allow_nan=False, allow_infinity=False)))
def test_trec_run_round_trip(ranking):
    """TREC runs are space-separated, so ids here contain no whitespace; scores are exact doubles."""
    with scratch() as folder:
        path = folder / "rank.trec"
        text_formats.write_trec_run(path, ranking, tag="run-1")
        expected = {qid: dict(hits) for qid, hits in ranking if hits}
        assert text_formats.read_run(path) == expected
        assert text_formats.read_run(path, "trec") == expected


@SETTINGS
@given(records=st.lists(st.tuples(ids, st.lists(st.integers(0, 2 ** 31), max_size=8)), max_size=6,
                       unique_by=lambda record: record[0]))  # a repeated text_id is rejected
def test_encode_records_round_trip(records):
    with scratch() as folder:
        text_formats.write_jsonl(folder / "in.jsonl", [{"text_id": i, "text": t} for i, t in records])
        assert read_encode_records([str(folder / "in.jsonl")]) == ([i for i, _ in records], [t for _, t in records])


@SETTINGS
@given(groups=st.lists(st.fixed_dictionaries({
    "query": st.lists(st.integers(0, 29), min_size=1, max_size=5),
    "positives": st.lists(st.lists(st.integers(0, 29), min_size=1, max_size=5), min_size=1, max_size=3),
    "negatives": st.lists(st.lists(st.integers(0, 29), min_size=1, max_size=5), min_size=1, max_size=3),
}), max_size=5))
def test_train_records_round_trip(groups):
    with scratch() as folder:
        text_formats.write_jsonl(folder / "train.jsonl", groups)
        assert _validate_all_train_records(folder / "train.jsonl") == groups


# --------------------------------------------------------------------------- round trips: binary formats
any_ids = st.text(NO_SURROGATES, max_size=10)       # the binary format takes any string, tabs and all


@st.composite
def encodings(draw):
    n = draw(st.integers(0, 6))
    dim = draw(st.integers(1, 8))
    values = draw(st.lists(st.floats(width=32), min_size=n * dim, max_size=n * dim))
    reps = np.array(values, dtype=np.float32).reshape(n, dim)
    return reps, draw(st.lists(any_ids, min_size=n, max_size=n))


@SETTINGS
@given(data=encodings(), as_tensor=st.booleans())
@example(data=(np.array([[np.nan, -0.0, np.inf]], dtype=np.float32), ["日本語 \t id"]), as_tensor=False)
def test_encodings_round_trip(data, as_tensor):
    reps, id_list = data
    with scratch() as folder:
        tensor_files.save_encodings(folder / "e.pt", torch.from_numpy(reps) if as_tensor else reps, id_list)
        if not np.isfinite(reps).all():  # written as given, refused when read: it would decide rankings
            first = int(np.flatnonzero(~np.isfinite(reps).all(axis=1))[0])
            with pytest.raises(tensor_files.InputError, match=rf"the first is row {first}, id "):
                tensor_files.load_encodings(folder / "e.pt")
            return
        loaded, loaded_ids = tensor_files.load_encodings(folder / "e.pt")
        assert loaded_ids == id_list
        assert loaded.dtype == torch.float32 and tuple(loaded.shape) == reps.shape
        assert loaded.numpy().tobytes() == reps.tobytes()               # bit-exact, -0.0 included


@st.composite
def shard_rankings(draw):
    n_queries, depth, n_passages = draw(st.integers(0, 5)), draw(st.integers(0, 4)), draw(st.integers(0, 6))
    scores = np.array(draw(st.lists(st.floats(width=32), min_size=n_queries * depth, max_size=n_queries * depth)),
                      dtype=np.float32).reshape(n_queries, depth)
    indices = np.array(draw(st.lists(st.integers(-1, max(n_passages - 1, 0)), min_size=n_queries * depth,
                                     max_size=n_queries * depth)), dtype=np.int64).reshape(n_queries, depth)
    return (draw(st.lists(any_ids, min_size=n_queries, max_size=n_queries)),
            draw(st.lists(any_ids, min_size=n_passages, max_size=n_passages)), scores, indices)


@SETTINGS
@given(data=shard_rankings())
def test_shard_ranking_round_trip(data):
    query_ids, passage_ids, scores, indices = data
    with scratch() as folder:
        tensor_files.save_shard_ranking(folder / "r.pt", query_ids, passage_ids, scores, indices)
        payload = tensor_files.load_shard_ranking(folder / "r.pt")
        assert payload["query_ids"] == query_ids and payload["passage_ids"] == passage_ids
        assert payload["scores"].numpy().tobytes() == scores.tobytes()
        assert payload["indices"].dtype == torch.int64 and np.array_equal(payload["indices"].numpy(), indices)


# --------------------------------------------------------------------------- garbage: binary formats
BINARY_READERS = {"load_encodings": tensor_files.load_encodings, "load_shard_ranking": tensor_files.load_shard_ranking}


def _real_binary(kind: str, path: Path) -> None:
    if kind == "load_encodings":
        tensor_files.save_encodings(path, np.arange(12, dtype=np.float32).reshape(3, 4), ["a", "b", "ç"])
    else:
        tensor_files.save_shard_ranking(path, ["q1", "q2"], ["p1", "p2", "p3"], [[3.0, 1.0], [2.0, 0.5]], [[0, 2], [1, 0]])


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@SETTINGS
@given(data=byte_files)
def test_binary_random_bytes(reader, data):
    with scratch() as folder:
        path = folder / "x.pt"
        path.write_bytes(data)
        assert parses_or_input_error(BINARY_READERS[reader], path) is None
        with pytest.raises(InputError):
            tensor_files.load_encodings(path)


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@SETTINGS
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_binary_truncated(reader, cut):
    with scratch() as folder:
        path = folder / "x.pt"
        _real_binary(reader, path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        assert parses_or_input_error(BINARY_READERS[reader], path) is None


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@SETTINGS
@given(position=st.floats(0.0, 1.0, exclude_max=True), garbage=st.binary(min_size=1, max_size=16))
def test_binary_overwritten_bytes(reader, position, garbage):
    """Bytes overwritten inside a real file: a parse (the bytes hit tensor data) or an InputError."""
    with scratch() as folder:
        path = folder / "x.pt"
        _real_binary(reader, path)
        data = bytearray(path.read_bytes())
        start = int(len(data) * position)
        data[start:start + len(garbage)] = garbage
        path.write_bytes(bytes(data))
        parses_or_input_error(BINARY_READERS[reader], path)


tensor_like = st.one_of(
    json_values,
    st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 3), max_size=3).map(tuple)),
    st.builds(lambda shape: torch.zeros(shape, dtype=torch.int64), st.lists(st.integers(0, 3), max_size=3).map(tuple)),
)


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
@SETTINGS
@given(fields=st.dictionaries(st.sampled_from(["format", "version", "reps", "ids", "query_ids", "passage_ids",
                                               "scores", "indices"]), tensor_like, max_size=8),
       right_format=st.booleans())
def test_binary_foreign_payloads(reader, fields, right_format):
    """Readable torch files holding the wrong things (a right ``format`` tag with missing or odd fields).

    What a reader accepts must have the types its callers use (the reducer indexes the fields directly)."""
    with scratch() as folder:
        path = folder / "x.pt"
        if right_format:
            fields["format"] = tensor_files.ENCODINGS_FORMAT if reader == "load_encodings" else tensor_files.RANKING_FORMAT
        torch.save(fields, path)
        loaded = parses_or_input_error(BINARY_READERS[reader], path)
        if loaded is None:
            return
        if reader == "load_encodings":
            reps, id_list = loaded
            assert torch.is_tensor(reps) and reps.ndim == 2 and all(isinstance(i, str) for i in id_list)
        else:
            assert all(isinstance(loaded[key], list) for key in ("query_ids", "passage_ids"))
            assert torch.is_tensor(loaded["scores"]) and torch.is_tensor(loaded["indices"])


@pytest.mark.parametrize("reader", sorted(BINARY_READERS))
def test_binary_other_files(tmp_path, reader):
    """A tensor, a plain zip, a text file, a pickle of an arbitrary class: all InputError."""
    cases = {"tensor.pt": None, "plain.zip": None, "text.pt": b"q1\tp1\t0.5\n", "empty.pt": b""}
    torch.save(torch.ones(2, 2), tmp_path / "tensor.pt")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.pkl", b"not a pickle")
    (tmp_path / "plain.zip").write_bytes(buffer.getvalue())
    torch.save({"format": tensor_files.ENCODINGS_FORMAT, "obj": Fraction(1, 3)}, tmp_path / "class.pt")  # not weights_only-safe
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    for name in list(cases) + ["class.pt"]:
        assert parses_or_input_error(BINARY_READERS[reader], tmp_path / name) is None
