"""Faster fp32 linear layers on CPUs where torch's MKL GEMM is slow (AMD EPYC with AVX-512).

torch's fp32 ``F.linear`` goes to MKL, which on AMD CPUs runs a generic path (~180 GFLOP/s on the
2-core EPYC this toolkit is tested on) while oneDNN, also inside every torch CPU build, reaches
260-450 GFLOP/s on the same shapes.  :func:`use_onednn_linear` routes a model's ``nn.Linear`` layers
through oneDNN for the forward product and the input gradient (the weight gradient stays on MKL:
oneDNN's backward-weights kernel was ~1% faster end to end, not worth a load-dependent kernel choice
that would break run-to-run equality).  It is enabled only when a quick measurement on this machine
shows a gain, and only for fp32 CPU tensors; anything else takes the ordinary path.  Results equal
``F.linear`` up to float rounding.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
import types

import torch
import torch.nn.functional as F
from torch import nn

from .bert_rewrites import CPU_ATTENTION_NAME, use_fused_qkv

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
        # the input is needed only for the weight's gradient: a frozen weight (LoRA's base) keeps none
        ctx.save_for_backward(x2d if weight.requires_grad else None, weight)
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


def machine_choices_file() -> str:
    """Where kernel choices measured on this machine are kept (``$TEVATRON_CACHE``, else ~/.cache/tevatron)."""
    folder = os.environ.get("TEVATRON_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tevatron")
    return os.path.join(folder, "cpu_choices.json")


def _machine_key() -> str:
    """The CPU (model and feature flags), the torch build and the thread count a measured choice holds for."""
    found = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:  # the first processor's lines
            for line in handle:
                name, _, value = line.partition(":")
                found.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    flags = hashlib.sha1(" ".join(sorted(found.get("flags", "").split())).encode()).hexdigest()[:12]
    return (f"{found.get('model name') or platform.processor()} flags {flags} torch {torch.__version__} "
            f"threads {torch.get_num_threads()}")


def measured_on_this_machine(name: str, measure, kind: type, allowed=None):
    """``measure()`` once per machine: the answer (of type ``kind``, one of ``allowed`` if given) is kept in
    :func:`machine_choices_file` and read by every later process; a recorded value that is not such an
    answer (a damaged or hand-edited file) is measured again.  Measured in each process, machine load
    flipped close choices between two runs of one command; the kernels round differently, so the same
    seed gave other weights and rankings."""
    import fcntl

    from .files import atomic_text_writer

    path = machine_choices_file()
    key = f"{name}: {_machine_key()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path + ".lock", "a")
    except OSError as error:
        logger.warning("CPU: cannot record kernel choices in %s (%s); measuring in this process", path, error)
        return kind(measure())
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process measures; the others wait and read its answer
        choices = _read_choices(path)
        if type(choices.get(key)) is kind and (allowed is None or choices[key] in allowed):
            return choices[key]
        choices[key] = kind(measure())
        try:
            with atomic_text_writer(path) as out:
                json.dump(choices, out, indent=1, sort_keys=True)
            logger.info("CPU: measured %s = %s on this machine; recorded in %s (delete it to measure again)",
                        name, choices[key], path)
        except OSError as error:
            logger.warning("CPU: cannot record kernel choices in %s (%s)", path, error)
        return choices[key]


def _read_choices(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            choices = json.load(handle)
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


@functools.lru_cache(maxsize=None)
def onednn_is_faster() -> bool:
    """Whether oneDNN's fp32 GEMM clearly beats MKL's on this machine (see measured_on_this_machine)."""
    if not onednn_linear_available():
        return False
    return measured_on_this_machine("onednn_linear", _measure_onednn_is_faster, bool)


def _measure_onednn_is_faster(rows: int = 4096, width: int = 384, repeats: int = 4) -> bool:
    """Measure both GEMM paths on a transformer-sized product; oneDNN must win by 15% to be used."""
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


# bf16 autocast must beat fp32 by this much to be used: on CPUs without native bf16 GEMM (AMX) it is slower.
CPU_BF16_MIN_SPEEDUP = 1.3


def cpu_bf16_speedup(hidden_size: int, training: bool = False) -> float:
    """How many times faster a feed-forward-sized linear (2048 rows, ``hidden_size`` -> 4 x ``hidden_size``)
    runs under CPU bf16 autocast than in fp32; ``training`` times forward plus backward.  On a 2-core AMD
    EPYC (avx512_bf16, no AMX) a BERT-base size wins ~2.5x, MiniLM's 384 not at all, as whole models do."""
    return _measured_bf16_speedup(int(hidden_size), bool(training))


