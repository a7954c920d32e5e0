"""Run under ``torchrun``: one DDP training step on this rank's slice of a saved batch.

Rank 0 saves the loss and the parameter gradients (after DDP's averaging) for comparison with a
single process on the whole batch.  Several modes, comma-separated, run one after another in one launch
(a fresh model each), saved where ``{mode}`` in the output path names each.
"""
import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tevatron.arguments import ModelArguments
from tevatron.gradcache import grad_cache_step
from tevatron.modeling import DenseModel


def main(model_dir, batches_path, out_path, modes, variant="full"):
    dist.init_process_group("gloo")
    batches = torch.load(batches_path, weights_only=True)
    for mode in modes.split(","):
        step(model_dir, batches[dist.get_rank()], out_path.format(mode=mode), mode, variant)
    dist.destroy_process_group()


def step(model_dir, local, out_path, mode, variant):
    rank = dist.get_rank()
    # float64 so the comparison with one process is exact up to summation order
    if variant == "lora":
        from helpers import build_lora_model
        model = build_lora_model(model_dir, negatives_x_device=True).double()
    else:
        # "distil" modes: the distillation loss (KL on each rank's own groups + 0.5 x the gathered contrastive loss)
        model = DenseModel.build(ModelArguments(model_name_or_path=model_dir), negatives_x_device=True,
                                 distil_temperature=0.7, distil_weight=0.5).double()
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    teacher = local.get("teacher_scores") if mode.startswith("distil") else None
    if mode.endswith("grad_cache"):
        loss = grad_cache_step(ddp, local["query"], local["passage"], 2, 3,
                               lambda q, p: model.compute_loss(q, p, teacher))
    else:
        loss = ddp(query=local["query"], passage=local["passage"], teacher_scores=teacher)["loss"]
        loss.backward()
    if teacher is not None:  # the KL part is each rank's own mean: the loss HF logs is the mean over ranks
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads}, out_path)
    dist.barrier()
    del ddp, model
    gc.collect()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py
    main(*sys.argv[1:])
