"""Contrastive loss over in-batch (and optionally cross-process) negatives."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient in backward.

    With cross-process negatives every process computes the same full loss but only its own slice of
    the vectors carries gradients; DDP then averages over processes, so each local gradient must be
    scaled by the world size.  Scaling the gradient (not the loss) keeps the logged loss true.
    """

    @staticmethod
    def forward(ctx, tensor, factor: float):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process in rank order; only the local slice keeps its graph."""
    rank, world = distributed_world()
    if world == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor.detach().contiguous())
    gathered[rank] = tensor
    return torch.cat(gathered, dim=0)


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Scores and softmax in fp32 (or fp64) even when the encoder ran in half precision."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def similarity(q_reps: torch.Tensor, p_reps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.matmul(q_reps, p_reps.transpose(0, 1)) / temperature


def contrastive_loss(q_reps: torch.Tensor, p_reps: torch.Tensor, temperature: float = 1.0,
                     negatives_x_device: bool = False) -> torch.Tensor:
    """Cross-entropy of each query against every passage in the batch.

    Passages come in groups of ``len(p_reps) // len(q_reps)``, the first of each group the positive.
    With ``negatives_x_device`` the vectors of all processes are gathered first.
    """
    world = 1
    if negatives_x_device:
        _, world = distributed_world()
        q_reps, p_reps = gather_with_grad(q_reps), gather_with_grad(p_reps)
    scores = similarity(at_least_fp32(q_reps), at_least_fp32(p_reps), temperature)
    group_size = p_reps.shape[0] // q_reps.shape[0]
    target = torch.arange(q_reps.shape[0], device=scores.device) * group_size
    loss = F.cross_entropy(scores, target)
    if world > 1:
        loss = _ScaleGradient.apply(loss, float(world))
    return loss
