"""Argument ranges at parse time, output pre-checks, repeated ids, degenerate encodings, write failures."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from transformers import HfArgumentParser

from helpers import REPO_ROOT
from tevatron.argument_checks import parse_dataclasses
from tevatron.arguments import DataArguments, EncodeArguments, ModelArguments, TevatronTrainingArguments
from tevatron.cli import CommandError
from tevatron.data import read_encode_records
from tevatron.driver.encode import check_not_degenerate
from tevatron.faiss_retriever import reducer, retriever
from tevatron.files import InputError, OutputError, atomic_text_writer, check_output_dir, check_output_file
from tevatron.preprocess import bm25, build_train, build_train_hn, layout, tokenize
from tevatron.tensor_files import save_encodings


# --------------------------------------------------------------------------- dataclass arguments
def parse_driver(args, training=True):
    third = TevatronTrainingArguments if training else EncodeArguments
    parser = HfArgumentParser((ModelArguments, DataArguments, third))
    return parse_dataclasses(parser, ["--model_name_or_path", "m", "--output_dir", "out", *map(str, args)])


@pytest.mark.parametrize("args, message", [
    (["--per_device_train_batch_size", 0], "--per_device_train_batch_size must be at least 1, not 0"),
    (["--per_device_eval_batch_size", -3], "--per_device_eval_batch_size must be at least 1, not -3"),
    (["--encode_num_shard", 3, "--encode_shard_index", 5],
     "--encode_shard_index must be in [0, --encode_num_shard) = [0, 3), not 5"),
    (["--encode_num_shard", 0], "--encode_num_shard must be at least 1, not 0"),
    (["--train_n_passages", 0], "--train_n_passages must be between 1 (the positive) and 4096, not 0"),
    (["--temperature", 0], "--temperature must be greater than 0, not 0.0"),
    (["--temperature", -1], "--temperature must be greater than 0, not -1.0"),
    (["--temperature", "nan"], "--temperature must be a finite number, not nan"),
    (["--temperature", "inf"], "--temperature must be a finite number, not inf"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number, not nan"),
    (["--learning_rate=-1e-5"], "--learning_rate must be greater than 0, not -1e-05"),
    (["--q_max_len", 0], "--q_max_len must be between 1 and 1000000, not 0"),
    (["--p_max_len", 0], "--p_max_len must be between 1 and 1000000, not 0"),
    (["--gc_p_chunk_size", 0], "--gc_p_chunk_size must be at least 1, not 0"),
    (["--warmup_ratio", 1.5], "--warmup_ratio must be in [0, 1], not 1.5"),
    (["--adam_beta2", 1], "--adam_beta2 must be in [0, 1), not 1.0"),
    (["--max_steps", 0], "--max_steps must be positive (or -1: not set), not 0"),
    (["--num_train_epochs", "inf"], "--num_train_epochs must be a finite number, not inf"),
    (["--seed", -1], "--seed must be between 0 and 4294967295, not -1"),
    (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number, not nan"),
])
def test_driver_argument_ranges(args, message):
    with pytest.raises(CommandError) as caught:
        parse_driver(args)
    assert str(caught.value) == message


def test_encode_arguments_checked_too():
    with pytest.raises(CommandError, match="--per_device_eval_batch_size must be at least 1, not 0"):
        parse_driver(["--per_device_eval_batch_size", 0], training=False)
    model_args, data_args, _ = parse_driver(["--q_max_len", 4], training=False)
    assert data_args.q_max_len == 4 and model_args.temperature == 1.0


def test_an_error_starts_a_line_of_its_own_after_an_open_progress_bar(capsys):
    """A training loop stopped by bad input leaves its bar's line open; the error line must not be glued to it."""
    from tqdm.auto import tqdm

    from tevatron.cli import error_exit

    bar = tqdm(total=3, file=sys.stderr)
    bar.update(1)
    assert error_exit("x.json:3: bad") == 2
    bar.close()
    assert "error: x.json:3: bad" in capsys.readouterr().err.splitlines()
    assert error_exit("no bar open") == 2 and capsys.readouterr().err == "error: no bar open\n"


def test_host_memory_is_pinned_only_for_an_accelerator(monkeypatch):
    """Without an accelerator pinning does nothing but make torch warn in every data loader."""
    from tevatron.reranker.arguments import RerankerTrainingArguments

    for arguments in (TevatronTrainingArguments, RerankerTrainingArguments):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
        assert arguments(output_dir="out").dataloader_pin_memory is False
        assert arguments(output_dir="out", dataloader_pin_memory=False).dataloader_pin_memory is False
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
        assert arguments(output_dir="out").dataloader_pin_memory is True


def test_search_and_reduce_arguments():
    base = ["--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to", "r.pt"]
    with pytest.raises(CommandError, match="^--batch_size must be at least 1, not 0$"):
        retriever.parse_arguments(base + ["--batch_size", "0"])
    with pytest.raises(CommandError, match="^--passage_block_size must be at least 0, not -1$"):
        retriever.parse_arguments(base + ["--passage_block_size", "-1"])
    with pytest.raises(CommandError, match="^--depth must be at least 1, not 0$"):
        reducer.parse_arguments(["--score_dir", "d", "--query", "q", "--save_ranking_to", "r", "--depth", "0"])


