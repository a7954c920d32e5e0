"""The command-line contract under generated arguments, for every entry point.

For each command, hypothesis draws values for its numeric arguments (NaN, inf, 0, negative, huge, not a
number, or left out) and a kind of output path (fine, a missing folder, under /proc, under a regular
file, an existing directory where a file goes).  Every run must end in one of two ways:

* exit 0 and the output is there, or
* exit 2 with exactly one error line (``error: ...``, or argparse's ``PROG: error: ...``) and no output
  file left behind (no temporary file either);

never a traceback.  Commands run in-process (``main(argv)``): an escaping exception is the traceback a
user would see.  ``CLI_CONTRACT_LOG=FILE`` appends how many runs kept the contract, per command.
"""
from __future__ import annotations

import contextlib
import io
import os
import runpy
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import REPO_ROOT, toy_corpus, toy_groups, write_jsonl
from tevatron.tensor_files import save_encodings, save_shard_ranking
from tevatron.text_formats import write_qrels, write_tsv

pytestmark = pytest.mark.slow

TOKENIZER = "bert-base-uncased"  # resolves offline to the packaged vocabulary
SPECIAL_NUMBERS = ("nan", "inf", "-inf", "0", "-1", "-7", "1e30", "99999999999999999999", "abc", "0.5", "1", "2")
OUTPUT_KINDS = ("fine", "fine", "fine", "missing_folder", "proc", "under_file", "existing_dir")  # mostly fine


def number(low: int = -2, high: int = 40):
    return st.one_of(st.sampled_from(SPECIAL_NUMBERS), st.integers(low, high).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


def flag(name: str, values=None):
    """``[]`` (left out) or ``["--name=VALUE"]`` (``=`` so that negative numbers parse as values)."""
    values = number() if values is None else values
    return st.one_of(st.just([]), values.map(lambda value: [f"--{name}={value}"]))


def flags(*names: str):
    """Ordinary values (so the commands also run to the end), one wild value among ordinary ones, or all wild."""
    ordinary = [flag(name, st.integers(1, 6).map(str)) for name in names]
    wild = [flag(name) for name in names]

    def join(parts) -> list[str]:
        return [word for part in parts for word in part]

    one_wild = st.integers(0, len(names) - 1).flatmap(
        lambda index: st.tuples(*(wild[i] if i == index else ordinary[i] for i in range(len(names)))))
    return st.one_of(st.tuples(*ordinary), one_wild, st.tuples(*wild)).map(join)


# --------------------------------------------------------------------------- inputs (built once)
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert_dir) -> dict:
    root = tmp_path_factory.mktemp("contract_inputs")
    write_jsonl(root / "train.jsonl", toy_groups(n_groups=6, n_negatives=3))
    write_jsonl(root / "corpus.json", toy_corpus(n=10, max_len=20))
    rng = np.random.default_rng(0)
    save_encodings(root / "q.pt", rng.standard_normal((3, 8), dtype=np.float32), ["q1", "q2", "q3"])
    (root / "enc").mkdir()
    save_encodings(root / "enc" / "p0.pt", rng.standard_normal((5, 8), dtype=np.float32), [f"p{i}" for i in range(5)])
    save_encodings(root / "enc" / "p1.pt", rng.standard_normal((5, 8), dtype=np.float32),
                   [f"p{i}" for i in range(5, 10)])
    (root / "shards").mkdir()
    for shard in range(2):
        scores = np.sort(rng.standard_normal((3, 4)).astype(np.float32), axis=1)[:, ::-1].copy()
        save_shard_ranking(root / "shards" / f"s{shard}.pt", ["q1", "q2", "q3"],
                           [f"p{shard}{i}" for i in range(4)], scores, np.tile(np.arange(4), (3, 1)))
    marco = root / "marco"
    write_tsv(marco / "corpus.tsv", [(f"p{i}", "", f"word{i} common text number {i}") for i in range(8)])
    write_tsv(marco / "train.query.txt", [("q1", "word1 common"), ("q2", "word2 text")])
    write_tsv(marco / "dev.query.txt", [("d1", "word3 number")])
    write_qrels(marco / "qrels.train.tsv", {"q1": {"p1": 1}, "q2": {"p2": 1}})
    write_tsv(marco / "train.negatives.tsv", [("q1", "p3,p4,p5"), ("q2", "p5,p6,p7")])
    write_tsv(marco / "train.rank.tsv", [(q, f"p{i}", f"{10 - i}.0") for q in ("q1", "q2") for i in range(8)])
    write_qrels(root / "qrels.tsv", {"q1": {"p1": 1}, "q2": {"p3": 1}})
    write_tsv(root / "run.tsv", [("q1", "p1", "2.5"), ("q1", "p2", "1.5"), ("q2", "p3", "1.0")])
    return {"root": root, "model": str(tiny_bert_dir), "marco": marco}


