"""Training and encoding datasets and their collators.

Training examples are Tevatron v1's tokenized groups ``{"query": [ids], "positives": [[ids]...],
"negatives": [[ids]...]}`` (ids without special tokens), or raw text in Tevatron v2's schema, held as
``{"query": str, "positives": [[title, text]...], "negatives": ...}`` and tokenized by the collator
(:mod:`tevatron.raw_text`); both are sampled the same way.  Batches are padded to their longest member.
"""
from __future__ import annotations

import json
import logging
import random
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from .cli import CommandError
from .files import InputError
from .preprocess.tokenize import TEXT, TOKENIZED
from .raw_text import (TextTokenizer, encode_record_format, one_format, raw_encode_record, training_record_format,
                       validate_raw_train_record)
from .text_formats import iter_jsonl

logger = logging.getLogger(__name__)

JSON_SUFFIXES = (".json", ".jsonl")


def list_data_files(path) -> list[Path]:
    """A file, or the sorted .json/.jsonl files of a directory (temporary dot-files excluded)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "no such file or directory")
    files = sorted(p for p in path.iterdir() if p.suffix in JSON_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(path, "no .json or .jsonl files in this directory")
    return files


# --------------------------------------------------------------------------- validation
def _check_ids(path, number, ids, field: str, vocab_size: int | None) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError(path, f"{field} must be a list of token ids", number)
    if not ids:
        raise InputError(path, f"{field} is empty", number)
    check_vocabulary(path, number, ids, vocab_size, f" in {field}")
    return ids


def check_vocabulary(path, number, ids: list[int], vocab_size: int | None, where: str = "") -> None:
    """Every token id must index the model's embedding table (else torch fails deep in a forward pass)."""
    if vocab_size is not None and ids:
        low, high = min(ids), max(ids)
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise InputError(path, f"token id {bad}{where} is outside the vocabulary (size {vocab_size})", number)


def validate_train_record(path, number: int, record: dict, vocab_size: int | None, need_negatives: bool) -> dict:
    """Check one training group; return it with only the fields training uses."""
    for key in ("query", "positives"):
        if key not in record:
            raise InputError(path, f"missing field {key!r}", number)
    query = _check_ids(path, number, record["query"], "query", vocab_size)
    positives, negatives = record["positives"], record.get("negatives", [])
    if not isinstance(positives, list) or not positives:
        raise InputError(path, "example has no positives", number)
    if not isinstance(negatives, list):
        raise InputError(path, "negatives must be a list of token-id lists", number)
    if need_negatives and not negatives:
        raise InputError(path, "example has no negatives (needed for --train_n_passages > 1)", number)
    positives = [_check_ids(path, number, p, "a positive", vocab_size) for p in positives]
    negatives = [_check_ids(path, number, n, "a negative", vocab_size) for n in negatives]
    return {"query": query, "positives": positives, "negatives": negatives}


def _iter_train_groups(files: Sequence[str], vocab_size: int | None, need_negatives: bool,
                       data_format: str = TOKENIZED) -> Iterator[dict]:
    for file in files:
        for number, record in iter_jsonl(file):
            yield _validate_group(file, number, record, vocab_size, need_negatives, data_format)


def _validate_group(source, number: int, record: dict, vocab_size, need_negatives: bool, data_format: str) -> dict:
    if data_format == TEXT:
        return validate_raw_train_record(source, number, record, need_negatives)
    return validate_train_record(source, number, record, vocab_size, need_negatives)


def _iter_dataset_groups(name: str, config: str | None, split: str, cache_dir: str | None,
                         vocab_size: int | None, need_negatives: bool, data_format: str) -> Iterator[dict]:
    """Rows of a ``datasets`` dataset, checked as lines of a file are (``NAME:ROW`` in messages, from 1)."""
    for number, record in enumerate(load_hf_dataset(name, config, split, cache_dir), start=1):
        yield _validate_group(name, number, dict(record), vocab_size, need_negatives, data_format)


def load_hf_dataset(name: str, config: str | None, split: str, cache_dir: str | None):
    """``datasets.load_dataset`` of a hub id or a local dataset (a folder of .jsonl files, a saved dataset)."""
    import datasets

    source = Path(name)
    if source.is_dir() and (source / "dataset_info.json").is_file():  # written by Dataset.save_to_disk
        return datasets.load_from_disk(str(source))
    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(name, f"cannot load this dataset ({reason})") from None