# --------------------------------------------------------------------------- argparse parsers
PREPROCESS_PARSERS = {
    "bm25": (bm25.build_parser, []),
    "build_train": (build_train.build_parser, ["--tokenizer_name", "t", "--qrels", "a", "--queries", "b",
                                               "--collection", "c", "--save_to", "o", "--negative_file", "n"]),
    "build_train_hn": (build_train_hn.build_parser, ["--tokenizer_name", "t", "--qrels", "a", "--queries", "b",
                                                     "--collection", "c", "--save_to", "o", "--hn_file", "h"]),
    "layout": (layout.build_parser, ["--source", "s"]),
    "tokenize_queries": (tokenize.build_queries_parser, ["--tokenizer_name", "t", "--query_file", "q",
                                                         "--save_to", "o"]),
    "tokenize_passages": (tokenize.build_passages_parser, ["--tokenizer_name", "t", "--file", "f", "--save_to", "o"]),
}


@pytest.mark.parametrize("parser_name, flag, value, message", [
    ("bm25", "--depth", "-1", "must be at least 1, not -1"),
    ("bm25", "--dev_depth", "0", "must be at least 1, not 0"),
    ("bm25", "--b", "nan", "must be a finite number, not nan"),
    ("bm25", "--b", "1.5", "must be in [0, 1], not 1.5"),
    ("bm25", "--k1", "-inf", "must be a finite number, not -inf"),
    ("bm25", "--batch_size", "0", "must be at least 1, not 0"),
    ("bm25", "--threads", "0", "must be at least 1, not 0"),
    ("build_train", "--n_sample", "0", "must be at least 1, not 0"),
    ("build_train", "--q_max_len", "0", "must be between 1 and 1000000, not 0"),
    ("build_train", "--seed", "-5", "must be between 0 and 4294967295, not -5"),
    ("build_train", "--shard_size", "0", "must be at least 1, not 0"),
    ("build_train_hn", "--depth", "0", "must be at least 1, not 0"),
    ("build_train_hn", "--skip_top", "-1", "must be at least 0, not -1"),
    ("layout", "--timeout", "nan", "must be a finite number, not nan"),
    ("layout", "--timeout", "0", "must be between 0.001 and 86400, not 0.0"),
    ("layout", "--timeout", "1e30", "must be between 0.001 and 86400, not 1e+30"),
    ("tokenize_queries", "--q_max_len", "0", "must be between 1 and 1000000, not 0"),
    ("tokenize_passages", "--n_splits", "0", "must be at least 1, not 0"),
    ("tokenize_passages", "--num_workers", "0", "must be at least 1, not 0"),
    ("tokenize_passages", "--p_max_len", "99999999999999999999", "must be between 1 and 1000000, not"),
    ("tokenize_passages", "--batch_size", "abc", "not an integer: 'abc'"),
])
def test_preprocess_argument_ranges(parser_name, flag, value, message, capsys):
    build, required = PREPROCESS_PARSERS[parser_name]
    with pytest.raises(SystemExit) as caught:
        build().parse_args(required + [f"{flag}={value}"])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"error: argument {flag}: {message}" in errors[0]


def test_skip_top_at_depth_rejected(capsys):
    build, required = PREPROCESS_PARSERS["build_train_hn"]
    with pytest.raises(SystemExit) as caught:
        build_train_hn._main(required + ["--depth", "3", "--skip_top", "3"])
    assert caught.value.code == 2
    assert "--skip_top 3 leaves no ranks to take negatives from (--depth 3)" in capsys.readouterr().err


# --------------------------------------------------------------------------- output pre-checks
def test_output_file_checks(tmp_path):
    (tmp_path / "plain").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match=r"folder: is a directory; give a file name for this output$"):
        check_output_file(tmp_path / "folder")
    with pytest.raises(OutputError, match=r"plain/sub/out.tsv: cannot be created: .*plain is not a directory$"):
        check_output_file(tmp_path / "plain" / "sub" / "out.tsv")
    with pytest.raises(OutputError, match=r"^/proc/nowhere/out.tsv: cannot write in /proc \("):
        check_output_file("/proc/nowhere/out.tsv")
    check_output_file(tmp_path / "new" / "deeper" / "out.tsv")      # missing folders are made later
    check_output_file(tmp_path / "plain")                             # an existing file is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "plain"], "the probe leaves nothing"


