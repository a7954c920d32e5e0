"""Raw-text data in Tevatron v2's schemas, tokenized on the fly, and the query/passage prefixes.

Training group: ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}...],
"negative_passages": [...]}``; corpus line: ``{"docid", "title", "text"}``; query line: ``{"query_id",
"query"}``.  Texts are joined and tokenized by the functions the v1 builders use
(:func:`tevatron.preprocess.tokenize.passage_text`, :func:`~tevatron.preprocess.tokenize.tokenize_batch`),
so a group tokenized ahead by ``build_train`` and the same group tokenized here give the same ids.

Prefixes (``--query_prefix "query: "``, ``--passage_prefix "passage: "``) go in front of a text before it
is tokenized.  Token ids cannot take a prefix afterwards (tokenizing a prefix alone and gluing its ids on
does not give the ids of the joined text for BPE/SentencePiece tokenizers, and the text's cut would move),
so for tokenized data the prefix is the one its tokenization recorded, and a different one is refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .cli import CommandError
from .files import InputError
from .preprocess.common import real_title
from .preprocess.tokenize import TEXT, TOKENIZED, passage_text, query_text, tokenize_batch
from .provenance import read_file_record, read_folder_record
from .text_formats import iter_jsonl

logger = logging.getLogger(__name__)

PREFIX_FIELDS = ("query_prefix", "passage_prefix")


# --------------------------------------------------------------------------- which format a file holds
def training_record_format(record: dict) -> str:
    """A training line's format: raw text (v2) when its query is a string or it lists passages as objects."""
    if isinstance(record.get("query"), str) or "positive_passages" in record or "negative_passages" in record:
        return TEXT
    return TOKENIZED


def encode_record_format(record: dict) -> str:
    """An encoding input line's format: tokenized (``text_id``) or raw text (``docid`` / ``query_id``)."""
    return TOKENIZED if "text_id" in record else TEXT


def file_format(path, record_format) -> str:
    """The format of a JSON-lines file, by its first record (an empty file counts as tokenized)."""
    for _, record in iter_jsonl(path):
        return record_format(record)
    return TOKENIZED


def one_format(paths: Sequence, record_format) -> str:
    """The format every one of ``paths`` holds; files of both formats in one input are refused."""
    formats = [(file_format(path, record_format), path) for path in paths]
    for data_format, path in formats[1:]:
        if data_format != formats[0][0]:
            raise InputError(path, f"holds {data_format} data but {formats[0][1]} holds {formats[0][0]} data; "
                                   "give files of one format")
    return formats[0][0] if formats else TOKENIZED


# --------------------------------------------------------------------------- checking raw lines
def _text(path, number, record: dict, field: str, required: bool = True) -> str:
    if field not in record or record[field] is None:
        if required:
            raise InputError(path, f"missing field {field!r}", number)
        return ""
    value = record[field]
    if not isinstance(value, str):
        raise InputError(path, f"{field} must be a string, not {type(value).__name__}", number)
    return value.strip()  # as the TSV and BEIR readers strip


def _passage(path, number, passage, where: str) -> list[str]:
    if not isinstance(passage, dict):
        raise InputError(path, f"{where} must be an object with docid, title and text", number)
    title = real_title(_text(path, number, passage, "title", required=False))
    text = _text(path, number, passage, "text")
    if not text and not title:
        raise InputError(path, f"{where} has empty text", number)
    return [title, text]


def validate_raw_train_record(path, number: int, record: dict, need_negatives: bool) -> dict:
    """Check one raw training group; return ``{"query": str, "positives": [[title, text]], "negatives": ...}``
    (the keys :func:`tevatron.data.sample_group` reads)."""
    query = _text(path, number, record, "query")
    if not query:
        raise InputError(path, "query is empty", number)
    positives, negatives = record.get("positive_passages"), record.get("negative_passages") or []
    if not isinstance(positives, list) or not positives:
        raise InputError(path, "example has no positive_passages", number)
    if not isinstance(negatives, list):
        raise InputError(path, "negative_passages must be a list of passages", number)
    if need_negatives and not negatives:
        raise InputError(path, "example has no negative_passages (needed for --train_n_passages > 1)", number)
    return {"query": query,
            "positives": [_passage(path, number, p, "a positive passage") for p in positives],
            "negatives": [_passage(path, number, n, "a negative passage") for n in negatives]}


