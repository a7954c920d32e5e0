"""HF ``Trainer`` for the bi-encoder (overrides only loss, the grad-cache step, saving and loading), and
the bookkeeping of a training run's output folder: its provenance record, and resuming an interrupted run.

A finished run leaves the model and a ``.complete`` record (:mod:`tevatron.provenance`) naming the starting
model, the training data and the arguments that change the result; running the same command again finds
the model up to date and skips training, a changed command is refused unless ``--overwrite_output_dir``.
An interrupted run (checkpoints, no record) resumes from its last finished checkpoint.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from enum import Enum

import torch
from transformers import Trainer, TrainerCallback

from . import provenance
from .cli import CommandError
from .cpu_kernels import use_fast_cpu_dropout, use_onednn_linear
from .data import list_data_files
from .files import InputError, atomic_text_writer, staged_files
from .gradcache import grad_cache_step
from .modeling import planned_pooling

logger = logging.getLogger(__name__)

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # transformers' PREFIX_CHECKPOINT_DIR-<step>
# Written into a checkpoint folder last, once every file in it is on disk: the checkpoint's step, the
# size of each file (so a file cut by a crash is seen) and the run's provenance.
CHECKPOINT_MARKER = "checkpoint_complete.json"

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


class _NoCheckpointAtTheEnd(TrainerCallback):
    """HF saves a checkpoint (weights, optimizer: three times the model) at the last step; the driver saves
    the model right after and a finished run needs no resume state, so that checkpoint is not written."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False

    on_epoch_end = on_step_end


