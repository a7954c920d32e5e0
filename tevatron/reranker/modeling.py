"""Loading and saving the cross-encoder: ``AutoModelForSequenceClassification`` with one logit per pair.

A folder saved here carries ``tevatron_config.json`` with ``"model_kind": "cross-encoder"`` and a fresh
fingerprint at every save (:func:`tevatron.provenance.model_identity` reads it), so reranked runs and
teacher scores made with an earlier model are seen as stale once it is retrained.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from tevatron.files import InputError, staged_files
from tevatron.provenance import MODEL_CONFIG_FILE, new_model_fingerprint

logger = logging.getLogger(__name__)

MODEL_KIND = "cross-encoder"


def check_reranker_folder(name_or_path) -> None:
    """Refuse a folder that is not a model, or a bi-encoder trained here (its scores mean nothing for a pair)."""
    path = Path(str(name_or_path))
    if not path.exists():
        if str(name_or_path).startswith((".", "/", "~")):
            raise InputError(name_or_path, "no such model folder")
        return  # a hub id
    if not path.is_dir():
        raise InputError(path, "not a model folder (it is a file)")
    if not (path / "config.json").is_file():
        raise InputError(path, "no config.json: not a Hugging Face model folder")
    saved = path / MODEL_CONFIG_FILE
    if saved.is_file():
        try:
            kind = json.loads(saved.read_text(encoding="utf-8")).get("model_kind")
        except (ValueError, AttributeError):
            raise InputError(saved, "not a JSON object") from None
        if kind != MODEL_KIND:
            raise InputError(path, "a bi-encoder trained by tevatron.driver.train, not a reranker "
                             "(train one with python -m tevatron.reranker.driver.train)")


def load_cross_encoder(name_or_path, cache_dir=None, trust_remote_code: bool = False, require_head: bool = False,
                       **hf_kwargs):
    """The model with one output logit; a checkpoint without a classification head gets a fresh one (logged),
    unless ``require_head`` (scoring with a random head would rank arbitrarily): then it is refused."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_reranker_folder(name_or_path)
    config = AutoConfig.from_pretrained(str(name_or_path), cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    if getattr(config, "num_labels", 1) != 1:
        logger.info("%s has %d labels; using a one-logit head instead", name_or_path, config.num_labels)
    config.num_labels = 1
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(name_or_path), config=config, cache_dir=cache_dir, trust_remote_code=trust_remote_code,
        output_loading_info=True, **hf_kwargs)
    fresh = sorted(info.get("missing_keys", []))
    if fresh and require_head:
        raise InputError(name_or_path, "has no trained classification head (missing "
                         f"{', '.join(fresh)}): train a reranker from it first")
    if fresh:
        logger.info("%s has no trained classification head: freshly initialised %s", name_or_path, ", ".join(fresh))
    return model


def save_cross_encoder(model, output_dir, tokenizer=None) -> None:
    """Save weights, config and tokenizer, ``tevatron_config.json`` (fingerprint) last, each file atomically."""
    with staged_files(output_dir, last=(MODEL_CONFIG_FILE,)) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        saved = {"model_kind": MODEL_KIND, "fingerprint": new_model_fingerprint()}
        (staging / MODEL_CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def position_limit(model) -> int | None:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    return positions - 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else positions


def listwise_loss(logits, n_passages: int):
    """Softmax cross-entropy over each group's passages; the positive is column 0."""
    scores = logits.view(-1, n_passages).float()
    return F.cross_entropy(scores, scores.new_zeros(scores.shape[0], dtype=torch.long))
