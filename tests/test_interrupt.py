"""Interrupted runs: SIGKILL each stage part-way, re-run the same command, get the uninterrupted outputs.

Every stage writes its outputs under hidden temporary names (``.NAME.*.tmp``) and renames them when
finished, and directory outputs get a ``.complete`` marker last, so a killed run may leave a temp file
but never a finished-looking output; a re-run then redoes (or resumes) the unfinished work.  Each test
kills the real command line once it has shown progress (a log line, a tqdm update, a temp file being
filled or a finished checkpoint), checks the outputs, re-runs, and compares with an uninterrupted run.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO_ROOT, command_python, toy_corpus, toy_groups, write_jsonl
from tevatron.tensor_files import load_encodings, load_shard_ranking, save_encodings, save_shard_ranking
from tevatron.text_formats import write_tsv

pytestmark = pytest.mark.slow

KILL_TIMEOUT_S = 300


# --------------------------------------------------------------------------- running and killing
def _env() -> dict:
    # One thread: the runs are reproducible and quick, also on a busy machine (where idle OpenMP threads
    # spinning for a busy core slow a small model down by 10x or more).
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def module_command(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    """Run ``command`` to its end: a served interpreter (tests/forkserver.py) will do; only the runs that
    are killed need one of their own."""
    served = [command_python(), *command[1:]] if command[0] == sys.executable else command
    result = subprocess.run(served, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    log.write_text(result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return result


def run_and_kill(command: list[str], log: Path, ready, delay: float = 0.0) -> str:
    """Start ``command``, SIGKILL it ``delay`` seconds after ``ready(stderr_so_far)`` is true; return its stderr.

    Fails when the command ends on its own first: then the input was too small to catch it working."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if ready(log.read_text(errors="replace")):
                time.sleep(delay)
                if process.poll() is None:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        else:
            process.kill()
            process.wait()
            pytest.fail(f"{' '.join(command)} ended (code {process.returncode}) before it could be killed part-way:"
                        f"\n{log.read_text(errors='replace')[-3000:]}")
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    return log.read_text(errors="replace")


def temp_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def tqdm_done(desc: str, at_least: int = 1):
    """``ready`` test: a tqdm bar called ``desc`` shows at least ``at_least`` finished steps."""
    pattern = re.compile(rf"{re.escape(desc)}:.*?\|\s*(\d+)/\d+")

    def ready(stderr: str) -> bool:
        return any(int(done) >= at_least for done in pattern.findall(stderr))
    return ready


# --------------------------------------------------------------------------- tokenization
def test_tokenization_killed_part_way_resumes_to_the_same_splits(tiny_bert_dir, tmp_path):
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
    rows = [(f"p{i}", f"T{i % 7}" if i % 3 else "", " ".join(words[(i * j) % 10] for j in range(1 + i % 9)))
            for i in range(20_000)]
    write_tsv(tmp_path / "corpus.tsv", rows)

    def command(out: Path) -> list[str]:
        return [sys.executable, str(REPO_ROOT / "msmarco-passage-ranking" / "tokenize_passages.py"),
                "--tokenizer_name", str(tiny_bert_dir), "--file", str(tmp_path / "corpus.tsv"),
                "--save_to", str(out), "--n_splits", "4", "--num_workers", "1", "--batch_size", "256"]

    out = tmp_path / "killed"
    run_and_kill(command(out), tmp_path / "killed.log", lambda err: "split00.json (" in err)
    assert (out / "split00.json").is_file()
    assert not (out / ".complete").exists(), "a killed run must not mark its folder complete"
    assert not (out / "split03.json").exists(), "the kill landed after the last split"
    rerun = run(command(out), tmp_path / "rerun.log")
    assert "splits already written; resuming" in rerun.stderr
    assert (out / ".complete").is_file()

    run(command(tmp_path / "straight"), tmp_path / "straight.log")
    names = [f"split{i:02d}.json" for i in range(4)]
    assert sorted(p.name for p in out.glob("split*.json")) == names
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


