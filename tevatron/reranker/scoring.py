"""Scoring (query, passage) pairs with a cross-encoder: length-sorted batches, results in input order."""
from __future__ import annotations

import contextlib
import glob
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from tevatron.cli import CommandError
from tevatron.data import length_sorted_batches

from .data import PairBuilder
from .modeling import check_reranker_folder, load_cross_encoder, position_limit


def score_pairs(model, builder: PairBuilder, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int,
                device, autocast_dtype=None, progress: bool = True, desc: str = "scoring") -> torch.Tensor:
    """One float32 logit per pair, in the order of ``pairs``.  Pairs are batched longest first, so each
    batch pads little; a non-finite score stops everything (it would rank arbitrarily)."""
    model.eval()
    lengths = [builder.pair_length(query, passage) for query, passage in pairs]
    scores = torch.empty(len(pairs), dtype=torch.float32)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast, tqdm(total=len(pairs), desc=desc, unit="pair",
                                                disable=not progress) as bar:
        for indices in length_sorted_batches(lengths, batch_size):
            batch = builder([pairs[i] for i in indices])
            logits = model(**{k: v.to(device) for k, v in batch.items()}, return_dict=True).logits
            scores[torch.tensor(indices)] = logits.view(-1).float().cpu()
            bar.update(len(indices))
    bad = (~torch.isfinite(scores)).nonzero().flatten()
    if bad.numel():
        raise CommandError(f"{bad.numel()} of {len(pairs)} reranker scores are NaN or inf (the first is pair "
                           f"{int(bad[0])}); nothing written (the model's weights are not finite?)")
    return scores


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files, folders, or shell globs (quoted, so the shell leaves them alone), each glob sorted."""
    found: list[str] = []
    for pattern in patterns:
        if Path(pattern).exists() or not glob.has_magic(pattern):
            found.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            from tevatron.files import InputError
            raise InputError(pattern, "no file matches this pattern")
        found.extend(matches)
    return found


def autocast_dtype_for(precision: str):
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def load_scorer(model_args, q_max_len: int, p_max_len: int, run_args):
    """A trained reranker for scoring (rerank, score_groups): the model (its head required), the pair builder
    for these lengths and the precision ``run_args`` resolve to on this device."""
    from tevatron.arguments import resolve_mixed_precision
    from tevatron.tokenization import load_tokenizer
    check_reranker_folder(model_args.model_name_or_path)
    model = load_cross_encoder(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                               trust_remote_code=model_args.trust_remote_code, require_head=True)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    builder = PairBuilder(tokenizer, q_max_len, p_max_len, position_limit(model))
    return model, builder, resolve_mixed_precision(run_args, model.config.hidden_size)
