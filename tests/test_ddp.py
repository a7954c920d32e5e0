"""Cross-process negatives under torchrun (gloo, CPU): equal to one process with the whole batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import (REPO_ROOT, build_model, loss_and_grads, make_batch, make_distil_batch, scored_groups, toy_groups,
                     write_jsonl)
from tevatron.gradcache import grad_cache_step
from tevatron.tokenization import load_tokenizer

pytestmark = pytest.mark.slow  # every test runs a subprocess (torchrun or a command line)

WORLD = 2


def torchrun(*args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def split_batches(tiny_bert_dir, tmp_path_factory):
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    groups = toy_groups(8, seed=5)
    whole = make_distil_batch(tokenizer, scored_groups(groups))
    per_rank = len(groups) // WORLD
    parts = [make_batch(tokenizer, groups[r * per_rank:(r + 1) * per_rank]) for r in range(WORLD)]
    # each rank's groups must sample exactly as in the whole batch (index-seeded): rebuild from whole
    for r, part in enumerate(parts):
        for side in ("query", "passage"):
            size = part[side]["input_ids"].shape[0]
            rows = slice(r * size, (r + 1) * size)
            width = int(whole[side]["attention_mask"][rows].sum(1).max())
            part[side] = {k: v[rows, :width].contiguous() for k, v in whole[side].items()}
        part["teacher_scores"] = whole["teacher_scores"][r * per_rank:(r + 1) * per_rank].double()
    path = tmp_path_factory.mktemp("ddp") / "batches.pt"
    torch.save(parts, path)
    return whole, path


MODES = ["plain", "grad_cache", "distil", "distil_grad_cache"]


@pytest.fixture(scope="module")
def ddp_steps(tiny_bert_dir, split_batches, tmp_path_factory):
    """One torchrun launch runs every mode's DDP step (a launch costs process starts and imports)."""
    _, batches_path = split_batches
    out = tmp_path_factory.mktemp("ddp_steps")
    result = torchrun(REPO_ROOT / "tests" / "ddp_worker.py", tiny_bert_dir, batches_path, out / "{mode}.pt",
                      ",".join(MODES))
    return result, out


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one_with_double_batch(tiny_bert_dir, split_batches, ddp_steps, mode):
    """Distillation under DDP: the KL term is each process's mean over its own queries (their groups are
    local), which DDP's gradient averaging makes the mean over all queries; the contrastive term gathers."""
    whole, _ = split_batches
    model = build_model(tiny_bert_dir).double()
    teacher = whole["teacher_scores"].double() if mode.startswith("distil") else None
    model.distil_temperature, model.distil_weight = 0.7, 0.5
    if mode.endswith("grad_cache"):
        model.zero_grad()
        reference_loss = grad_cache_step(model, whole["query"], whole["passage"], 3, 5,
                                         lambda q, p: model.compute_loss(q, p, teacher))
        reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    else:
        batch = {"query": whole["query"], "passage": whole["passage"], "teacher_scores": teacher}
        reference_loss, reference = loss_and_grads(model, batch)
    result, out = ddp_steps
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out / f"{mode}.pt", weights_only=True)
    assert torch.allclose(got["loss"], reference_loss, atol=1e-10), (got["loss"], reference_loss)
    assert got["grads"].keys() == reference.keys()
    for name, grad in reference.items():
        assert torch.allclose(got["grads"][name], grad, atol=1e-12, rtol=1e-7), name


def test_driver_under_torchrun_exits_cleanly(tiny_bert_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", toy_groups(16))
    for attempt in range(2):  # gloo used to abort at exit in some launches: run it more than once
        out = tmp_path / f"out{attempt}"
        result = torchrun("-m", "tevatron.driver.train", "--output_dir", out, "--model_name_or_path", tiny_bert_dir,
                          "--train_dir", data, "--per_device_train_batch_size", 2, "--train_n_passages", 3,
                          "--negatives_x_device", "--max_steps", 3, "--save_steps", 100,
                          "--cache_dir", tmp_path / "cache", "--dataloader_num_workers", 0)
        assert result.returncode == 0, result.stderr[-3000:]
        assert (out / "model.safetensors").is_file()
