"""HF ``Trainer`` for the bi-encoder (overrides only loss, the grad-cache step, saving and loading), and
the bookkeeping of a training run's output folder: its provenance record, and resuming an interrupted run.

A finished run leaves the model and a ``.complete`` record (:mod:`tevatron.provenance`) naming the starting
model, the training data and the arguments that change the result; running the same command again finds
the model up to date and skips training, a changed command is refused unless ``--overwrite_output_dir``.
An interrupted run (checkpoints, no record) resumes from its last finished checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from enum import Enum

import torch
from transformers import Trainer, TrainerCallback

from . import provenance
from .data import list_data_files
from .files import InputError, atomic_text_writer, staged_files
from .gradcache import grad_cache_step
from .modeling import planned_pooling

logger = logging.getLogger(__name__)

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR-<step>

# TrainingArguments that change the trained weights.  Left out as result-neutral: --grad_cache and its
# chunk sizes (the same gradients, up to float rounding), --gradient_checkpointing, --cpu_linear, and
# everything about saving, logging and data loading.
_RESULT_TRAINING_ARGUMENTS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "warmup_ratio", "warmup_steps", "weight_decay", "lr_scheduler_type", "optim",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed", "fp16", "bf16",
    "negatives_x_device", "world_size")


class _EpochToDataset(TrainerCallback):
    """Tells the training dataset which epoch starts, so positives and negatives rotate."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class TevatronTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochToDataset(self.train_dataset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(query=inputs["query"], passage=inputs["passage"])
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.args.grad_cache:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        loss = grad_cache_step(
            model, inputs["query"], inputs["passage"], self.args.gc_q_chunk_size, self.args.gc_p_chunk_size,
            compute_loss=unwrapped.compute_loss, backward=self.accelerator.backward,
            autocast=self.autocast_smart_context_manager,
            loss_scale=1.0 / self.args.gradient_accumulation_steps)
        return loss / self.args.gradient_accumulation_steps

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        logger.info("saving model to %s", output_dir)
        self.accelerator.unwrap_model(self.model).save(output_dir)
        if self.processing_class is not None:
            with staged_files(output_dir) as staging:
                self.processing_class.save_pretrained(staging)
        # arguments as JSON, not a pickle: nothing in this toolkit loads pickles
        with atomic_text_writer(os.path.join(output_dir, "training_args.json")) as handle:
            json.dump(json.loads(self.args.to_json_string()), handle, indent=2)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        logger.info("loading weights from checkpoint %s", resume_from_checkpoint)
        model.load_weights_from(resume_from_checkpoint)


