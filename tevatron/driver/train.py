"""``python -m tevatron.driver.train``: train a bi-encoder on (query, positives, negatives) groups, tokenized
(v1) or raw text (Tevatron v2's schema, tokenized on the fly), from files or a ``datasets`` dataset."""
from __future__ import annotations

import gc
import logging
import sys

from transformers import HfArgumentParser, set_seed

from tevatron.argument_checks import parse_command_line
from tevatron.arguments import DataArguments, ModelArguments, TevatronTrainingArguments, resolve_mixed_precision
from tevatron.data import SequencePadder, TrainCollator, TrainDataset, load_train_groups, training_data_format
from tevatron.preprocess.tokenize import TEXT
from tevatron.raw_text import TextTokenizer, training_prefixes
from tevatron.cli import CommandError, command
from tevatron.distillation import DistillationCollator, DistillationDataset, load_scored_groups
from tevatron.files import check_output_dir
from tevatron.modeling import DenseModel, check_model_folder
from tevatron.tokenization import load_tokenizer
from tevatron.trainer import (TevatronTrainer, finish_output_dir, prepare_output_dir, shutdown_distributed,
                              training_provenance, use_cpu_kernels)

logger = logging.getLogger("tevatron.driver.train")


def parse_args(argv=None):
    return parse_command_line(HfArgumentParser((ModelArguments, DataArguments, TevatronTrainingArguments)), argv)


def _hidden_size(model_args) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path,
                                        cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    return getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or 768


@command
def main(argv=None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    check_output_dir(training_args.output_dir)
    logging.getLogger().setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)  # one process logs
    check_model_folder(model_args.model_name_or_path, model_args)  # before anything heavy loads
    if model_args.merge_lora and not model_args.lora:
        raise CommandError("--merge_lora merges the adapter --lora trains; give --lora too")
    if model_args.lora_name_or_path:
        raise CommandError("--lora_name_or_path is for encoding; to continue training an adapter, give its "
                           "folder as --model_name_or_path (with --lora)")
    if getattr(training_args, "cpu_bf16_requested", False):  # CPU --bf16: decided on the model's shape
        resolve_mixed_precision(training_args, _hidden_size(model_args), training=True)
    if training_args.distillation and data_args.train_n_passages < 2:
        raise CommandError("--distillation needs --train_n_passages of at least 2: the teacher's distribution "
                           "over a group of one passage is always 1")
    wanted = training_provenance(model_args, data_args, training_args)  # records the precision decided
    data_format, data_files = training_data_format(data_args, model_args.cache_dir)
    prefixes = training_prefixes(data_args, data_format, data_files)
    wanted.update({field: value for field, value in prefixes.items() if value})  # none: records stay as before
    if not prepare_output_dir(training_args, wanted):
        shutdown_distributed()
        return 0  # the model in --output_dir is up to date
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    model = DenseModel.build(model_args, negatives_x_device=training_args.negatives_x_device,
                             distil_temperature=training_args.distil_temperature,
                             distil_weight=training_args.distil_weight)
    model.dense_config.query_prefix = prefixes["query_prefix"]  # saved with the model, followed by encoding
    model.dense_config.passage_prefix = prefixes["passage_prefix"]
    cpu_linear = use_cpu_kernels(model, model_args, training_args)
    load_groups = load_scored_groups if training_args.distillation else load_train_groups
    with training_args.main_process_first(desc="loading training data"):
        groups = load_groups(data_args, vocab_size=model.vocab_size(), cache_dir=model_args.cache_dir)
    train_dataset = TrainDataset(groups, data_args.train_n_passages, training_args.seed)
    logger.info("%d training groups, %d passages each", len(train_dataset), data_args.train_n_passages)
    pad_multiple = 8 if (training_args.fp16 or training_args.bf16) else None  # tensor-core friendly on GPU
    q_max_len = model.fit_max_len(data_args.q_max_len, "--q_max_len")
    p_max_len = model.fit_max_len(data_args.p_max_len, "--p_max_len")
    text_tokenizer = (TextTokenizer(tokenizer, q_max_len, p_max_len, **prefixes) if data_format == TEXT else None)
    collator = TrainCollator(SequencePadder(tokenizer, pad_to_multiple_of=pad_multiple,
                                            append_eos=model.dense_config.append_eos_token), q_max_len=q_max_len,
                             p_max_len=p_max_len, text_tokenizer=text_tokenizer)
    if training_args.distillation:  # teacher scores sampled with their passages, a tensor in each batch
        train_dataset, collator = DistillationDataset(train_dataset), DistillationCollator(collator)

    trainer = TevatronTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              data_collator=collator, processing_class=tokenizer, run_provenance=wanted,
                              cpu_linear=cpu_linear)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if model_args.merge_lora:  # save a plain model folder: the adapter folded into the weights
        model.merge_lora()
    trainer.save_model()  # TevatronTrainer._save writes the tokenizer beside the weights
    finish_output_dir(training_args.output_dir, wanted, trainer)

    # Drop the model and optimizer before tearing down the process group (gloo aborts otherwise).
    del trainer, model
    gc.collect()
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
