"""Teacher scores for ``--distillation``: read and checked with the training groups, sampled with them.

A scored training group is a group record plus two lists of floats, one score per passage:
``"positive_scores"`` parallel to ``"positives"`` and ``"negative_scores"`` parallel to ``"negatives"``
(``"positive_passages"``/``"negative_passages"`` in a raw-text group; the names Tevatron v2 uses;
``tevatron.reranker.driver.score_groups`` writes them).  Every score is
checked when the files are read: a missing list, one of another length than its passages or a value
that is not a finite number stops training with one line naming the file and line.

Scores travel with their passages: :class:`DistillationDataset` picks exactly the passages the plain
:class:`tevatron.data.TrainDataset` picks (the same :func:`tevatron.data.sample_group`, run on the
passages' positions) and the scores at the same positions; the collator adds them to the batch as a
``teacher_scores`` tensor [queries, passages per query], the positive first as in the passages.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from .cli import CommandError
from .data import (_log_group_sources, _stable_hash, _unwrap_input_error, _validate_group, group_features,
                   list_data_files, sample_group)
from .files import InputError
from .preprocess.tokenize import TEXT
from .raw_text import one_format, training_record_format
from .text_formats import iter_jsonl

# score list -> the passage list it is parallel to
SCORE_FIELDS = {"positive_scores": "positives", "negative_scores": "negatives"}
RAW_SCORE_FIELDS = {"positive_scores": "positive_passages", "negative_scores": "negative_passages"}  # raw text
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_teacher_scores(path, number: int, record: dict, passage_fields: dict[str, str] = SCORE_FIELDS) -> dict:
    """``{"positive_scores": [...], "negative_scores": [...]}`` of one group, each checked against its passages."""
    scores = {}
    for score_field, passage_field in passage_fields.items():
        passages = record.get(passage_field) or []
        if score_field not in record:
            if not passages and score_field == "negative_scores":
                scores[score_field] = []  # no negatives, nothing to score
                continue
            raise InputError(path, f"missing field {score_field!r} (teacher scores, needed for --distillation)",
                             number)
        values = record[score_field]
        if not isinstance(values, list):
            raise InputError(path, f"{score_field} must be a list of numbers", number)
        if len(values) != len(passages):
            raise InputError(path, f"{score_field} has {len(values)} scores for {len(passages)} {passage_field}",
                             number)
        for position, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(path, f"{score_field}[{position}] {json.dumps(value)} is not a number", number)
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                raise InputError(path, f"{score_field}[{position}] {value!r} is not a finite number", number)
        scores[score_field] = [float(value) for value in values]
    return scores


def _iter_scored_groups(files: Sequence[str], vocab_size: int | None, need_negatives: bool,
                        data_format: str = "tokenized") -> Iterator[dict]:
    passage_fields = RAW_SCORE_FIELDS if data_format == TEXT else SCORE_FIELDS
    for file in files:
        for number, record in iter_jsonl(file):
            group = _validate_group(file, number, record, vocab_size, need_negatives, data_format)
            group.update(check_teacher_scores(file, number, record, passage_fields))
            yield group


def load_scored_groups(data_args, vocab_size: int | None, cache_dir: str | None = None):
    """Training groups with their teacher scores, checked line by line, as an Arrow-backed ``datasets.Dataset``
    (the counterpart of :func:`tevatron.data.load_train_groups` for ``--distillation``; tokenized or raw text)."""
    import datasets

    if not data_args.train_dir:
        raise CommandError("--distillation reads teacher scores from --train_dir files (tevatron.reranker.driver."
                           "score_groups writes them), not from --dataset_name")
    need_negatives = data_args.train_n_passages > 1
    files = [str(f) for f in list_data_files(data_args.train_dir)]
    data_format = one_format(files, training_record_format)
    features = datasets.Features({
        **group_features(data_format),
        # float64: the scores as written (they are checked to fit float32, the collator's dtype)
        "positive_scores": datasets.Sequence(datasets.Value("float64")),
        "negative_scores": datasets.Sequence(datasets.Value("float64")),
    })
    fingerprint_parts = [f"{f}:{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}" for f in files]
    groups = _unwrap_input_error(datasets.Dataset.from_generator)(
        _iter_scored_groups, features=features, cache_dir=cache_dir,
        gen_kwargs={"files": files, "vocab_size": vocab_size, "need_negatives": need_negatives,
                    "data_format": data_format},
        fingerprint=_stable_hash(fingerprint_parts + [str(vocab_size), str(need_negatives), "teacher scores"]
                                 + ([data_format] if data_format == TEXT else [])),
    )
    _log_group_sources(files, len(groups))
    if len(groups) == 0:
        raise InputError(data_args.train_dir, "no training examples")
    return groups


def sampled_positions(group: dict, index: int, epoch: int, seed: int, n_passages: int) -> tuple[int, list[int]]:
    """The position of the positive and of each negative that :func:`tevatron.data.sample_group` picks for
    this group: the same function run on the positions, so the picks are the same by construction."""
    positions = {"query": group["query"], "positives": list(range(len(group["positives"]))),
                 "negatives": list(range(len(group["negatives"])))}
    _, (positive, *negatives) = sample_group(positions, index, epoch, seed, n_passages)
    return positive, negatives


class DistillationDataset(Dataset):
    """Wraps a :class:`tevatron.data.TrainDataset` over scored groups: each example is the wrapped one's
    ``(query, passages)`` plus the teacher scores of those passages."""

    def __init__(self, train_dataset):
        self.train_dataset = train_dataset

    def set_epoch(self, epoch: int) -> None:
        self.train_dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.train_dataset)

    def __getitem__(self, index: int):
        query, passages = self.train_dataset[index]
        data = self.train_dataset
        group = data.groups[index]
        positive, negatives = sampled_positions(group, index, data.epoch, data.seed, data.n_passages)
        chosen = [group["positives"][positive]] + [group["negatives"][n] for n in negatives]
        if chosen != list(passages):  # the score of another passage would be learnt silently
            raise RuntimeError(f"training example {index}: the teacher scores were sampled for other passages "
                               "than the training dataset picked (tevatron.data.sample_group changed?)")
        scores = [group["positive_scores"][positive]] + [group["negative_scores"][n] for n in negatives]
        return query, passages, scores


class DistillationCollator:
    """The training collator's batch plus ``teacher_scores`` [queries, passages per query] (float32)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator([(query, passages) for query, passages, _ in features])
        batch["teacher_scores"] = torch.tensor([scores for _, _, scores in features], dtype=torch.float32)
        return batch