# --------------------------------------------------------------------------- encoding
def test_encoding_killed_part_way_leaves_no_output_and_reruns_equal(tiny_bert_dir, tmp_path):
    n_passages = 20_000  # ~3 s of encoding in one thread
    corpus = write_jsonl(tmp_path / "corpus.json", toy_corpus(n_passages, max_len=24))

    def command(output: Path) -> list[str]:
        return module_command("tevatron.driver.encode", "--output_dir", output.parent, "--model_name_or_path",
                              tiny_bert_dir, "--per_device_eval_batch_size", 8, "--encode_in_path", corpus,
                              "--encoded_save_path", output, "--p_max_len", 32)

    output = tmp_path / "out" / "corpus.pt"
    run_and_kill(command(output), tmp_path / "killed.log", tqdm_done("encoding", 100))
    assert not output.exists(), "a killed encoding run left a finished-looking file"
    rerun = run(command(output), tmp_path / "rerun.log")
    assert "skipping" not in rerun.stderr
    straight = tmp_path / "straight" / "corpus.pt"
    run(command(straight), tmp_path / "straight.log")
    reps, ids = load_encodings(output)
    expected_reps, expected_ids = load_encodings(straight)
    assert ids == expected_ids and len(ids) == n_passages
    assert torch.allclose(reps, expected_reps, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- search
def test_search_killed_part_way_leaves_no_output_and_reruns_equal(tmp_path):
    rng = np.random.default_rng(5)
    save_encodings(tmp_path / "corpus.pt", rng.standard_normal((200_000, 64), dtype=np.float32),
                   [f"p{i}" for i in range(200_000)])
    save_encodings(tmp_path / "queries.pt", rng.standard_normal((3000, 64), dtype=np.float32),
                   [f"q{i}" for i in range(3000)])

    def command(output: Path) -> list[str]:
        return module_command("tevatron.faiss_retriever", "--query_reps", tmp_path / "queries.pt",
                              "--passage_reps", tmp_path / "corpus.pt", "--depth", 20, "--batch_size", 16,
                              "--save_ranking_to", output, "--backend", "torch")  # auto may differ per process (rounding)

    output = tmp_path / "scores" / "rank.pt"
    # no progress bar without a terminal: kill once the search has started (it runs ~2 s in one thread)
    run_and_kill(command(output), tmp_path / "killed.log", lambda err: "; backend torch" in err, delay=0.3)
    assert not output.exists(), "a killed search left a finished-looking file"
    rerun = run(command(output), tmp_path / "rerun.log")
    assert "skipping" not in rerun.stderr
    straight = tmp_path / "straight" / "rank.pt"
    run(command(straight), tmp_path / "straight.log")
    got, expected = load_shard_ranking(output), load_shard_ranking(straight)
    assert got["query_ids"] == expected["query_ids"] and got["passage_ids"] == expected["passage_ids"]
    assert torch.equal(got["indices"], expected["indices"]) and torch.equal(got["scores"], expected["scores"])


# --------------------------------------------------------------------------- reduction
def test_reduction_killed_while_writing_leaves_no_output_and_reruns_equal(tmp_path):
    n_queries, depth, n_shards, per_shard = 8000, 100, 12, 1000
    query_ids = [f"q{i}" for i in range(n_queries)]
    save_encodings(tmp_path / "queries.pt", np.zeros((n_queries, 2), dtype=np.float32), query_ids)
    rng = np.random.default_rng(3)
    score_dir = tmp_path / "scores"
    for shard in range(n_shards):
        scores = -np.sort(-rng.standard_normal((n_queries, depth), dtype=np.float32), axis=1)
        indices = np.argsort(rng.random((n_queries, per_shard)), axis=1)[:, :depth]
        save_shard_ranking(score_dir / f"shard{shard:02d}.pt", query_ids, [f"s{shard}-p{i}" for i in range(per_shard)],
                           scores, indices)

    def command(output: Path) -> list[str]:
        return module_command("tevatron.faiss_retriever.reducer", "--score_dir", score_dir, "--query",
                              tmp_path / "queries.pt", "--save_ranking_to", output)

    output = tmp_path / "out" / "rank.txt"

    def writing(_stderr: str) -> bool:  # the temp file has received its first buffered block
        return any(path.stat().st_size > 0 for path in temp_files(output.parent, output.name)) if \
            output.parent.is_dir() else False

    run_and_kill(command(output), tmp_path / "killed.log", writing)
    assert temp_files(output.parent, output.name), "the kill should land while the ranking is written"
    assert not output.exists(), "a killed reducer left a finished-looking file"
    run(command(output), tmp_path / "rerun.log")
    straight = tmp_path / "straight" / "rank.txt"
    run(command(straight), tmp_path / "straight.log")
    assert output.read_bytes() == straight.read_bytes()
    assert len(output.read_text().splitlines()) == n_queries * depth


# --------------------------------------------------------------------------- training
def _complete_checkpoints(out: Path) -> list[Path]:
    from tevatron.trainer import checkpoint_is_complete

    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and checkpoint_is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_training_killed_after_a_checkpoint_resumes_to_the_same_weights(tiny_bert_dir, tmp_path):
    """Killed after a few finished checkpoints, the same command resumes from the newest complete one
    and ends with the weights of an uninterrupted run.  Newer checkpoints are passed over with a warning:
    one the kill left unfinished (no completion marker), and ones whose files a crash cut afterwards
    (a cut model.safetensors, a cut optimizer.pt), which must not end in a safetensors traceback."""
    from tevatron.modeling import DenseModel
    from tevatron.trainer import checkpoint_cpu_linear

    data = write_jsonl(tmp_path / "data" / "train.jsonl", toy_groups(200, n_negatives=4))

    def command(out: Path, cpu_linear: str = "auto") -> list[str]:
        return module_command("tevatron.driver.train", "--output_dir", out, "--model_name_or_path", tiny_bert_dir,
                              "--train_dir", data.parent, "--per_device_train_batch_size", 4,
                              "--train_n_passages", 3, "--learning_rate", 1e-3, "--seed", 7, "--logging_steps", 10,
                              "--q_max_len", 16, "--p_max_len", 48, "--cache_dir", tmp_path / "cache",
                              "--save_strategy", "steps", "--save_steps", 2, "--save_total_limit", 3,
                              "--num_train_epochs", 1, "--dataloader_num_workers", 0, "--cpu_linear", cpu_linear)

    out = tmp_path / "killed"
    run_and_kill(command(out), tmp_path / "killed.log", lambda _err: len(_complete_checkpoints(out)) >= 3)
    assert not (out / "model.safetensors").exists() and not (out / "tevatron_config.json").exists()
    assert not (out / ".complete").exists()
    *_, resume_from, cut_optimizer, cut_model = _complete_checkpoints(out)
    step = int(cut_model.name.split("-")[1])
    assert step < 50, "the kill landed after training ended"
    midway = DenseModel.load(resume_from).state_dict()
    kernel = checkpoint_cpu_linear(resume_from)  # what --cpu_linear auto measured in the killed run
    assert kernel in ("onednn", "torch")
    _cut(cut_model / "model.safetensors")
    _cut(cut_optimizer / "optimizer.pt")
    # A kill while saving the next checkpoint leaves it without its completion marker.
    unfinished = out / f"checkpoint-{step + 2}"
    if not unfinished.exists():
        shutil.copytree(cut_model, unfinished)
        (unfinished / "checkpoint_complete.json").unlink()

    rerun = run(command(out), tmp_path / "rerun.log")
    assert f"{unfinished}: unfinished (no completion marker" in rerun.stderr
    assert re.search(rf"WARNING .*{re.escape(str(cut_model))}: model.safetensors is cut \(\d+ of \d+ bytes\); "
                     "removing it", rerun.stderr), rerun.stderr[-3000:]
    assert f"{cut_optimizer}: optimizer.pt is cut" in rerun.stderr
    assert f"resuming the interrupted run from {resume_from}" in rerun.stderr
    # a fresh measurement could pick the other kernel, which rounds otherwise: the resumed steps keep it
    assert f"resuming with the linear kernel the interrupted run used ({kernel})" in rerun.stderr
    assert (out / ".complete").is_file() and not list(out.glob("checkpoint-*"))
    run(command(tmp_path / "straight", kernel), tmp_path / "straight.log")
    got = DenseModel.load(out).state_dict()
    expected = DenseModel.load(tmp_path / "straight").state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=0), name
    assert any(not torch.equal(midway[n], expected[n]) for n in expected), "the resumed run trained further"