def test_output_dir_checks(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(OutputError, match=r"plain: is not a directory$"):
        check_output_dir(tmp_path / "plain")
    with pytest.raises(OutputError, match=r"plain/out: cannot be created: .*plain is not a directory$"):
        check_output_dir(tmp_path / "plain" / "out")
    with pytest.raises(OutputError, match=r"^/proc/out: cannot write in /proc \("):
        check_output_dir("/proc/out")
    check_output_dir(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists(), "the check creates nothing"


def test_read_only_folder_is_probed(tmp_path, monkeypatch):
    """root passes os.access on a read-only mount; the probe file is what finds it out."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=r"out.tsv: cannot write in .* \(Read-only file system\)$"):
        check_output_file(tmp_path / "out.tsv")


# --------------------------------------------------------------------------- write failures
FILE_TOO_LARGE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from tevatron.files import atomic_text_writer, OutputError
from tevatron.tensor_files import save_encodings
import numpy as np
try:
    if sys.argv[2] == "text":
        with atomic_text_writer(sys.argv[1]) as out:
            for _ in range(10000):
                out.write("q1\\tp1\\t1.0\\n")
    else:
        save_encodings(sys.argv[1], np.ones((100, 64), dtype=np.float32), [str(i) for i in range(100)])
except OutputError as err:
    print(err)
"""


@pytest.mark.parametrize("kind", ["text", "encodings"])
def test_file_too_large_keeps_previous_output(tmp_path, kind):
    output = tmp_path / "out"
    output.write_text("previous complete output\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", FILE_TOO_LARGE, str(output), kind], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == f"{output}: could not write (File too large)", result.stderr
    assert output.read_text() == "previous complete output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "temporary file removed"


def test_read_errors_inside_a_writer_are_not_write_failures(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_text_writer(tmp_path / "out.tsv"):
            open(tmp_path / "missing-input.tsv")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- repeated ids, shard globs
def test_repeated_text_id_in_encode_input(tmp_path):
    (tmp_path / "a.json").write_text('{"text_id": "p1", "text": [5]}\n{"text_id": "p2", "text": [6]}\n')
    (tmp_path / "b.json").write_text('{"text_id": "p3", "text": [5]}\n\n{"text_id": "p2", "text": [7]}\n')
    with pytest.raises(InputError, match=r"b.json:3: text_id 'p2' repeated \(first on .*a.json:2\)$"):
        read_encode_records([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    with pytest.raises(InputError, match=r"a.json: given twice in the encode input$"):
        read_encode_records([str(tmp_path / "a.json"), str(tmp_path / "a.json")])
    (tmp_path / "c.json").write_text('{"text_id": 7, "text": [5]}\n{"text_id": "7", "text": [6]}\n')
    with pytest.raises(InputError, match=r"c.json:2: text_id '7' repeated \(first on line 1\)$"):
        read_encode_records([str(tmp_path / "c.json")])


def test_passage_ids_repeated_within_or_across_shards(tmp_path):
    vectors = np.eye(3, dtype=np.float32)
    save_encodings(tmp_path / "a.pt", vectors, ["p1", "p2", "p3"])
    save_encodings(tmp_path / "b.pt", vectors, ["p4", "p5", "p2"])
    with pytest.raises(InputError, match=r"b.pt: passage id 'p2' also in .*a.pt$"):
        retriever.load_passage_shards(str(tmp_path / "*.pt"))
    save_encodings(tmp_path / "c.pt", vectors, ["x", "y", "x"])
    with pytest.raises(InputError, match=r"c.pt: passage id 'x' repeated in this file$"):
        retriever.load_passage_shards(str(tmp_path / "c.pt"))


def test_query_file_among_passage_shards(tmp_path):
    save_encodings(tmp_path / "corpus.pt", np.eye(3, dtype=np.float32), ["p1", "p2", "p3"])
    save_encodings(tmp_path / "query.pt", np.eye(3, dtype=np.float32), ["q1", "q2", "q3"])
    with pytest.raises(InputError, match=r"query.pt: the query encodings are among the passage files matched by"):
        retriever.check_query_file_not_a_shard(tmp_path / "query.pt", str(tmp_path / "*.pt"))
    retriever.check_query_file_not_a_shard(tmp_path / "query.pt", str(tmp_path / "corpus*.pt"))


# --------------------------------------------------------------------------- degenerate encodings
def test_identical_vectors_for_distinct_texts_rejected():
    same = torch.ones((3, 4)) + torch.tensor([0.0, 1e-7, -1e-7]).unsqueeze(1)
    with pytest.raises(CommandError, match=r"^enc.pt: all 3 vectors are identical although the texts differ; "
                                           r"nothing written \(likely cause: --p_max_len 3 "):
        check_not_degenerate(same, [[1, 2], [1, 3], [4]], "enc.pt", 3, False, "cls")
    check_not_degenerate(same, [[1, 2]] * 3, "enc.pt", 3, False, "cls")          # the same text thrice
    check_not_degenerate(torch.eye(3), [[1], [2], [3]], "enc.pt", 3, False, "cls")
    check_not_degenerate(torch.ones((1, 4)), [[1]], "enc.pt", 3, False, "cls")


def test_non_finite_vectors_rejected():
    reps = torch.eye(3)
    reps[1, 2] = float("nan")
    with pytest.raises(CommandError, match=r"^enc.pt: 1 of 3 vectors hold NaN or inf \(the first is input row 1\); "
                                           r"nothing written"):
        check_not_degenerate(reps, [[1], [2], [3]], "enc.pt", 3, False, "cls")
    reps[1, 2] = float("inf")
    with pytest.raises(CommandError, match="vectors hold NaN or inf"):
        check_not_degenerate(reps, [[1], [2], [3]], "enc.pt", 3, False, "cls")