@pytest.fixture(scope="module")
def tally():
    counts = Counter()
    yield counts
    log = os.environ.get("CLI_CONTRACT_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            for (name, status), kept in sorted(counts.items()):
                out.write(f"{name}\texit {status}\t{kept}\n")


# --------------------------------------------------------------------------- running and judging
def output_path(kind: str, folder: Path, name: str) -> Path:
    if kind == "missing_folder":
        return folder / "new" / "deeper" / name
    if kind == "proc":
        return Path("/proc") / "no-such-place" / name
    if kind == "under_file":
        (folder / "plain").write_text("x")
        return folder / "plain" / name
    if kind == "existing_dir":
        (folder / name).mkdir()
    return folder / name


def run_in_process(main: Callable, argv: list[str]) -> tuple[int, str]:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return status, stderr.getvalue()


def produced_files(path: Path) -> list[Path]:
    """What a run left at ``path``: the file itself, files in it (a folder output), temporaries beside it."""
    if path.is_file():
        return [path]
    found = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    if path.parent.is_dir():
        found += list(path.parent.glob(f".{path.name}.*.tmp*"))
    return found


def check_contract(name: str, main: Callable, argv: list[str], outputs: list[Path], tally: Counter) -> None:
    before = {output: set(produced_files(output)) for output in outputs}
    status, stderr = run_in_process(main, [str(word) for word in argv])
    errors = [line for line in stderr.splitlines() if line.startswith("error:") or ": error: " in line]
    detail = f"{name} {argv}: exit {status}\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, detail
    if status == 0:
        assert errors == [], detail
        assert all(set(produced_files(output)) - before[output] for output in outputs), detail
    else:
        assert status == 2 and len(errors) == 1, detail
        for output in outputs:
            assert set(produced_files(output)) == before[output], detail
    tally[name, status] += 1


def example_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@contextlib.contextmanager
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="contract-"))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(cwd)
        shutil.rmtree(folder, ignore_errors=True)


def script_main(name: str) -> Callable:
    """``main`` of a ``msmarco-passage-ranking/*.py`` script that is not a thin wrapper."""
    return runpy.run_path(str(REPO_ROOT / "msmarco-passage-ranking" / name))["main"]


# --------------------------------------------------------------------------- the commands
@example_settings(20)
@given(numbers=flags("per_device_train_batch_size", "train_n_passages", "temperature", "learning_rate",
                     "q_max_len", "p_max_len", "gc_q_chunk_size", "gc_p_chunk_size", "warmup_ratio", "seed"),
       grad_cache=st.booleans(), kind=st.sampled_from(OUTPUT_KINDS))
def test_train(inputs, tally, numbers, grad_cache, kind):
    from tevatron.driver.train import main
    with scratch() as folder:
        out = output_path(kind, folder, "model")
        argv = ["--output_dir", out, "--model_name_or_path", inputs["model"], "--train_dir",
                inputs["root"] / "train.jsonl", "--max_steps", "1", "--save_strategy", "no", "--report_to", "none",
                "--cache_dir", folder / "cache", "--dataloader_num_workers", "0", *numbers]
        check_contract("train", main, argv + (["--grad_cache"] if grad_cache else []), [out], tally)


@example_settings(50)
@given(numbers=flags("per_device_eval_batch_size", "q_max_len", "p_max_len", "encode_num_shard",
                     "encode_shard_index"), is_query=st.booleans(), kind=st.sampled_from(OUTPUT_KINDS))
def test_encode(inputs, tally, numbers, is_query, kind):
    from tevatron.driver.encode import main
    with scratch() as folder:
        out = output_path(kind, folder, "corpus.pt")
        argv = ["--output_dir", folder, "--model_name_or_path", inputs["model"], "--encode_in_path",
                inputs["root"] / "corpus.json", "--encoded_save_path", out, *numbers]
        check_contract("encode", main, argv + (["--encode_is_qry"] if is_query else []), [out], tally)


@example_settings(80)
@given(numbers=flags("depth", "batch_size", "passage_block_size"), text=st.booleans(),
       backend=st.sampled_from(["torch", "faiss"]), kind=st.sampled_from(OUTPUT_KINDS))
def test_search(inputs, tally, numbers, text, backend, kind):
    from tevatron.faiss_retriever.retriever import main
    with scratch() as folder:
        out = output_path(kind, folder, "rank.out")
        argv = ["--query_reps", inputs["root"] / "q.pt", "--passage_reps", str(inputs["root"] / "enc" / "*.pt"),
                "--save_ranking_to", out, "--backend", backend, "--quiet", *numbers]
        check_contract("search", main, argv + (["--save_text"] if text else []), [out], tally)


@example_settings(40)
@given(numbers=flags("depth"), kind=st.sampled_from(OUTPUT_KINDS))
def test_reduce(inputs, tally, numbers, kind):
    from tevatron.faiss_retriever.reducer import main
    with scratch() as folder:
        out = output_path(kind, folder, "rank.tsv")
        argv = ["--score_dir", inputs["root"] / "shards", "--query", inputs["root"] / "q.pt", "--save_ranking_to",
                out, *numbers]
        check_contract("reduce", main, argv, [out], tally)


