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


def group_scores(q_reps: torch.Tensor, p_reps: torch.Tensor, n_passages: int, temperature: float = 1.0) -> torch.Tensor:
    """[queries, n_passages]: each query's similarity to the passages of its own group only (the groups
    are consecutive runs of ``n_passages`` rows of ``p_reps``, in query order)."""
    if p_reps.shape[0] != q_reps.shape[0] * n_passages:
        raise ValueError(f"{p_reps.shape[0]} passage vectors for {q_reps.shape[0]} queries of {n_passages} passages each")
    groups = p_reps.view(q_reps.shape[0], n_passages, -1)
    return torch.einsum("qd,qnd->qn", q_reps, groups) / temperature


def distillation_loss(q_reps: torch.Tensor, p_reps: torch.Tensor, teacher_scores: torch.Tensor,
                      temperature: float = 1.0, distil_temperature: float = 1.0, distil_weight: float = 0.0,
                      negatives_x_device: bool = False) -> torch.Tensor:
    """KL(teacher || student) over each query's group, plus ``distil_weight`` times the contrastive loss.

    For query i with group passages j = 1..n (the positive first): the teacher's distribution is
    P_i = softmax(teacher_scores[i] / distil_temperature), the student's Q_i = softmax(s_i) with
    s_ij = sim(q_i, p_ij) / temperature (the same scores the contrastive loss uses), and

        loss = mean_i sum_j P_ij (log P_ij - log Q_ij)  +  distil_weight * contrastive_loss(...)

    The KL term uses only the query's own group, so it is local to each process: under DDP every process
    takes the mean over its own queries and DDP's gradient averaging makes that the mean over all queries
    (equal batches per process).  The contrastive term is the in-batch loss, gathered across processes with
    ``negatives_x_device`` as in :func:`contrastive_loss`.  The teacher's softmax runs in float64, so any
    finite teacher scores give finite probabilities (a probability of 0 adds 0: 0 log 0 = 0).
    """
    n_passages = teacher_scores.shape[1]
    student = group_scores(at_least_fp32(q_reps), at_least_fp32(p_reps), n_passages, temperature)
    student_log_probs = F.log_softmax(student, dim=1)
    teacher_probs = F.softmax(teacher_scores.double() / distil_temperature, dim=1).to(student_log_probs.dtype)
    kl = (torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs).sum(dim=1).mean()
    if distil_weight == 0:
        return kl
    return kl + distil_weight * contrastive_loss(q_reps, p_reps, temperature, negatives_x_device)
