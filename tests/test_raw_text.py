"""Raw text in Tevatron v2's schemas: the same groups tokenized ahead (build_train) or on the fly give the
same batches and loss; --dataset_name on local data; prefixes recorded, followed and refused; encoding raw
corpus and query files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import build_model, error_lines, run_module, write_jsonl
from tevatron.arguments import DataArguments
from tevatron.cli import CommandError
from tevatron.data import SequencePadder, TrainCollator, TrainDataset, groups_format, load_train_groups
from tevatron.files import InputError
from tevatron.preprocess import build_train, tokenize
from tevatron.preprocess.build_train import TrainSetOptions
from tevatron.raw_text import TextTokenizer, training_prefixes
from tevatron.text_formats import write_negatives, write_qrels, write_tsv
from tevatron.tokenization import load_tokenizer

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def make_data(folder: Path, n_docs: int = 40, n_queries: int = 10) -> Path:
    """corpus.tsv (some titles '-' or empty, one long text), queries, qrels and BM25-style negatives."""
    folder.mkdir(parents=True, exist_ok=True)
    pids = [f"p{i}" for i in range(n_docs)]
    rows = [(pid, "-" if i % 4 == 0 else f"Title {WORDS[i % 16]}", " ".join(WORDS[(i + j) % 16] for j in range(3 + i)))
            for i, pid in enumerate(pids)]
    write_tsv(folder / "corpus.tsv", rows)
    write_tsv(folder / "train.query.txt", [(f"q{i}", f"question {WORDS[i]} {WORDS[i + 1]}") for i in range(n_queries)])
    write_qrels(folder / "qrels.train.tsv", {f"q{i}": {pids[i]: 1, pids[i + 20]: 1} for i in range(n_queries)})
    write_negatives(folder / "train.negatives.tsv", {f"q{i}": pids[i + 1:i + 15] for i in range(n_queries)})
    return folder


def build(data: Path, out: Path, tokenizer_dir, **options) -> Path:
    build_train.build_train(str(tokenizer_dir), data / "train.negatives.tsv", data / "qrels.train.tsv",
                            data / "train.query.txt", data / "corpus.tsv", out, TrainSetOptions(**options))
    return out


def batches(groups, collator, n_passages: int, epochs: int = 2, batch_size: int = 4):
    dataset = TrainDataset(groups, n_passages, seed=42)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for start in range(0, len(dataset), batch_size):
            yield collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


@pytest.mark.parametrize("prefixes", [{}, {"query_prefix": "query: ", "passage_prefix": "passage: "}])
def test_tokenized_ahead_or_on_the_fly_give_the_same_batches_and_loss(tiny_bert_dir, tmp_path, prefixes):
    data = make_data(tmp_path / "data")
    tokenized = build(data, tmp_path / "tokenized", tiny_bert_dir, n_sample=6, **prefixes)
    text = build(data, tmp_path / "text", tiny_bert_dir, n_sample=6, format="text")
    first = json.loads((text / "split00.json").read_text().splitlines()[0])
    assert isinstance(first["query"], str) and set(first["positive_passages"][0]) == {"docid", "title", "text"}
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    q_len, p_len, n_passages = 12, 20, 4  # short: the cut must agree too
    loaded = {}
    for name, folder in (("tokenized", tokenized), ("text", text)):
        args = DataArguments(train_dir=str(folder), train_n_passages=n_passages)
        loaded[name] = load_train_groups(args, vocab_size=len(tokenizer), cache_dir=str(tmp_path / "cache"))
    assert (groups_format(loaded["tokenized"]), groups_format(loaded["text"])) == ("tokenized", "text")
    padder = SequencePadder(tokenizer)
    plain = TrainCollator(padder, q_len, p_len)
    on_the_fly = TrainCollator(padder, q_len, p_len, text_tokenizer=TextTokenizer(tokenizer, q_len, p_len, **prefixes))
    model = build_model(tiny_bert_dir)
    count = 0
    for ahead, fly in zip(batches(loaded["tokenized"], plain, n_passages), batches(loaded["text"], on_the_fly, n_passages)):
        for side in ("query", "passage"):
            assert torch.equal(ahead[side]["input_ids"], fly[side]["input_ids"])
            assert torch.equal(ahead[side]["attention_mask"], fly[side]["attention_mask"])
        with torch.no_grad():
            assert model(**ahead)["loss"].item() == model(**fly)["loss"].item()
        count += 1
    assert count == 6  # 10 groups, 3 batches an epoch, 2 epochs
    if prefixes:  # the prefix is in the ids: a collator without it gives others
        bare = TrainCollator(padder, q_len, p_len, text_tokenizer=TextTokenizer(tokenizer, q_len, p_len))
        assert not torch.equal(next(batches(loaded["text"], bare, n_passages))["query"]["input_ids"],
                               next(batches(loaded["tokenized"], plain, n_passages))["query"]["input_ids"])


def test_dataset_name_loads_local_raw_data_like_train_dir(tiny_bert_dir, tmp_path):
    """--dataset_name goes through datasets.load_dataset (a local folder of .jsonl here, a hub id in use)
    and Dataset.load_from_disk folders; rows are checked like file lines."""
    import datasets

    data = make_data(tmp_path / "data")
    text = build(data, tmp_path / "text", tiny_bert_dir, n_sample=6, format="text")
    hub_like = tmp_path / "hub_like"
    hub_like.mkdir()
    (hub_like / "train.jsonl").write_text((text / "split00.json").read_text())
    from_files = load_train_groups(DataArguments(train_dir=str(text), train_n_passages=4), None,
                                   cache_dir=str(tmp_path / "c1"))
    from_hub = load_train_groups(DataArguments(dataset_name=str(hub_like), train_n_passages=4), None,
                                 cache_dir=str(tmp_path / "c2"))
    assert from_hub.to_list() == from_files.to_list()
    datasets.load_dataset(str(hub_like), split="train", cache_dir=str(tmp_path / "c3")).save_to_disk(
        str(tmp_path / "saved"))
    saved = load_train_groups(DataArguments(dataset_name=str(tmp_path / "saved"), train_n_passages=4), None,
                              cache_dir=str(tmp_path / "c4"))
    assert saved.to_list() == from_files.to_list()
    bad = tmp_path / "bad"
    write_jsonl(bad / "train.jsonl", [{"query_id": "1", "query": "q", "positive_passages": []}])
    with pytest.raises(InputError, match=r"bad:1: example has no positive_passages"):
        load_train_groups(DataArguments(dataset_name=str(bad), train_n_passages=1), None, cache_dir=str(tmp_path / "c5"))


def test_prefixes_for_tokenized_data_come_from_its_record(tiny_bert_dir, tmp_path):
    data = make_data(tmp_path / "data")
    tokenized = build(data, tmp_path / "tokenized", tiny_bert_dir, n_sample=6, query_prefix="query: ")
    files = sorted(tokenized.glob("split*.json"))
    args = DataArguments(train_dir=str(tokenized))
    assert training_prefixes(args, "tokenized", files) == {"query_prefix": "query: ", "passage_prefix": ""}
    with pytest.raises(CommandError, match="was tokenized with 'query: '"):
        training_prefixes(DataArguments(train_dir=str(tokenized), query_prefix="q: "), "tokenized", files)
    unrecorded = write_jsonl(tmp_path / "hand" / "train.jsonl", [{"query": [5], "positives": [[6]], "negatives": []}])
    with pytest.raises(CommandError, match="a prefix cannot be added to ids"):
        training_prefixes(DataArguments(query_prefix="q: "), "tokenized", [unrecorded])
    assert training_prefixes(DataArguments(query_prefix="q: "), "text", []) == {"query_prefix": "q: ",
                                                                                   "passage_prefix": ""}
    with pytest.raises(CommandError, match="--format text writes raw text"):
        build(data, tmp_path / "no", tiny_bert_dir, format="text", query_prefix="query: ")


def test_mixed_formats_in_one_training_folder_are_refused(tmp_path):
    folder = tmp_path / "train"
    write_jsonl(folder / "a.jsonl", [{"query": [5], "positives": [[6]], "negatives": [[7]]}])
    write_jsonl(folder / "b.jsonl", [{"query": "q", "positive_passages": [{"docid": "1", "text": "t"}]}])
    with pytest.raises(InputError, match=r"b.jsonl: holds text data but .*a.jsonl holds tokenized data"):
        load_train_groups(DataArguments(train_dir=str(folder), train_n_passages=2), None, cache_dir=str(tmp_path / "c"))


# ----------------------------------------------------------------------------- the drivers
@pytest.mark.slow
def test_encode_raw_text_with_the_models_prefix_equals_tokenized_input(tiny_bert_dir, tmp_path):
    """Train on raw text with prefixes: they are saved with the model; encoding raw corpus/query files
    applies them unless told otherwise, and gives the vectors of files tokenized ahead with them."""
    data = make_data(tmp_path / "data")
    text = build(data, tmp_path / "text", tiny_bert_dir, n_sample=6, format="text")
    model = tmp_path / "model"
    result = run_module("tevatron.driver.train", "--output_dir", model, "--model_name_or_path", tiny_bert_dir,
                        "--train_dir", text, "--train_n_passages", 2, "--max_steps", 1, "--q_max_len", 16,
                        "--p_max_len", 32, "--per_device_train_batch_size", 2, "--query_prefix", "query: ",
                        "--passage_prefix", "passage: ", "--cache_dir", tmp_path / "cache",
                        "--dataloader_num_workers", 0)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((model / "tevatron_config.json").read_text())
    assert (saved["query_prefix"], saved["passage_prefix"]) == ("query: ", "passage: ")
    raw = tmp_path / "raw"
    tokenize.tokenize_queries(str(tiny_bert_dir), data / "train.query.txt", raw / "queries.jsonl", data_format="text")
    tokenize.tokenize_passages(str(tiny_bert_dir), data / "corpus.tsv", raw / "corpus", n_splits=1, num_workers=1,
                               data_format="text")
    assert set(json.loads((raw / "queries.jsonl").read_text().splitlines()[0])) == {"query_id", "query"}
    ahead = tmp_path / "ahead"
    tokenize.tokenize_queries(str(tiny_bert_dir), data / "train.query.txt", ahead / "queries.json", prefix="query: ")
    tokenize.tokenize_passages(str(tiny_bert_dir), data / "corpus.tsv", ahead / "corpus", n_splits=1, num_workers=1,
                               prefix="passage: ")
    plain = tmp_path / "plain"
    tokenize.tokenize_queries(str(tiny_bert_dir), data / "train.query.txt", plain / "queries.json")

    def encode(source, out, *extra, query=True):
        side = ["--encode_is_qry", "--q_max_len", 16] if query else ["--p_max_len", 32]
        return run_module("tevatron.driver.encode", "--model_name_or_path", model, "--encode_in_path", source,
                          "--encoded_save_path", out, *side, *extra)

    from tevatron.tensor_files import encodings_provenance, load_encodings
    for query, raw_in, ahead_in in ((True, raw / "queries.jsonl", ahead / "queries.json"),
                                    (False, raw / "corpus" / "split00.json", ahead / "corpus" / "split00.json")):
        name = "q" if query else "p"
        for source, out in ((raw_in, tmp_path / f"{name}_raw.pt"), (ahead_in, tmp_path / f"{name}_ahead.pt")):
            result = encode(source, out, query=query)
            assert result.returncode == 0, result.stderr[-3000:]
        (raw_reps, raw_ids), (ahead_reps, ahead_ids) = load_encodings(tmp_path / f"{name}_raw.pt"), load_encodings(
            tmp_path / f"{name}_ahead.pt")
        assert raw_ids == ahead_ids and all(isinstance(i, str) for i in raw_ids)
        torch.testing.assert_close(raw_reps, ahead_reps, atol=1e-6, rtol=0)
        record = encodings_provenance(tmp_path / f"{name}_raw.pt")
        assert record["format"] == "text" and record[f"{'query' if query else 'passage'}_prefix"] in (
            "query: ", "passage: ")
    # an explicit prefix wins over the model's (and is recorded)
    result = encode(raw / "queries.jsonl", tmp_path / "q_bare.pt", "--query_prefix", "")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not torch.allclose(load_encodings(tmp_path / "q_bare.pt")[0], load_encodings(tmp_path / "q_raw.pt")[0])
    assert "query_prefix" not in encodings_provenance(tmp_path / "q_bare.pt")
    # token ids made without the model's prefix are refused in one line, nothing written
    result = encode(plain / "queries.json", tmp_path / "q_plain.pt")
    assert result.returncode == 2 and not (tmp_path / "q_plain.pt").exists()
    assert error_lines(result.stderr) == [
        f"error: {plain / 'queries.json'}: tokenized with --query_prefix '', but this encoding uses 'query: ' "
        "(the model's or --query_prefix's); re-tokenize with --query_prefix 'query: ' or encode raw text"]
