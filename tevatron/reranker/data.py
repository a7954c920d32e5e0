"""(query, passage) pairs for the cross-encoder, built from the retriever's records (token ids, or raw text
tokenized on the fly by :func:`pair_text_tokenizer`).

A pair is the tokenizer's own two-sequence input (``[CLS] query [SEP] passage [SEP]`` with token type
ids 0 then 1 for BERT).  Lengths: ``[CLS] query [SEP]`` keeps at most ``q_max_len`` tokens, as the
retriever's query encoder sees the query; the whole pair keeps at most ``q_max_len + p_max_len``
tokens, so the passage gets what the query leaves (cut to the model's positions where that is less).
Raw text is cut only by these pair lengths; token-id files may have been cut shorter when they were made
(``build_train --p_max_len``), so the two give the same pairs where that cut is at least the pair's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tevatron.cli import CommandError
from tevatron.data import special_token_frame
from tevatron.raw_text import TextTokenizer


def _find(sequence: list[int], part: list[int], start: int) -> int:
    for index in range(start, len(sequence) - len(part) + 1):
        if sequence[index: index + len(part)] == part:
            return index
    return -1


def pair_frame(tokenizer) -> dict:
    """How the tokenizer frames a pair of token-id sequences: the special ids before, between and after
    them (``[CLS]``, ``[SEP]``, ``[SEP]`` for BERT) and the token type of each of the five parts (None:
    the model takes no token types).  Read off the tokenizer's own output for two probe texts, as
    transformers 5 no longer exposes ``build_inputs_with_special_tokens``."""
    first, second = "hello world", "quick brown fox"
    bare_a = tokenizer(first, add_special_tokens=False)["input_ids"]
    bare_b = tokenizer(second, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(first, second, add_special_tokens=True)
    framed = list(encoded["input_ids"])
    start_a = _find(framed, bare_a, 0)
    start_b = _find(framed, bare_b, start_a + len(bare_a)) if start_a >= 0 else -1
    if start_b < 0:
        raise ValueError(f"cannot find how {type(tokenizer).__name__} frames a pair of texts")
    bounds = [0, start_a, start_a + len(bare_a), start_b, start_b + len(bare_b), len(framed)]
    parts = [framed[bounds[i]: bounds[i + 1]] for i in range(5)]
    types = encoded.get("token_type_ids")
    kinds = None if types is None else [types[bounds[i]] if bounds[i] < bounds[i + 1] else 0 for i in range(5)]
    return {"prefix": parts[0], "middle": parts[2], "suffix": parts[4], "types": kinds}


class PairBuilder:
    """Cuts, frames and pads (query, passage) token-id pairs with a tokenizer's special tokens."""

    def __init__(self, tokenizer, q_max_len: int, p_max_len: int, position_limit: int | None = None,
                 pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        prefix, suffix = special_token_frame(tokenizer)
        self.single_special = len(prefix) + len(suffix)
        self.frame = pair_frame(tokenizer)
        self.pair_special = len(self.frame["prefix"]) + len(self.frame["middle"]) + len(self.frame["suffix"])
        self.query_budget = q_max_len - self.single_special
        self.max_len = q_max_len + p_max_len
        if position_limit is not None and self.max_len > position_limit:
            self.max_len = position_limit
        if self.query_budget < 1:
            raise CommandError(f"--q_max_len {q_max_len} leaves no room for the query: the tokenizer adds "
                               f"{self.single_special} special tokens to it")
        if self.max_len - self.pair_special - self.query_budget < 1:
            raise CommandError(f"--q_max_len {q_max_len} + --p_max_len {p_max_len} (cut to {self.max_len}) leaves "
                               "no room for the passage")
        self.pad_to_multiple_of = pad_to_multiple_of

    def cut(self, query: Sequence[int], passage: Sequence[int]) -> tuple[list[int], list[int]]:
        query = list(query[: self.query_budget])
        return query, list(passage[: self.max_len - self.pair_special - len(query)])

    def pair_length(self, query: Sequence[int], passage: Sequence[int]) -> int:
        query, passage = self.cut(query, passage)
        return len(query) + len(passage) + self.pair_special

    def build(self, query: list[int], passage: list[int]) -> tuple[list[int], list[int]]:
        """Input ids and token types of one (already cut) pair."""
        frame = self.frame
        parts = [frame["prefix"], query, frame["middle"], passage, frame["suffix"]]
        ids = [token for part in parts for token in part]
        kinds = frame["types"] or [0] * 5
        return ids, [kind for part, kind in zip(parts, kinds) for _ in part]

    def __call__(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_to: int | None = None) -> dict:
        """A batch ``{input_ids, attention_mask[, token_type_ids]}`` padded to its longest pair (or ``pad_to``)."""
        built, types = [], []
        for query, passage in pairs:
            query, passage = self.cut(query, passage)
            ids, kinds = self.build(query, passage)
            built.append(ids)
            types.append(kinds)
        longest = pad_to or max(len(ids) for ids in built)
        if self.pad_to_multiple_of and not pad_to:
            longest = min(-(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of, max(self.max_len, longest))
        input_ids = torch.full((len(built), longest), self.pad_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(built), longest), dtype=torch.long)
        attention_mask = torch.zeros((len(built), longest), dtype=torch.long)
        for row, (ids, kinds) in enumerate(zip(built, types)):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            token_type_ids[row, : len(kinds)] = torch.tensor(kinds, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.frame["types"] is not None:
            batch["token_type_ids"] = token_type_ids
        return batch


def pair_text_tokenizer(tokenizer, builder: PairBuilder) -> TextTokenizer:
    """Raw queries and ``[title, text]`` passages to ids as the retriever's data tokenizes them (title and
    text joined as ``build_train`` joins them), cut to the most a pair can hold: the query to its budget,
    the passage to the pair without its special tokens (the builder then cuts it to what the query leaves).
    No prefixes: ``--query_prefix``/``--passage_prefix`` belong to the bi-encoder."""
    return TextTokenizer(tokenizer, builder.query_budget, builder.max_len - builder.pair_special)


@dataclass
class GroupPairCollator:
    """Training batches: each sampled group (query, [positive, negatives...]) becomes its pairs, group after
    group, so the logits reshape to ``[groups, train_n_passages]`` with the positive in column 0.  Raw-text
    groups are tokenized here by ``text_tokenizer`` (:func:`pair_text_tokenizer`)."""
    builder: PairBuilder
    text_tokenizer: TextTokenizer | None = None

    def __call__(self, features):
        queries = [query for query, _ in features]
        groups = [list(passages) for _, passages in features]
        if self.text_tokenizer is not None:
            queries = self.text_tokenizer.queries(queries)
            flat = iter(self.text_tokenizer.passages([passage for group in groups for passage in group]))
            groups = [[next(flat) for _ in group] for group in groups]
        pairs = [(query, passage) for query, passages in zip(queries, groups) for passage in passages]
        return {"pairs": self.builder(pairs), "n_passages": len(groups[0])}
