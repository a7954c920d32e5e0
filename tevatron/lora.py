"""LoRA adapters (peft) on the bi-encoder's language model: adding one for training, finding the base
model of a saved adapter folder, loading it back, merging it into the weights.

A LoRA model folder saved by :class:`tevatron.modeling.DenseModel` holds peft's ``adapter_config.json``
and ``adapter_model.safetensors``, the tokenizer, and ``tevatron_config.json`` naming the base model
(``lora_base_model``) beside the pooling and the other choices encoding needs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from .cli import CommandError
from .files import InputError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
# attention and MLP projections, by model_type; other architectures adapt every linear layer of their blocks
DECODER_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_PROJECTIONS = ["query", "key", "value", "dense"]
DEFAULT_TARGET_MODULES = {
    **{name: DECODER_PROJECTIONS for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")},
    **{name: BERT_PROJECTIONS for name in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
}
# never adapted: BERT's pooler is not part of the vectors (its gradient would stay empty)
EXCLUDED_MODULES = ["pooler.dense"]


def is_adapter_folder(path) -> bool:
    return bool(path) and Path(path, ADAPTER_CONFIG).is_file()


def is_lora_model(module: nn.Module) -> bool:
    from peft import PeftModel
    return isinstance(module, PeftModel)


def linear_module_names(model: nn.Module) -> list[str]:
    """The last name part of every linear layer (the names ``--lora_target_modules`` can give)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and name not in EXCLUDED_MODULES})


def target_modules(model: nn.Module, requested: str | None) -> list[str]:
    """The module names LoRA adapts: ``--lora_target_modules`` (each must name a linear layer of the model),
    else the architecture's attention and MLP projections."""
    available = linear_module_names(model)
    if requested:
        names = [name.strip() for name in requested.split(",") if name.strip()]
        unknown = [name for name in names if name not in available]
        if unknown or not names:
            raise CommandError(f"--lora_target_modules {requested}: {', '.join(unknown) or 'nothing'} names no linear "
                               f"layer of this {model.config.model_type} model (it has: {', '.join(available)})")
        return names
    defaults = DEFAULT_TARGET_MODULES.get(getattr(model.config, "model_type", ""))
    return [name for name in defaults if name in available] if defaults else available


def add_lora(encoder: nn.Module, model_args) -> nn.Module:
    """``encoder`` wrapped in a fresh, trainable LoRA adapter; its own weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(encoder, model_args.lora_target_modules)
    config = LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                        target_modules=targets, bias="none",
                        exclude_modules=[name for name in EXCLUDED_MODULES if name in dict(encoder.named_modules())] or None)
    adapted = get_peft_model(encoder, config)
    log_trainable_parameters(adapted, f"LoRA r={model_args.lora_r} alpha={model_args.lora_alpha} "
                                      f"dropout={model_args.lora_dropout} on {','.join(targets)}")
    return adapted


def log_trainable_parameters(model: nn.Module, what: str) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("%s: %s of %s parameters trainable (%.2f%%)", what, f"{trainable:,}", f"{total:,}",
                100.0 * trainable / max(total, 1))


def base_model_of(adapter_dir) -> str:
    """The base model a saved adapter was trained on: ``lora_base_model`` in ``tevatron_config.json``,
    else peft's ``base_model_name_or_path``."""
    from .modeling import TEVATRON_CONFIG

    adapter_dir = Path(adapter_dir)
    saved = adapter_dir / TEVATRON_CONFIG
    base = json.loads(saved.read_text()).get("lora_base_model") if saved.is_file() else None
    if not base:
        base = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise InputError(adapter_dir, "a LoRA adapter folder that names no base model; give it as "
                         "--model_name_or_path BASE --lora_name_or_path ADAPTER")
    return str(base)


def check_adapter_folder(path) -> None:
    if not Path(path).is_dir():
        raise InputError(path, "no such LoRA adapter folder")
    if not is_adapter_folder(path):
        raise InputError(path, f"not a LoRA adapter folder (no {ADAPTER_CONFIG})")


def saved_base_name(name_or_path: str) -> str:
    """How a saved adapter names its base model: a local folder as an absolute path, a hub id as given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)


def load_adapter(encoder: nn.Module, adapter_dir, trainable: bool = False) -> nn.Module:
    """``encoder`` with the adapter saved in ``adapter_dir`` (trainable: to continue training it)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(encoder, str(adapter_dir), is_trainable=trainable)
