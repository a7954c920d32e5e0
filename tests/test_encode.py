"""Encoding: length-sorted dynamic padding equals fixed padding; order, shards, resume, safe output."""
from __future__ import annotations

import pytest
import torch

from helpers import build_model, error_lines, run_module, toy_corpus, write_jsonl
from tevatron.data import SequencePadder, shard_range
from tevatron.driver.encode import encode_texts
from tevatron.tensor_files import encodings_provenance, load_encodings, save_encodings
from tevatron.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def trained_dirs(tiny_bert_dir, tmp_path_factory):
    """Saved tied, untied and pooler models (weights perturbed so query and passage sides differ)."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, variant in {"tied": {}, "untied": {"untie_encoder": True},
                          "pooler": {"add_pooler": True, "normalize": True}}.items():
        torch.manual_seed(len(name))
        model = build_model(tiny_bert_dir, **variant)
        if variant.get("untie_encoder"):
            torch.nn.init.normal_(model.lm_p.embeddings.word_embeddings.weight, std=0.05)
        model.save(root / name)
        load_tokenizer(str(tiny_bert_dir)).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def test_dynamic_padding_equals_fixed_padding_in_input_order(tiny_bert_dir):
    model = build_model(tiny_bert_dir, pooling="mean")
    padder = SequencePadder(load_tokenizer(str(tiny_bert_dir)))
    texts = [record["text"] for record in toy_corpus(37)]
    sorted_reps = encode_texts(model, padder, texts, 128, False, 8, torch.device("cpu"), progress=False)
    fixed_reps = encode_texts(model, padder, texts, 128, False, 8, torch.device("cpu"), fixed_padding=True,
                              progress=False)
    one_by_one = torch.cat([encode_texts(model, padder, [t], 128, False, 1, torch.device("cpu"), progress=False)
                            for t in texts[:5]])
    assert torch.allclose(sorted_reps, fixed_reps, atol=1e-5)
    assert torch.allclose(sorted_reps[:5], one_by_one, atol=1e-5)


def test_shards_concatenate_to_the_whole():
    for n_items in (0, 1, 7, 100):
        for n_shards in (1, 3, 8):
            ranges = [shard_range(n_items, n_shards, i) for i in range(n_shards)]
            assert [i for r in ranges for i in r] == list(range(n_items))


def _encode(model_dir, in_path, out_path, *extra):
    return run_module("tevatron.driver.encode", "--output_dir", out_path.parent, "--model_name_or_path", model_dir,
                      "--per_device_eval_batch_size", 16, "--encode_in_path", in_path, "--encoded_save_path",
                      out_path, "--p_max_len", 64, "--q_max_len", 16, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tied", "untied", "pooler"])
def test_driver_encodes_queries_and_passages_with_the_right_encoder(trained_dirs, tmp_path, variant):
    from tevatron.modeling import DenseModel

    corpus = toy_corpus(30, max_len=70)
    in_path = write_jsonl(tmp_path / "corpus.json", corpus)
    passages = _encode(trained_dirs[variant], in_path, tmp_path / "p.pt", "--fp16")
    queries = _encode(trained_dirs[variant], in_path, tmp_path / "q.pt", "--encode_is_qry")
    assert passages.returncode == 0 and queries.returncode == 0, passages.stderr[-2000:] + queries.stderr[-2000:]
    assert "--fp16 requested but no CUDA device" in passages.stderr
    p_reps, p_ids = load_encodings(tmp_path / "p.pt")
    q_reps, q_ids = load_encodings(tmp_path / "q.pt")
    assert p_ids == q_ids == [r["text_id"] for r in corpus]
    model = DenseModel.load(trained_dirs[variant]).eval()
    padder = SequencePadder(load_tokenizer(str(trained_dirs[variant])))
    texts = [r["text"] for r in corpus]
    expected_q = encode_texts(model, padder, texts, 16, True, 4, torch.device("cpu"), fixed_padding=True,
                              progress=False)
    expected_p = encode_texts(model, padder, texts, 64, False, 4, torch.device("cpu"), fixed_padding=True,
                              progress=False)
    assert torch.allclose(q_reps, expected_q, atol=1e-5) and torch.allclose(p_reps, expected_p, atol=1e-5)
    if variant == "untied":
        assert not torch.allclose(q_reps, p_reps, atol=1e-3), "query and passage encoders differ"
    if variant == "pooler":
        assert torch.allclose(p_reps.norm(dim=1), torch.ones(len(corpus)), atol=1e-5)


@pytest.mark.slow
def test_two_shard_processes_merge_to_the_single_process_result(trained_dirs, tmp_path):
    in_path = write_jsonl(tmp_path / "corpus.json", toy_corpus(25))
    whole = _encode(trained_dirs["tied"], in_path, tmp_path / "whole.pt")
    assert whole.returncode == 0, whole.stderr[-2000:]
    import subprocess
    import sys
    import os
    from helpers import REPO_ROOT
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    processes = [subprocess.Popen([sys.executable, "-m", "tevatron.driver.encode", "--output_dir", str(tmp_path),
                                   "--model_name_or_path", str(trained_dirs["tied"]), "--p_max_len", "64",
                                   "--encode_in_path", str(in_path), "--encoded_save_path", str(tmp_path / f"s{i}.pt"),
                                   "--encode_num_shard", "2", "--encode_shard_index", str(i)],
                                  env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    reps, ids = load_encodings(tmp_path / "whole.pt")
    parts = [load_encodings(tmp_path / f"s{i}.pt") for i in range(2)]
    assert parts[0][1] + parts[1][1] == ids
    assert torch.allclose(torch.cat([parts[0][0], parts[1][0]]), reps, atol=1e-5)


@pytest.mark.slow
def test_up_to_date_output_is_kept_unless_overwrite(trained_dirs, tmp_path):
    in_path = write_jsonl(tmp_path / "corpus.json", toy_corpus(10))
    out = tmp_path / "p.pt"
    save_encodings(out, torch.zeros(3, 2), ["a", "b", "c"])  # a finished file of unknown provenance: redone
    redone = _encode(trained_dirs["tied"], in_path, out)
    assert redone.returncode == 0 and "has no provenance record" in redone.stderr, redone.stderr[-2000:]
    assert len(load_encodings(out)[1]) == 10
    kept = _encode(trained_dirs["tied"], in_path, out)
    assert kept.returncode == 0 and "is up to date" in kept.stderr and "skipping" in kept.stderr
    out.write_bytes(out.read_bytes()[:100])  # a truncated file is not complete: redone
    redone = _encode(trained_dirs["tied"], in_path, out)
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "not a readable encodings file" in redone.stderr and "re-encoding" in redone.stderr
    assert len(load_encodings(out)[1]) == 10
    overwritten = _encode(trained_dirs["tied"], write_jsonl(tmp_path / "c2.json", toy_corpus(4)), out, "--overwrite")
    assert overwritten.returncode == 0 and len(load_encodings(out)[1]) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"


@pytest.mark.slow
def test_encode_dtype_float16_writes_float16_vectors_recorded_in_the_provenance(trained_dirs, tmp_path):
    in_path = write_jsonl(tmp_path / "corpus.json", toy_corpus(10))
    full, half = tmp_path / "p32.pt", tmp_path / "p16.pt"
    assert _encode(trained_dirs["tied"], in_path, full).returncode == 0
    result = _encode(trained_dirs["tied"], in_path, half, "--encode_dtype", "float16")
    assert result.returncode == 0, result.stderr[-2000:]
    (full_reps, ids), (half_reps, half_ids) = load_encodings(full), load_encodings(half)
    assert full_reps.dtype == torch.float32 and half_reps.dtype == torch.float16 and half_ids == ids
    assert torch.equal(half_reps, full_reps.to(torch.float16))
    assert encodings_provenance(half)["dtype"] == "float16" and "dtype" not in encodings_provenance(full)
    assert half.stat().st_size < full.stat().st_size


def test_float16_out_of_range_is_refused(tmp_path):
    from tevatron.cli import CommandError
    from tevatron.driver.encode import stored_vectors

    reps = torch.tensor([[1.0, 70000.0], [0.5, -2.0]])
    with pytest.raises(CommandError, match="beyond float16's range"):
        stored_vectors(reps, "float16", tmp_path / "p.pt")
    assert stored_vectors(reps, "float32", tmp_path / "p.pt") is reps
    assert stored_vectors(reps[1:], "float16", tmp_path / "p.pt").dtype == torch.float16


def test_encodings_round_trip_keeps_float16_and_float32(tmp_path):
    for dtype in (torch.float16, torch.float32):
        reps = torch.randn(5, 3).to(dtype)
        save_encodings(tmp_path / "e.pt", reps, list("abcde"), {"model": "m"})
        loaded, ids = load_encodings(tmp_path / "e.pt")
        assert loaded.dtype == dtype and torch.equal(loaded, reps) and ids == list("abcde")
    save_encodings(tmp_path / "e.pt", torch.randn(2, 3, dtype=torch.float64), ["a", "b"])
    assert load_encodings(tmp_path / "e.pt")[0].dtype == torch.float32


def test_encodings_of_another_dtype_are_refused_as_corrupt(tmp_path):
    from tevatron.files import InputError
    from tevatron.tensor_files import ENCODINGS_FORMAT, FORMAT_VERSION

    torch.save({"format": ENCODINGS_FORMAT, "version": FORMAT_VERSION, "reps": torch.ones(2, 3, dtype=torch.int64),
                "ids": ["a", "b"]}, tmp_path / "e.pt")
    with pytest.raises(InputError, match="vectors are int64, not float32 or float16"):
        load_encodings(tmp_path / "e.pt")


@pytest.mark.slow
def test_encodings_load_without_pickle_and_bad_input_is_one_line(trained_dirs, tmp_path):
    reps = torch.randn(4, 3)
    save_encodings(tmp_path / "e.pt", reps, ["x", "y", "z", "w"])
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    assert torch.equal(payload["reps"], reps) and payload["ids"] == ["x", "y", "z", "w"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"text_id": "a", "text": [5, 6]}\n{"text_id": "b"}\n')
    result = _encode(trained_dirs["tied"], bad, tmp_path / "out.pt")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {bad}:2: missing field 'text'"]
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.slow
def test_max_len_beyond_the_models_positions_is_cut_with_a_warning(trained_dirs, tmp_path):
    """The tiny model has 160 positions: --p_max_len 400 must not crash inside the embedding layer."""
    # distinct within the first positions too: texts identical after the cut would encode to one vector,
    # which the encoder rejects as degenerate
    long_texts = [{"text_id": f"d{i}", "text": [2000 + i] + list(range(1000, 1300 + i))} for i in range(3)]
    in_path = write_jsonl(tmp_path / "long.json", long_texts)
    result = _encode(trained_dirs["tied"], in_path, tmp_path / "long.pt", "--p_max_len", 400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--p_max_len 400 is longer than the model's 160 positions; cutting texts at 160" in result.stderr
    cut = _encode(trained_dirs["tied"], in_path, tmp_path / "cut.pt", "--p_max_len", 160)
    assert cut.returncode == 0
    assert torch.equal(load_encodings(tmp_path / "long.pt")[0], load_encodings(tmp_path / "cut.pt")[0])
