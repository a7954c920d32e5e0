"""tevatron.export: an exported sentence-transformers model gives the vectors this toolkit gives."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import build_model, error_lines, run_module
from tevatron.tokenization import load_tokenizer

pytest.importorskip("sentence_transformers")

QUERIES = ["what is dense retrieval", "how tall is the eiffel tower in metres", "bm25"]
MAX_LEN = 24  # short enough that the long passage is cut: truncation must match too
VARIANTS = {
    "tied_cls": {},
    "tied_mean_normalized": {"pooling": "mean", "normalize": True},
    "pooler_cls": {"add_pooler": True},
    "pooler_mean_normalized": {"pooling": "mean", "add_pooler": True, "normalize": True},
}


def passages(sep: str) -> list[str]:
    return [f"Eiffel Tower {sep} The tower is 330 metres tall, about the same height as an 81-storey building.",
            "no title here, just text",
            f"Dense retrieval {sep} " + "vectors for queries and passages " * 10]


def save_model(base_dir, out_dir, seed: int = 0, **variant):
    torch.manual_seed(seed)
    model = build_model(base_dir, **variant)
    if model.pooler is not None:  # a pooler far from identity, so a skipped or tanh'd Dense shows
        torch.nn.init.normal_(model.pooler.linear_q.weight, std=0.5)
        torch.nn.init.normal_(model.pooler.linear_q.bias, std=0.5)
    if variant.get("untie_encoder"):
        torch.nn.init.normal_(model.lm_p.embeddings.word_embeddings.weight, std=0.05)
    model.save(out_dir)
    load_tokenizer(str(base_dir)).save_pretrained(out_dir)
    return out_dir


def tevatron_vectors(model_dir, texts, is_query: bool) -> torch.Tensor:
    """What the encode driver computes: ids tokenised without special tokens, then the padder frames them."""
    from tevatron.data import SequencePadder
    from tevatron.driver.encode import encode_texts
    from tevatron.modeling import DenseModel
    from tevatron.preprocess.tokenize import tokenize_batch

    tokenizer = load_tokenizer(str(model_dir))
    model = DenseModel.load(model_dir).eval()
    ids = tokenize_batch(tokenizer, texts, MAX_LEN)
    return encode_texts(model, SequencePadder(tokenizer), ids, MAX_LEN, is_query, 2, torch.device("cpu"),
                        progress=False)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_exported_model_encodes_like_the_encode_driver(tiny_bert_dir, tmp_path, name):
    from sentence_transformers import SentenceTransformer
    from tevatron.export import export

    model_dir = save_model(tiny_bert_dir, tmp_path / "model", **VARIANTS[name])
    export(model_dir, tmp_path / "st", max_seq_length=MAX_LEN)
    st_model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    texts = QUERIES + passages(load_tokenizer(str(model_dir)).sep_token)
    expected_q = tevatron_vectors(model_dir, QUERIES, is_query=True)
    expected_p = tevatron_vectors(model_dir, texts[len(QUERIES):], is_query=False)
    got = torch.as_tensor(st_model.encode(texts, batch_size=2, convert_to_numpy=True))
    assert got.shape == (len(texts), 16 if VARIANTS[name].get("add_pooler") else 32)
    torch.testing.assert_close(got, torch.cat([expected_q, expected_p]), atol=1e-5, rtol=0)
    # the folder is also this toolkit's model: it loads and encodes the same
    torch.testing.assert_close(tevatron_vectors(tmp_path / "st", QUERIES, True), expected_q, atol=1e-5, rtol=0)
    card = (tmp_path / "st" / "README.md").read_text()
    pooling = VARIANTS[name].get("pooling", "cls")
    assert f"| pooling | {pooling} " in card and f"| max sequence length | {MAX_LEN} tokens" in card
    assert ("| normalisation | yes |" in card) == bool(VARIANTS[name].get("normalize"))
    assert not list((tmp_path / "st").glob(".saving-*"))


def test_untied_model_is_refused_with_nothing_written(tiny_bert_dir, tmp_path):
    from tevatron.cli import CommandError
    from tevatron.export import export

    model_dir = save_model(tiny_bert_dir, tmp_path / "model", untie_encoder=True, add_pooler=True)
    with pytest.raises(CommandError, match="untied query and passage encoders"):
        export(model_dir, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_pooler_with_a_separate_passage_layer_is_refused(tiny_bert_dir, tmp_path):
    from tevatron.cli import CommandError
    from tevatron.export import export

    model_dir = save_model(tiny_bert_dir, tmp_path / "model", add_pooler=True)
    saved = json.loads((model_dir / "tevatron_config.json").read_text())
    from safetensors.torch import load_file, save_file
    state = load_file(str(model_dir / "pooler.safetensors"))
    state.update({"linear_p." + k[len("linear_q."):]: v.clone() for k, v in state.items()})
    save_file(state, str(model_dir / "pooler.safetensors"))
    assert saved["add_pooler"]
    with pytest.raises(CommandError, match="applied differently to queries and passages"):
        export(model_dir, tmp_path / "st")


@pytest.mark.slow
def test_cli_exports_and_refuses_untied_in_one_line(tiny_bert_dir, tmp_path):
    tied = save_model(tiny_bert_dir, tmp_path / "tied", pooling="mean", normalize=True)
    done = run_module("tevatron.export", "--model_dir", tied, "--output_dir", tmp_path / "st", "--max_seq_length", 64)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "st" / "modules.json").read_text())[-1]["type"].endswith("Normalize")
    assert (tmp_path / "st" / "README.md").is_file()

    untied = save_model(tiny_bert_dir, tmp_path / "untied", untie_encoder=True)
    refused = run_module("tevatron.export", "--model_dir", untied, "--output_dir", tmp_path / "st2")
    assert refused.returncode == 2
    assert len(error_lines(refused.stderr)) == 1 and "Traceback" not in refused.stderr
    assert "no sentence-transformers equivalent" in refused.stderr
    assert not (tmp_path / "st2").exists()

    not_trained = run_module("tevatron.export", "--model_dir", tiny_bert_dir, "--output_dir", tmp_path / "st3")
    assert not_trained.returncode == 2 and len(error_lines(not_trained.stderr)) == 1

    too_long = run_module("tevatron.export", "--model_dir", tied, "--output_dir", tmp_path / "st4",
                          "--max_seq_length", 512)  # the tiny model has 160 positions
    assert too_long.returncode == 2 and "longer than the model's 160 positions" in too_long.stderr
    assert not (tmp_path / "st4").exists()


def test_decoder_last_token_pooling_and_lora_folder_export(tmp_path):
    """A decoder with last-token pooling exports to sentence-transformers' lasttoken pooling; a LoRA model
    folder exports merged; both give the encode driver's vectors."""
    from sentence_transformers import SentenceTransformer
    from helpers import make_tiny_decoder
    from tevatron.export import export

    base = make_tiny_decoder(tmp_path / "llama")
    model = build_model(base, lora=True)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    model.save(tmp_path / "adapter")
    load_tokenizer(str(base)).save_pretrained(tmp_path / "adapter")
    texts = ["hello world", "world hello hello world world", "hello"]
    expected = tevatron_vectors(tmp_path / "adapter", texts, is_query=False)
    export(tmp_path / "adapter", tmp_path / "st", max_seq_length=MAX_LEN)
    pooling = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode") == "lasttoken" or pooling.get("pooling_mode_lasttoken") is True
    got = torch.as_tensor(SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts, batch_size=3))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_prefixes_are_exported_as_prompts(tiny_bert_dir, tmp_path):
    """A model trained with --query_prefix/--passage_prefix: the prompts "query"/"document" add them, so
    encode(..., prompt_name=...) equals what the encode driver computes from the raw texts."""
    from sentence_transformers import SentenceTransformer
    from tevatron.export import export
    from tevatron.modeling import DenseModel

    torch.manual_seed(0)
    model = build_model(tiny_bert_dir)
    model.dense_config.query_prefix, model.dense_config.passage_prefix = "query: ", "passage: "
    model.save(tmp_path / "model")
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(tmp_path / "model")
    assert DenseModel.load(tmp_path / "model").dense_config.query_prefix == "query: "
    export(tmp_path / "model", tmp_path / "st", max_seq_length=MAX_LEN)
    st_model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert st_model.prompts["query"] == "query: " and st_model.prompts["document"] == "passage: "
    texts = passages(load_tokenizer(str(tiny_bert_dir)).sep_token)
    got_q = torch.as_tensor(st_model.encode(QUERIES, prompt_name="query", convert_to_numpy=True))
    got_p = torch.as_tensor(st_model.encode(texts, prompt_name="document", convert_to_numpy=True))
    expected_q = tevatron_vectors(tmp_path / "model", ["query: " + q for q in QUERIES], is_query=True)
    expected_p = tevatron_vectors(tmp_path / "model", ["passage: " + t for t in texts], is_query=False)
    torch.testing.assert_close(got_q, expected_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_p, expected_p, atol=1e-5, rtol=0)
    unprompted = torch.as_tensor(st_model.encode(QUERIES, convert_to_numpy=True))
    assert (unprompted - expected_q).abs().max() > 1e-3, "the prompt matters"
    assert "prompt_name=\"query\"" in (tmp_path / "st" / "README.md").read_text()
