"""Rewrites of transformers 5's BERT layers, all in one place.

* :func:`enable_cls_shortcut` makes an encoder's last layer compute the [CLS] position only (used by
  :class:`tevatron.modeling.DenseModel` for CLS pooling);
* :func:`use_fused_qkv` runs each self-attention's query/key/value projections as one product (used by
  :func:`tevatron.cpu_kernels.use_onednn_linear`, which passes its oneDNN linear function).

Weights and saved files never change.  This module imports nothing from the rest of the package:
``modeling`` and ``cpu_kernels`` import it, never the other way round.
"""
from __future__ import annotations

import functools
import types

import torch
from torch import nn

# the attention kernel cpu_kernels.use_fast_cpu_dropout registers for CPU training
CPU_ATTENTION_NAME = "tevatron_cpu_training"
# attention kernels the CLS-only last layer can call (all take a one-row query)
CLS_SHORTCUT_ATTENTION = ("sdpa", "eager", CPU_ATTENTION_NAME)


def transformers_major_version() -> int:
    """The layer rewrites here follow transformers 5's BERT code."""
    import transformers
    return int(transformers.__version__.split(".")[0])


def bert_attention_function(attention: nn.Module):
    """The attention kernel a BERT self-attention module is configured with (sdpa, eager, ...)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)


# --------------------------------------------------------------------------- CLS-only last layer
def _cls_only_last_layer_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """A BERT layer that outputs only the first ([CLS]) position: keys and values still come from every
    token, but the query projection, attention output, feed-forward block and layer norms run on one row.
    CLS pooling reads nothing else from the last layer, so this saves ~80% of its work."""
    attention = self.attention.self
    batch, length, _ = hidden_states.shape
    head_size = attention.attention_head_size
    cls = hidden_states[:, :1]
    query = attention.query(cls).view(batch, 1, -1, head_size).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, length, -1, head_size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, length, -1, head_size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[..., :1, :]
    context, _ = bert_attention_function(attention)(attention, query, key, value, attention_mask,
                           dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling)
    attention_output = self.attention.output(context.reshape(batch, 1, -1).contiguous(), cls)
    return self.feed_forward_chunk(attention_output)


def enable_cls_shortcut(encoder: nn.Module) -> bool:
    """Make a BERT-family encoder's last layer compute the [CLS] position only (see above).

    Its ``last_hidden_state`` then has length 1; weights and saved files do not change.  Applied only
    where the layer is a plain (non-decoder) BERT layer of transformers 5 with a known attention."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if transformers_major_version() < 5 or not layers:
        return False
    last = layers[-1]
    attention = getattr(getattr(last, "attention", None), "self", None)
    config = getattr(encoder, "config", None)
    if (attention is None or getattr(last, "is_decoder", True) or not hasattr(last, "feed_forward_chunk")
            or not all(hasattr(attention, name) for name in ("query", "key", "value", "scaling", "dropout"))
            or getattr(config, "_attn_implementation", None) not in CLS_SHORTCUT_ATTENTION):
        return False
    if "forward" not in vars(last):
        last.forward = types.MethodType(_cls_only_last_layer_forward, last)
    return True


# --------------------------------------------------------------------------- fused query/key/value
def _fused_qkv_attention_forward(self, hidden_states, attention_mask=None, cache=None, *, qkv_linear, **kwargs):
    """BERT self-attention with the query, key and value projections as one product ``qkv_linear(x, w, b)``
    (one wide GEMM instead of three narrow ones, forward and backward; the weights are concatenated on the
    fly, so the parameters and saved files do not change)."""
    if cache is not None or hidden_states.device.type != "cpu" or hidden_states.dtype != torch.float32 \
            or torch.is_autocast_cpu_enabled():
        return type(self).forward(self, hidden_states, attention_mask, cache=cache, **kwargs)
    batch, length, _ = hidden_states.shape
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
    bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    qkv = qkv_linear(hidden_states, weight, bias)
    query, key, value = qkv.view(batch, length, 3, -1, self.attention_head_size).permute(2, 0, 3, 1, 4).unbind(0)
    output, weights = bert_attention_function(self)(self, query, key, value, attention_mask,
                                dropout=self.dropout.p if self.training else 0.0, scaling=self.scaling, **kwargs)
    return output.reshape(batch, length, -1).contiguous(), weights


def use_fused_qkv(model: nn.Module, qkv_linear) -> int:
    """Fuse the Q/K/V projections of every BERT self-attention (transformers 5) in ``model`` into one
    ``qkv_linear(x, weight, bias)`` call (CPU fp32 only; anything else takes the layer's own forward)."""
    if transformers_major_version() < 5:
        return 0
    forward = functools.partial(_fused_qkv_attention_forward, qkv_linear=qkv_linear)
    count = 0
    for module in model.modules():
        # plain linear projections only: a LoRA-wrapped one's .weight is its base weight, without the adapter
        if type(module).__name__ == "BertSelfAttention" and not getattr(module, "is_decoder", False) \
                and all(type(getattr(module, n)) is nn.Linear and getattr(module, n).bias is not None
                        for n in ("query", "key", "value")):
            module.forward = types.MethodType(forward, module)
            count += 1
    return count