@functools.lru_cache(maxsize=None)  # read once per process and shape
def _measured_bf16_speedup(hidden_size: int, training: bool) -> float:
    return measured_on_this_machine(f"bf16_speedup hidden {hidden_size} {'training' if training else 'inference'}",
                                    lambda: _time_bf16_speedup(hidden_size, training), float)


def _time_bf16_speedup(hidden_size: int, training: bool, rows: int = 2048, repeats: int = 3) -> float:
    x = torch.randn(rows, hidden_size, requires_grad=training)
    weight = torch.randn(4 * hidden_size, hidden_size, requires_grad=training)
    bias = torch.randn(4 * hidden_size, requires_grad=training)

    def step():
        out = F.linear(x, weight, bias)
        if training:
            out.float().sum().backward()

    def seconds(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), \
                (torch.enable_grad() if training else torch.inference_mode()):
            step()  # warm-up: kernel selection, weight cast
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            return time.perf_counter() - start

    fp32 = seconds(False)
    return fp32 / max(seconds(True), 1e-9)


def cpu_bf16_is_faster(hidden_size: int, training: bool = False) -> bool:
    """Whether CPU bf16 autocast clearly (``CPU_BF16_MIN_SPEEDUP``) beats fp32 for this hidden size."""
    return cpu_bf16_speedup(hidden_size, training) >= CPU_BF16_MIN_SPEEDUP


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
    fused = use_fused_qkv(model, _OneDnnLinearFunction.apply)
    logger.info("CPU: %d linear layers run on oneDNN (faster than MKL's fp32 GEMM on this CPU)%s", count,
                f", query/key/value fused in {fused} attention layers" if fused else "")
    return count > 0


# --------------------------------------------------------------------------- dropout and attention
def _drop_thresholds(p: float) -> torch.Tensor:
    """Per-lane thresholds for :func:`fast_dropout`: a random int32 from ``random_()`` holds a uniform
    16-bit low half (as int16: -32768..32767) and a uniform 15-bit high half (0..32767)."""
    return torch.tensor([-32768 + round(p * 65536), round(p * 32768)], dtype=torch.int16)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout drawing 16 (or 15) random bits per element instead of a float Bernoulli.

    torch's CPU ``bernoulli_`` costs ~6 ns an element, a third of a MiniLM training step's non-GEMM
    time; one ``random_()`` int32 per two elements is ~10x cheaper.  The drop probability is p rounded
    to 1/32768 (0.1 becomes 0.1000061); the result is scaled by 1/(1-p) as usual.
    """
    if p <= 0.0:
        return x
    n = x.numel()
    bits = torch.empty((n + 1) // 2, dtype=torch.int32).random_()
    keep = bits.view(torch.int16).view(-1, 2) >= _drop_thresholds(p)
    keep = keep.view(-1)[:n].view(x.shape)
    return (x * keep).mul_(1.0 / (1.0 - p))


def _fast_dropout_forward(self: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    if self.training and x.device.type == "cpu" and self.p > 0:
        return fast_dropout(x, self.p)
    return F.dropout(x, self.p, self.training, self.inplace)


def cpu_training_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs):
    """Attention for CPU training with dropout: SDPA's CPU kernels do not fuse dropout, and its math
    fallback draws a float Bernoulli mask and re-checks the mask three times per layer."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # causal (decoder) attention and grouped key/value heads take SDPA, which handles both
    if query.device.type != "cpu" or not module.training or dropout <= 0.0 or kwargs.get("output_attentions") \
            or getattr(module, "is_causal", False) or key.shape[1] != query.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    # scale the (L x d) queries rather than the (L x L) scores; mask in place (matmul keeps no output)
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores.add_(attention_mask)
    probs = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def use_fast_cpu_dropout(model: nn.Module) -> bool:
    """Route dropout (hidden and attention) through :func:`fast_dropout` for CPU training.

    Needs transformers' attention registry (4.48+); on older versions only hidden dropout changes.
    """
    if torch.cuda.is_available():
        return False
    count = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.forward = types.MethodType(_fast_dropout_forward, module)
            count += 1
    attention = False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        AttentionInterface = None
    if AttentionInterface is not None:
        AttentionInterface.register(CPU_ATTENTION_NAME, cpu_training_attention)
        AttentionMaskInterface.register(CPU_ATTENTION_NAME, sdpa_mask)
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = CPU_ATTENTION_NAME
                attention = True
    logger.info("CPU training: %d dropout layers%s use fast dropout", count,
                " and attention" if attention else "")
    return count > 0 or attention