def group_features(data_format: str):
    """Arrow columns of checked groups: token ids, or raw text with passages as ``[title, text]``."""
    import datasets

    if data_format == TEXT:
        passages = datasets.Sequence(datasets.Sequence(datasets.Value("string")))
        return datasets.Features({"query": datasets.Value("string"), "positives": passages, "negatives": passages})
    return datasets.Features({
        "query": datasets.Sequence(datasets.Value("int32")),
        "positives": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
        "negatives": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
    })


def groups_format(groups) -> str:
    """Whether loaded groups hold raw text (tokenized by the collator) or token ids."""
    query = groups.features["query"]
    return TEXT if getattr(query, "dtype", None) == "string" else TOKENIZED


def training_data_format(data_args, cache_dir: str | None = None) -> tuple[str, list[str]]:
    """The format of the training data (by first lines / first row) and its files (none for a dataset)."""
    if data_args.train_dir:
        files = [str(f) for f in list_data_files(data_args.train_dir)]
        return one_format(files, training_record_format), files
    if data_args.dataset_name:
        return dataset_format(data_args.dataset_name, data_args.dataset_config, data_args.dataset_split,
                              cache_dir), []
    raise CommandError("give --train_dir or --dataset_name")


def dataset_format(name: str, config: str | None, split: str, cache_dir: str | None) -> str:
    for record in load_hf_dataset(name, config, split, cache_dir):
        return training_record_format(dict(record))
    raise InputError(name, "no training examples")


def load_train_groups(data_args, vocab_size: int | None, cache_dir: str | None = None):
    """Load and check training groups into an Arrow-backed ``datasets.Dataset``.

    Files are read by our own reader first so that bad input names its file and line; the result is
    memory-mapped Arrow, so 500k MS MARCO groups do not sit in Python lists.
    """
    import datasets

    need_negatives = data_args.train_n_passages > 1
    if data_args.train_dir:
        files = [str(f) for f in list_data_files(data_args.train_dir)]
        data_format = one_format(files, training_record_format)
        fingerprint_parts = [f"{f}:{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}" for f in files]
        groups = _unwrap_input_error(datasets.Dataset.from_generator)(
            _iter_train_groups, features=group_features(data_format), cache_dir=cache_dir,
            gen_kwargs={"files": files, "vocab_size": vocab_size, "need_negatives": need_negatives,
                        "data_format": data_format},
            fingerprint=_stable_hash(fingerprint_parts + [str(vocab_size), str(need_negatives), data_format]),
        )
        _log_group_sources(files, len(groups))
    elif data_args.dataset_name:
        # A hub id (or local dataset) in either schema, checked row by row like files.  Not cached by
        # fingerprint: the rows are re-read and re-checked on each run (the hub copy may change).
        name, config, split = data_args.dataset_name, data_args.dataset_config, data_args.dataset_split
        data_format = dataset_format(name, config, split, cache_dir)
        groups = _unwrap_input_error(datasets.Dataset.from_generator)(
            _iter_dataset_groups, features=group_features(data_format), cache_dir=cache_dir,
            gen_kwargs={"name": name, "config": config, "split": split, "cache_dir": cache_dir,
                        "vocab_size": vocab_size, "need_negatives": need_negatives, "data_format": data_format},
            fingerprint=_stable_hash([name, str(config), split, str(vocab_size), str(need_negatives), data_format,
                                      str(random.random())]),
        )
        logger.info("%s training groups (%s) from dataset %s, split %s", f"{len(groups):,}", data_format, name, split)
    else:
        raise ValueError("give --train_dir (tokenized files) or --dataset_name")
    if len(groups) == 0:
        raise InputError(data_args.train_dir or data_args.dataset_name, "no training examples")
    return groups


def query_fold(query, folds: int) -> int:
    """The fold (0 .. folds - 1) of a training query, from the query itself (its token ids or its text): the
    same query falls in the same fold in every file and every driver, so its BM25 and hard-negative groups
    stay together and a reranker trained without a fold never saw any group of that fold's queries."""
    return zlib.crc32(json.dumps(query).encode("utf-8")) % folds


def hold_out_query_fold(groups, folds: int, held_out: int):
    """The groups whose query is not in fold ``held_out`` of ``folds`` (:func:`query_fold`), in their order."""
    kept = [index for index, query in enumerate(groups["query"]) if query_fold(query, folds) != held_out]
    logger.info("fold %d of %d held out: training on %s of %s groups", held_out, folds, f"{len(kept):,}",
                f"{len(groups):,}")
    if not kept:
        raise CommandError(f"every training group's query is in the held-out fold {held_out} of {folds}")
    return groups.select(kept)


