"""Command-line arguments of the training and encoding drivers (Tevatron v1 flag names)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from typing import List, Optional

import torch
from transformers import TrainingArguments

from tevatron.argument_checks import (NON_NEGATIVE, POSITIVE, SEED, TOKEN_LENGTH, Bound, above, at_least,
                                      check_ranges, fraction, positive_or_minus_one)

logger = logging.getLogger(__name__)


MODEL_BOUNDS = {"projection_in_dim": POSITIVE, "projection_out_dim": POSITIVE, "temperature": above(0),
                "lora_r": POSITIVE, "lora_alpha": above(0), "lora_dropout": fraction(high_open=True)}
# q_max_len 0 encodes every text as the same [CLS] [SEP]: one identical vector for all of them.
# Passages per query per step: beyond a few thousand a step cannot fit any memory (and sampling them hangs).
MAX_TRAIN_PASSAGES = 4096
DATA_BOUNDS = {"train_n_passages": Bound(lambda n: 1 <= n <= MAX_TRAIN_PASSAGES,
                                         f"must be between 1 (the positive) and {MAX_TRAIN_PASSAGES}"),
               "q_max_len": TOKEN_LENGTH, "p_max_len": TOKEN_LENGTH, "dataset_proc_num": POSITIVE,
               "encode_num_shard": POSITIVE, "encode_shard_index": NON_NEGATIVE}
# TrainingArguments fields both drivers take (the encode driver uses the eval batch size and precision).
RUN_BOUNDS = {"per_device_train_batch_size": POSITIVE, "per_device_eval_batch_size": POSITIVE,
              "gradient_accumulation_steps": POSITIVE, "eval_accumulation_steps": POSITIVE,
              "num_train_epochs": above(0), "max_steps": positive_or_minus_one(), "learning_rate": above(0),
              "warmup_steps": NON_NEGATIVE, "warmup_ratio": fraction(), "weight_decay": NON_NEGATIVE,
              "adam_beta1": fraction(high_open=True), "adam_beta2": fraction(high_open=True),
              "adam_epsilon": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE, "label_smoothing_factor": fraction(),
              "logging_steps": above(0), "save_steps": above(0), "eval_steps": above(0), "eval_delay": NON_NEGATIVE,
              "save_total_limit": POSITIVE, "seed": SEED, "data_seed": SEED, "dataloader_num_workers": NON_NEGATIVE,
              "dataloader_prefetch_factor": POSITIVE, "torch_empty_cache_steps": POSITIVE,
              "ddp_timeout": POSITIVE, "ddp_bucket_cap_mb": POSITIVE, "neftune_noise_alpha": above(0),
              "local_rank": at_least(-1), "gc_q_chunk_size": POSITIVE, "gc_p_chunk_size": POSITIVE}
DISTIL_BOUNDS = {"distil_temperature": above(0), "distil_weight": NON_NEGATIVE}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "hub id or local directory of the starting model"})
    config_name: str | None = field(default=None, metadata={"help": "config name or path, if not the model's"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "tokenizer name or path, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "where to store models downloaded from the hub"})
    untie_encoder: bool = field(default=False, metadata={"help": "separate query and passage encoders"})
    add_pooler: bool = field(default=False, metadata={"help": "a linear layer on top of the pooled vector"})
    projection_in_dim: int = field(default=768)
    projection_out_dim: int = field(default=768)
    normalize: bool = field(default=False, metadata={"help": "L2-normalise vectors (cosine similarity)"})
    pooling: str | None = field(default=None, metadata={
        "help": "cls (the default; last for a decoder-only model), mean, last or eos (the last non-padding "
                "token, for decoder-only models), or auto (follow a sentence-transformers 1_Pooling/config.json, "
                "else cls)"})
    temperature: float = field(default=1.0, metadata={"help": "similarity is divided by this before softmax"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub"})
    cpu_linear: str = field(default="auto", metadata={
        "help": "CPU fp32 linear layers: auto (oneDNN where measured faster than MKL), onednn, or torch"})
    cpu_dropout: str = field(default="fast", metadata={
        "help": "CPU training dropout: fast (16 random bits an element, p rounded to 1/32768) or torch"})
    # decoder-only backbones and LoRA (Tevatron v2's names)
    append_eos_token: bool = field(default=False, metadata={
        "help": "append the tokenizer's eos token to every query and passage (within the max length)"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "attention kernel passed to from_pretrained: sdpa, eager or flash_attention_2"})
    lora: bool = field(default=False, metadata={"help": "train a LoRA adapter (peft) instead of every weight"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (updates scale by alpha/r)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA branch's input"})
    lora_target_modules: str | None = field(default=None, metadata={
        "help": "comma-separated module names LoRA adapts (default: the attention and MLP projections of the "
                "architecture, e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; BERT: "
                "query,key,value,dense)"})
    lora_name_or_path: str | None = field(default=None, metadata={
        "help": "encode with this LoRA adapter folder on top of --model_name_or_path (the base model)"})
    merge_lora: bool = field(default=False, metadata={
        "help": "save the trained model with the LoRA adapter merged into the weights (a plain model folder)"})

    def __post_init__(self):
        if self.pooling == "eos":  # Tevatron v2's name for the last-token pooling
            self.pooling = "last"
        if self.pooling not in (None, "cls", "mean", "last", "auto"):
            raise ValueError(f"--pooling must be cls, mean, last (or eos) or auto, not {self.pooling!r}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2"):
            raise ValueError(f"--attn_implementation must be sdpa, eager or flash_attention_2, "
                             f"not {self.attn_implementation!r}")
        if self.cpu_linear not in ("auto", "onednn", "torch"):
            raise ValueError(f"--cpu_linear must be auto, onednn or torch, not {self.cpu_linear!r}")
        if self.cpu_dropout not in ("fast", "torch"):
            raise ValueError(f"--cpu_dropout must be fast or torch, not {self.cpu_dropout!r}")
        check_ranges(self, MODEL_BOUNDS)


@dataclass
class DataArguments:
    train_dir: str | None = field(default=None, metadata={
        "help": "directory of .json/.jsonl training files (tokenized, or raw text in Tevatron v2's schema), or one"})
    dataset_name: str | None = field(default=None, metadata={
        "help": "a Hugging Face dataset id or local dataset (raw text in Tevatron v2's schema, or tokenized)"})
    dataset_split: str = field(default="train")
    train_n_passages: int = field(default=8, metadata={"help": "one positive plus (n - 1) negatives per query"})
    q_max_len: int = field(default=32, metadata={"help": "maximum query length in tokens (special tokens included)"})
    p_max_len: int = field(default=128, metadata={"help": "maximum passage length in tokens"})
    dataset_proc_num: int = field(default=1, metadata={"help": "processes used to load and check the data"})

    encode_in_path: Optional[List[str]] = field(default=None, metadata={
        "help": "file(s) to encode: tokenized, or raw text ({docid, title, text} / {query_id, query})"})
    encoded_save_path: str | None = field(default=None, metadata={"help": "where to save the encodings"})
    encode_is_qry: bool = field(default=False, metadata={"help": "encode queries (q_max_len, query encoder)"})
    encode_num_shard: int = field(default=1, metadata={"help": "split the input into this many shards"})
    encode_shard_index: int = field(default=0, metadata={"help": "which shard this process encodes"})
    overwrite: bool = field(default=False, metadata={"help": "re-encode even if the output file is complete"})

    # raw text (Tevatron v2's schemas) and prefixes; None: not given (training: none, or what tokenized data
    # was made with; encoding: what the model was trained with)
    dataset_config: str | None = field(default=None, metadata={"help": "the --dataset_name configuration"})
    query_prefix: str | None = field(default=None, metadata={
        "help": "put in front of every query before tokenizing (e.g. 'query: '); saved with the model"})
    passage_prefix: str | None = field(default=None, metadata={
        "help": "put in front of every passage before tokenizing (e.g. 'passage: '); saved with the model"})

    def __post_init__(self):
        check_ranges(self, DATA_BOUNDS)
        if not 0 <= self.encode_shard_index < self.encode_num_shard:
            raise ValueError(f"--encode_shard_index must be in [0, --encode_num_shard) = [0, {self.encode_num_shard}), "
                             f"not {self.encode_shard_index}")


def resolve_mixed_precision(args, hidden_size: int | None = None, training: bool = False) -> str:
    """Decide the precision a run uses ("fp16", "bf16" or "fp32") and set ``args`` to match.

    fp16/bf16 autocast run as asked on a GPU.  On a CPU fp16 is unsupported, so it falls back to fp32.
    CPU bf16 pays only where the CPU multiplies bf16 natively (AMX); elsewhere it is slower.  So at
    parse time (``hidden_size`` None) a CPU ``--bf16`` is set aside (``args.cpu_bf16_requested``) and the
    driver calls this again once the model's hidden size is known: bf16 is used where a measurement of
    that shape (forward, plus backward when ``training``) shows it clearly faster, else fp32, in one
    log line with the measured ratio."""
    if torch.cuda.is_available():
        return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    if args.fp16:
        logger.warning("--fp16 requested but no CUDA device is available: running in fp32 on CPU "
                       "(CPU fp16 is unsupported)")
        args.fp16 = False
    if args.bf16:  # parse time: HF TrainingArguments refuses bf16 on a CPU, and the shape is not known yet
        args.bf16 = False
        args.cpu_bf16_requested = True
    if hidden_size is None or not getattr(args, "cpu_bf16_requested", False):
        return "fp32"
    from tevatron.cpu_kernels import CPU_BF16_MIN_SPEEDUP, cpu_bf16_speedup

    args.cpu_bf16_requested = False
    work = "training" if training else "encoding"
    speedup = cpu_bf16_speedup(hidden_size, training)
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        logger.info("--bf16 on CPU: bf16 autocast for %s (measured %.2fx fp32's speed at hidden size %d)",
                    work, speedup, hidden_size)
        args.bf16 = True
        args.mixed_precision = "bf16"  # what the HF Trainer's accelerator reads
        return "bf16"
    logger.warning("--bf16 requested but no CUDA device is available: running in fp32 on CPU (bf16 %s "
                   "measured %.2fx fp32's speed at hidden size %d, under the %.1fx it must win by)",
                   work, speedup, hidden_size, CPU_BF16_MIN_SPEEDUP)
    return "fp32"


def no_pinning_without_accelerator(args) -> None:
    """Pinned host memory only speeds copies to an accelerator; without one, torch warns in every data loader."""
    if args.dataloader_pin_memory and not torch.accelerator.is_available():
        args.dataloader_pin_memory = False


@dataclass
class TevatronTrainingArguments(TrainingArguments):
    warmup_ratio: float = field(default=0.1)
    negatives_x_device: bool = field(default=False, metadata={
        "help": "share passages across processes as extra in-batch negatives"})
    grad_cache: bool = field(default=False, metadata={"help": "gradient caching: big batches in bounded memory"})
    gc_q_chunk_size: int = field(default=4, metadata={"help": "queries per chunk under --grad_cache"})
    gc_p_chunk_size: int = field(default=32, metadata={"help": "passages per chunk under --grad_cache"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into a non-empty output directory (otherwise its last checkpoint is resumed)"})
    # distillation from teacher scores carried in the training groups (tevatron/distillation.py);
    # --distil_temperature is Tevatron v2's name (there it divides student and teacher scores alike)
    distillation: bool = field(default=False, metadata={
        "help": "learn the teacher's distribution over each group (positive_scores/negative_scores in the "
                "training files): KL(softmax(teacher / distil_temperature) || softmax(similarity / temperature))"})
    distil_temperature: float = field(default=1.0, metadata={
        "help": "with --distillation: the teacher's scores are divided by this before their softmax"})
    distil_weight: float = field(default=0.0, metadata={
        "help": "with --distillation: loss = KL + distil_weight * the in-batch contrastive loss"})

    def __post_init__(self):
        check_ranges(self, RUN_BOUNDS)
        check_ranges(self, DISTIL_BOUNDS)
        if not self.distillation and (self.distil_temperature != 1.0 or self.distil_weight != 0.0):
            raise ValueError("--distil_temperature and --distil_weight apply only with --distillation")
        resolve_mixed_precision(self)
        if "warmup_ratio" not in {f.name for f in fields(TrainingArguments)} and not self.warmup_steps and self.warmup_ratio:
            # transformers 5 dropped warmup_ratio; a float warmup_steps in (0, 1) is read as a ratio there.
            self.warmup_steps = min(float(self.warmup_ratio), 0.999999)
        if self.local_rank == -1 and os.environ.get("LOCAL_RANK") is not None:
            self.local_rank = int(os.environ["LOCAL_RANK"])
        if self.negatives_x_device and torch.cuda.is_available() is False:
            # gloo is torch's CPU backend; HF would otherwise pick nothing sensible for CPU DDP.
            self.ddp_backend = self.ddp_backend or "gloo"
        no_pinning_without_accelerator(self)
        super().__post_init__()


@dataclass
class EncodeArguments(TrainingArguments):
    """Training arguments reused for encoding (``--per_device_eval_batch_size``, ``--fp16``, ...)."""
    output_dir: str | None = field(default=None)
    encode_dtype: str = field(default="float32", metadata={
        "help": "dtype the vectors are stored in: float32, or float16 (half the disk and memory; search "
                "widens them to float32 block by block)", "choices": ["float32", "float16"]})

    def __post_init__(self):
        check_ranges(self, RUN_BOUNDS)
        resolve_mixed_precision(self)
        super().__post_init__()
