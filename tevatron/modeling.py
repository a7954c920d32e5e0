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
from .loss import contrastive_loss
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
    """Whether a config is a causal (left-to-right) language model, whose first token sees only itself."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(str(name).endswith(DECODER_ARCHITECTURES) for name in architectures)
    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING


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

    trust = bool(getattr(model_args, "trust_remote_code", False))
    cache_dir = getattr(model_args, "cache_dir", None)
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
                             "encoder (BERT-like) or a decoder with --pooling mean")
        requested = getattr(model_args, "pooling", None)
        pooling = planned_pooling(requested, name if path.is_dir() else None, follow_saved=for_encoding)
        if pooling == "cls" and _is_decoder_only(config):
            if for_encoding and path.is_dir() and saved_pooling(path):
                chosen = "the cls pooling it was trained with"
            else:
                chosen = {None: "--pooling cls (default)", "auto": "--pooling auto (cls here)"}.get(requested,
                                                                                                   "--pooling cls")
            kind = ", ".join(getattr(config, "architectures", None) or [config.model_type])
            raise InputError(name, f"a decoder-only model ({kind}): with {chosen} every text would get the same "
                             "vector (a decoder's first token sees only itself); use --pooling mean")


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


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _load_encoder(name_or_path, model_args=None, **kwargs):
    from transformers import AutoConfig, AutoModel

    trust = bool(getattr(model_args, "trust_remote_code", False))
    cache_dir = getattr(model_args, "cache_dir", None)
    config_name = getattr(model_args, "config_name", None) or name_or_path
    config = AutoConfig.from_pretrained(config_name, cache_dir=cache_dir, trust_remote_code=trust)
    return AutoModel.from_pretrained(name_or_path, config=config, cache_dir=cache_dir, trust_remote_code=trust,
                                     **kwargs)


class DenseModel(nn.Module):
    def __init__(self, lm_q: nn.Module, lm_p: nn.Module | None, config: DenseConfig,
                 pooler: LinearPooler | None = None, negatives_x_device: bool = False):
        super().__init__()
        self.lm_q = lm_q
        if lm_p is not None:  # registered only when untied: a tied model holds one copy of the weights
            self.lm_p = lm_p
        self.pooler = pooler
        self.dense_config = config
        self.negatives_x_device = negatives_x_device
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
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         return_dict=True).last_hidden_state
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

    def compute_loss(self, q_reps: torch.Tensor, p_reps: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(q_reps, p_reps, self.dense_config.temperature, self.negatives_x_device)

    def forward(self, query: dict | None = None, passage: dict | None = None) -> dict:
        """Encode whatever is given; with both, also return the contrastive loss."""
        q_reps, p_reps = self.encode_query(query), self.encode_passage(passage)
        output = {"q_reps": q_reps, "p_reps": p_reps}
        if q_reps is not None and p_reps is not None:
            output["loss"] = self.compute_loss(q_reps, p_reps)
        return output

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        for encoder in self.encoders():
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    # ------------------------------------------------------------------ build / load / save
    @classmethod
    def build(cls, model_args, negatives_x_device: bool = False, **hf_kwargs) -> "DenseModel":
        """A fresh bi-encoder from a pretrained language model, for training."""
        path = model_args.model_name_or_path
        config = DenseConfig(pooling=resolve_pooling(model_args.pooling, path), normalize=model_args.normalize,
                             temperature=model_args.temperature, untie_encoder=model_args.untie_encoder,
                             add_pooler=model_args.add_pooler, projection_in_dim=model_args.projection_in_dim,
                             projection_out_dim=model_args.projection_out_dim)
        if Path(path, QUERY_MODEL_DIR).is_dir():  # continue from an untied checkpoint
            lm_q = _load_encoder(Path(path, QUERY_MODEL_DIR), model_args, **hf_kwargs)
            lm_p = _load_encoder(Path(path, PASSAGE_MODEL_DIR), model_args, **hf_kwargs)
            config.untie_encoder = True
        else:
            lm_q = _load_encoder(path, model_args, **hf_kwargs)
            lm_p = None
            if config.untie_encoder:
                import copy
                lm_p = copy.deepcopy(lm_q)
        pooler = None
        if config.add_pooler:
            pooler = LinearPooler(config.projection_in_dim, config.projection_out_dim, tied=not config.untie_encoder)
            if Path(path, POOLER_WEIGHTS).is_file():
                cls._load_pooler_weights(pooler, Path(path, POOLER_WEIGHTS))
        logger.info("built %s bi-encoder from %s: %s pooling%s%s", "untied" if config.untie_encoder else "tied",
                    path, config.pooling, ", linear pooler" if pooler else "", ", normalized" if config.normalize else "")
        return cls(lm_q, lm_p, config, pooler, negatives_x_device=negatives_x_device)

    @classmethod
    def load(cls, model_name_or_path, model_args=None, pooling: str | None = None,
             normalize: bool | None = None, **hf_kwargs) -> "DenseModel":
        """Load a model saved by :meth:`save` (or any Hugging Face encoder) for encoding."""
        path = Path(model_name_or_path)
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
        if (path / QUERY_MODEL_DIR).is_dir():
            config.untie_encoder = True
            lm_q = _load_encoder(path / QUERY_MODEL_DIR, model_args, **hf_kwargs)
            lm_p = _load_encoder(path / PASSAGE_MODEL_DIR, model_args, **hf_kwargs)
        else:
            lm_q, lm_p = _load_encoder(model_name_or_path, model_args, **hf_kwargs), None
        pooler = None
        if config.add_pooler:
            pooler = LinearPooler(config.projection_in_dim, config.projection_out_dim, tied=not config.untie_encoder)
            cls._load_pooler_weights(pooler, path / POOLER_WEIGHTS)
        return cls(lm_q, lm_p, config, pooler)

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
            if self.dense_config.untie_encoder:
                self.lm_q.save_pretrained(staging / QUERY_MODEL_DIR)
                self.lm_p.save_pretrained(staging / PASSAGE_MODEL_DIR)
            else:
                self.lm_q.save_pretrained(staging)
            if self.pooler is not None:
                from safetensors.torch import save_file
                save_file(self.pooler.state_dict_to_save(), str(staging / POOLER_WEIGHTS))
            # a fresh fingerprint at every save: outputs made with an earlier model are then seen as stale
            saved = {**asdict(self.dense_config), "fingerprint": new_model_fingerprint()}
            (staging / TEVATRON_CONFIG).write_text(json.dumps(saved, indent=2) + "\n")

    def load_weights_from(self, checkpoint_dir) -> None:
        """Load weights saved by :meth:`save` into this model in place (used to resume training)."""
        loaded = DenseModel.load(checkpoint_dir)
        self.load_state_dict(loaded.state_dict())