def _log_group_sources(files: Sequence[str], total: int) -> None:
    """One line with the groups each file-name pattern gave (``split*.json``: BM25 negatives,
    ``split*.hn.json``: mined hard negatives), so a stage-2 folder missing one of its sets shows at once."""
    counts: dict[str, int] = {}
    for file in files:
        pattern = re.sub(r"\d+", "*", Path(file).name)
        with open(file, "rb") as handle:  # one group per non-blank line, as iter_jsonl reads them
            counts[pattern] = counts.get(pattern, 0) + sum(1 for line in handle if not line.isspace())
    logger.info("%s training groups: %s", f"{total:,}", ", ".join(f"{n:,} from {p}" for p, n in counts.items()))


def _unwrap_input_error(function):
    """``datasets`` wraps errors raised in generators; surface our one-line InputError instead."""
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError:
            raise
        except Exception as err:
            cause = err
            while cause is not None and not isinstance(cause, InputError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None
    return wrapped


def _stable_hash(parts: Sequence[str]) -> str:
    import hashlib
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- group sampling
def sample_group(group: dict, index: int, epoch: int, seed: int, n_passages: int) -> tuple[list, list]:
    """Pick one positive and ``n_passages - 1`` negatives for example ``index`` in ``epoch``.

    As in Tevatron v1: the positive rotates with the epoch; negatives are shuffled once per example and
    a window over them moves each epoch; too few negatives are drawn with replacement.  Everything
    depends only on (seed, index, epoch), so a resumed run sees the same groups.
    """
    example_seed = seed * 1_000_003 + index
    positives, negatives = group["positives"], group["negatives"]
    positive = positives[(example_seed + epoch) % len(positives)]
    n_negatives = n_passages - 1
    if n_negatives == 0:
        chosen = []
    elif len(negatives) < n_negatives:
        chosen = random.Random(example_seed * 31 + epoch).choices(negatives, k=n_negatives)
    else:
        shuffled = list(negatives)
        random.Random(example_seed).shuffle(shuffled)
        offset = epoch * n_negatives % len(shuffled)
        chosen = (shuffled + shuffled)[offset: offset + n_negatives]
    return group["query"], [positive] + chosen


class TrainDataset(Dataset):
    """Training groups; ``set_epoch`` (called by the trainer) moves positives and negatives along."""

    def __init__(self, groups, n_passages: int, seed: int):
        self.groups = groups
        self.n_passages = n_passages
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int):
        return sample_group(self.groups[index], index, self.epoch, self.seed, self.n_passages)