def shutdown_distributed() -> None:
    """End a torchrun process cleanly: gloo can abort at interpreter exit if the group is torn down
    while peers still talk, so wait for every process first, then destroy the group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- provenance of a run
def _json_value(value):
    return value.value if isinstance(value, Enum) else value


def training_provenance(model_args, data_args, training_args) -> dict:
    """What a training run's result follows from: the starting model (and separate tokenizer or config),
    the training data, and the arguments that change the weights (see ``_RESULT_TRAINING_ARGUMENTS``)."""
    record = {"model": provenance.model_identity(model_args.model_name_or_path)}
    for name in ("tokenizer_name", "config_name"):
        if getattr(model_args, name):
            record[name.split("_")[0]] = provenance.model_identity(getattr(model_args, name))
    if data_args.train_dir:
        record["training data"] = {"files": [provenance.file_identity(path)
                                             for path in list_data_files(data_args.train_dir)]}
    else:
        record["training data"] = {"dataset": data_args.dataset_name, "split": data_args.dataset_split}
    record.update({
        "pooling": planned_pooling(model_args.pooling, model_args.model_name_or_path),
        "normalize": model_args.normalize, "temperature": model_args.temperature,
        "untie_encoder": model_args.untie_encoder, "add_pooler": model_args.add_pooler,
        "train_n_passages": data_args.train_n_passages, "q_max_len": data_args.q_max_len,
        "p_max_len": data_args.p_max_len})
    if model_args.add_pooler:
        record.update(projection_in_dim=model_args.projection_in_dim,
                      projection_out_dim=model_args.projection_out_dim)
    if training_args.device.type == "cpu":  # the CPU dropout kind draws other masks
        record["cpu_dropout"] = model_args.cpu_dropout
    record.update({name: _json_value(getattr(training_args, name, None)) for name in _RESULT_TRAINING_ARGUMENTS})
    return json.loads(json.dumps(record))  # as it reads back from the record file (lists, not tuples)


def describe_differences(recorded: dict, wanted: dict) -> str:
    """``learning_rate: 5e-06 -> 2e-05, training data changed``: arguments with their values, inputs by name."""
    parts = []
    for key in provenance.changed_inputs(recorded, wanted):
        old, new = recorded.get(key), wanted.get(key)
        if isinstance(old, dict) or isinstance(new, dict):
            parts.append(f"{key} changed")
        else:
            parts.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return ", ".join(parts)


def _what_differs(recorded: dict, wanted: dict) -> str:
    changed = provenance.changed_inputs(recorded, wanted)
    inputs = any(isinstance(recorded.get(k), dict) or isinstance(wanted.get(k), dict) for k in changed)
    arguments = any(not (isinstance(recorded.get(k), dict) or isinstance(wanted.get(k), dict)) for k in changed)
    return {(True, False): "other inputs", (False, True): "other arguments"}.get((inputs, arguments),
                                                                               "other inputs and arguments")


# --------------------------------------------------------------------------- the output folder
def checkpoint_folders(output_dir) -> dict[str, int]:
    """``checkpoint-<step>`` folders in ``output_dir``, with their steps."""
    if not os.path.isdir(output_dir):
        return {}
    steps = {}
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.fullmatch(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    return steps


def remove_checkpoints(output_dir) -> None:
    """Checkpoints are only for resuming; a finished run (model and record saved) removes them."""
    for path in checkpoint_folders(output_dir):
        shutil.rmtree(path, ignore_errors=True)


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


def checkpoint_to_resume(output_dir) -> str | None:
    """The last finished checkpoint of an interrupted run in ``output_dir``; refuse other non-empty folders.

    Unfinished checkpoints (the run was killed while saving them) are removed, so that neither this
    resume nor the checkpoint rotation of the resumed run ever reads one."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    steps = checkpoint_folders(output_dir)
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


def prepare_output_dir(training_args, wanted: dict) -> bool:
    """Decide what to do with ``--output_dir`` before anything heavy loads; False: nothing to train.

    A finished model trained the same way is kept (training is skipped); one trained otherwise is
    refused in one line naming what differs, unless ``--overwrite_output_dir``, which retrains into the
    folder (its old record and checkpoints go first, so neither a crash nor a later resume mixes the two
    runs).  Otherwise an interrupted run resumes from its last finished checkpoint."""
    output_dir = training_args.output_dir
    finished = provenance.read_folder_record(output_dir)
    if training_args.overwrite_output_dir:
        if training_args.should_save and os.path.isdir(output_dir):
            provenance.clear_folder_record(output_dir)
            remove_checkpoints(output_dir)
        return True
    if finished is not None:
        recorded = finished["provenance"]
        if recorded == wanted:
            logger.info("%s is up to date (same model, data and arguments); skipping training", output_dir)
            if training_args.should_save:
                remove_checkpoints(output_dir)  # left by a run killed between its record and their removal
            return False
        logger.info("%s differs from this run: %s", output_dir, "; ".join(provenance.differences(recorded, wanted)))
        raise InputError(output_dir, f"holds a model trained with {_what_differs(recorded, wanted)} "
                         f"({describe_differences(recorded, wanted)}); use --overwrite_output_dir to retrain "
                         "into it, or another --output_dir")
    if training_args.resume_from_checkpoint is None:
        with training_args.main_process_first(desc="checking the output directory"):
            training_args.resume_from_checkpoint = checkpoint_to_resume(output_dir)
    return True


def finish_output_dir(output_dir, wanted: dict, trainer) -> None:
    """Mark the saved model finished with its provenance, then drop the checkpoints (resume state only)."""
    if not trainer.args.should_save:
        return
    stats = {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch}
    provenance.write_folder_record(output_dir, wanted, stats)
    remove_checkpoints(output_dir)
