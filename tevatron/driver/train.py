"""``python -m tevatron.driver.train``: train a bi-encoder on tokenized (query, positives, negatives) groups."""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import sys

from transformers import HfArgumentParser, set_seed

from tevatron.argument_checks import parse_dataclasses
from tevatron.arguments import DataArguments, ModelArguments, TevatronTrainingArguments
from tevatron.data import SequencePadder, TrainCollator, TrainDataset, load_train_groups
from tevatron.cli import command
from tevatron.files import InputError, check_output_dir
from tevatron.cpu_kernels import use_fast_cpu_dropout, use_onednn_linear
from tevatron.modeling import DenseModel
from tevatron.tokenization import load_tokenizer
from tevatron.trainer import TevatronTrainer, shutdown_distributed

logger = logging.getLogger("tevatron.driver.train")

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR-<step>


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TevatronTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parse_dataclasses(parser, json_file=os.path.abspath(argv[0]))
    return parse_dataclasses(parser, argv)


def checkpoint_is_complete(path) -> bool:
    """True when the Trainer finished saving checkpoint ``path``.

    ``Trainer._save_checkpoint`` writes ``trainer_state.json`` last (after weights, optimizer, scheduler
    and RNG states), and not atomically, so a checkpoint is finished only when that file parses and
    names the checkpoint's own step; a run killed while saving leaves a folder without it, or cut."""
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return False
    step = _CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(path)))
    return isinstance(state, dict) and step is not None and state.get("global_step") == int(step.group(1))


def _checkpoint_to_resume(output_dir) -> str | None:
    """The last finished checkpoint of an interrupted run in ``output_dir``; refuse other non-empty folders.

    Unfinished checkpoints (the run was killed while saving them) are removed, so that neither this
    resume nor the checkpoint rotation of the resumed run ever reads one."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    steps = {}
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.fullmatch(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    complete = [path for path in steps if checkpoint_is_complete(path)]
    for path in sorted(set(steps) - set(complete), key=steps.get):
        logger.warning("removing %s: unfinished (the run was interrupted while saving it)", path)
        shutil.rmtree(path, ignore_errors=True)
    if not complete:
        if not os.listdir(output_dir):
            return None  # only unfinished checkpoints were there: start afresh
        raise InputError(output_dir, "output directory is not empty and holds no checkpoint; "
                         "use --overwrite_output_dir to train into it")
    last = max(complete, key=steps.get)
    logger.info("resuming the interrupted run from %s", last)
    return last


@command
def main(argv=None) -> int:
    model_args, data_args, training_args = parse_args(argv)
    check_output_dir(training_args.output_dir)
    logging.getLogger().setLevel(logging.INFO if training_args.process_index == 0 else logging.WARNING)  # one process logs
    if training_args.resume_from_checkpoint is None and not training_args.overwrite_output_dir:
        training_args.resume_from_checkpoint = _checkpoint_to_resume(training_args.output_dir)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir)
    model = DenseModel.build(model_args, negatives_x_device=training_args.negatives_x_device)
    if training_args.device.type == "cpu":
        use_onednn_linear(model, model_args.cpu_linear)
        if model_args.cpu_dropout == "fast":
            use_fast_cpu_dropout(model)
    with training_args.main_process_first(desc="loading training data"):
        groups = load_train_groups(data_args, vocab_size=model.vocab_size(), cache_dir=model_args.cache_dir)
    train_dataset = TrainDataset(groups, data_args.train_n_passages, training_args.seed)
    logger.info("%d training groups, %d passages each", len(train_dataset), data_args.train_n_passages)
    pad_multiple = 8 if (training_args.fp16 or training_args.bf16) else None  # tensor-core friendly on GPU
    collator = TrainCollator(SequencePadder(tokenizer, pad_to_multiple_of=pad_multiple),
                             q_max_len=model.fit_max_len(data_args.q_max_len, "--q_max_len"),
                             p_max_len=model.fit_max_len(data_args.p_max_len, "--p_max_len"))

    trainer = TevatronTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              data_collator=collator, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # TevatronTrainer._save writes the tokenizer beside the weights

    # Drop the model and optimizer before tearing down the process group (gloo aborts otherwise).
    del trainer, model
    gc.collect()
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
