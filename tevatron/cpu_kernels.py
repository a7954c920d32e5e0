"""Faster fp32 linear layers on CPUs where torch's MKL GEMM is slow (AMD EPYC with AVX-512).

torch's fp32 ``F.linear`` goes to MKL, which on AMD CPUs runs a generic path (~180 GFLOP/s on the
2-core EPYC this toolkit is tested on) while oneDNN, also inside every torch CPU build, reaches
260-450 GFLOP/s on the same shapes.  :func:`use_onednn_linear` routes a model's ``nn.Linear`` layers
through oneDNN for the forward product and the input gradient (the weight gradient stays on MKL, where
oneDNN would need transposed copies).  It is enabled only when a quick measurement on this machine
shows a gain, and only for fp32 CPU tensors; anything else takes the ordinary path.  Results equal
``F.linear`` up to float rounding.
"""
from __future__ import annotations

import functools
import logging
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _onednn_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


def onednn_matmul_bt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for fp32 CPU matrices through oneDNN (``b`` row-major [n, d], as stored)."""
    return _onednn_linear(a.contiguous(), b if b.is_contiguous() else b.contiguous(), None)


class _OneDnnLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2d = x.reshape(-1, x.shape[-1])
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        ctx.save_for_backward(x2d, weight)
        ctx.input_shape = x.shape
        ctx.has_bias = bias is not None
        return _onednn_linear(x2d, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        x2d, weight = ctx.saved_tensors
        grad2d = grad_output.reshape(-1, grad_output.shape[-1])
        if not grad2d.is_contiguous():
            grad2d = grad2d.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = _onednn_linear(grad2d, weight.t().contiguous(), None).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad2d.t().mm(x2d)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad2d.sum(0)
        return grad_input, grad_weight, grad_bias


def _fast_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32 \
            and not torch.is_autocast_cpu_enabled():
        return _OneDnnLinearFunction.apply(x, self.weight, self.bias)
    return F.linear(x, self.weight, self.bias)


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.lru_cache(maxsize=None)  # one measurement per process
def onednn_is_faster(rows: int = 4096, width: int = 384, repeats: int = 4) -> bool:
    """Measure both GEMM paths on a transformer-sized product; oneDNN must win by 15% to be used."""
    if not onednn_linear_available():
        return False
    x, weight, bias = torch.randn(rows, width), torch.randn(4 * width, width), torch.randn(4 * width)
    try:
        if not torch.allclose(_onednn_linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-3, rtol=1e-4):
            return False
    except RuntimeError:
        return False

    def seconds(function):
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return time.perf_counter() - start

    mkl = seconds(lambda: F.linear(x, weight, bias))
    onednn = seconds(lambda: _onednn_linear(x, weight, bias))
    return onednn * 1.15 < mkl


def use_onednn_linear(model: nn.Module, mode: str = "auto") -> bool:
    """Route ``model``'s linear layers through oneDNN on CPU (``mode``: auto, onednn, torch)."""
    if mode == "torch" or torch.cuda.is_available():
        return False
    if mode == "auto" and not onednn_is_faster():
        return False
    if mode == "onednn" and not onednn_linear_available():
        raise RuntimeError("oneDNN linear layers are not available in this torch build")
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = types.MethodType(_fast_linear_forward, module)
            count += 1
    logger.info("CPU: %d linear layers run on oneDNN (faster than MKL's fp32 GEMM on this CPU)", count)
    return count > 0
