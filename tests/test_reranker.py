"""The cross-encoder reranker: pair layout, listwise loss, and its three command lines."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import (error_lines, make_tiny_reranker, run_module, stopped_training_script, toy_corpus, toy_groups,
                     write_jsonl)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    from tevatron.tokenization import load_tokenizer
    return load_tokenizer(str(minilm_dir))


# --------------------------------------------------------------------------- pairs and loss
def test_pair_is_cls_query_sep_passage_sep_with_token_types(tokenizer):
    from tevatron.reranker.data import PairBuilder

    builder = PairBuilder(tokenizer, q_max_len=5, p_max_len=4)  # query text <= 3 tokens, pair <= 9 tokens
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    batch = builder([([11, 12, 13, 14], [21, 22, 23, 24, 25, 26]), ([11], [21])])
    assert batch["input_ids"][0].tolist() == [cls, 11, 12, 13, sep, 21, 22, 23, sep]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["input_ids"][1].tolist() == [cls, 11, sep, 21, sep, 0, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1] * 5 + [0] * 4
    assert batch["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    # a short query leaves its room to the passage: the pair keeps q_max_len + p_max_len tokens
    assert builder.pair_length([11], list(range(100, 200))) == 9


def test_pair_lengths_are_cut_to_the_model_positions(tokenizer):
    from tevatron.reranker.data import PairBuilder

    assert PairBuilder(tokenizer, 32, 600, position_limit=512).max_len == 512


def test_listwise_loss_is_cross_entropy_of_the_positive_in_each_group():
    from tevatron.reranker.modeling import listwise_loss

    logits = torch.tensor([[2.0], [1.0], [0.0], [0.5], [0.5], [3.0]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
                - math.log(math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3)))) / 2
    assert listwise_loss(logits, 3).item() == pytest.approx(expected, rel=1e-6)


def test_training_batch_pairs_the_retriever_groups_positive_first(tokenizer):
    from tevatron.data import sample_group
    from tevatron.reranker.data import GroupPairCollator, PairBuilder

    groups = toy_groups(3, seed=4)
    features = [sample_group(g, i, 0, 42, 4) for i, g in enumerate(groups)]
    batch = GroupPairCollator(PairBuilder(tokenizer, 16, 64))(features)
    assert batch["n_passages"] == 4 and batch["pairs"]["input_ids"].shape[0] == 12
    sep = tokenizer.sep_token_id
    row = batch["pairs"]["input_ids"][4].tolist()  # group 1, its positive
    query_end = row.index(sep)
    assert row[1:query_end] == groups[1]["query"][:14]
    assert row[query_end + 1: query_end + 1 + 5] == features[1][1][0][:5]


def test_scores_in_input_order_whatever_the_batching(tiny_reranker_dir, tokenizer):
    from tevatron.reranker.data import PairBuilder
    from tevatron.reranker.modeling import load_cross_encoder
    from tevatron.reranker.scoring import score_pairs

    model = load_cross_encoder(tiny_reranker_dir, require_head=True)
    builder = PairBuilder(tokenizer, 16, 64)
    corpus = toy_corpus(9, max_len=60)
    pairs = [([1000 + i, 1001], doc["text"]) for i, doc in enumerate(corpus)]
    batched = score_pairs(model, builder, pairs, 4, torch.device("cpu"), progress=False)
    one_by_one = torch.cat([score_pairs(model, builder, [pair], 1, torch.device("cpu"), progress=False)
                            for pair in pairs])
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_rerank_order_breaks_ties_by_corpus_row(tokenizer):
    from tevatron.reranker.driver.rerank import rerank

    class Constant(torch.nn.Module):  # every pair scores the same: the order is the corpus order
        def forward(self, input_ids, **kwargs):
            return type("Out", (), {"logits": torch.zeros(input_ids.shape[0], 1)})()

    from tevatron.reranker.data import PairBuilder
    top = {"q": ["c", "a", "b"]}
    ranking = rerank(Constant(), PairBuilder(tokenizer, 8, 8), top, {"q": [5]}, {"a": 0, "b": 1, "c": 2},
                     [[1], [2], [3]], 2, torch.device("cpu"), progress=False)
    assert ranking == [("q", [("a", 0.0), ("b", 0.0), ("c", 0.0)])]


# --------------------------------------------------------------------------- command lines
def rerank_inputs(folder: Path) -> None:
    corpus = toy_corpus(30, max_len=80, prefix="p")
    write_jsonl(folder / "corpus" / "split00.json", corpus[:15])
    write_jsonl(folder / "corpus" / "split01.json", corpus[15:])
    write_jsonl(folder / "queries.json", [{"text_id": f"q{i}", "text": [1000 + i, 1200 + i, 1400]} for i in range(5)])
    lines = [f"q{i}\tp-{(i * 7 + j) % 30}\t{10.0 - j:.1f}" for i in range(5) for j in range(12)]
    (folder / "run.tsv").write_text("\n".join(lines) + "\n")


def rerank_command(model, folder: Path, output: str, *extra):
    return run_module("tevatron.reranker.driver.rerank", "--model_name_or_path", model, "--run", folder / "run.tsv",
                      "--queries", folder / "queries.json", "--corpus", str(folder / "corpus" / "split*.json"),
                      "--rerank_depth", "8", "--rerank_output", folder / output, "--per_device_eval_batch_size", "5",
                      "--q_max_len", "16", "--p_max_len", "48", *extra)


def read_ranking_text(text: str) -> list[tuple[str, str, float]]:
    return [(q, p, float(s)) for q, p, s in (line.split("\t") for line in text.splitlines())]


def read_ranking(path: Path) -> list[tuple[str, str, float]]:
    return read_ranking_text(path.read_text())


@pytest.mark.slow
def test_rerank_scores_the_top_of_each_query_like_a_plain_loop(tiny_reranker_dir, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    rerank_inputs(tmp_path)
    result = rerank_command(tiny_reranker_dir, tmp_path, "reranked.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    ranking = read_ranking(tmp_path / "reranked.tsv")
    assert len(ranking) == 5 * 8
    plain = AutoModelForSequenceClassification.from_pretrained(str(tiny_reranker_dir)).eval()
    corpus = {d["text_id"]: d["text"] for d in toy_corpus(30, max_len=80, prefix="p")}
    for i in range(5):
        mine = [(p, s) for q, p, s in ranking if q == f"q{i}"]
        assert sorted(p for p, _ in mine) == sorted(f"p-{(i * 7 + j) % 30}" for j in range(8))  # the top 8 only
        assert [s for _, s in mine] == sorted((s for _, s in mine), reverse=True)
        for pid, score in mine:
            query, passage = [1000 + i, 1200 + i, 1400], corpus[pid][: 64 - 3 - 3]
            ids = [tokenizer.cls_token_id, *query, tokenizer.sep_token_id, *passage, tokenizer.sep_token_id]
            types = [0] * (len(query) + 2) + [1] * (len(passage) + 1)
            with torch.no_grad():
                expected = plain(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits.item()
            assert score == pytest.approx(expected, abs=1e-5)

    # sharded by query: the shards concatenated are the unsharded run
    parts = []
    for index in range(2):
        result = rerank_command(tiny_reranker_dir, tmp_path, f"shard{index}.tsv", "--encode_num_shard", "2",
                                "--encode_shard_index", str(index))
        assert result.returncode == 0, result.stderr[-3000:]
        parts.append((tmp_path / f"shard{index}.tsv").read_text())
    whole = read_ranking(tmp_path / "reranked.tsv")
    sharded = [line for part in parts for line in read_ranking_text(part)]
    assert [(q, p) for q, p, _ in sharded] == [(q, p) for q, p, _ in whole]
    assert [s for *_, s in sharded] == pytest.approx([s for *_, s in whole], abs=1e-5)  # other batches: rounding

    # the same command again skips; a retrained (re-saved) model redoes it
    again = rerank_command(tiny_reranker_dir, tmp_path, "reranked.tsv")
    assert again.returncode == 0 and "is up to date" in again.stderr
    retrained = make_tiny_reranker(tmp_path / "retrained", seed=1)
    redo = rerank_command(retrained, tmp_path, "reranked.tsv")
    assert redo.returncode == 0 and "model changed" in redo.stderr, redo.stderr[-2000:]


@pytest.mark.slow
def test_rerank_refuses_models_that_are_not_rerankers(tiny_bert_dir, tmp_path):
    rerank_inputs(tmp_path)
    result = rerank_command(tiny_bert_dir, tmp_path, "out.tsv")
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"error: {tiny_bert_dir}: has no trained classification head (missing classifier.bias, classifier.weight): "
        "train a reranker from it first"], result.stderr[-2000:]
    bi_encoder = tmp_path / "bi"
    shutil.copytree(tiny_bert_dir, bi_encoder)
    (bi_encoder / "tevatron_config.json").write_text(json.dumps({"pooling": "cls", "fingerprint": "x"}))
    result = rerank_command(bi_encoder, tmp_path, "out.tsv")
    assert result.returncode == 2 and error_lines(result.stderr) == [
        f"error: {bi_encoder}: a bi-encoder trained by tevatron.driver.train, not a reranker (train one with "
        "python -m tevatron.reranker.driver.train)"]
    assert not (tmp_path / "out.tsv").exists()


def test_teacher_confidence_is_the_positives_softmax_share_and_top_one():
    from tevatron.reranker.driver.score_groups import group_confidence, teacher_confidence

    share, first = group_confidence({"positive_scores": [2.0], "negative_scores": [0.0, 1.0]})
    assert share == pytest.approx(math.e ** 2 / (math.e ** 2 + 1 + math.e)) and first
    share, first = group_confidence({"positive_scores": [0.0, 1.0], "negative_scores": [1.0, -1.0]})
    assert share == pytest.approx((1 + math.e) / (1 + 2 * math.e + math.e ** -1)) and not first  # a tie is not first
    assert group_confidence({"positive_scores": [1000.0], "negative_scores": [-1000.0]}) == (1.0, True)  # no overflow
    summary = teacher_confidence([(0.9, True), (0.2, False), (0.6, True), (0.99, True)])
    assert summary == {"groups whose top passage is a positive": 0.75, "median softmax share of the positives": 0.75}
    assert set(teacher_confidence([]).values()) == {None}


@pytest.mark.slow
def test_score_groups_adds_scores_parallel_to_the_passages(tiny_reranker_dir, tmp_path, tokenizer):
    from tevatron.reranker.data import PairBuilder
    from tevatron.reranker.driver.score_groups import group_confidence, teacher_confidence
    from tevatron.reranker.modeling import load_cross_encoder
    from tevatron.reranker.scoring import score_pairs

    groups = toy_groups(4, n_negatives=3, seed=2)
    for number, group in enumerate(groups):
        group["query_id"] = f"q{number}"
    write_jsonl(tmp_path / "train" / "split00.json", groups[:2])
    write_jsonl(tmp_path / "train" / "split01.json", groups[2:])
    command = ("tevatron.reranker.driver.score_groups", "--model_name_or_path", tiny_reranker_dir, "--train_dir",
               tmp_path / "train", "--output_dir", tmp_path / "scored", "--q_max_len", "16", "--p_max_len", "48")
    result = run_module(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    model = load_cross_encoder(tiny_reranker_dir)
    builder = PairBuilder(tokenizer, 16, 48)
    scored = [json.loads(line) for name in ("split00.json", "split01.json")
              for line in (tmp_path / "scored" / name).open()]
    assert [r["query_id"] for r in scored] == ["q0", "q1", "q2", "q3"]
    for record, group in zip(scored, groups):
        assert {k: record[k] for k in group} == group
        for key, score_key in (("positives", "positive_scores"), ("negatives", "negative_scores")):
            expected = score_pairs(model, builder, [(group["query"], p) for p in group[key]], 8,
                                   torch.device("cpu"), progress=False)
            assert record[score_key] == pytest.approx(expected.tolist(), abs=1e-5)
    stats = json.loads((tmp_path / "scored" / ".complete").read_text())["stats"]
    assert stats["groups scored"] == 4
    assert stats["teacher"] == teacher_confidence([group_confidence(record) for record in scored])
    share = stats["teacher"]["median softmax share of the positives"]
    assert 0 < share < 1 and f"the positives' softmax share (temperature 1) has median {share:.4f}" in result.stderr
    again = run_module(*command)
    assert again.returncode == 0 and "is up to date" in again.stderr


@pytest.mark.slow
def test_train_learns_and_records_its_provenance(tiny_bert_dir, tmp_path):
    from tevatron.provenance import model_identity

    write_jsonl(tmp_path / "train" / "split00.json", toy_groups(16, seed=3))
    command = ("tevatron.reranker.driver.train", "--model_name_or_path", tiny_bert_dir, "--train_dir",
               tmp_path / "train", "--output_dir", tmp_path / "model", "--train_n_passages", "4", "--q_max_len", "16",
               "--p_max_len", "64", "--per_device_train_batch_size", "4", "--num_train_epochs", "2",
               "--learning_rate", "1e-3", "--logging_steps", "1", "--save_steps", "4", "--report_to", "none",
               "--cache_dir", tmp_path / "cache")
    result = run_module(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no trained classification head: freshly initialised classifier.bias, classifier.weight" in result.stderr
    losses = [float(line.split("'loss': '")[1].split("'")[0]) for line in result.stdout.splitlines() + result.stderr.splitlines()
              if "'loss': '" in line]
    assert losses and losses[-1] < math.log(4), losses  # below chance over 4 passages
    record = json.loads((tmp_path / "model" / ".complete").read_text())
    assert record["provenance"]["model kind"] == "cross-encoder" and record["provenance"]["train_n_passages"] == 4
    assert not list((tmp_path / "model").glob("checkpoint-*"))
    first = model_identity(tmp_path / "model")
    assert set(first) == {"fingerprint"}

    again = run_module(*command)
    assert again.returncode == 0 and "up to date" in again.stderr
    changed = run_module(*command[:-2], "--learning_rate", "2e-3", "--cache_dir", tmp_path / "cache")
    assert changed.returncode == 2 and error_lines(changed.stderr)[0].endswith(
        "learning_rate: 0.001 -> 0.002); use --overwrite_output_dir to retrain into it, or another --output_dir")
    head_rate = run_module(*command, "--head_learning_rate", "1e-2")
    assert head_rate.returncode == 2 and error_lines(head_rate.stderr)[0].endswith(
        "head_learning_rate: null -> 0.01); use --overwrite_output_dir to retrain into it, or another --output_dir")
    retrained = run_module(*command, "--overwrite_output_dir")
    assert retrained.returncode == 0, retrained.stderr[-3000:]
    assert model_identity(tmp_path / "model") != first  # downstream reranked runs see the new model


def test_head_learning_rate_gives_the_score_head_its_own_rate(tiny_reranker_dir, tmp_path):
    from tevatron.reranker.arguments import RerankerTrainingArguments
    from tevatron.reranker.modeling import load_cross_encoder
    from tevatron.reranker.trainer import RerankerTrainer

    def optimizer_rates(**extra):
        model = load_cross_encoder(tiny_reranker_dir)
        args = RerankerTrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-4, weight_decay=0.01,
                                         report_to="none", **extra)
        trainer = RerankerTrainer(model=model, args=args)
        optimizer = trainer.create_optimizer()
        names = {id(p): n for n, p in model.named_parameters()}
        placed = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        assert sorted(placed) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once
        rates = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
        decays = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
        for _ in range(3):  # warmup: the schedule scales both groups alike
            optimizer.step()  # no gradients: moves nothing
            trainer.lr_scheduler.step()
        later = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
        return rates, decays, later

    rates, decays, later = optimizer_rates(head_learning_rate=1e-2)
    head = {name for name in rates if name.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    assert {rates[name] for name in head} == {1e-2} and {rates[n] for n in rates if n not in head} == {1e-4}
    assert decays["classifier.weight"] == 0.01 and decays["classifier.bias"] == 0.0  # HF's decay split kept
    assert later["classifier.weight"] / later["bert.pooler.dense.weight"] == pytest.approx(100)
    plain, _, _ = optimizer_rates()
    assert set(plain.values()) == {1e-4}


# --------------------------------------------------------------------------- query folds (out-of-fold teachers)
def test_query_fold_follows_the_query_and_a_held_out_fold_drops_exactly_its_groups():
    import datasets

    from tevatron.data import hold_out_query_fold, query_fold
    from tevatron.reranker.arguments import RerankerDataArguments, TeacherModelArguments

    groups = toy_groups(40, n_negatives=2, seed=4)
    folds = [query_fold(group["query"], 2) for group in groups]
    assert set(folds) == {0, 1}
    # the query decides, not the file, the line or the passages: a query's BM25 and hard-negative groups agree
    assert all(query_fold(list(group["query"]), 2) == fold for group, fold in zip(groups, folds))
    assert query_fold("What is a fold?", 3) == query_fold("What is a fold?", 3) in range(3)
    loaded = datasets.Dataset.from_list(groups)
    for held_out in (0, 1):
        kept = hold_out_query_fold(loaded, 2, held_out)
        assert kept["query"] == [g["query"] for g, fold in zip(groups, folds) if fold != held_out]  # order kept
    with pytest.raises(Exception, match="every training group's query is in the held-out fold"):
        hold_out_query_fold(loaded.select([i for i, fold in enumerate(folds) if fold == 1]), 2, 1)

    assert RerankerDataArguments(train_dir="x", query_folds=3, held_out_fold=2).held_out_fold == 2
    for bad, message in (({"query_folds": 1, "held_out_fold": 0}, "must be 0 .no folds. or at least 2"),
                         ({"query_folds": 2, "held_out_fold": 2}, r"needs --held_out_fold in \[0, 2\)"),
                         ({"query_folds": 2}, r"needs --held_out_fold in \[0, 2\), not None"),
                         ({"held_out_fold": 0}, "--held_out_fold needs --query_folds")):
        with pytest.raises(ValueError, match=message):
            RerankerDataArguments(train_dir="x", **bad)
    for bad in ({}, {"model_name_or_path": "a", "fold_models": ["b", "c"]}):
        with pytest.raises(ValueError, match="give --model_name_or_path .one reranker. or --fold_models"):
            TeacherModelArguments(**bad)
    with pytest.raises(ValueError, match="one reranker per fold, at least 2, not 1"):
        TeacherModelArguments(fold_models=["a"])


@pytest.mark.slow
def test_a_fold_reranker_is_the_reranker_of_the_other_folds_groups(tiny_bert_dir, tmp_path):
    """--query_folds 2 --held_out_fold 0 on every group trains exactly as a plain run on the fold-1 groups."""
    from safetensors.torch import load_file

    from tevatron.data import query_fold

    groups = toy_groups(24, seed=5)
    write_jsonl(tmp_path / "all" / "split00.json", groups)
    write_jsonl(tmp_path / "fold1" / "split00.json", [g for g in groups if query_fold(g["query"], 2) == 1])
    base = ("--model_name_or_path", tiny_bert_dir, "--train_n_passages", "4", "--q_max_len", "16", "--p_max_len", "64",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--report_to", "none",
            "--cache_dir", tmp_path / "cache")
    held_out = run_module("tevatron.reranker.driver.train", *base, "--train_dir", tmp_path / "all",
                          "--output_dir", tmp_path / "held-out", "--query_folds", "2", "--held_out_fold", "0")
    assert held_out.returncode == 0, held_out.stderr[-3000:]
    n_kept = sum(query_fold(g["query"], 2) == 1 for g in groups)
    assert 0 < n_kept < len(groups) and f"fold 0 of 2 held out: training on {n_kept} of 24 groups" in held_out.stderr
    plain = run_module("tevatron.reranker.driver.train", *base, "--train_dir", tmp_path / "fold1",
                       "--output_dir", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = load_file(tmp_path / "held-out" / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "held-out" / ".complete").read_text())["provenance"]
    assert (record["query_folds"], record["held_out_fold"]) == (2, 0)
    assert "query_folds" not in json.loads((tmp_path / "plain" / ".complete").read_text())["provenance"]
    other = run_module("tevatron.reranker.driver.train", *base, "--train_dir", tmp_path / "all",
                       "--output_dir", tmp_path / "held-out", "--query_folds", "2", "--held_out_fold", "1")
    assert other.returncode == 2 and "held_out_fold: 0 -> 1" in error_lines(other.stderr)[0]


@pytest.mark.slow
def test_fold_models_score_each_group_with_the_reranker_that_held_its_query_out(tmp_path):
    from tevatron import provenance
    from tevatron.data import query_fold

    models = [make_tiny_reranker(tmp_path / f"reranker-{fold}", seed=fold) for fold in (0, 1)]
    for fold, model in enumerate(models):
        provenance.write_folder_record(model, {"model kind": "cross-encoder", "query_folds": 2, "held_out_fold": fold})
    groups = toy_groups(12, n_negatives=3, seed=6)
    write_jsonl(tmp_path / "train" / "split00.json", groups[:7])
    write_jsonl(tmp_path / "train" / "split01.hn.json", groups[7:])
    lengths = ("--train_dir", tmp_path / "train", "--q_max_len", "16", "--p_max_len", "48")
    alone = []
    for fold, model in enumerate(models):
        result = run_module("tevatron.reranker.driver.score_groups", "--model_name_or_path", model, *lengths,
                            "--output_dir", tmp_path / f"alone-{fold}")
        assert result.returncode == 0, result.stderr[-3000:]
        alone.append([json.loads(line) for name in ("split00.json", "split01.hn.json")
                      for line in (tmp_path / f"alone-{fold}" / name).open()])
    folded = run_module("tevatron.reranker.driver.score_groups", "--fold_models", *models, *lengths,
                        "--output_dir", tmp_path / "folded")
    assert folded.returncode == 0, folded.stderr[-3000:]
    scored = [json.loads(line) for name in ("split00.json", "split01.hn.json")
              for line in (tmp_path / "folded" / name).open()]
    folds = [query_fold(group["query"], 2) for group in groups]
    assert set(folds) == {0, 1}
    for number, (record, fold) in enumerate(zip(scored, folds)):
        for key in ("positive_scores", "negative_scores"):  # other batches: equal up to float rounding
            assert record[key] == pytest.approx(alone[fold][number][key], abs=1e-6)
            assert record[key] != pytest.approx(alone[1 - fold][number][key], abs=1e-4)
        assert {k: v for k, v in record.items() if not k.endswith("_scores")} == groups[number]
    record = json.loads((tmp_path / "folded" / ".complete").read_text())["provenance"]
    assert len(record["model"]["fold models"]) == 2

    swapped = run_module("tevatron.reranker.driver.score_groups", "--fold_models", *models[::-1], *lengths,
                         "--output_dir", tmp_path / "swapped")
    assert swapped.returncode == 2 and error_lines(swapped.stderr) == [
        f"error: {models[1]}: --fold_models entry 0 must be a reranker trained with --query_folds 2 "
        "--held_out_fold 0; it held out fold 1 of 2"]
    plain = make_tiny_reranker(tmp_path / "plain")
    unfolded = run_module("tevatron.reranker.driver.score_groups", "--fold_models", models[0], plain, *lengths,
                          "--output_dir", tmp_path / "unfolded")
    assert unfolded.returncode == 2 and error_lines(unfolded.stderr)[0].endswith(
        "--fold_models entry 1 must be a reranker trained with --query_folds 2 --held_out_fold 1; its training "
        "record names no held-out fold")
    short = make_tiny_reranker(tmp_path / "short-fold-1", seed=1, positions=48)  # pairs cut to 48, not 16 + 48
    provenance.write_folder_record(short, {"model kind": "cross-encoder", "query_folds": 2, "held_out_fold": 1})
    mixed = run_module("tevatron.reranker.driver.score_groups", "--fold_models", models[0], short, *lengths,
                       "--output_dir", tmp_path / "mixed")
    assert mixed.returncode == 2 and error_lines(mixed.stderr) == [
        "error: the fold models cut a pair to different lengths (48, 64: their position limits); give --q_max_len "
        "+ --p_max_len of at most 48"]
    assert not any((tmp_path / name).exists() for name in ("swapped", "unfolded", "mixed"))


STOPPED_TRAINING = stopped_training_script("tevatron.reranker.driver.train")


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_to_the_same_weights(tiny_bert_dir, tmp_path):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from helpers import REPO_ROOT

    write_jsonl(tmp_path / "train" / "split00.json", toy_groups(16, seed=3))
    base = ("--model_name_or_path", tiny_bert_dir, "--train_dir", tmp_path / "train", "--train_n_passages", "4",
            "--q_max_len", "16", "--p_max_len", "64", "--per_device_train_batch_size", "4", "--num_train_epochs", "2",
            "--learning_rate", "1e-3", "--save_steps", "3", "--report_to", "none", "--cache_dir", tmp_path / "cache")
    whole = run_module("tevatron.reranker.driver.train", *base, "--output_dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    env = dict(os.environ, STOP_AT="3", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    killed = subprocess.run([sys.executable, "-c", STOPPED_TRAINING, *map(str, base), "--output_dir", tmp_path / "cut"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == 3 and (tmp_path / "cut" / "checkpoint-3").is_dir(), killed.stderr[-3000:]
    resumed = run_module("tevatron.reranker.driver.train", *base, "--output_dir", tmp_path / "cut")
    assert resumed.returncode == 0 and "resuming the interrupted run" in resumed.stderr, resumed.stderr[-3000:]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# --------------------------------------------------------------------------- raw text (Tevatron v2's schemas)
def test_raw_text_groups_give_the_tokenized_groups_pair_batches_and_loss(tiny_reranker_dir, tmp_path):
    """The same groups tokenized ahead (build_train) or given as raw text (tokenized by the collator): the
    same sampled pairs, the same batches, the same listwise loss, over two epochs."""
    from test_raw_text import batches, build, make_data
    from tevatron.data import groups_format, load_train_groups
    from tevatron.reranker.arguments import RerankerDataArguments
    from tevatron.reranker.data import GroupPairCollator, PairBuilder, pair_text_tokenizer
    from tevatron.reranker.modeling import listwise_loss, load_cross_encoder
    from tevatron.tokenization import load_tokenizer

    data = make_data(tmp_path / "data")
    # tokenized ahead longer than any pair holds, so only the pair's cut applies to either
    tokenized = build(data, tmp_path / "tokenized", tiny_reranker_dir, n_sample=6, p_max_len=128)
    text = build(data, tmp_path / "text", tiny_reranker_dir, n_sample=6, format="text")
    tokenizer = load_tokenizer(str(tiny_reranker_dir))
    n_passages = 4
    loaded = {name: load_train_groups(RerankerDataArguments(train_dir=str(folder), train_n_passages=n_passages),
                                      vocab_size=len(tokenizer), cache_dir=str(tmp_path / "cache"))
              for name, folder in (("tokenized", tokenized), ("text", text))}
    assert (groups_format(loaded["tokenized"]), groups_format(loaded["text"])) == ("tokenized", "text")
    builder = PairBuilder(tokenizer, q_max_len=8, p_max_len=24)  # short: some passages are cut
    model = load_cross_encoder(tiny_reranker_dir).eval()
    count = 0
    for ahead, fly in zip(batches(loaded["tokenized"], GroupPairCollator(builder), n_passages),
                          batches(loaded["text"], GroupPairCollator(builder, pair_text_tokenizer(tokenizer, builder)),
                                  n_passages)):
        assert ahead["n_passages"] == fly["n_passages"] == n_passages
        assert set(ahead["pairs"]) == set(fly["pairs"]) == {"input_ids", "attention_mask", "token_type_ids"}
        for key in ahead["pairs"]:
            assert torch.equal(ahead["pairs"][key], fly["pairs"][key]), key
        with torch.no_grad():
            losses = [listwise_loss(model(**batch["pairs"]).logits, n_passages).item() for batch in (ahead, fly)]
        assert losses[0] == losses[1]
        count += 1
    assert count == 6  # 10 groups, 3 batches an epoch, 2 epochs
    assert int(ahead["pairs"]["attention_mask"].sum(1).max()) == builder.max_len, "a pair was cut"


@pytest.mark.slow
def test_rerank_reads_raw_queries_and_corpus_like_tokenized_ones(tiny_reranker_dir, tmp_path):
    from test_raw_text import make_data
    from tevatron.preprocess.tokenize import tokenize_passages, tokenize_queries
    from tevatron.reranker.driver.rerank import main as rerank_main

    data = make_data(tmp_path / "data")
    for data_format in ("tokenized", "text"):
        tokenize_queries(str(tiny_reranker_dir), data / "train.query.txt", tmp_path / data_format / "queries.json",
                         q_max_len=32, data_format=data_format)
        tokenize_passages(str(tiny_reranker_dir), data / "corpus.tsv", tmp_path / data_format / "corpus", n_splits=2,
                          p_max_len=128, num_workers=1, data_format=data_format)
    (tmp_path / "run.tsv").write_text("".join(f"q{i}\tp{(i * 7 + j) % 40}\t{10 - j}.5\n" for i in range(10)
                                              for j in range(6)))  # scores, not ranks

    def rerank(data_format, *extra):
        folder = tmp_path / data_format
        return rerank_main(["--model_name_or_path", str(tiny_reranker_dir), "--run", str(tmp_path / "run.tsv"),
                            "--queries", str(folder / "queries.json"), "--corpus", str(folder / "corpus"),
                            "--rerank_depth", "5", "--rerank_output", str(tmp_path / f"{data_format}.tsv"),
                            "--q_max_len", "8", "--p_max_len", "24", "--per_device_eval_batch_size", "7", *extra])

    assert rerank("tokenized") == 0 and rerank("text") == 0
    reranked = read_ranking(tmp_path / "text.tsv")
    assert len(reranked) == 10 * 5
    assert reranked == read_ranking(tmp_path / "tokenized.tsv")
    mixed = rerank("text", "--corpus", str(tmp_path / "tokenized" / "corpus"), "--overwrite")
    assert mixed == 2
