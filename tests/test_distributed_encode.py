"""Encoding under torchrun (2 CPU processes, gloo): the one output equals a single process's, carries the
same provenance record (each run takes the other's output as up to date), and a failure anywhere stops
every rank with one error line and no output."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT, error_lines, make_tiny_bert, run_module, toy_corpus, write_jsonl
from tevatron.tensor_files import encodings_provenance, load_encodings

pytestmark = pytest.mark.slow  # every test runs torchrun and the encode command line

WORLD = 2
N_TEXTS = 23  # odd: the two ranks' shares differ in size


def torchrun(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def encode_args(model_dir, in_path, out_path, *extra):
    return ["--output_dir", out_path.parent, "--model_name_or_path", model_dir, "--per_device_eval_batch_size", 4,
            "--encode_in_path", in_path, "--encoded_save_path", out_path, "--p_max_len", 64, "--q_max_len", 16,
            *extra]


@pytest.fixture(scope="module")
def model_and_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp_encode")
    return make_tiny_bert(root / "model"), write_jsonl(root / "corpus.json", toy_corpus(N_TEXTS, max_len=70))


@pytest.fixture(scope="module")
def encoded(model_and_corpus, tmp_path_factory):
    """``encoded(side, shard)``: a folder where one process wrote single.pt and a torchrun launch mp.pt, and the
    launch's result; made once per case (the next test reads the passages' outputs again)."""
    model_dir, corpus = model_and_corpus
    made = {}

    def encode_both(side: str, shard: tuple):
        if (side, shard) not in made:
            folder = tmp_path_factory.mktemp("encoded")
            extra = [*shard, *(["--encode_is_qry"] if side == "queries" else [])]
            single = run_module("tevatron.driver.encode", *encode_args(model_dir, corpus, folder / "single.pt", *extra))
            assert single.returncode == 0, single.stderr[-3000:]
            launched = torchrun("-m", "tevatron.driver.encode",
                                *encode_args(model_dir, corpus, folder / "mp.pt", *extra))
            made[side, shard] = folder, launched
        return made[side, shard]
    return encode_both


@pytest.mark.parametrize("side, shard", [("passages", ()), ("queries", ()),
                                         ("passages", ("--encode_num_shard", 2, "--encode_shard_index", 1)),
                                         ("queries", ("--encode_num_shard", 3, "--encode_shard_index", 0))])
def test_two_processes_write_the_single_process_output(encoded, side, shard):
    folder, launched = encoded(side, shard)
    assert launched.returncode == 0, launched.stderr[-3000:]
    reps, ids = load_encodings(folder / "mp.pt")
    expected_reps, expected_ids = load_encodings(folder / "single.pt")
    assert ids == expected_ids and len(ids) < N_TEXTS if shard else ids == expected_ids
    assert torch.allclose(reps, expected_reps, atol=1e-6, rtol=0), (reps - expected_reps).abs().max()
    assert encodings_provenance(folder / "mp.pt") == encodings_provenance(folder / "single.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["mp.pt", "single.pt"]  # no staging folder left
    # one bar for the whole job (texts of every rank), not one per process
    assert f"{len(ids)}/{len(ids)}" in launched.stderr and "batch/s" not in launched.stderr
    assert launched.stderr.count("saved ") == 1  # the other rank logs warnings only


def test_each_run_takes_the_others_output_as_up_to_date(model_and_corpus, encoded, tmp_path):
    model_dir, corpus = model_and_corpus
    folder, launched = encoded("passages", ())
    assert launched.returncode == 0, launched.stderr[-3000:]
    for name in ("single.pt", "mp.pt"):  # copies: this test rewrites one
        shutil.copy(folder / name, tmp_path / name)
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in ("single.pt", "mp.pt")}
    single_on_mp = run_module("tevatron.driver.encode", *encode_args(model_dir, corpus, tmp_path / "mp.pt"))
    mp_on_single = torchrun("-m", "tevatron.driver.encode", *encode_args(model_dir, corpus, tmp_path / "single.pt"))
    for result in (single_on_mp, mp_on_single):
        assert result.returncode == 0 and "is up to date" in result.stderr, result.stderr[-3000:]
    assert mp_on_single.stderr.count("is up to date") == 1  # rank 0 decides and says it, for every rank
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in stamps} == stamps
    redo = torchrun("-m", "tevatron.driver.encode", *encode_args(model_dir, corpus, tmp_path / "single.pt",
                                                                  "--encode_is_qry"))
    assert redo.returncode == 0 and "re-encoding" in redo.stderr, redo.stderr[-3000:]
    assert encodings_provenance(tmp_path / "single.pt")["side"] == "query"


def test_bad_input_is_one_error_line_and_every_rank_fails(model_and_corpus, tmp_path):
    model_dir, _ = model_and_corpus
    bad = tmp_path / "bad.json"
    bad.write_text('{"text_id": "a", "text": [1000, 1001]}\n{"text_id": "b"}\n')
    result = torchrun("-m", "tevatron.driver.encode", *encode_args(model_dir, bad, tmp_path / "out" / "p.pt"))
    assert result.returncode != 0
    assert error_lines(result.stderr) == [f"error: {bad}:2: missing field 'text'"], result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr and "exitcode  : 1" not in result.stderr  # both ranks: status 2
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_rank_failing_mid_encoding_stops_all_and_leaves_no_output(model_and_corpus, tmp_path):
    model_dir, corpus = model_and_corpus
    out = tmp_path / "out" / "p.pt"
    result = torchrun(REPO_ROOT / "tests" / "encode_crash_worker.py", *encode_args(model_dir, corpus, out))
    assert result.returncode != 0
    assert error_lines(result.stderr) == [
        "error: rank 1 failed (RuntimeError: simulated device failure); see its traceback"], result.stderr[-3000:]
    assert "Traceback" in result.stderr and "in failing_encode_texts" in result.stderr  # the failing rank says where
    assert list(out.parent.iterdir()) == []  # no output, no staging folder, no temp file
