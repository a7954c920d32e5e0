"""HF ``Trainer`` for the bi-encoder; overrides only loss, the grad-cache step, saving and loading."""
from __future__ import annotations

import json
import logging
import os

import torch
from transformers import Trainer, TrainerCallback

from .gradcache import grad_cache_step
from .files import atomic_text_writer, staged_files

logger = logging.getLogger(__name__)


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