@pytest.mark.parametrize("recorded", ["onednn", "torch"])
def test_a_resumed_run_keeps_the_cpu_linear_kernel_its_checkpoint_recorded(tmp_path, monkeypatch, recorded):
    """--cpu_linear auto measures anew in each process; resuming takes the checkpoint's kernel instead,
    whatever the new measurement says, while an explicit --cpu_linear and a fresh run are left as asked."""
    from types import SimpleNamespace

    from tevatron import cpu_kernels
    from tevatron.trainer import checkpoint_cpu_linear, mark_checkpoint_complete, use_cpu_kernels

    if not cpu_kernels.onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    other = {"onednn": "torch", "torch": "onednn"}[recorded]
    monkeypatch.setattr(cpu_kernels, "onednn_is_faster", lambda: other == "onednn")  # the new measurement
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    mark_checkpoint_complete(folder, 4, {"seed": 7}, recorded)
    assert checkpoint_cpu_linear(folder) == recorded

    def kernel(cpu_linear: str, resume_from) -> str:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        args = SimpleNamespace(cpu_linear=cpu_linear, cpu_dropout="torch")
        training = SimpleNamespace(device=torch.device("cpu"), resume_from_checkpoint=resume_from)
        return use_cpu_kernels(model, args, training)

    assert kernel("auto", str(folder)) == recorded
    assert kernel("auto", None) == other
    assert kernel(other, str(folder)) == other
    mark_checkpoint_complete(folder, 4, {"seed": 7})  # a checkpoint from before kernels were recorded
    assert checkpoint_cpu_linear(folder) is None and kernel("auto", str(folder)) == other