# --------------------------------------------------------------------------- collation
def special_token_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence ([CLS] and [SEP] for BERT)."""
    bare = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    framed = tokenizer("hello world", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start: start + len(bare)] == bare:
            return list(framed[:start]), list(framed[start + len(bare):])
    raise ValueError(f"cannot find how {type(tokenizer).__name__} adds special tokens")


@dataclass
class SequencePadder:
    """Adds special tokens, truncates and pads a list of id sequences to the longest one."""
    tokenizer: object
    pad_to_multiple_of: int | None = None
    append_eos: bool = False  # --append_eos_token: the eos id ends every text (decoder last-token pooling)
    padding_side: str = "right"  # pooling and position ids read the mask, so either side gives the same vectors

    def __post_init__(self):
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.prefix, self.suffix = special_token_frame(self.tokenizer)
        if self.append_eos:
            if self.tokenizer.eos_token_id is None:
                raise CommandError(f"--append_eos_token: the tokenizer ({type(self.tokenizer).__name__}) has no "
                                   "eos token")
            self.suffix = self.suffix + [self.tokenizer.eos_token_id]
        self.n_special = len(self.prefix) + len(self.suffix)

    def __call__(self, sequences: Sequence[Sequence[int]], max_len: int, pad_to: int | None = None) -> dict:
        budget = max(max_len - self.n_special, 0)
        built = [self.prefix + list(ids[:budget]) + self.suffix for ids in sequences]
        longest = pad_to or max(len(ids) for ids in built)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            longest = min(-(-longest // multiple) * multiple, max(max_len, longest))
        input_ids = torch.full((len(built), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(built), longest), dtype=torch.long)
        for row, ids in enumerate(built):
            columns = slice(longest - len(ids), longest) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, columns] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def check_room(self, max_len: int, flag: str) -> None:
        """Refuse a maximum length that leaves no token for the text: every text would be the same
        special tokens, hence the same vector."""
        if max_len <= self.n_special:
            raise CommandError(f"{flag} {max_len} leaves no room for text: the tokenizer adds "
                               f"{self.n_special} special tokens to every text")


@dataclass
class TrainCollator:
    padder: SequencePadder
    q_max_len: int = 32
    p_max_len: int = 128
    pad_to_max_length: bool = False  # fixed padding, for equivalence tests and benchmarks
    text_tokenizer: TextTokenizer | None = None  # raw-text groups: tokenized here, on the fly

    def __post_init__(self):
        self.padder.check_room(self.q_max_len, "--q_max_len")
        self.padder.check_room(self.p_max_len, "--p_max_len")

    def __call__(self, features):
        queries = [query for query, _ in features]
        passages = [passage for _, group in features for passage in group]
        if self.text_tokenizer is not None:
            queries, passages = self.text_tokenizer.queries(queries), self.text_tokenizer.passages(passages)
        return {
            "query": self.padder(queries, self.q_max_len, self.q_max_len if self.pad_to_max_length else None),
            "passage": self.padder(passages, self.p_max_len, self.p_max_len if self.pad_to_max_length else None),
        }


# --------------------------------------------------------------------------- encoding input
def encode_input_files(paths: Sequence[str]) -> list[Path]:
    """The files an encoding reads (folders listed), each once."""
    files = [path for file in paths for path in list_data_files(file)]
    for index, path in enumerate(files):
        if any(path.resolve() == other.resolve() for other in files[:index]):
            raise InputError(path, "given twice in the encode input")
    return files


def encode_input_format(paths: Sequence[str]) -> str:
    """Tokenized (``{"text_id", "text": [ids]}``) or raw text (``{"docid", "title", "text"}`` /
    ``{"query_id", "query"}``), by the files' first lines; one format for all of them."""
    return one_format(encode_input_files(paths), encode_record_format)


def read_encode_records(paths: Sequence[str], vocab_size: int | None = None, is_query: bool = False
                        ) -> tuple[list[str], list]:
    """Read ``{"text_id", "text": [ids]}`` lines from one or more files, checking every line (token ids
    against ``vocab_size`` too, where given).  Raw-text files give ``[title, text]`` pairs instead
    (``["", query]`` for queries), for :class:`tevatron.raw_text.TextTokenizer`."""
    ids: list[str] = []
    texts: list = []
    seen: set[str] = set()  # a repeated id would give a ranking that lists a passage twice
    data_format = encode_input_format(paths)
    for file in paths:
        for path in list_data_files(file):
            for number, record in iter_jsonl(path):
                if data_format == TEXT:
                    text_id, text = raw_encode_record(path, number, record, is_query)
                    if text_id in seen:
                        raise InputError(path, f"id {text_id!r} repeated", number)
                    seen.add(text_id)
                    ids.append(text_id)
                    texts.append(text)
                    continue
                if "text_id" not in record or "text" not in record:
                    missing = "text_id" if "text_id" not in record else "text"
                    raise InputError(path, f"missing field {missing!r}", number)
                text = record["text"]
                if not isinstance(text, list) or not all(isinstance(t, int) for t in text):
                    raise InputError(path, "text must be a list of token ids", number)
                check_vocabulary(path, number, text, vocab_size)
                text_id = str(record["text_id"])
                if text_id in seen:
                    raise InputError(path, f"text_id {text_id!r} repeated (first on "
                                           f"{_first_line_of(paths, text_id, path)})", number)
                seen.add(text_id)
                ids.append(text_id)
                texts.append(text)
    return ids, texts


def _first_line_of(paths: Sequence[str], text_id: str, current: Path) -> str:
    """Where ``text_id`` first occurs (``line N`` in ``current``, else ``FILE:N``); only for the message."""
    for file in paths:
        for path in list_data_files(file):
            for number, record in iter_jsonl(path):
                if str(record.get("text_id")) == text_id:
                    return f"line {number}" if path == current else f"{path}:{number}"
    return "an earlier line"


def shard_range(n_items: int, n_shards: int, shard_index: int) -> range:
    """Contiguous, near-equal slice ``shard_index`` of ``n_items`` (shards concatenate to the whole)."""
    start = n_items * shard_index // n_shards
    stop = n_items * (shard_index + 1) // n_shards
    return range(start, stop)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices in decreasing length, so each batch pads little (the first OOMs early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
