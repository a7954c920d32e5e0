"""A few training steps from the real all-MiniLM-L6-v2 on SciFact training queries (slow; CI runs it)."""
from __future__ import annotations

import random

import pytest
import torch

from helpers import run_module, write_jsonl
from tevatron.text_formats import iter_jsonl, positives_from_qrels, read_qrels
from tevatron.modeling import DenseModel
from tevatron.tokenization import load_tokenizer

pytestmark = pytest.mark.slow


def scifact_groups(scifact_dir, tokenizer, n_groups=24, n_negatives=7, seed=0):
    corpus = {str(r["_id"]): f'{r["title"]} {tokenizer.sep_token} {r["text"]}'
              for _, r in iter_jsonl(scifact_dir / "corpus.jsonl")}
    queries = {str(r["_id"]): r["text"] for _, r in iter_jsonl(scifact_dir / "queries.jsonl")}
    positives = positives_from_qrels(read_qrels(scifact_dir / "qrels" / "train.tsv"))
    rng = random.Random(seed)
    pids = sorted(corpus)
    chosen = sorted(positives)[:n_groups]

    def ids(text, length):
        return tokenizer(text, add_special_tokens=False, truncation=True, max_length=length)["input_ids"]

    groups = []
    for qid in chosen:
        negatives = [p for p in rng.sample(pids, n_negatives + 5) if p not in positives[qid]][:n_negatives]
        groups.append({"query": ids(queries[qid], 30), "positives": [ids(corpus[p], 62) for p in positives[qid]],
                       "negatives": [ids(corpus[p], 62) for p in negatives]})
    return groups


def test_minilm_trains_on_scifact(scifact_dir, minilm_dir, tmp_path):
    tokenizer = load_tokenizer(str(minilm_dir))
    groups = scifact_groups(scifact_dir, tokenizer)
    train_file = write_jsonl(tmp_path / "train" / "train.jsonl", groups)
    out = tmp_path / "model"
    result = run_module("tevatron.driver.train", "--output_dir", out, "--model_name_or_path", minilm_dir,
                        "--pooling", "auto", "--train_dir", train_file.parent, "--per_device_train_batch_size", 4,
                        "--train_n_passages", 4, "--q_max_len", 32, "--p_max_len", 64, "--learning_rate", 2e-5,
                        "--max_steps", 4, "--logging_steps", 1, "--save_steps", 1000, "--seed", 1,
                        "--cache_dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--pooling auto follows it" in result.stderr
    model = DenseModel.load(out).eval()
    assert model.dense_config.pooling == "mean"
    original = DenseModel.load(minilm_dir, pooling="mean").eval()
    from tevatron.data import SequencePadder
    padder = SequencePadder(tokenizer)
    with torch.no_grad():
        q = model.encode_query(padder([g["query"] for g in groups], 32))
        p = model.encode_passage(padder([g["positives"][0] for g in groups], 64))
        n = model.encode_passage(padder([g["negatives"][0] for g in groups], 64))
        q0 = original.encode_query(padder([g["query"] for g in groups], 32))
    assert not torch.allclose(q, q0), "training changed the encoder"
    # a real model on real data: the positive beats a random negative for nearly every query
    wins = ((q * p).sum(1) > (q * n).sum(1)).float().mean().item()
    assert wins >= 0.9, wins