@example_settings(20)
@given(run_format=st.sampled_from(["auto", "score", "rank", "trec", "bogus"]), kind=st.sampled_from(OUTPUT_KINDS))
def test_evaluation(inputs, tally, run_format, kind):
    from tevatron.evaluation import main
    with scratch() as folder:
        out = output_path(kind, folder, "metrics.json")
        argv = [inputs["root"] / "qrels.tsv", inputs["root"] / "run.tsv", "--json", out, "--run_format", run_format]
        check_contract("evaluation", main, argv, [out], tally)


@example_settings(16)
@given(trec=st.booleans(), tag=st.sampled_from(["run", "", "two words"]), blocked=st.booleans())
def test_score_to_marco(inputs, tally, trec, tag, blocked):
    main = script_main("score_to_marco.py")
    with scratch() as folder:
        shutil.copy(inputs["root"] / "run.tsv", folder / "rank.tsv")
        if blocked:
            (folder / "rank.tsv.marco").mkdir()      # an existing directory where the output goes
        outputs = [folder / "rank.tsv.marco"] + ([folder / "rank.tsv.trec"] if trec else [])
        argv = [folder / "rank.tsv", "--tag", tag] + (["--trec"] if trec else [])
        check_contract("score_to_marco", main, argv, outputs, tally)


@example_settings(50)
@given(numbers=flags("depth", "dev_depth", "k1", "b", "threads", "batch_size"), dev=st.booleans(),
       kind=st.sampled_from(OUTPUT_KINDS))
def test_bm25(inputs, tally, numbers, dev, kind):
    from tevatron.preprocess.bm25 import main
    with scratch() as folder:
        out = output_path(kind, folder, "train.negatives.tsv")
        argv = ["--data_dir", inputs["marco"], "--save_to", out, *numbers]
        outputs = [out]
        if dev:
            argv += ["--dev_run", folder / "dev.rank.tsv"]
            outputs.append(folder / "dev.rank.tsv")
        check_contract("bm25", main, argv, outputs, tally)


@example_settings(20)
@given(timeout=flag("timeout"), kind=st.sampled_from(OUTPUT_KINDS))
def test_prepare_data(inputs, tally, timeout, kind):
    from tevatron.preprocess.layout import main
    with scratch() as folder:
        source = folder / "src"
        shutil.copytree(inputs["marco"], source)
        out = output_path(kind, folder, "prepared")
        check_contract("prepare_data", main, ["--source", source, "--out", out, *timeout], [out], tally)


def build_train_argv(inputs, out) -> list:
    marco = inputs["marco"]
    return ["--tokenizer_name", TOKENIZER, "--qrels", marco / "qrels.train.tsv", "--queries",
            marco / "train.query.txt", "--collection", marco / "corpus.tsv", "--save_to", out]


@example_settings(40)
@given(numbers=flags("n_sample", "seed", "q_max_len", "p_max_len", "shard_size"), kind=st.sampled_from(OUTPUT_KINDS))
def test_build_train(inputs, tally, numbers, kind):
    from tevatron.preprocess.build_train import main
    with scratch() as folder:
        out = output_path(kind, folder, "train")
        argv = build_train_argv(inputs, out) + ["--negative_file", inputs["marco"] / "train.negatives.tsv", *numbers]
        check_contract("build_train", main, argv, [out], tally)


@example_settings(40)
@given(numbers=flags("depth", "skip_top", "n_sample"), kind=st.sampled_from(OUTPUT_KINDS))
def test_build_train_hn(inputs, tally, numbers, kind):
    from tevatron.preprocess.build_train_hn import main
    with scratch() as folder:
        out = output_path(kind, folder, "train-hn")
        argv = build_train_argv(inputs, out) + ["--hn_file", inputs["marco"] / "train.rank.tsv", *numbers]
        check_contract("build_train_hn", main, argv, [out], tally)


@example_settings(40)
@given(numbers=flags("q_max_len", "batch_size"), kind=st.sampled_from(OUTPUT_KINDS))
def test_tokenize_queries(inputs, tally, numbers, kind):
    from tevatron.preprocess.tokenize import queries_main
    with scratch() as folder:
        out = output_path(kind, folder, "train.query.json")
        argv = ["--tokenizer_name", TOKENIZER, "--query_file", inputs["marco"] / "train.query.txt", "--save_to", out,
                *numbers]
        check_contract("tokenize_queries", queries_main, argv, [out], tally)


@example_settings(20)
@given(numbers=flags("n_splits", "p_max_len", "batch_size"),
       workers=flag("num_workers", st.sampled_from(["0", "1", "-1", "nan", "99999999999999999999"])),
       kind=st.sampled_from(OUTPUT_KINDS))
def test_tokenize_passages(inputs, tally, numbers, workers, kind):
    from tevatron.preprocess.tokenize import passages_main
    with scratch() as folder:
        out = output_path(kind, folder, "corpus")
        argv = ["--tokenizer_name", TOKENIZER, "--file", inputs["marco"] / "corpus.tsv", "--save_to", out,
                *numbers, *(workers or ["--num_workers=1"])]
        check_contract("tokenize_passages", passages_main, argv, [out], tally)
