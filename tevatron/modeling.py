"""The bi-encoder: query and passage encoders (tied or not), pooling, an optional linear pooler.

Saved layout (``save``): a tied model is a plain Hugging Face model directory (loads with
``transformers.AutoModel``) plus ``tevatron_config.json``; an untied one keeps ``query_model/`` and
``passage_model/``; a pooler is saved as ``pooler.safetensors`` beside them.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .bert_rewrites import enable_cls_shortcut
from .files import InputError
from .loss import contrastive_loss, distillation_loss
from .provenance import new_model_fingerprint
from .tokenization import refuse_untrusted_code

logger = logging.getLogger(__name__)

TEVATRON_CONFIG = "tevatron_config.json"
POOLER_WEIGHTS = "pooler.safetensors"
QUERY_MODEL_DIR, PASSAGE_MODEL_DIR = "query_model", "passage_model"
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


@dataclass
class DenseConfig:
    pooling: str = "cls"
    normalize: bool = False
    temperature: float = 1.0
    untie_encoder: bool = False
    add_pooler: bool = False
    projection_in_dim: int = 768
    projection_out_dim: int = 768
    append_eos_token: bool = False
    # put in front of every text before tokenizing (training applied them; encoding follows)
    query_prefix: str = ""
    passage_prefix: str = ""


def sentence_transformers_pooling(model_dir) -> str | None:
    """The pooling named by a sentence-transformers ``1_Pooling/config.json``, if the model has one."""
    config_path = Path(model_dir) / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_lasttoken") or config.get("pooling_mode") == "lasttoken":
        return "last"
    return None


def sentence_transformers_normalizes(model_dir) -> bool:
    """Whether a sentence-transformers model ends in a Normalize module (cosine similarity)."""
    modules_path = Path(model_dir) / "modules.json"
    if not modules_path.is_file():
        return False
    modules = json.loads(modules_path.read_text())
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules if isinstance(m, dict))


def saved_pooling(model_dir) -> str | None:
    """The pooling a model saved by this toolkit was trained with (its ``tevatron_config.json``)."""
    path = Path(model_dir, TEVATRON_CONFIG)
    return json.loads(path.read_text()).get("pooling") if path.is_file() else None


def planned_pooling(requested: str | None, model_dir, follow_saved: bool = False) -> str:
    """The pooling a model will be built (``follow_saved=False``) or loaded (``True``) with, without logging.

    ``requested`` is --pooling (None: not given, cls).  ``auto`` follows the pooling a model was trained
    with here (``tevatron_config.json``), else a sentence-transformers pooling config, else cls; loading
    a model saved by this toolkit always uses its saved pooling."""
    is_dir = bool(model_dir) and Path(model_dir).is_dir()
    trained = saved_pooling(model_dir) if is_dir else None
    if trained and (follow_saved or requested == "auto"):
        return trained
    if requested == "auto":
        return (sentence_transformers_pooling(model_dir) if is_dir else None) or "cls"
    return requested or "cls"


def pooling_flag(requested: str | None) -> str:
    """How a message names the --pooling choice: ``--pooling mean as asked`` or ``--pooling cls (default)``."""
    return f"--pooling {requested} as asked" if requested else "--pooling cls (default)"


def resolve_pooling(requested: str | None, model_dir) -> str:
    """:func:`planned_pooling` for a model about to be built for training, saying in the log where the
    choice came from (``auto`` follows the pooling of a model trained here, e.g. stage 2 starting from
    the stage-1 model, else a sentence-transformers pooling config, else cls; an explicit choice wins)."""
    pooling = planned_pooling(requested, model_dir)
    is_dir = bool(model_dir) and Path(model_dir).is_dir()
    trained = saved_pooling(model_dir) if is_dir else None
    if trained:
        if requested == "auto":
            logger.info("%s was trained with %s pooling; --pooling auto follows it", model_dir, trained)
        elif pooling != trained:
            logger.warning("%s was trained with %s pooling; continuing with %s", model_dir, trained,
                           pooling_flag(requested))
        return pooling
    found = sentence_transformers_pooling(model_dir) if is_dir else None
    if found:
        logger.info("%s has a sentence-transformers pooling config (%s pooling)%s", model_dir, found,
                    "; --pooling auto follows it" if requested == "auto" else f"; using {pooling_flag(requested)}")
    return pooling


# --------------------------------------------------------------------------- model folder checks
# A hub id is NAME or OWNER/NAME; anything else that does not exist was meant as a local folder.
_LOCAL_PATH = re.compile(r"^(/|~|\.{1,2}(/|$))|/.*/|/$|\\")
DECODER_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


def _is_decoder_only(config) -> bool:
    """Whether a config is a causal (left-to-right) language model, whose first token sees only itself.

    Saved architectures ending in ForCausalLM/LMHeadModel say so; otherwise (``LlamaModel``, as AutoModel
    saves it, or no architectures) the model type decides: one with a causal-LM head and no masked-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    architectures = getattr(config, "architectures", None) or []
    if any(str(name).endswith(DECODER_ARCHITECTURES) for name in architectures):
        return True
    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING


