"""Decoder-only backbones (last-token pooling, eos appended, either padding side) and LoRA adapters."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import build_model, loss_and_grads, make_batch, run_module, toy_corpus, toy_groups, \
    write_jsonl
from tevatron.cli import CommandError
from tevatron.data import SequencePadder, sample_group
from tevatron.files import InputError
from tevatron.modeling import DenseModel, check_model_folder
from tevatron.tokenization import load_tokenizer


def passages_of(groups, n_passages=4):
    return [p for _, group in (sample_group(g, i, 0, 42, n_passages) for i, g in enumerate(groups)) for p in group]


def encode(model, batch):
    model.eval()
    with torch.no_grad():
        return model.encode_passage(batch)


def train_a_step(model, batch, lr=1e-2):
    """One optimizer step, so a saved model differs from its starting point."""
    loss, _ = loss_and_grads(model, batch)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad.sign()
    return loss


# --------------------------------------------------------------------------- decoder-only backbones
def test_decoder_defaults_to_last_token_pooling(tiny_decoder_dir):
    from tevatron.arguments import ModelArguments

    args = ModelArguments(model_name_or_path=str(tiny_decoder_dir))
    check_model_folder(tiny_decoder_dir, args)
    assert args.pooling == "last"
    assert build_model(tiny_decoder_dir).dense_config.pooling == "last"
    assert ModelArguments(model_name_or_path="x", pooling="eos").pooling == "last"  # Tevatron v2's name
    with pytest.raises(InputError, match="use --pooling last"):
        check_model_folder(tiny_decoder_dir, ModelArguments(model_name_or_path=str(tiny_decoder_dir), pooling="cls"))


def test_last_token_pooling_same_vectors_left_or_right_padded(tiny_decoder_dir):
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    model = build_model(tiny_decoder_dir)
    passages = passages_of(toy_groups(4))
    right = SequencePadder(tokenizer, append_eos=True)(passages, 80)
    left = SequencePadder(tokenizer, append_eos=True, padding_side="left")(passages, 80)
    assert left["attention_mask"][:, 0].min() == 0 and right["attention_mask"][:, -1].min() == 0  # both padded
    assert torch.allclose(encode(model, right), encode(model, left), atol=1e-5)
    one_by_one = torch.cat([encode(model, SequencePadder(tokenizer, append_eos=True)([p], 80)) for p in passages])
    assert torch.allclose(encode(model, right), one_by_one, atol=1e-5)  # as if never padded


def test_append_eos_token_ends_every_text_within_max_len(tiny_decoder_dir, tiny_bert_dir):
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    padder = SequencePadder(tokenizer, append_eos=True)
    batch = padder([[1000, 1001, 1002], list(range(1000, 1100))], 16)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == 16 and lengths.tolist() == [len(padder.prefix) + 3 + len(padder.suffix), 16]
    assert all(int(batch["input_ids"][row, lengths[row] - 1]) == tokenizer.eos_token_id for row in range(2))
    with pytest.raises(CommandError, match="has no eos token"):
        SequencePadder(load_tokenizer(str(tiny_bert_dir)), append_eos=True)


def test_decoder_trains_saves_and_reloads_the_same_vectors(tiny_decoder_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    model = build_model(tiny_decoder_dir, append_eos_token=True)
    batch = make_batch(tokenizer, toy_groups(4))
    first = train_a_step(model, batch)
    assert torch.isfinite(first) and train_a_step(model, batch) < first
    model.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "tevatron_config.json").read_text())
    assert saved["pooling"] == "last" and saved["append_eos_token"] is True
    reloaded = DenseModel.load(tmp_path / "model")
    assert reloaded.dense_config.append_eos_token and reloaded.dense_config.pooling == "last"
    assert torch.equal(encode(model, batch["passage"]), encode(reloaded, batch["passage"]))


def test_grad_cache_equals_plain_step_for_a_decoder(tiny_decoder_dir):
    from tevatron.gradcache import grad_cache_step

    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    model = build_model(tiny_decoder_dir).double()
    batch = make_batch(tokenizer, toy_groups(4))
    loss, reference = loss_and_grads(model, batch)
    model.zero_grad()
    cached = grad_cache_step(model, batch["query"], batch["passage"], 3, 5, model.compute_loss)
    assert torch.allclose(cached, loss, atol=1e-10)
    for name, grad in reference.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-10, rtol=1e-7), name


def test_cpu_rewrites_leave_decoder_vectors_unchanged(tiny_decoder_dir):
    """The BERT-specific CPU rewrites (CLS-only last layer, fused Q/K/V) must not touch a decoder; the
    general ones (oneDNN linear, fast dropout) must not change its vectors."""
    from tevatron.cpu_kernels import onednn_linear_available, use_fast_cpu_dropout, use_onednn_linear

    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    model = build_model(tiny_decoder_dir)
    batch = make_batch(tokenizer, toy_groups(4))["passage"]
    before = encode(model, batch)
    if onednn_linear_available():
        use_onednn_linear(model, "onednn")
    use_fast_cpu_dropout(model)
    assert torch.allclose(encode(model, batch), before, atol=1e-5)


# --------------------------------------------------------------------------- LoRA
@pytest.fixture(params=["bert", "decoder"])
def lora_base_dir(request, tiny_bert_dir, tiny_decoder_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_decoder_dir


def test_lora_trains_only_the_adapter_and_reloads_merged_or_not(lora_base_dir, tmp_path):
    tokenizer = load_tokenizer(str(lora_base_dir))
    model = build_model(lora_base_dir, lora=True, lora_r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = make_batch(tokenizer, toy_groups(4))
    base_vectors = encode(build_model(lora_base_dir), batch["passage"])
    train_a_step(model, batch)
    trained = encode(model, batch["passage"])
    assert not torch.allclose(trained, base_vectors, atol=1e-4)  # the adapter changed the vectors
    model.save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter only
    unmerged = DenseModel.load(tmp_path / "adapter", merge_lora=False)
    merged = DenseModel.load(tmp_path / "adapter")
    assert torch.allclose(encode(unmerged, batch["passage"]), trained, atol=1e-6)
    assert torch.allclose(encode(merged, batch["passage"]), trained, atol=1e-5)
    model.merge_lora()
    model.save(tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file() and not (tmp_path / "merged" / "adapter_config.json").exists()
    assert torch.allclose(encode(DenseModel.load(tmp_path / "merged"), batch["passage"]), trained, atol=1e-5)


def saved_tensor_bytes(model, batch):
    """Bytes the forward pass saves for the backward pass outside checkpointed layers (a checkpointed layer
    saves through its own hooks, inside these), and the loss."""
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch)["loss"]
    return sum(saved.values()), loss


def test_lora_gradient_checkpointing_as_the_trainer_enables_it(tiny_decoder_dir):
    """--gradient_checkpointing with --lora: the call transformers 5's Trainer makes reaches the base model under
    peft, the forward pass keeps a fraction of the activations, and the adapter gets the same gradients."""
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    batch = make_batch(tokenizer, toy_groups(4))
    grads, kept = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_decoder_dir, lora=True, lora_r=4, lora_dropout=0.0)
        model.train()
        if checkpointing:  # exactly what Trainer passes for --gradient_checkpointing
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False)
        model.zero_grad()
        kept[checkpointing], loss = saved_tensor_bytes(model, batch)
        loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert kept[True] < 0.5 * kept[False]
    assert grads[True].keys() == grads[False].keys()
    assert all(torch.allclose(grads[True][n], grads[False][n], atol=1e-6) for n in grads[False])
    assert any(g.abs().sum() > 0 for g in grads[True].values())


def test_lora_grad_cache_with_gradient_checkpointing_gives_the_plain_gradients(tiny_decoder_dir):
    """--grad_cache with --gradient_checkpointing and --lora (the lowest-memory combination, bench/lora_memory.py):
    each chunk's re-forward is checkpointed inside GradCache's.  Without dropout the adapter gets the plain
    step's gradients however the batch is chunked; with LoRA dropout on, checkpointing replays the masks
    GradCache replays, so adding it changes nothing."""
    from tevatron.gradcache import grad_cache_step

    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    batch = make_batch(tokenizer, toy_groups(4))

    def step(dropout: float, grad_cache: bool, checkpointing: bool):
        torch.manual_seed(0)  # the same adapter initialisation, then the same dropout draws
        model = build_model(tiny_decoder_dir, lora=True, lora_r=4, lora_dropout=dropout).double()  # chunking
        model.train()  # reorders sums: in float64 that leaves ~1e-15, not float32's ~1e-6 of the gradient
        if checkpointing:  # what Trainer passes for --gradient_checkpointing
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False)
        model.zero_grad()
        if grad_cache:
            loss = grad_cache_step(model, batch["query"], batch["passage"], 3, 5, model.compute_loss)
        else:
            loss = model(query=batch["query"], passage=batch["passage"])["loss"]
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for dropout, reference in ((0.0, dict(grad_cache=False, checkpointing=False)),
                               (0.1, dict(grad_cache=True, checkpointing=False))):
        loss, grads = step(dropout, **reference)
        combined_loss, combined = step(dropout, grad_cache=True, checkpointing=True)
        assert torch.allclose(combined_loss, loss, atol=1e-10), dropout
        assert grads.keys() == combined.keys()
        assert all(torch.allclose(combined[n], grads[n], atol=1e-10, rtol=1e-7) for n in grads), dropout
        assert any(g.abs().sum() > 0 for g in combined.values())


def test_lora_adapter_saves_a_new_identity_each_time(tiny_bert_dir, tmp_path):
    from tevatron.provenance import model_identity

    model = build_model(tiny_bert_dir, lora=True)
    model.save(tmp_path / "adapter")
    first = model_identity(tmp_path / "adapter")
    model.save(tmp_path / "adapter")
    assert "fingerprint" in first and model_identity(tmp_path / "adapter") != first


def test_lora_resume_loads_the_adapter_weights(tiny_decoder_dir, tmp_path):
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    model = build_model(tiny_decoder_dir, lora=True)
    batch = make_batch(tokenizer, toy_groups(4))
    train_a_step(model, batch)
    model.save(tmp_path / "checkpoint")
    fresh = build_model(tiny_decoder_dir, lora=True)
    fresh.load_weights_from(tmp_path / "checkpoint")
    assert torch.equal(encode(fresh, batch["passage"]), encode(model, batch["passage"]))


def test_lora_default_and_unknown_target_modules(tiny_bert_dir, tiny_decoder_dir):
    from tevatron.lora import target_modules

    decoder = build_model(tiny_decoder_dir).lm_q
    assert target_modules(decoder, None) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]
    assert target_modules(build_model(tiny_bert_dir).lm_q, None) == ["query", "key", "value", "dense"]
    with pytest.raises(CommandError, match="nope names no linear layer"):
        target_modules(decoder, "q_proj,nope")


@pytest.mark.slow
def test_lora_command_line_train_resume_encode_search(tiny_decoder_dir, tmp_path):
    """Train with --lora, encode from the adapter folder (alone, and as base + --lora_name_or_path), search;
    the encode record names the base model and the adapter."""
    data = write_jsonl(tmp_path / "train.jsonl", toy_groups(16))
    corpus = write_jsonl(tmp_path / "corpus.jsonl", toy_corpus(24))
    out = tmp_path / "model"
    train = ("--output_dir", out, "--model_name_or_path", tiny_decoder_dir, "--train_dir", data,
             "--per_device_train_batch_size", 4, "--train_n_passages", 3, "--lora", "--lora_r", 4,
             "--append_eos_token", "--pooling", "eos", "--learning_rate", 1e-3, "--cache_dir", tmp_path / "cache",
             "--dataloader_num_workers", 0, "--save_steps", 2, "--seed", 7)
    result = run_module("tevatron.driver.train", *train, "--max_steps", 4)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters trainable" in result.stderr
    record = json.loads((out / ".complete").read_text())["provenance"]
    assert record["lora"]["r"] == 4 and record["append_eos_token"] is True
    saved = json.loads((out / "tevatron_config.json").read_text())
    assert saved["lora_base_model"] == str(tiny_decoder_dir.resolve()) and saved["pooling"] == "last"

    from tevatron.tensor_files import encodings_provenance, load_encodings

    for name, model_flags in (("alone", ("--model_name_or_path", out)),
                              ("v2", ("--model_name_or_path", tiny_decoder_dir, "--lora_name_or_path", out))):
        result = run_module("tevatron.driver.encode", "--output_dir", tmp_path, *model_flags,
                            "--encode_in_path", corpus, "--encoded_save_path", tmp_path / f"{name}.pt")
        assert result.returncode == 0, result.stderr[-3000:]
    alone, v2 = load_encodings(tmp_path / "alone.pt")[0], load_encodings(tmp_path / "v2.pt")[0]
    assert torch.allclose(alone, v2, atol=1e-6)
    assert "lora base model" in encodings_provenance(tmp_path / "alone.pt")
    assert "lora adapter" in encodings_provenance(tmp_path / "v2.pt")
    result = run_module("tevatron.faiss_retriever", "--query_reps", tmp_path / "v2.pt", "--passage_reps",
                        tmp_path / "alone.pt", "--depth", 3, "--save_ranking_to", tmp_path / "rank.pt")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_merge_lora_command(tiny_bert_dir, tmp_path):
    model = build_model(tiny_bert_dir, lora=True)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    batch = make_batch(tokenizer, toy_groups(4))
    train_a_step(model, batch)
    model.save(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    result = run_module("tevatron.merge_lora", "--lora_name_or_path", tmp_path / "adapter", "--output_dir",
                        tmp_path / "merged")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").is_file() and (tmp_path / "merged" / "tokenizer.json").is_file()
    assert torch.allclose(encode(DenseModel.load(tmp_path / "merged"), batch["passage"]),
                          encode(model, batch["passage"]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,variant,mode", [("llama", "full", "plain"), ("llama", "lora", "grad_cache"),
                                                   ("bert", "lora", "plain")])
def test_ddp_and_grad_cache_equal_one_process(backbone, variant, mode, tiny_bert_dir, tmp_path):
    """--negatives_x_device under torchrun (gloo), with or without GradCache, gives the gradients of one
    process on the whole batch, for a decoder and for LoRA adapters."""
    from helpers import REPO_ROOT, build_lora_model, make_tiny_decoder
    from tevatron.gradcache import grad_cache_step
    from test_ddp import WORLD, torchrun

    model_dir = tiny_bert_dir if backbone == "bert" else make_tiny_decoder(tmp_path / "llama")
    tokenizer = load_tokenizer(str(model_dir))
    groups = toy_groups(8, seed=5)
    whole = make_batch(tokenizer, groups)
    parts = []
    for rank in range(WORLD):
        part = {}
        for side in ("query", "passage"):
            size = whole[side]["input_ids"].shape[0] // WORLD
            rows = slice(rank * size, (rank + 1) * size)
            width = int(whole[side]["attention_mask"][rows].sum(1).max())
            part[side] = {k: v[rows, :width].contiguous() for k, v in whole[side].items()}
        parts.append(part)
    torch.save(parts, tmp_path / "batches.pt")
    model = (build_lora_model(model_dir) if variant == "lora" else build_model(model_dir)).double()
    model.zero_grad()
    if mode == "grad_cache":
        reference_loss = grad_cache_step(model, whole["query"], whole["passage"], 3, 5, model.compute_loss)
    else:
        reference_loss = model(**whole)["loss"]
        reference_loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert reference and (variant == "full" or all("lora_" in n for n in reference))
    result = torchrun(REPO_ROOT / "tests" / "ddp_worker.py", model_dir, tmp_path / "batches.pt", tmp_path / "out.pt",
                      mode, variant)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.allclose(got["loss"], reference_loss.detach(), atol=1e-10)
    assert got["grads"].keys() == reference.keys()
    for name, grad in reference.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-12, rtol=1e-7), name


def test_pipeline_lora_setting(tmp_path):
    """LORA=1 adds the LoRA flags to every training command and enters OUT's hash; LORA=0 leaves OUT as it
    was; another value stops the scripts in one line."""
    import subprocess

    from helpers import REPO_ROOT
    from test_pipeline import pipeline_env, shell_settings

    names = ("OUT", "LORA_ALPHA")
    base = shell_settings(names, {"DATA": "scifact", "PROFILE": "quick", "MODEL": str(tmp_path)}, resolve=True,
                          cwd=tmp_path)
    off = shell_settings(names, {"DATA": "scifact", "PROFILE": "quick", "MODEL": str(tmp_path), "LORA": "0",
                                 "LORA_R": "4"}, resolve=True, cwd=tmp_path)
    on = shell_settings(names, {"DATA": "scifact", "PROFILE": "quick", "MODEL": str(tmp_path), "LORA": "1"},
                        resolve=True, cwd=tmp_path)
    assert off["OUT"] == base["OUT"] != on["OUT"] and on["LORA_ALPHA"] == "32"
    script = (f'set -a; source "{REPO_ROOT}/settings.sh"; set +a; source "{REPO_ROOT}/msmarco-passage-ranking/'
              'pipeline_common.sh"; resolve_settings; PYTHON=echo; train_model M T O 1e-4 1')
    for lora, expected in (("1", "--lora --lora_r 8 --lora_alpha 16"), ("0", None), ("2", "error: LORA must be")):
        env = pipeline_env(DATA="scifact", PROFILE="quick", MODEL=str(tmp_path), LORA=lora, LORA_R="8")
        result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path,
                                timeout=60)
        if lora == "2":
            assert result.returncode == 2 and result.stderr.startswith(expected)
        elif expected:
            assert expected in result.stdout
        else:
            assert result.returncode == 0 and "--lora" not in result.stdout


def test_training_from_an_adapter_folder_continues_it_or_merges_it(tiny_decoder_dir, tmp_path):
    """Stage 2 from a stage-1 LoRA folder: with --lora the same adapter trains on; without, the merged model
    fine-tunes fully.  Either way the vectors start where stage 1 ended."""
    tokenizer = load_tokenizer(str(tiny_decoder_dir))
    batch = make_batch(tokenizer, toy_groups(4))
    stage1 = build_model(tiny_decoder_dir, lora=True)
    train_a_step(stage1, batch)
    stage1.save(tmp_path / "stage1")
    expected = encode(stage1, batch["passage"])
    continued = build_model(tmp_path / "stage1", lora=True)
    trainable = [n for n, p in continued.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and continued.lora_base == str(tiny_decoder_dir.resolve())
    assert torch.allclose(encode(continued, batch["passage"]), expected, atol=1e-6)
    full = build_model(tmp_path / "stage1")
    assert full.lora_base is None and all(p.requires_grad for p in full.parameters())
    assert torch.allclose(encode(full, batch["passage"]), expected, atol=1e-5)
