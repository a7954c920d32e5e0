"""Run under ``torchrun``: one DDP training step on this rank's slice of a saved batch.

Rank 0 saves the loss and the parameter gradients (after DDP's averaging) for comparison with a
single process on the whole batch.
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


def main(model_dir, batches_path, out_path, mode, variant="full"):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batches = torch.load(batches_path, weights_only=True)
    local = batches[rank]
    # float64 so the comparison with one process is exact up to summation order
    if variant == "lora":
        from helpers import build_lora_model
        model = build_lora_model(model_dir, negatives_x_device=True).double()
    else:
        model = DenseModel.build(ModelArguments(model_name_or_path=model_dir), negatives_x_device=True).double()
    ddp = DistributedDataParallel(model, find_unused_parameters=True)
    if mode == "grad_cache":
        loss = grad_cache_step(ddp, local["query"], local["passage"], 2, 3, model.compute_loss)
    else:
        loss = ddp(query=local["query"], passage=local["passage"])["loss"]
        loss.backward()
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads}, out_path)
    dist.barrier()
    del ddp, model
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py
    main(*sys.argv[1:])
