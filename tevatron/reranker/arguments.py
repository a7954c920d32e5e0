"""Command-line arguments of the reranker drivers (the retriever's flag names where they mean the same)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from transformers import TrainingArguments

from tevatron.argument_checks import NON_NEGATIVE, POSITIVE, TOKEN_LENGTH, check_ranges
from tevatron.arguments import RUN_BOUNDS, no_pinning_without_accelerator, resolve_mixed_precision


@dataclass
class RerankerModelArguments:
    model_name_or_path: str = field(metadata={"help": "a reranker trained here, or any BERT-like model folder "
                                                      "(a missing classification head is freshly initialised)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer name or path, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "where to store models downloaded from the hub"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub"})
    cpu_linear: str = field(default="auto", metadata={
        "help": "CPU fp32 linear layers: auto (oneDNN where measured faster than MKL), onednn, or torch"})
    cpu_dropout: str = field(default="fast", metadata={
        "help": "CPU training dropout: fast (16 random bits an element, p rounded to 1/32768) or torch"})

    def __post_init__(self):
        if self.cpu_linear not in ("auto", "onednn", "torch"):
            raise ValueError(f"--cpu_linear must be auto, onednn or torch, not {self.cpu_linear!r}")
        if self.cpu_dropout not in ("fast", "torch"):
            raise ValueError(f"--cpu_dropout must be fast or torch, not {self.cpu_dropout!r}")


@dataclass
class PairLengthArguments:
    """How a (query, passage) pair is cut: ``[CLS] query [SEP]`` keeps at most ``q_max_len`` tokens (the
    query the retriever's query encoder sees), and the whole pair at most ``q_max_len + p_max_len``
    tokens, the passage taking what the query leaves."""
    q_max_len: int = field(default=32, metadata={"help": "maximum query length in tokens (with [CLS] and [SEP])"})
    p_max_len: int = field(default=128, metadata={
        "help": "passage tokens on top of --q_max_len: a pair is cut to --q_max_len + --p_max_len tokens"})

    def __post_init__(self):
        check_ranges(self, {"q_max_len": TOKEN_LENGTH, "p_max_len": TOKEN_LENGTH})


@dataclass
class RerankerDataArguments(PairLengthArguments):
    train_dir: str | None = field(default=None, metadata={
        "help": "directory of .json/.jsonl training groups, or one such file (the retriever's: tokenized, or raw "
                "text in Tevatron v2's schema)"})
    dataset_name: str | None = field(default=None, metadata={"help": "a Hugging Face dataset id (either schema)"})
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration, if any"})
    dataset_split: str = field(default="train")
    train_n_passages: int = field(default=8, metadata={"help": "one positive plus (n - 1) negatives per query"})
    query_folds: int = field(default=0, metadata={
        "help": "split the training queries into this many folds (by a hash of each query) and train without "
                "the fold --held_out_fold: a teacher for the groups it did not see (score_groups --fold_models)"})
    held_out_fold: Optional[int] = field(default=None, metadata={
        "help": "with --query_folds N: the fold (0 .. N-1) whose queries' groups are left out of training"})

    def __post_init__(self):
        super().__post_init__()
        from tevatron.arguments import DATA_BOUNDS
        check_ranges(self, {"train_n_passages": DATA_BOUNDS["train_n_passages"]})
        if self.query_folds == 0:
            if self.held_out_fold is not None:
                raise ValueError("--held_out_fold needs --query_folds (the number of folds)")
        elif self.query_folds < 2:
            raise ValueError(f"--query_folds must be 0 (no folds) or at least 2, not {self.query_folds}")
        elif self.held_out_fold is None or not 0 <= self.held_out_fold < self.query_folds:
            raise ValueError(f"--query_folds {self.query_folds} needs --held_out_fold in [0, {self.query_folds}), "
                             f"not {self.held_out_fold}")


@dataclass
class RerankerTrainingArguments(TrainingArguments):
    """HF TrainingArguments; no --grad_cache: the listwise loss is per group (no in-batch negatives), so
    --gradient_accumulation_steps already gives the exact gradient of a bigger batch in bounded memory."""
    warmup_ratio: float = field(default=0.1)
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into a non-empty output directory (otherwise its last checkpoint is resumed)"})
    head_learning_rate: float | None = field(default=None, metadata={
        "help": "learning rate of the score head (the parameters outside the backbone); default --learning_rate. "
                "A fresh head on a retriever checkpoint learns slowly at the backbone's rate: e.g. 1e-3"})

    def __post_init__(self):
        check_ranges(self, RUN_BOUNDS)
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"--head_learning_rate must be > 0, not {self.head_learning_rate}")
        resolve_mixed_precision(self)
        if not self.warmup_steps and self.warmup_ratio:
            self.warmup_steps = min(float(self.warmup_ratio), 0.999999)  # transformers 5 reads (0, 1) as a ratio
        if self.local_rank == -1 and os.environ.get("LOCAL_RANK") is not None:
            self.local_rank = int(os.environ["LOCAL_RANK"])
        no_pinning_without_accelerator(self)
        super().__post_init__()


@dataclass
class RerankArguments(PairLengthArguments):
    run: str = field(default=None, metadata={"help": "the ranking to rerank (qid pid score, MS MARCO or TREC)"})
    queries: Optional[List[str]] = field(default=None, metadata={
        "help": "queries as the encode driver reads them: tokenized ({text_id, text}) or raw ({query_id, query})"})
    corpus: Optional[List[str]] = field(default=None, metadata={
        "help": "corpus file(s), directories or globs: tokenized ({text_id, text}) or raw ({docid, title, text})"})
    rerank_depth: int = field(default=100, metadata={"help": "rerank the top this many passages of each query"})
    rerank_output: str = field(default=None, metadata={"help": "where to write the reranked run (qid pid score)"})
    encode_num_shard: int = field(default=1, metadata={"help": "split the run's queries into this many shards"})
    encode_shard_index: int = field(default=0, metadata={"help": "which shard this process reranks"})
    overwrite: bool = field(default=False, metadata={"help": "rerank even if the output is up to date"})

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, {"rerank_depth": POSITIVE, "encode_num_shard": POSITIVE,
                            "encode_shard_index": NON_NEGATIVE})
        if not 0 <= self.encode_shard_index < self.encode_num_shard:
            raise ValueError(f"--encode_shard_index must be in [0, --encode_num_shard) = [0, {self.encode_num_shard}),"
                             f" not {self.encode_shard_index}")


@dataclass
class TeacherModelArguments(RerankerModelArguments):
    """score_groups' model: one reranker, or one per query fold (each scoring only its held-out fold)."""
    model_name_or_path: str | None = field(default=None, metadata={"help": "the reranker that scores every group"})
    fold_models: Optional[List[str]] = field(default=None, metadata={
        "help": "instead of --model_name_or_path: N rerankers trained with --query_folds N and --held_out_fold "
                "0 .. N-1, in that order; each scores only the groups of the queries it was not trained on"})

    def __post_init__(self):
        super().__post_init__()
        if (self.model_name_or_path is None) == (not self.fold_models):
            raise ValueError("give --model_name_or_path (one reranker) or --fold_models (one per query fold), "
                             "one of them")
        if self.fold_models is not None and len(self.fold_models) < 2:
            raise ValueError(f"--fold_models needs one reranker per fold, at least 2, not {len(self.fold_models)}")


@dataclass
class ScoreGroupsArguments(PairLengthArguments):
    train_dir: str = field(default=None, metadata={
        "help": "the training groups to score (a folder or a file; tokenized or raw text)"})
    overwrite: bool = field(default=False, metadata={"help": "score again even if the output is up to date"})


@dataclass
class ScoringArguments(TrainingArguments):
    """TrainingArguments reused for scoring (``--per_device_eval_batch_size``, ``--fp16``/``--bf16``)."""
    output_dir: str | None = field(default=None)

    def __post_init__(self):
        check_ranges(self, RUN_BOUNDS)
        resolve_mixed_precision(self)
        super().__post_init__()
