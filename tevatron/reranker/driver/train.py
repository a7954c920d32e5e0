"""``python -m tevatron.reranker.driver.train``: train a cross-encoder reranker on the retriever's groups
(tokenized, or raw text in Tevatron v2's schema, tokenized on the fly; the retriever's loader reads both).

Each group (one positive, ``--train_n_passages - 1`` negatives, sampled exactly as the retriever samples
them: :func:`tevatron.data.sample_group`) becomes its ``[CLS] query [SEP] passage [SEP]`` pairs, and the
loss is the softmax cross-entropy of the positive among them.  The output folder is handled as the
retriever's: up to date -> skipped, trained otherwise -> refused, interrupted -> resumed.
"""
from __future__ import annotations

import gc
import logging
import sys

from transformers import HfArgumentParser, set_seed

from tevatron.argument_checks import parse_command_line
from tevatron.arguments import resolve_mixed_precision
from tevatron.cli import command
from tevatron.data import TrainDataset, groups_format, hold_out_query_fold, load_train_groups
from tevatron.files import check_output_dir
from tevatron.preprocess.tokenize import TEXT
from tevatron.tokenization import load_tokenizer
from tevatron.trainer import finish_output_dir, prepare_output_dir, shutdown_distributed, use_cpu_kernels

from ..arguments import RerankerDataArguments, RerankerModelArguments, RerankerTrainingArguments
from ..data import GroupPairCollator, PairBuilder, pair_text_tokenizer
from ..modeling import check_reranker_folder, load_cross_encoder, position_limit
from ..trainer import RerankerTrainer, reranker_training_provenance

logger = logging.getLogger("tevatron.reranker.driver.train")


def parse_args(argv=None):
    return parse_command_line(HfArgumentParser((RerankerModelArguments, RerankerDataArguments, RerankerTrainingArguments)), argv)


@command
def main(argv=None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    check_output_dir(training_args.output_dir)
    logging.getLogger().setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)
    check_reranker_folder(model_args.model_name_or_path)
    if getattr(training_args, "cpu_bf16_requested", False):
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                            trust_remote_code=model_args.trust_remote_code)
        resolve_mixed_precision(training_args, config.hidden_size, training=True)
    wanted = reranker_training_provenance(model_args, data_args, training_args)
    if not prepare_output_dir(training_args, wanted):
        shutdown_distributed()
        return 0
    set_seed(training_args.seed)
    # the head is drawn after set_seed, so a seed gives the same starting head
    model = load_cross_encoder(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                               trust_remote_code=model_args.trust_remote_code)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    cpu_linear = use_cpu_kernels(model, model_args, training_args)
    with training_args.main_process_first(desc="loading training data"):
        groups = load_train_groups(data_args, vocab_size=model.get_input_embeddings().num_embeddings,
                                   cache_dir=model_args.cache_dir)
    if data_args.query_folds:
        groups = hold_out_query_fold(groups, data_args.query_folds, data_args.held_out_fold)
    train_dataset = TrainDataset(groups, data_args.train_n_passages, training_args.seed)
    pad_multiple = 8 if (training_args.fp16 or training_args.bf16) else None
    builder = PairBuilder(tokenizer, data_args.q_max_len, data_args.p_max_len, position_limit(model), pad_multiple)
    text_tokenizer = pair_text_tokenizer(tokenizer, builder) if groups_format(groups) == TEXT else None
    logger.info("%d training groups (%s), %d pairs each, pairs cut to %d tokens (query to %d)", len(train_dataset),
                groups_format(groups), data_args.train_n_passages, builder.max_len, data_args.q_max_len)

    trainer = RerankerTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              data_collator=GroupPairCollator(builder, text_tokenizer), processing_class=tokenizer,
                              run_provenance=wanted, cpu_linear=cpu_linear)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    finish_output_dir(training_args.output_dir, wanted, trainer)
    del trainer, model
    gc.collect()
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