class TevatronTrainer(Trainer):
    def __init__(self, *args, run_provenance: dict | None = None, cpu_linear: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_provenance = run_provenance  # recorded in each checkpoint: a resume must be the same run
        self.cpu_linear = cpu_linear  # the CPU GEMM kernel chosen (see use_cpu_kernels), recorded likewise
        if hasattr(self.train_dataset, "set_epoch"):
            self.add_callback(_EpochToDataset(self.train_dataset))
        self.add_callback(_NoCheckpointAtTheEnd())  # after HF's DefaultFlowCallback, so it has the last word

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(query=inputs["query"], passage=inputs["passage"], teacher_scores=inputs.get("teacher_scores"))
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = self._training_step(model, inputs, num_items_in_batch)
        self._stop_unless_finite(loss)
        return loss

    def _stop_unless_finite(self, loss: torch.Tensor) -> None:
        """End training at the first non-finite loss, before the optimizer steps on its gradients.

        HF only leaves such a loss out of the logged average and trains on, to a model of NaNs that every
        later stage would use.  Under DDP every process learns of it, so none waits for the others."""
        import torch.distributed as dist

        bad = (~torch.isfinite(loss.detach())).any().to(torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            value = loss.detach().float().sum().item()
            raise CommandError(f"the training loss at step {self.state.global_step + 1} is {value} (not finite); "
                               "stopping before it spoils the model (check --temperature and --learning_rate, "
                               "or train without --fp16)")

    def _training_step(self, model, inputs, num_items_in_batch=None):
        if not self.args.grad_cache:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        loss = grad_cache_step(
            model, inputs["query"], inputs["passage"], self.args.gc_q_chunk_size, self.args.gc_p_chunk_size,
            compute_loss=functools.partial(unwrapped.compute_loss, teacher_scores=inputs.get("teacher_scores")),
            backward=self.accelerator.backward,
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

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its part (its RNG state)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            mark_checkpoint_complete(folder, self.state.global_step, self.run_provenance, self.cpu_linear)

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
        if getattr(data_args, "dataset_config", None):
            record["training data"]["config"] = data_args.dataset_config
    record.update({
        "pooling": planned_pooling(model_args.pooling, model_args.model_name_or_path),
        "normalize": model_args.normalize, "temperature": model_args.temperature,
        "untie_encoder": model_args.untie_encoder, "add_pooler": model_args.add_pooler,
        "train_n_passages": data_args.train_n_passages, "q_max_len": data_args.q_max_len,
        "p_max_len": data_args.p_max_len})
    if model_args.add_pooler:
        record.update(projection_in_dim=model_args.projection_in_dim,
                      projection_out_dim=model_args.projection_out_dim)
    if training_args.distillation:  # recorded only when on, so records of plain runs stay as they were
        record.update(distillation=True, distil_temperature=training_args.distil_temperature,
                      distil_weight=training_args.distil_weight)
    # recorded only when used, so the records of earlier runs stay valid
    if getattr(model_args, "append_eos_token", False):
        record["append_eos_token"] = True
    if getattr(model_args, "lora", False):
        record["lora"] = {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout,
                          "target_modules": model_args.lora_target_modules or "default",
                          "merged": bool(model_args.merge_lora)}
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


def _checkpoint_files(folder) -> dict[str, int]:
    found = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.path.getsize(path)
    found.pop(CHECKPOINT_MARKER, None)
    return found


def mark_checkpoint_complete(folder, step: int, run_provenance: dict | None, cpu_linear: str | None = None) -> None:
    """Write ``CHECKPOINT_MARKER`` into a checkpoint HF has finished saving, after flushing its files to
    disk, so that a crash can leave a checkpoint without the marker but never a marked one that is cut."""
    files = _checkpoint_files(folder)
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            os.fsync(handle.fileno())
    marker = {"step": step, "files": files, "provenance": provenance.with_digests(run_provenance)}
    if cpu_linear is not None:
        marker["cpu_linear"] = cpu_linear
    with atomic_text_writer(os.path.join(folder, CHECKPOINT_MARKER)) as out:
        json.dump(marker, out, indent=1, sort_keys=True)


def checkpoint_cpu_linear(folder) -> str | None:
    """The CPU GEMM kernel ("onednn" or "torch") the run that saved checkpoint ``folder`` used, if recorded."""
    kernel = (_read_marker(folder) or {}).get("cpu_linear")
    return kernel if kernel in ("onednn", "torch") else None


def use_cpu_kernels(model, model_args, training_args) -> str | None:
    """Set up a CPU training run's kernels (``--cpu_linear``, ``--cpu_dropout``); the GEMM kernel used, or
    None off the CPU.

    ``--cpu_linear auto`` takes the machine's recorded measurement of oneDNN against MKL; a run resumed on
    another machine (or after that record was deleted) could choose the other kernel, which rounds
    differently, and not end with the weights of an uninterrupted run.  A resumed ``auto`` run therefore
    takes the kernel its checkpoint recorded."""
    if training_args.device.type != "cpu":
        return None
    wanted = model_args.cpu_linear
    resume_from = training_args.resume_from_checkpoint
    recorded = checkpoint_cpu_linear(resume_from) if isinstance(resume_from, str) else None
    if wanted == "auto" and recorded is not None:
        logger.info("CPU: resuming with the linear kernel the interrupted run used (%s)", recorded)
        wanted = recorded
    kernel = "onednn" if use_onednn_linear(model, wanted) else "torch"
    if model_args.cpu_dropout == "fast":
        use_fast_cpu_dropout(model)
    return kernel


def _read_marker(folder) -> dict | None:
    try:
        with open(os.path.join(folder, CHECKPOINT_MARKER), encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def checkpoint_problem(folder) -> str | None:
    """Why checkpoint ``folder`` cannot be resumed from (None: it is complete).

    HF writes a checkpoint's files one after the other and not atomically; only :func:`mark_checkpoint_complete`
    says it finished, and the sizes it recorded show a file cut later (a crash before the disk caught up)."""
    marker = _read_marker(folder)
    if marker is None:
        return "unfinished (no completion marker: the run was interrupted while saving it)"
    step = _CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(folder)))
    if step is None or marker.get("step") != int(step.group(1)):
        return f"its completion marker is for step {marker.get('step')}, not this checkpoint's"
    for name, size in sorted(marker["files"].items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} is cut ({os.path.getsize(path)} of {size} bytes)"
    return None


def checkpoint_is_complete(folder) -> bool:
    return checkpoint_problem(folder) is None


def checkpoint_to_resume(output_dir, wanted: dict | None = None, remove_broken: bool = True) -> str | None:
    """The newest complete checkpoint of an interrupted run in ``output_dir``; refuse other non-empty folders.

    Newer checkpoints that are unfinished or cut (the run was killed while saving, or a crash cut a file)
    are passed over with a warning and removed (``remove_broken``), so that neither this resume nor the
    checkpoint rotation of the resumed run reads one.  A checkpoint of a run with other inputs or
    arguments (``wanted``) is refused: resuming it would mix two runs."""
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return None
    steps = checkpoint_folders(output_dir)
    last = None
    for path in sorted(steps, key=steps.get, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            last = path
            break
        logger.warning("%s: %s; %s", path, problem, "removing it" if remove_broken else "passing it over")
        if remove_broken:
            shutil.rmtree(path, ignore_errors=True)
    if last is None:
        if not os.listdir(output_dir):
            return None  # only unfinished checkpoints were there: start afresh
        raise InputError(output_dir, "output directory is not empty and holds no checkpoint; "
                         "use --overwrite_output_dir to train into it")
    recorded, current = provenance.settled((_read_marker(last) or {}).get("provenance"), wanted)
    if current is not None and recorded is not None and recorded != current:
        logger.info("%s differs from this run: %s", last, "; ".join(provenance.differences(recorded, current)))
        raise InputError(output_dir, f"holds checkpoints of an interrupted run with {_what_differs(recorded, current)} "
                         f"({describe_differences(recorded, current)}); use --overwrite_output_dir to start afresh, "
                         "or another --output_dir")
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
        recorded, current = provenance.settled(finished["provenance"], wanted)
        if recorded == current:
            logger.info("%s is up to date (same model, data and arguments); skipping training", output_dir)
            if training_args.should_save:
                provenance.refresh_record_file(os.path.join(output_dir, provenance.RECORD_FILE),
                                               finished["provenance"], wanted)
                remove_checkpoints(output_dir)  # left by a run killed between its record and their removal
            return False
        logger.info("%s differs from this run: %s", output_dir, "; ".join(provenance.differences(recorded, current)))
        raise InputError(output_dir, f"holds a model trained with {_what_differs(recorded, current)} "
                         f"({describe_differences(recorded, current)}); use --overwrite_output_dir to retrain "
                         "into it, or another --output_dir")
    if training_args.resume_from_checkpoint is None:
        with training_args.main_process_first(desc="checking the output directory"):
            training_args.resume_from_checkpoint = checkpoint_to_resume(output_dir, wanted,
                                                                        training_args.should_save)
    elif isinstance(training_args.resume_from_checkpoint, str):
        problem = checkpoint_problem(training_args.resume_from_checkpoint)
        if problem is not None:
            raise InputError(training_args.resume_from_checkpoint, f"cannot resume from it: {problem}")
        recorded, current = provenance.settled(
            (_read_marker(training_args.resume_from_checkpoint) or {}).get("provenance"), wanted)
        if recorded is not None and recorded != current:
            logger.warning("resuming from %s, saved by a run with %s (%s), as --resume_from_checkpoint asks",
                           training_args.resume_from_checkpoint, _what_differs(recorded, current),
                           describe_differences(recorded, current))
    return True


def finish_output_dir(output_dir, wanted: dict, trainer) -> None:
    """Mark the saved model finished with its provenance, then drop the checkpoints (resume state only)."""
    if not trainer.args.should_save:
        return
    stats = {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch}
    provenance.write_folder_record(output_dir, wanted, stats)
    remove_checkpoints(output_dir)
