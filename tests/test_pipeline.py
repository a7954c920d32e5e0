"""End to end: get_data.sh, run.sh, mine_hard_neg.sh and train_hn.sh on a slice of SciFact with a tiny
random model; every output exists and is well formed, and a re-run skips finished steps."""
from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from helpers import REPO_ROOT
from tevatron.tensor_files import load_encodings
from tevatron.text_formats import iter_jsonl, read_qrels, read_run

pytestmark = pytest.mark.slow


def make_slice(scifact_dir, out_dir, n_train=16, n_test=8, n_extra=150, seed=0):
    """A BEIR folder with a few dozen queries and a few hundred passages (their positives included)."""
    qrels = {split: read_qrels(scifact_dir / "qrels" / f"{split}.tsv") for split in ("train", "test")}
    chosen = {"train": sorted(qrels["train"])[:n_train], "test": sorted(qrels["test"])[:n_test]}
    needed = {pid for split, qids in chosen.items() for q in qids for pid in qrels[split][q]}
    docs = [record for _, record in iter_jsonl(scifact_dir / "corpus.jsonl")]
    others = [d for d in docs if d["_id"] not in needed]
    keep = [d for d in docs if d["_id"] in needed] + random.Random(seed).sample(others, n_extra)
    (out_dir / "qrels").mkdir(parents=True)
    with open(out_dir / "corpus.jsonl", "w") as handle:
        handle.writelines(json.dumps(d) + "\n" for d in keep)
    wanted = set(chosen["train"]) | set(chosen["test"])
    with open(out_dir / "queries.jsonl", "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for _, r in iter_jsonl(scifact_dir / "queries.jsonl") if r["_id"] in wanted)
    for split, qids in chosen.items():
        with open(out_dir / "qrels" / f"{split}.tsv", "w") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            handle.writelines(f"{q}\t{p}\t{r}\n" for q in qids for p, r in qrels[split][q].items())
    return len(keep), chosen


def run_script(name, env):
    return subprocess.run(["bash", str(REPO_ROOT / name)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_four_scripts_end_to_end(scifact_dir, tiny_bert_dir, tmp_path):
    n_passages, chosen = make_slice(scifact_dir, tmp_path / "beir")
    env = dict(os.environ, PROFILE="quick", DATA=str(tmp_path / "beir"), DATA_DIR=str(tmp_path / "data"),
               OUT=str(tmp_path / "out"), MODEL=str(tiny_bert_dir), EPOCHS="1", HN_EPOCHS="1", BATCH="4",
               N_PASSAGES="3", WORKERS="0", ZERO_SHOT="0", HF_HUB_OFFLINE="1", N_SAMPLE="8", HN_DEPTH="30",
               ENCODE_BATCH="64", PYTHONPATH=str(REPO_ROOT))
    for script in ("run.sh", "mine_hard_neg.sh", "train_hn.sh"):
        result = run_script(script, env)
        assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "MRR @10" in result.stdout or script == "mine_hard_neg.sh"

    data, out = tmp_path / "data", tmp_path / "out"
    assert sum(1 for _ in open(data / "corpus.tsv")) == n_passages
    assert len(read_qrels(data / "qrels.dev.tsv")) == len(chosen["test"])
    negatives = [line.split("\t") for line in open(data / "train.negatives.tsv")]
    assert negatives and all(len(fields) == 2 and fields[1].strip() for fields in negatives)
    for split in ("train", "train-hn"):
        folder = data / "bert" / "train" if split == "train" else out / "train-hn"
        groups = [r for f in sorted(folder.glob("*.json")) for _, r in iter_jsonl(f)]
        assert groups and all(g["query"] and g["positives"] and g["negatives"] for g in groups)
    for stage in ("stage1", "stage2"):
        reps, ids = load_encodings(out / "encoding" / stage / "dev.query.pt")
        assert len(ids) == len(chosen["test"]) and reps.shape[0] == len(ids)
        corpus_ids = [i for f in sorted((out / "encoding" / stage / "corpus").glob("split*.pt"))
                      for i in load_encodings(f)[1]]
        assert sorted(corpus_ids) == sorted(line.split("\t")[0] for line in open(data / "corpus.tsv"))
        run = read_run(out / "ranking" / stage / "dev.rank.tsv")
        assert set(run) == set(chosen["test"]) and all(len(hits) == n_passages for hits in run.values())
        marco = read_run(out / "ranking" / stage / "dev.rank.tsv.marco")
        # ranks follow the evaluation order: score descending, ties by passage id
        assert {q: sorted(h, key=h.get, reverse=True) for q, h in marco.items()} == \
               {q: sorted(h, key=lambda pid: (-h[pid], pid)) for q, h in run.items()}
        metrics = json.loads((out / "metrics" / f"{stage}.json").read_text())
        assert 0.0 <= metrics["MRR@10"] <= 1.0
    train_rank = read_run(out / "ranking" / "stage1" / "train.rank.tsv")
    assert train_rank and all(len(hits) == 30 for hits in train_rank.values())
    assert json.loads((out / "metrics" / "bm25.json").read_text())["MRR@10"] > 0.3

    again = run_script("run.sh", env)
    assert again.returncode == 0 and "train: outputs complete, skipped" in again.stdout