def raw_encode_record(path, number: int, record: dict, is_query: bool) -> tuple[str, list[str]]:
    """``(id, [title, text])`` of a raw corpus line, or ``(id, ["", query])`` of a raw query line."""
    id_field = "query_id" if is_query else "docid"
    if id_field not in record:
        schema = '{"query_id", "query"}' if is_query else '{"docid", "title", "text"}'
        raise InputError(path, f"missing field {id_field!r} (raw {'queries' if is_query else 'corpus'}: {schema})",
                         number)
    if not isinstance(record[id_field], (str, int)) or isinstance(record[id_field], bool):
        raise InputError(path, f"{id_field} must be a string", number)
    text_id = str(record[id_field])
    if is_query:
        query = _text(path, number, record, "query")
        if not query:
            raise InputError(path, "query is empty", number)
        return text_id, ["", query]
    return text_id, _passage(path, number, record, f"passage {text_id}")


# --------------------------------------------------------------------------- tokenizing on the fly
@dataclass
class TextTokenizer:
    """Raw queries and ``[title, text]`` passages to token ids without special tokens, cut to the maximum
    lengths as ``build_train`` cuts them (the collator's padder then cuts again for the special tokens)."""
    tokenizer: object
    q_max_len: int
    p_max_len: int
    query_prefix: str = ""
    passage_prefix: str = ""

    def queries(self, texts: Iterable[str]) -> list[list[int]]:
        return tokenize_batch(self.tokenizer, [query_text(text, self.query_prefix) for text in texts],
                              self.q_max_len)

    def passages(self, passages: Iterable[Sequence[str]]) -> list[list[int]]:
        sep = self.tokenizer.sep_token or ""
        return tokenize_batch(self.tokenizer, [passage_text(title, text, sep, self.passage_prefix)
                                               for title, text in passages], self.p_max_len)


# --------------------------------------------------------------------------- prefixes
def recorded_prefixes(paths: Sequence) -> dict[str, str] | None:
    """The prefixes tokenized files were made with, from their provenance records (a query file's
    sidecar, a folder's ``.complete``; a linked file's real folder); None when a file has no record.
    Files whose records disagree are refused: one model cannot be trained on both."""
    found: dict[str, str] | None = None
    first = None
    for path in paths:
        path = Path(path)
        real = path.resolve()
        record = read_folder_record(real.parent)
        try:
            provenance = record["provenance"] if record else read_file_record(real)
        except InputError:  # the file changed after its record was written: the record says nothing of it
            provenance = None
        if provenance is None:
            return None
        prefixes = {field: provenance.get(field, "") for field in PREFIX_FIELDS}
        if found is not None and prefixes != found:
            raise InputError(path, f"was tokenized with prefixes {prefixes} but {first} with {found}")
        found, first = prefixes, path
    return found


def training_prefixes(data_args, data_format: str, files: Sequence) -> dict[str, str]:
    """The prefixes a training run uses (and saves with the model).  Raw text: ``--query_prefix`` /
    ``--passage_prefix`` (default none).  Tokenized files: the prefixes their tokenization recorded; a
    flag asking for another one is refused, since ids cannot take a prefix after tokenization."""
    asked = {field: getattr(data_args, field) for field in PREFIX_FIELDS}
    if data_format == TEXT:
        return {field: value or "" for field, value in asked.items()}
    recorded = recorded_prefixes(files) if files else None
    for field, value in asked.items():
        if value is None:
            continue
        if recorded is None:
            if value:
                raise CommandError(f"--{field} {value!r}: the training data is token ids without a record of how "
                                   "they were tokenized, and a prefix cannot be added to ids; give the prefix "
                                   f"to build_train (--{field}) or train on raw text")
        elif recorded[field] != value:
            raise CommandError(f"--{field} {value!r}, but the training data was tokenized with "
                               f"{recorded[field]!r} (a prefix cannot be changed after tokenization; "
                               f"rebuild it with build_train --{field} {value!r})")
    return recorded or {field: value or "" for field, value in asked.items()}


def encoding_prefix(asked: str | None, saved: str, side: str) -> str:
    """The prefix an encoding uses: ``--{side}_prefix`` when given, else the one the model was trained with."""
    if asked is not None:
        if asked != saved and saved:
            logger.warning("the model was trained with --%s_prefix %r; encoding with %r as asked", side, saved, asked)
        return asked
    return saved or ""


def check_tokenized_prefix(paths: Sequence, field: str, prefix: str) -> None:
    """Tokenized encoding input already holds its prefix: refuse one that differs from ``prefix``; warn
    when the files have no record to tell."""
    recorded = recorded_prefixes(paths)
    if recorded is None:
        if prefix:
            logger.warning("the tokenized input has no provenance record: cannot check it was tokenized with "
                           "--%s %r", field, prefix)
        return
    if recorded[field] != prefix:
        raise CommandError(f"{paths[0]}: tokenized with --{field} {recorded[field]!r}, but this encoding uses "
                           f"{prefix!r} (the model's or --{field}'s); re-tokenize with --{field} {prefix!r} or "
                           "encode raw text")