def test_unfinished_checkpoints_are_skipped_and_removed(tmp_path):
    from tevatron.files import InputError
    from tevatron.trainer import CHECKPOINT_MARKER, checkpoint_to_resume, mark_checkpoint_complete

    run_record = {"learning_rate": 0.001}

    def checkpoint(out: Path, step: int, marked_step: int | None) -> Path:
        path = out / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"weights")
        if marked_step is not None:
            mark_checkpoint_complete(path, marked_step, run_record)
        return path

    out = tmp_path / "out"
    done = checkpoint(out, 2, 2)
    checkpoint(out, 4, None)                                          # killed before the marker
    _cut(checkpoint(out, 6, 6) / "model.safetensors")                 # a file cut after the marker
    (checkpoint(out, 8, 8) / "model.safetensors").unlink()            # a file lost
    checkpoint(out, 10, 7)                                            # not this checkpoint's marker
    cut_marker = checkpoint(out, 12, 12) / CHECKPOINT_MARKER
    cut_marker.write_text(cut_marker.read_text()[:9])                 # killed while writing the marker
    assert checkpoint_to_resume(str(out), run_record) == str(done)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]

    with pytest.raises(InputError, match=r"holds checkpoints of an interrupted run with other arguments "
                                         r"\(learning_rate: 0.001 -> 0.002\)"):
        checkpoint_to_resume(str(out), {"learning_rate": 0.002})

    only_unfinished = tmp_path / "fresh"
    checkpoint(only_unfinished, 2, None)
    assert checkpoint_to_resume(str(only_unfinished)) is None and not any(only_unfinished.iterdir())

    other = tmp_path / "other"
    checkpoint(other, 2, None)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        checkpoint_to_resume(str(other))