def check_attn_implementation(name: str | None) -> None:
    """flash_attention_2 needs the flash-attn package (and a GPU); say so in one line, before loading."""
    import importlib.util

    from .cli import CommandError

    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise CommandError("--attn_implementation flash_attention_2 needs the flash-attn package, which is not "
                           "installed (pip install flash-attn, on a GPU machine); use sdpa")


def _load_config_or_refuse(source, trust: bool, cache_dir):
    from transformers import AutoConfig, __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_file = Path(source) / "config.json"
    if config_file.is_file():
        refuse_untrusted_code(config_file, trust)
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        model_type = saved.get("model_type") if isinstance(saved, dict) else None
        if isinstance(model_type, str) and model_type not in CONFIG_MAPPING and not trust:
            raise InputError(config_file, f"model type {model_type!r} is not one transformers {__version__} "
                             "can load")
    try:
        return AutoConfig.from_pretrained(str(source), cache_dir=cache_dir, trust_remote_code=trust)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(source, f"cannot load its model config ({reason})") from None


def check_model_folder(name_or_path, model_args=None, for_encoding: bool = False) -> None:
    """Refuse a model that cannot be used, in one line naming the folder and what is wrong, before any
    weights load: a missing or empty folder, one without ``config.json``, a model type transformers cannot
    load as an encoder, Python code it would run (``auto_map``) without ``--trust_remote_code``, and a
    decoder-only model with CLS pooling (every text would get the same first-token vector).

    ``for_encoding``: the model is loaded to encode, so a pooling saved with it wins over --pooling."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    from .lora import base_model_of, check_adapter_folder, is_adapter_folder

    trust = bool(getattr(model_args, "trust_remote_code", False))
    cache_dir = getattr(model_args, "cache_dir", None)
    check_attn_implementation(getattr(model_args, "attn_implementation", None))
    lora_dir = getattr(model_args, "lora_name_or_path", None)
    if lora_dir:
        check_adapter_folder(lora_dir)
    # where a saved pooling is read: the adapter folder of a LoRA model, else the model folder
    saved_dir = lora_dir or (name_or_path if Path(str(name_or_path)).is_dir() else None)
    if not lora_dir and is_adapter_folder(name_or_path):  # a LoRA model folder: its base holds the weights
        base = base_model_of(name_or_path)
        if not Path(base).expanduser().exists() and _LOCAL_PATH.search(base):
            raise InputError(name_or_path, f"its base model {base} does not exist")
        name_or_path = base
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(name, "not a model folder (it is a file)")
        if not any(path.iterdir()):
            raise InputError(name, "empty folder, not a model (no config.json)")
        folders = [path / QUERY_MODEL_DIR, path / PASSAGE_MODEL_DIR] if (path / QUERY_MODEL_DIR).is_dir() else [path]
        for folder in folders:
            if not (folder / "config.json").is_file():
                raise InputError(folder, "no config.json: not a Hugging Face model folder")
    elif _LOCAL_PATH.search(name):
        raise InputError(name, "no such model folder")
    else:
        folders = [name]  # a hub id
    config_name = getattr(model_args, "config_name", None)
    for source in ([config_name] if config_name else folders):
        config = _load_config_or_refuse(source, trust, cache_dir)
        custom_model = trust and "AutoModel" in (getattr(config, "auto_map", None) or {})
        if not custom_model and type(config) not in MODEL_MAPPING:
            raise InputError(source, f"model type {config.model_type!r} has no model class AutoModel can load")
        if getattr(config, "is_encoder_decoder", False):
            raise InputError(source, f"an encoder-decoder model ({config.model_type}); this toolkit needs an "
                             "encoder (BERT-like) or a decoder-only model")
        requested = getattr(model_args, "pooling", None)
        pooling = planned_pooling(requested, saved_dir, follow_saved=for_encoding)
        if pooling == "cls" and requested is None and _is_decoder_only(config) \
                and not (for_encoding and saved_dir and saved_pooling(saved_dir)):
            logger.info("%s is a decoder-only model: last-token pooling (--pooling last, the default for "
                        "decoder-only models)", name)
            if model_args is not None:
                model_args.pooling = "last"
            continue
        if pooling == "cls" and _is_decoder_only(config):
            if for_encoding and saved_dir and saved_pooling(saved_dir):
                chosen = "the cls pooling it was trained with"
            else:
                chosen = {None: "--pooling cls (default)", "auto": "--pooling auto (cls here)"}.get(requested,
                                                                                                   "--pooling cls")
            kind = ", ".join(getattr(config, "architectures", None) or [config.model_type])
            raise InputError(name, f"a decoder-only model ({kind}): with {chosen} every text would get the same "
                             "vector (a decoder's first token sees only itself); use --pooling last (or eos, or mean)")


class LinearPooler(nn.Module):
    """A linear projection of pooled vectors; one shared layer, or one per side when untied."""

    def __init__(self, in_dim: int, out_dim: int, tied: bool = True):
        super().__init__()
        self.linear_q = nn.Linear(in_dim, out_dim)
        self.linear_p = self.linear_q if tied else nn.Linear(in_dim, out_dim)
        self.tied = tied

    def forward(self, reps: torch.Tensor, is_query: bool) -> torch.Tensor:
        return (self.linear_q if is_query else self.linear_p)(reps)

    def state_dict_to_save(self) -> dict:
        state = {"linear_q." + k: v for k, v in self.linear_q.state_dict().items()}
        if not self.tied:
            state.update({"linear_p." + k: v for k, v in self.linear_p.state_dict().items()})
        return {k: v.contiguous() for k, v in state.items()}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last non-padding token, whether the batch is padded left or right."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, so a left-padded text gets the positions it has unpadded."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask).to(hidden.device)]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _load_encoder(name_or_path, model_args=None, **kwargs):
    from transformers import AutoConfig, AutoModel

    trust = bool(getattr(model_args, "trust_remote_code", False))
    cache_dir = getattr(model_args, "cache_dir", None)
    config_name = getattr(model_args, "config_name", None) or name_or_path
    config = AutoConfig.from_pretrained(config_name, cache_dir=cache_dir, trust_remote_code=trust)
    attention = getattr(model_args, "attn_implementation", None) or "sdpa"
    check_attn_implementation(attention)
    try:
        return AutoModel.from_pretrained(name_or_path, config=config, cache_dir=cache_dir, trust_remote_code=trust,
                                         attn_implementation=attention, **kwargs)
    except ValueError as err:
        if "attn" not in str(err).lower() and "attention" not in str(err).lower():
            raise
        from .cli import CommandError
        raise CommandError(f"{name_or_path}: --attn_implementation {attention} is not supported by this "
                           f"{config.model_type} model ({str(err).strip().splitlines()[0]})") from None


class DenseModel(nn.Module):
    def __init__(self, lm_q: nn.Module, lm_p: nn.Module | None, config: DenseConfig,
                 pooler: LinearPooler | None = None, negatives_x_device: bool = False,
                 distil_temperature: float = 1.0, distil_weight: float = 0.0, lora_base: str | None = None):
        super().__init__()
        self.lm_q = lm_q
        if lm_p is not None:  # registered only when untied: a tied model holds one copy of the weights
            self.lm_p = lm_p
        self.pooler = pooler
        self.dense_config = config
        self.negatives_x_device = negatives_x_device
        # --distillation: used when a batch brings teacher scores (tevatron.distillation)
        self.distil_temperature = distil_temperature
        self.distil_weight = distil_weight
        self.lora_base = lora_base  # the base model under a LoRA adapter (saved with it)
        self.merged_lora_base = None  # set by merge_lora: recorded in the saved config
        # a decoder gets position ids counted over real tokens: left padding then changes nothing
        self.decoder_only = _is_decoder_only(lm_q.config)
        if config.pooling == "cls":
            for encoder in self.encoders():
                enable_cls_shortcut(encoder)

    # ------------------------------------------------------------------ encoding
    @property
    def passage_encoder(self) -> nn.Module:
        return self.lm_p if self.dense_config.untie_encoder else self.lm_q

    def _encode(self, batch: dict | None, is_query: bool) -> torch.Tensor | None:
        if batch is None:
            return None
        encoder = self.lm_q if is_query else self.passage_encoder
        extra = {"position_ids": positions_from_mask(batch["attention_mask"])} if self.decoder_only else {}
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         return_dict=True, **extra).last_hidden_state
        reps = pool(hidden, batch["attention_mask"], self.dense_config.pooling)
        if self.pooler is not None:
            reps = self.pooler(reps, is_query)
        if self.dense_config.normalize:
            reps = F.normalize(reps, dim=-1)
        return reps

    def encoders(self) -> list[nn.Module]:
        """The query encoder, and the passage encoder where it is a separate one (untied)."""
        return list({id(m): m for m in (self.lm_q, self.passage_encoder)}.values())

    def vocab_size(self) -> int:
        return self.lm_q.get_input_embeddings().num_embeddings

    def position_limit(self) -> int | None:
        """The longest input (special tokens included) every encoder accepts, where the config says."""
        limits = []
        for encoder in self.encoders():
            config = getattr(encoder, "config", None)
            positions = getattr(config, "max_position_embeddings", None)
            if positions:  # RoBERTa-style models reserve two positions for the padding offset
                limits.append(positions - 2 if getattr(config, "model_type", "") in ROBERTA_LIKE else positions)
        return min(limits) if limits else None

    def fit_max_len(self, max_len: int, flag: str) -> int:
        """``max_len`` cut to :meth:`position_limit`, with a warning: longer inputs would fail deep inside
        the embedding layer (``flag`` names the option in the message)."""
        limit = self.position_limit()
        if limit is not None and max_len > limit:
            logger.warning("%s %d is longer than the model's %d positions; cutting texts at %d", flag, max_len,
                           limit, limit)
            return limit
        return max_len

    def encode_query(self, batch: dict) -> torch.Tensor:
        return self._encode(batch, is_query=True)

    def encode_passage(self, batch: dict) -> torch.Tensor:
        return self._encode(batch, is_query=False)

    def compute_loss(self, q_reps: torch.Tensor, p_reps: torch.Tensor,
                     teacher_scores: torch.Tensor | None = None) -> torch.Tensor:
        """The contrastive loss; with ``teacher_scores`` [queries, passages per query] the distillation loss."""
        if teacher_scores is not None:
            return distillation_loss(q_reps, p_reps, teacher_scores, self.dense_config.temperature,
                                     self.distil_temperature, self.distil_weight, self.negatives_x_device)
        return contrastive_loss(q_reps, p_reps, self.dense_config.temperature, self.negatives_x_device)

    def forward(self, query: dict | None = None, passage: dict | None = None,
                teacher_scores: torch.Tensor | None = None) -> dict:
        """Encode whatever is given; with both, also return the loss (see :meth:`compute_loss`)."""
        q_reps, p_reps = self.encode_query(query), self.encode_passage(passage)
        output = {"q_reps": q_reps, "p_reps": p_reps}
        if q_reps is not None and p_reps is not None:
            output["loss"] = self.compute_loss(q_reps, p_reps, teacher_scores)
        return output

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False):
        """``--gradient_checkpointing``: each encoder recomputes its layers in the backward pass (a LoRA
        encoder's base model, through peft).  Takes what the HF Trainer passes (transformers 5 adds
        ``every_n_layers`` and ``offload``); kwargs None is transformers' default, non-reentrant, which needs no
        input that requires grad (a LoRA model's frozen embeddings give none)."""
        for encoder in self.encoders():
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                    every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ------------------------------------------------------------------ build / load / save
    @classmethod
    def build(cls, model_args, negatives_x_device: bool = False, distil_temperature: float = 1.0,
              distil_weight: float = 0.0, **hf_kwargs) -> "DenseModel":
        """A fresh bi-encoder from a pretrained language model, for training."""
        from .lora import add_lora, base_model_of, is_adapter_folder, load_adapter, log_trainable_parameters, \
            saved_base_name

        path = model_args.model_name_or_path
        use_lora = bool(getattr(model_args, "lora", False))
        config = DenseConfig(pooling=resolve_pooling(model_args.pooling, path), normalize=model_args.normalize,
                             temperature=model_args.temperature, untie_encoder=model_args.untie_encoder,
                             add_pooler=model_args.add_pooler, projection_in_dim=model_args.projection_in_dim,
                             projection_out_dim=model_args.projection_out_dim,
                             append_eos_token=bool(getattr(model_args, "append_eos_token", False)))
        if use_lora and (config.untie_encoder or Path(path, QUERY_MODEL_DIR).is_dir()):
            from .cli import CommandError
            raise CommandError("--lora trains one adapter on a tied encoder; it does not combine with "
                               "--untie_encoder or an untied starting model")
        lora_base = None
        if is_adapter_folder(path):  # continue from a LoRA model: its adapter on its base model
            lora_base = base_model_of(path)
            lm_q = load_adapter(_load_encoder(lora_base, model_args, **hf_kwargs), path, trainable=use_lora)
            if use_lora:
                log_trainable_parameters(lm_q, f"LoRA adapter of {path} (training on)")
            else:  # full fine-tuning of the adapted model (peft froze the base weights: thaw them)
                lm_q = lm_q.merge_and_unload().requires_grad_(True)
                lora_base = None
            lm_p = None
        elif Path(path, QUERY_MODEL_DIR).is_dir():  # continue from an untied checkpoint
            lm_q = _load_encoder(Path(path, QUERY_MODEL_DIR), model_args, **hf_kwargs)
            lm_p = _load_encoder(Path(path, PASSAGE_MODEL_DIR), model_args, **hf_kwargs)
            config.untie_encoder = True
        else:
            lm_q = _load_encoder(path, model_args, **hf_kwargs)
            lm_p = None
            if config.untie_encoder:
                import copy
                lm_p = copy.deepcopy(lm_q)
            if use_lora:
                lm_q, lora_base = add_lora(lm_q, model_args), saved_base_name(path)
        if model_args.pooling is None and config.pooling == "cls" and _is_decoder_only(lm_q.config):
            config.pooling = "last"  # a decoder's first token sees only itself
        pooler = None
        if config.add_pooler:
            pooler = LinearPooler(config.projection_in_dim, config.projection_out_dim, tied=not config.untie_encoder)
            if Path(path, POOLER_WEIGHTS).is_file():
                cls._load_pooler_weights(pooler, Path(path, POOLER_WEIGHTS))
        logger.info("built %s bi-encoder from %s: %s pooling%s%s%s", "untied" if config.untie_encoder else "tied",
                    path, config.pooling, ", linear pooler" if pooler else "", ", normalized" if config.normalize else "",
                    ", eos appended" if config.append_eos_token else "")
        return cls(lm_q, lm_p, config, pooler, negatives_x_device=negatives_x_device,
                   distil_temperature=distil_temperature, distil_weight=distil_weight, lora_base=lora_base)

    @classmethod
    def load(cls, model_name_or_path, model_args=None, pooling: str | None = None,
             normalize: bool | None = None, merge_lora: bool = True, **hf_kwargs) -> "DenseModel":
        """Load a model saved by :meth:`save` (or any Hugging Face encoder) for encoding.

        A LoRA model loads as its base model plus the adapter: ``model_name_or_path`` the adapter folder
        (its base as saved), or the base with ``model_args.lora_name_or_path`` the adapter (Tevatron v2's
        way).  ``merge_lora`` folds the adapter into the weights (faster encoding, the same vectors)."""
        from .lora import base_model_of, is_adapter_folder, load_adapter, saved_base_name

        lora_dir = getattr(model_args, "lora_name_or_path", None)
        weights = model_name_or_path
        if lora_dir:
            if base_model_of(lora_dir) != saved_base_name(str(model_name_or_path)):
                logger.warning("%s was trained on %s; loading it on %s as asked", lora_dir,
                               base_model_of(lora_dir), model_name_or_path)
        elif is_adapter_folder(model_name_or_path):
            lora_dir, weights = model_name_or_path, base_model_of(model_name_or_path)
        path = Path(lora_dir) if lora_dir else Path(model_name_or_path)
        saved = {}
        if (path / TEVATRON_CONFIG).is_file():
            saved = json.loads((path / TEVATRON_CONFIG).read_text())
        config = DenseConfig(**{k: v for k, v in saved.items() if k in DenseConfig.__dataclass_fields__})
        if not saved:  # a plain language model: take the caller's choices
            config.pooling = resolve_pooling(pooling, model_name_or_path)
            config.normalize = bool(normalize)
            if pooling == "auto" and not normalize and path.is_dir() and sentence_transformers_normalizes(path):
                # the model as published: sentence-transformers normalises its vectors (cosine)
                logger.info("%s ends in a sentence-transformers Normalize module; --pooling auto follows it", path)
                config.normalize = True
            if model_args is not None and model_args.add_pooler:
                raise ValueError(f"{model_name_or_path} has no trained pooler ({POOLER_WEIGHTS})")
        elif pooling not in (None, "auto", config.pooling):
            logger.warning("%s was trained with %s pooling; using it, not --pooling %s", path, config.pooling,
                           pooling)
        append_eos = bool(getattr(model_args, "append_eos_token", False))
        if not saved:
            config.append_eos_token = append_eos
        elif append_eos and not config.append_eos_token:
            logger.warning("%s was trained without --append_eos_token; not appending it", path)
        if lora_dir:
            lm_q = load_adapter(_load_encoder(weights, model_args, **hf_kwargs), lora_dir)
            lm_q = lm_q.merge_and_unload() if merge_lora else lm_q
            lm_p = None
        elif (path / QUERY_MODEL_DIR).is_dir():
            config.untie_encoder = True
            lm_q = _load_encoder(path / QUERY_MODEL_DIR, model_args, **hf_kwargs)
            lm_p = _load_encoder(path / PASSAGE_MODEL_DIR, model_args, **hf_kwargs)
        else:
            lm_q, lm_p = _load_encoder(model_name_or_path, model_args, **hf_kwargs), None
        if not saved and pooling is None and config.pooling == "cls" and _is_decoder_only(lm_q.config):
            config.pooling = "last"  # a decoder's first token sees only itself
        pooler = None
        if config.add_pooler:
            pooler = LinearPooler(config.projection_in_dim, config.projection_out_dim, tied=not config.untie_encoder)
            cls._load_pooler_weights(pooler, path / POOLER_WEIGHTS)
        model = cls(lm_q, lm_p, config, pooler, lora_base=str(weights) if lora_dir and not merge_lora else None)
        if lora_dir and merge_lora:
            model.merged_lora_base = str(weights)
        return model

    @staticmethod
    def _load_pooler_weights(pooler: LinearPooler, weights_path: Path) -> None:
        from safetensors.torch import load_file
        state = load_file(str(weights_path))
        pooler.linear_q.load_state_dict({k[len("linear_q."):]: v for k, v in state.items() if k.startswith("linear_q.")})
        if not pooler.tied:
            pooler.linear_p.load_state_dict({k[len("linear_p."):]: v for k, v in state.items()
                                             if k.startswith("linear_p.")})

    def save(self, output_dir) -> None:
        """Write every file under a temporary name first and rename it into place once complete
        (``tevatron_config.json`` last), so a killed save never leaves a half-written weights file."""
        from .files import staged_files

        with staged_files(output_dir, last=(TEVATRON_CONFIG,)) as staging:
            extra = {}
            if self.dense_config.untie_encoder:
                self.lm_q.save_pretrained(staging / QUERY_MODEL_DIR)
                self.lm_p.save_pretrained(staging / PASSAGE_MODEL_DIR)
            else:  # a LoRA model saves its adapter only; the saved config names the base model
                self.lm_q.save_pretrained(staging)
                if self.lora_base is not None:
                    extra["lora_base_model"] = self.lora_base
                elif self.merged_lora_base is not None:
                    extra["merged_lora_base_model"] = self.merged_lora_base
            if self.pooler is not None:
                from safetensors.torch import save_file
                save_file(self.pooler.state_dict_to_save(), str(staging / POOLER_WEIGHTS))
            # a fresh fingerprint at every save: outputs made with an earlier model are then seen as stale
            saved = {**asdict(self.dense_config), **extra, "fingerprint": new_model_fingerprint()}
            (staging / TEVATRON_CONFIG).write_text(json.dumps(saved, indent=2) + "\n")

    def load_weights_from(self, checkpoint_dir) -> None:
        """Load weights saved by :meth:`save` into this model in place (used to resume training)."""
        loaded = DenseModel.load(checkpoint_dir, merge_lora=False)
        self.load_state_dict(loaded.state_dict())

    def merge_lora(self) -> None:
        """Fold a LoRA adapter into the weights: the model then saves as a plain model folder."""
        if self.lora_base is None:
            return
        self.lm_q = self.lm_q.merge_and_unload()
        self.merged_lora_base, self.lora_base = self.lora_base, None
