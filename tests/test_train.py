"""Training: loss goes down, save/load round trips, padding/grad-cache/resume equivalence, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from helpers import (build_model, error_lines, loss_and_grads, make_batch, make_tiny_bert, run_module,
                     stopped_training_script, toy_groups, write_jsonl)
from tevatron.arguments import DataArguments, ModelArguments
from tevatron.data import load_train_groups, sample_group
from tevatron.gradcache import grad_cache_step
from tevatron.files import InputError
from tevatron.modeling import DenseModel
from tevatron.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return load_tokenizer(str(tiny_bert_dir))


def test_group_sampling_rotates_and_is_reproducible():
    group = {"query": [1], "positives": [[10], [11]], "negatives": [[n] for n in range(100, 110)]}
    first = sample_group(group, 3, 0, 42, 4)
    assert first == sample_group(group, 3, 0, 42, 4)
    second = sample_group(group, 3, 1, 42, 4)
    assert first[1][0] != second[1][0], "positive rotates with the epoch"
    assert set(map(tuple, first[1][1:])).isdisjoint(map(tuple, second[1][1:])), "negative window moves"
    few = {"query": [1], "positives": [[10]], "negatives": [[100], [101]]}
    assert len(sample_group(few, 0, 0, 42, 8)[1]) == 8, "too few negatives are drawn with replacement"
    other_seed = [sample_group(group, i, 0, 7, 4) for i in range(5)]
    assert other_seed != [sample_group(group, i, 0, 42, 4) for i in range(5)], "the seed matters"


def test_a_few_steps_lower_the_loss(tiny_bert_dir, tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_bert_dir)
    groups = toy_groups(16)
    batch = make_batch(tokenizer, groups)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.75, losses


def test_dynamic_padding_equals_fixed_padding(tiny_bert_dir, tokenizer):
    for pooling in ("cls", "mean"):
        model = build_model(tiny_bert_dir, pooling=pooling)
        groups = toy_groups(6)
        dynamic, fixed = make_batch(tokenizer, groups), make_batch(tokenizer, groups, fixed=True)
        assert dynamic["passage"]["input_ids"].shape[1] < fixed["passage"]["input_ids"].shape[1]
        loss_d, grads_d = loss_and_grads(model, dynamic)
        loss_f, grads_f = loss_and_grads(model, fixed)
        assert torch.allclose(loss_d, loss_f, atol=1e-5)
        for name in grads_f:
            assert torch.allclose(grads_d[name], grads_f[name], atol=1e-5, rtol=1e-4), name


def test_grad_cache_equals_plain_step(tiny_bert_dir, tokenizer):
    for untie in (False, True):
        model = build_model(tiny_bert_dir, untie_encoder=untie, add_pooler=True)
        batch = make_batch(tokenizer, toy_groups(8))
        loss_plain, grads_plain = loss_and_grads(model, batch)
        model.zero_grad()
        loss_cached = grad_cache_step(model, batch["query"], batch["passage"], 3, 5, model.compute_loss)
        grads_cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert torch.allclose(loss_plain, loss_cached, atol=1e-5)
        assert grads_plain.keys() == grads_cached.keys()
        for name in grads_plain:
            assert torch.allclose(grads_plain[name], grads_cached[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("dropout_kind", ["torch", "fast"])
def test_grad_cache_replays_dropout_masks(tmp_path, tokenizer, dropout_kind):
    """With dropout on, grad cache equals the plain step only if the re-forward replays the masks."""
    from transformers import BertConfig, BertModel
    from tevatron.cpu_kernels import use_fast_cpu_dropout

    path = tmp_path / "dropout_bert"
    make_tiny_bert(path)
    config = BertConfig.from_pretrained(path)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.2
    BertModel.from_pretrained(path, config=config).save_pretrained(path)
    model = build_model(path)
    if dropout_kind == "fast":
        assert use_fast_cpu_dropout(model)
    model.train()
    batch = make_batch(tokenizer, toy_groups(4))
    torch.manual_seed(3)
    loss_plain, grads_plain = loss_and_grads(model, batch)
    torch.manual_seed(3)
    model.zero_grad()
    # chunks as large as the batch draw the random numbers in the plain step's order
    loss_cached = grad_cache_step(model, batch["query"], batch["passage"], 4, 16, model.compute_loss)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-6)
    grads_cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads_cached.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_cached[name], grad, atol=1e-6, rtol=1e-4), name
    torch.manual_seed(4)
    assert not torch.allclose(loss_and_grads(model, batch)[0], loss_plain), "dropout is on"


def test_fast_dropout_drops_p_and_keeps_the_mean():
    from tevatron.cpu_kernels import fast_dropout

    torch.manual_seed(0)
    x = torch.ones(1_000_001, requires_grad=True)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002 and abs(y.mean().item() - 1.0) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach()), "the gradient is the mask times the scale"
    assert torch.equal(fast_dropout(x, 0.0), x)


def test_cpu_training_attention_matches_the_eager_formula():
    from types import SimpleNamespace
    from tevatron.cpu_kernels import cpu_training_attention, fast_dropout

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False
    module = SimpleNamespace(training=True)
    torch.manual_seed(7)
    out, _ = cpu_training_attention(module, q, k, v, mask, dropout=0.25, scaling=0.5)
    scores = (q @ k.transpose(2, 3) * 0.5).masked_fill(~mask, torch.finfo(torch.float32).min)
    torch.manual_seed(7)
    expected = (fast_dropout(torch.softmax(scores, -1), 0.25) @ v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("variant", [{}, {"untie_encoder": True}, {"add_pooler": True},
                                     {"add_pooler": True, "untie_encoder": True, "normalize": True}])
def test_save_then_load_gives_identical_vectors(tiny_bert_dir, tokenizer, tmp_path, variant):
    torch.manual_seed(1)
    model = build_model(tiny_bert_dir, **variant)
    if model.pooler is not None:  # make the pooler non-trivial
        torch.nn.init.normal_(model.pooler.linear_q.weight)
    model.eval()
    batch = make_batch(tokenizer, toy_groups(4))
    model.save(tmp_path / "saved")
    loaded = DenseModel.load(tmp_path / "saved").eval()
    with torch.no_grad():
        for side in ("query", "passage"):
            before = model(**{side: batch[side]})
            after = loaded(**{side: batch[side]})
            key = "q_reps" if side == "query" else "p_reps"
            assert torch.equal(before[key], after[key])
    if not variant.get("untie_encoder"):
        plain = AutoModel.from_pretrained(tmp_path / "saved")
        assert torch.equal(plain.embeddings.word_embeddings.weight, model.lm_q.embeddings.word_embeddings.weight)


def test_pooling_auto_follows_sentence_transformers_config(minilm_dir, caplog):
    args = ModelArguments(model_name_or_path=str(minilm_dir), pooling="auto")
    with caplog.at_level("INFO"):
        model = DenseModel.build(args)
    assert model.dense_config.pooling == "mean"
    assert "sentence-transformers pooling config" in caplog.text
    published = DenseModel.load(minilm_dir, pooling="auto")  # zero-shot: the model as published
    assert published.dense_config.pooling == "mean" and published.dense_config.normalize
    assert not DenseModel.load(minilm_dir, pooling="mean").dense_config.normalize


def test_pooling_auto_continues_with_the_pooling_a_saved_model_was_trained_with(tiny_bert_dir, tmp_path, caplog):
    """Stage 2 starting from the stage-1 model (HN_INIT=stage1) must keep its pooling, not fall back to cls."""
    build_model(tiny_bert_dir, pooling="mean").save(tmp_path / "stage1")
    with caplog.at_level("INFO"):
        continued = build_model(tmp_path / "stage1", pooling="auto")
    assert continued.dense_config.pooling == "mean"
    assert "trained with mean pooling; --pooling auto follows it" in caplog.text
    assert build_model(tmp_path / "stage1", pooling="cls").dense_config.pooling == "cls"  # asked for explicitly


# ----------------------------------------------------------------------------- bad input
BAD_INPUTS = {
    "malformed JSON": ('{"query": [1, 2], "positives": [[3]]\n', "malformed JSON"),
    "missing query": ('{"positives": [[3]], "negatives": [[4]]}\n', "missing field 'query'"),
    "missing positives": ('{"query": [1], "negatives": [[4]]}\n', "missing field 'positives'"),
    "no positives": ('{"query": [1], "positives": [], "negatives": [[4]]}\n', "no positives"),
    "id outside vocab": ('{"query": [1], "positives": [[99999999]], "negatives": [[4]]}\n', "outside the vocabulary"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_training_input_names_file_and_line(tmp_path, case):
    text, message = BAD_INPUTS[case]
    good = json.dumps({"query": [1], "positives": [[2]], "negatives": [[3]]}) + "\n"
    path = tmp_path / "train.jsonl"
    path.write_text(good + text)
    args = DataArguments(train_dir=str(path), train_n_passages=2)
    with pytest.raises(InputError) as err:
        load_train_groups(args, vocab_size=30522, cache_dir=str(tmp_path / "cache"))
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


@pytest.mark.slow
def test_driver_bad_input_is_one_line(tmp_path, tiny_bert_dir):
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": [1], "positives": [[2]], "negatives": [[3]]}\n{"query": [1], "negatives": [[3]]}\n')
    result = run_module("tevatron.driver.train", "--output_dir", tmp_path / "out", "--model_name_or_path",
                        tiny_bert_dir, "--train_dir", path, "--train_n_passages", 2, "--max_steps", 1,
                        "--cache_dir", tmp_path / "cache")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {path}:2: missing field 'positives'"]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- the driver end to end
def _train(tmp_path, model_dir, out, *extra, runner=run_module):
    data = tmp_path / "data" / "train.jsonl"
    if not data.is_file():  # written once: a rewrite would change the data's identity between runs
        write_jsonl(data, toy_groups(24))
    return runner("tevatron.driver.train", "--output_dir", out, "--model_name_or_path", model_dir,
                      "--train_dir", data.parent, "--per_device_train_batch_size", 4, "--train_n_passages", 3,
                      "--learning_rate", 1e-3, "--seed", 7, "--logging_steps", 1, "--q_max_len", 16,
                      "--p_max_len", 48, "--cache_dir", tmp_path / "cache", "--save_strategy", "steps",
                      "--dataloader_num_workers", 0, *extra)


@pytest.mark.slow
def test_max_len_beyond_the_models_positions_is_cut_with_a_warning(tmp_path, tiny_bert_dir):
    """The tiny model has 160 positions: --p_max_len 400 on 300-token passages must not crash in torch."""
    groups = [{"query": [1000 + i, 1001], "positives": [list(range(1000, 1300))],
               "negatives": [list(range(2000, 2300)), list(range(3000, 3300))]} for i in range(8)]
    data = write_jsonl(tmp_path / "long" / "train.jsonl", groups)
    result = run_module("tevatron.driver.train", "--output_dir", tmp_path / "out", "--model_name_or_path",
                        tiny_bert_dir, "--train_dir", data, "--per_device_train_batch_size", 4,
                        "--train_n_passages", 3, "--p_max_len", 400, "--max_steps", 1, "--save_strategy", "no",
                        "--cache_dir", tmp_path / "cache", "--dataloader_num_workers", 0)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--p_max_len 400 is longer than the model's 160 positions; cutting texts at 160" in result.stderr


@pytest.mark.slow
def test_fp16_on_cpu_falls_back_with_a_message(tmp_path, tiny_bert_dir):
    result = _train(tmp_path, tiny_bert_dir, tmp_path / "out", "--fp16", "--max_steps", 2, "--save_steps", 100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--fp16 requested but no CUDA device" in result.stderr
    saved = json.loads((tmp_path / "out" / "tevatron_config.json").read_text())
    assert saved["pooling"] == "cls"
    assert (tmp_path / "out" / "model.safetensors").is_file()


STOPPED_TRAINING = stopped_training_script("tevatron.driver.train")


def _train_until_checkpoint(tmp_path, model_dir, out, step: int, *extra):
    import os
    import subprocess
    import sys
    from helpers import REPO_ROOT

    def runner(_module, *args):
        env = dict(os.environ, STOP_AT=str(step), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
        return subprocess.run([sys.executable, "-c", STOPPED_TRAINING, *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=600)

    result = _train(tmp_path, model_dir, out, *extra, runner=runner)
    assert result.returncode == 3, result.stderr[-2000:]
    return out / f"checkpoint-{step}"


@pytest.mark.slow
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, tiny_bert_dir):
    """12 steps over 2 epochs straight, versus resuming the same schedule from its step-6 checkpoint in a
    fresh output directory (as after a run killed between step 6 and 12)."""
    import shutil

    common = ("--num_train_epochs", 2, "--save_steps", 6)
    straight = _train(tmp_path, tiny_bert_dir, tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert not list((tmp_path / "straight").glob("checkpoint-*")), "a finished run keeps no checkpoints"
    stopped = _train_until_checkpoint(tmp_path, tiny_bert_dir, tmp_path / "stopped", 6, *common)
    checkpoint = tmp_path / "resumed" / "checkpoint-6"
    shutil.copytree(stopped, checkpoint)
    resumed = _train(tmp_path, tiny_bert_dir, tmp_path / "resumed", *common, "--resume_from_checkpoint", checkpoint)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = DenseModel.load(tmp_path / "straight").state_dict()
    b = DenseModel.load(tmp_path / "resumed").state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    midway = DenseModel.load(stopped).state_dict()
    assert any(not torch.equal(midway[n], a[n]) for n in a), "the resumed run trained further"


def test_onednn_linear_layers_give_the_same_loss_and_gradients(tiny_bert_dir, tokenizer):
    from tevatron.cpu_kernels import onednn_linear_available, use_onednn_linear

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear op")
    batch = make_batch(tokenizer, toy_groups(6))
    torch.manual_seed(0)  # the pooler's random initialisation
    plain = build_model(tiny_bert_dir, add_pooler=True)
    reference_loss, reference = loss_and_grads(plain, batch)
    torch.manual_seed(0)
    model = build_model(tiny_bert_dir, add_pooler=True)
    assert use_onednn_linear(model, "onednn")
    attention = model.lm_q.encoder.layer[0].attention.self
    assert "forward" in vars(attention), "query/key/value fused into one product"
    loss, grads = loss_and_grads(model, batch)
    assert torch.allclose(loss, reference_loss, atol=1e-5)
    for name in reference:
        assert torch.allclose(grads[name], reference[name], atol=1e-6, rtol=1e-3), name
    with torch.inference_mode():
        assert torch.allclose(model.encode_query(batch["query"]), plain.encode_query(batch["query"]), atol=1e-5)


@pytest.mark.parametrize("untie", [False, True])
def test_cls_shortcut_gives_the_full_models_loss_gradients_and_vectors(tiny_bert_dir, tokenizer, untie):
    """With CLS pooling the last layer runs for [CLS] only; nothing observable may change."""
    batch = make_batch(tokenizer, toy_groups(6))
    torch.manual_seed(0)
    model = build_model(tiny_bert_dir, pooling="cls", untie_encoder=untie, add_pooler=True)
    assert len(model.encoders()) == (2 if untie else 1)
    assert all("forward" in vars(encoder.encoder.layer[-1]) for encoder in model.encoders())
    hidden = model.lm_q(**batch["query"]).last_hidden_state
    assert hidden.shape[1] == 1
    torch.manual_seed(0)
    reference = build_model(tiny_bert_dir, pooling="cls", untie_encoder=untie, add_pooler=True)
    for encoder in reference.encoders():
        del encoder.encoder.layer[-1].forward  # back to the full layer
    assert reference.lm_q(**batch["query"]).last_hidden_state.shape[1] == batch["query"]["input_ids"].shape[1]
    loss, grads = loss_and_grads(model, batch)
    reference_loss, reference_grads = loss_and_grads(reference, batch)
    assert torch.allclose(loss, reference_loss, atol=1e-6)
    assert grads.keys() == reference_grads.keys() and model.state_dict().keys() == reference.state_dict().keys()
    for name in reference_grads:
        assert torch.allclose(grads[name], reference_grads[name], atol=1e-6, rtol=1e-4), name
    with torch.inference_mode():
        assert torch.allclose(model.encode_passage(batch["passage"]), reference.encode_passage(batch["passage"]),
                              atol=1e-6)
    assert "forward" not in vars(build_model(tiny_bert_dir, pooling="mean").lm_q.encoder.layer[-1])


def test_a_failed_save_leaves_no_partial_files(tiny_bert_dir, tmp_path):
    model = build_model(tiny_bert_dir)

    def dies_half_way(directory, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    model.lm_q.save_pretrained = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "model")
    assert list((tmp_path / "model").iterdir()) == [], "no half-written weights, no staging folder"
    del model.lm_q.save_pretrained
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors",
                                                                     "tevatron_config.json"]


# ----------------------------------------------------------------------------- finished runs: record, skip, refuse
def _train_on(data, model_dir, out, cache, *extra):
    return run_module("tevatron.driver.train", "--output_dir", out, "--model_name_or_path", model_dir,
                      "--train_dir", data, "--per_device_train_batch_size", 4, "--train_n_passages", 3,
                      "--learning_rate", 1e-3, "--seed", 7, "--q_max_len", 16, "--p_max_len", 48,
                      "--cache_dir", cache, "--dataloader_num_workers", 0, "--max_steps", 2, *extra)


def _fingerprint(model_dir) -> str:
    return json.loads((Path(model_dir) / "tevatron_config.json").read_text())["fingerprint"]


@pytest.mark.slow
def test_a_finished_run_is_skipped_refused_when_changed_and_retrained_on_overwrite(tmp_path, tiny_bert_dir):
    from tevatron.provenance import read_folder_record

    data = write_jsonl(tmp_path / "data" / "train.jsonl", toy_groups(16))
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = _train_on(data.parent, tiny_bert_dir, out, cache)
    assert first.returncode == 0, first.stderr[-2000:]
    record = read_folder_record(out)
    assert record["provenance"]["learning_rate"] == 1e-3 and record["provenance"]["pooling"] == "cls"
    assert record["provenance"]["training data"]["files"][0]["path"] == str(data.resolve())
    assert record["stats"]["global_step"] == 2
    fingerprint = _fingerprint(out)

    again = _train_on(data.parent, tiny_bert_dir, out, cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{out} is up to date (same model, data and arguments); skipping training" in again.stderr
    assert "training groups" not in again.stderr and _fingerprint(out) == fingerprint

    changed = _train_on(data.parent, tiny_bert_dir, out, cache, "--learning_rate", 2e-3, "--temperature", 0.5)
    assert changed.returncode == 2
    assert error_lines(changed.stderr) == [
        f"error: {out}: holds a model trained with other arguments (learning_rate: 0.001 -> 0.002, temperature: "
        "1.0 -> 0.5); use --overwrite_output_dir to retrain into it, or another --output_dir"]
    assert "Traceback" not in changed.stderr and _fingerprint(out) == fingerprint

    data.write_bytes(data.read_bytes())  # copied again (same bytes, a new time): still the same data
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    copied = _train_on(data.parent, tiny_bert_dir, out, cache)
    assert copied.returncode == 0, copied.stderr[-2000:]
    assert (f"{data.resolve()}: modification time changed, content unchanged (sha256); treated as the same input"
            in copied.stderr)
    assert f"{out} is up to date (same model, data and arguments); skipping training" in copied.stderr
    assert _fingerprint(out) == fingerprint
    assert read_folder_record(out)["provenance"]["training data"]["files"][0]["mtime_ns"] == data.stat().st_mtime_ns

    lines = data.read_text().splitlines(keepends=True)
    data.write_text("".join(reversed(lines)))  # other content of the same size: other data
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 4_000_000_000))
    stale = _train_on(data.parent, tiny_bert_dir, out, cache)
    assert stale.returncode == 2 and error_lines(stale.stderr) == [
        f"error: {out}: holds a model trained with other inputs (training data changed); use "
        "--overwrite_output_dir to retrain into it, or another --output_dir"]

    retrained = _train_on(data.parent, tiny_bert_dir, out, cache, "--learning_rate", 2e-3, "--overwrite_output_dir")
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    assert "training groups" in retrained.stderr and _fingerprint(out) != fingerprint
    assert read_folder_record(out)["provenance"]["learning_rate"] == 2e-3


def test_every_save_writes_a_fresh_fingerprint(tiny_bert_dir, tmp_path):
    from tevatron.provenance import model_identity

    model = build_model(tiny_bert_dir)
    model.save(tmp_path / "a")
    first = model_identity(tmp_path / "a")
    model.save(tmp_path / "a")
    assert model_identity(tmp_path / "a") != first and set(first) == {"fingerprint"}
    assert DenseModel.load(tmp_path / "a").dense_config.pooling == "cls"


@pytest.mark.slow
def test_a_short_run_writes_no_checkpoint_it_does_not_need(tmp_path, tiny_bert_dir):
    """--save_steps beyond the run: HF would still save a full checkpoint (weights and optimizer) at the last
    step; only the model is written.  A checkpoint within the run is written, and removed at the end."""
    long = _train(tmp_path, tiny_bert_dir, tmp_path / "long", "--max_steps", 10, "--save_steps", 20000)
    assert long.returncode == 0, long.stderr[-2000:]
    assert long.stderr.count("saving model to") == 1 and "checkpoint-" not in long.stderr
    assert not list((tmp_path / "long").glob("checkpoint-*")) and (tmp_path / "long" / ".complete").is_file()
    within = _train(tmp_path, tiny_bert_dir, tmp_path / "within", "--max_steps", 10, "--save_steps", 5)
    assert within.returncode == 0, within.stderr[-2000:]
    assert f"saving model to {tmp_path / 'within' / 'checkpoint-5'}" in within.stderr
    assert "checkpoint-10" not in within.stderr and within.stderr.count("saving model to") == 2
    assert not list((tmp_path / "within").glob("checkpoint-*"))


@pytest.mark.slow
def test_a_non_finite_loss_stops_training_in_one_line(tmp_path, tiny_bert_dir):
    """A temperature so small that the scores overflow: HF alone would train on to a model of NaNs."""
    out = tmp_path / "out"
    result = _train(tmp_path, tiny_bert_dir, out, "--max_steps", 5, "--temperature", 1e-45)
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        "error: the training loss at step 1 is nan (not finite); stopping before it spoils the model (check "
        "--temperature and --learning_rate, or train without --fp16)"]
    assert "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / ".complete").exists()


# ----------------------------------------------------------------------------- model folder checks
def test_pooling_messages_say_whether_pooling_was_asked_for(tiny_bert_dir, tmp_path, caplog):
    build_model(tiny_bert_dir, pooling="mean").save(tmp_path / "stage1")
    with caplog.at_level("WARNING"):
        assert build_model(tmp_path / "stage1").dense_config.pooling == "cls"
    assert "was trained with mean pooling; continuing with --pooling cls (default)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        build_model(tmp_path / "stage1", pooling="cls")
    assert "continuing with --pooling cls as asked" in caplog.text


def test_model_folder_checks(tiny_bert_dir, tmp_path):
    from transformers import GPT2Config
    from tevatron.modeling import check_model_folder

    def refused(path, **overrides) -> str:
        args = ModelArguments(model_name_or_path=str(path), **overrides)
        with pytest.raises(InputError) as err:
            check_model_folder(path, args)
        return str(err.value)

    check_model_folder(tiny_bert_dir, ModelArguments(model_name_or_path=str(tiny_bert_dir)))
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path / "gpt")
    check_model_folder(tmp_path / "gpt", ModelArguments(model_name_or_path=str(tmp_path / "gpt"), pooling="mean"))
    assert "with --pooling auto (cls here) every text would get the same vector" in refused(tmp_path / "gpt",
                                                                                           pooling="auto")
    assert "with --pooling cls every text" in refused(tmp_path / "gpt", pooling="cls")

    build_model(tiny_bert_dir, untie_encoder=True).save(tmp_path / "untied")
    check_model_folder(tmp_path / "untied")
    (tmp_path / "untied" / "passage_model" / "config.json").unlink()
    assert refused(tmp_path / "untied") == f"{tmp_path / 'untied' / 'passage_model'}: no config.json: not a " \
                                           "Hugging Face model folder"

    (tmp_path / "a_file").write_text("x")
    assert refused(tmp_path / "a_file").endswith("a_file: not a model folder (it is a file)")
    (tmp_path / "blip").mkdir()
    (tmp_path / "blip" / "config.json").write_text('{"model_type": "blip_text_model"}')
    assert refused(tmp_path / "blip").endswith("blip: model type 'blip_text_model' has no model class AutoModel "
                                               "can load")

    known_type = tmp_path / "bert_with_code"
    known_type.mkdir()
    config = json.loads((Path(tiny_bert_dir) / "config.json").read_text())
    (known_type / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "code.Model"}}))
    assert "its auto_map maps AutoModel to Python code" in refused(known_type)
    with pytest.raises(InputError, match="auto_map maps AutoModel"):
        load_tokenizer(str(known_type))
