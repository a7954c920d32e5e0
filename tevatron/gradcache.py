"""Gradient caching (Gao et al., 2021): a large contrastive batch in bounded activation memory.

1. Encode the batch in chunks without building graphs.
2. Compute the loss on the cached vectors and take its gradient with respect to them.
3. Re-encode each chunk with a graph and backpropagate the cached vector gradient through it.
The parameter gradients equal those of one plain step on the whole batch.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist

from .loss import at_least_fp32


def split_batch(batch: dict, chunk_size: int) -> list[dict]:
    n_rows = batch["input_ids"].shape[0]
    return [{k: v[i: i + chunk_size] for k, v in batch.items()} for i in range(0, n_rows, chunk_size)]


def trim_padding(batch: dict) -> dict:
    """Drop the columns that are padding in every row of this chunk (less compute per chunk), on the
    right or, for a left-padded batch, on the left."""
    used = batch["attention_mask"].bool().any(dim=0).nonzero().flatten()
    if used.numel() == 0:
        return batch
    start, stop = int(used[0]), int(used[-1]) + 1
    return {k: v[:, start:stop] for k, v in batch.items()}


def all_reduce_gradients(parameters) -> None:
    """Average gradients over processes in one flat buffer (used where DDP's own sync is skipped)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def grad_cache_step(model, query: dict, passage: dict, q_chunk_size: int, p_chunk_size: int,
                    compute_loss: Callable, backward: Callable = torch.Tensor.backward,
                    autocast: Callable = contextlib.nullcontext, loss_scale: float = 1.0) -> torch.Tensor:
    """One gradient-cached step. ``model(query=..)``/``model(passage=..)`` return ``{"q_reps"|"p_reps"}``.

    ``model`` may be DDP-wrapped: all re-forwards run under ``no_sync`` and gradients are averaged once
    at the end, which also works when some parameters are unused by a chunk (untied encoders).
    Returns the (unscaled) loss.
    """
    q_chunks = [trim_padding(c) for c in split_batch(query, q_chunk_size)]
    p_chunks = [trim_padding(c) for c in split_batch(passage, p_chunk_size)]

    # 1. vectors without graphs, but with the same random state the re-forward will use (dropout)
    rng_states, q_reps, p_reps = [], [], []
    with torch.no_grad():
        for chunk in q_chunks:
            rng_states.append(_RandomState())
            with autocast():
                q_reps.append(model(query=chunk)["q_reps"])
        for chunk in p_chunks:
            rng_states.append(_RandomState())
            with autocast():
                p_reps.append(model(passage=chunk)["p_reps"])

    # 2. loss and its gradient with respect to the cached vectors
    q_cache = at_least_fp32(torch.cat(q_reps)).detach().requires_grad_()
    p_cache = at_least_fp32(torch.cat(p_reps)).detach().requires_grad_()
    loss = compute_loss(q_cache, p_cache)
    # plain autograd here: a loss scaler (fp16) is applied once, in the re-forward's backward
    q_grad, p_grad = torch.autograd.grad(loss * loss_scale, [q_cache, p_cache])
    q_grads = q_grad.split([r.shape[0] for r in q_reps])
    p_grads = p_grad.split([r.shape[0] for r in p_reps])

    # 3. re-encode chunk by chunk and push the cached gradients through
    sync_context = model.no_sync if hasattr(model, "no_sync") else contextlib.nullcontext
    work = [("query", c, g) for c, g in zip(q_chunks, q_grads)] + [("passage", c, g) for c, g in zip(p_chunks, p_grads)]
    with sync_context():
        for (side, chunk, grad), rng_state in zip(work, rng_states):
            with rng_state.restored():
                with autocast():
                    reps = model(**{side: chunk})["q_reps" if side == "query" else "p_reps"]
                surrogate = torch.dot(at_least_fp32(reps).flatten(), grad.flatten())
            backward(surrogate)
    if hasattr(model, "no_sync"):
        all_reduce_gradients(model.parameters())
    return loss.detach()


class _RandomState:
    """Captures the CPU (and current CUDA) random state so a re-forward draws the same dropout masks."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    @contextlib.contextmanager
    def restored(self):
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state() if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)
        try:
            yield
        finally:
            torch.set_rng_state(saved_cpu)
            if saved_cuda is not None:
                torch.cuda.set_rng_state(saved_cuda)
