"""HF ``Trainer`` for the cross-encoder.

It reuses the retriever's trainer (:class:`tevatron.trainer.TevatronTrainer`: epoch-rotating groups, the
stop at a non-finite loss, checkpoint completion markers, no checkpoint at the last step) and overrides
only the loss (listwise over each group), saving (with a fingerprint) and loading a checkpoint.
"""
from __future__ import annotations

import json
import logging
import os

from transformers import Trainer

from tevatron import provenance
from tevatron.data import list_data_files
from tevatron.files import atomic_text_writer
from tevatron.trainer import _RESULT_TRAINING_ARGUMENTS, TevatronTrainer, _json_value

from .modeling import listwise_loss, save_cross_encoder

logger = logging.getLogger(__name__)


class RerankerTrainer(TevatronTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(**inputs["pairs"], return_dict=True).logits
        loss = listwise_loss(logits, inputs["n_passages"])
        return (loss, {"logits": logits}) if return_outputs else loss

    def _training_step(self, model, inputs, num_items_in_batch=None):
        return Trainer.training_step(self, model, inputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        """HF's optimizer, with the score head moved into groups of its own at ``--head_learning_rate``
        when given (the learning-rate schedule then scales every group alike)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if not fresh or self.args.head_learning_rate is None:
            return optimizer
        head_ids = {id(p) for _, p in head_parameters(self.model if model is None else model)}
        for group in list(optimizer.param_groups):
            head = [p for p in group["params"] if id(p) in head_ids]
            if not head:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in head_ids]
            if not group["params"]:
                optimizer.param_groups.remove(group)
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": head,
                                       "lr": self.args.head_learning_rate})
        return optimizer

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        logger.info("saving reranker to %s", output_dir)
        save_cross_encoder(self.accelerator.unwrap_model(self.model), output_dir, self.processing_class)
        with atomic_text_writer(os.path.join(output_dir, "training_args.json")) as handle:
            json.dump(json.loads(self.args.to_json_string()), handle, indent=2)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        Trainer._load_from_checkpoint(self, resume_from_checkpoint, model)


def head_parameters(model) -> list:
    """The trainable ``(name, parameter)`` pairs of the score head: what lies outside the model's backbone
    (``base_model_prefix``): BERT's ``classifier``, Llama's ``score`` (BERT's pooler is backbone)."""
    prefix = model.base_model_prefix + "."
    head = [(name, p) for name, p in model.named_parameters() if p.requires_grad and not name.startswith(prefix)]
    if not head:
        raise ValueError(f"no trainable parameters outside the backbone ({model.base_model_prefix}): no head")
    return head


def reranker_training_provenance(model_args, data_args, training_args) -> dict:
    """What a reranker's weights follow from: the starting model (and tokenizer), the training data, the
    pair lengths, the group size and the result-changing training arguments (the retriever's list)."""
    record = {"model kind": "cross-encoder", "model": provenance.model_identity(model_args.model_name_or_path)}
    if model_args.tokenizer_name:
        record["tokenizer"] = provenance.model_identity(model_args.tokenizer_name)
    if data_args.train_dir:
        record["training data"] = {"files": [provenance.file_identity(path)
                                             for path in list_data_files(data_args.train_dir)]}
    else:
        record["training data"] = {"dataset": data_args.dataset_name, "split": data_args.dataset_split}
        if data_args.dataset_config:
            record["training data"]["config"] = data_args.dataset_config
    record.update(train_n_passages=data_args.train_n_passages, q_max_len=data_args.q_max_len,
                  p_max_len=data_args.p_max_len)
    if training_args.device.type == "cpu":
        record["cpu_dropout"] = model_args.cpu_dropout
    record.update({name: _json_value(getattr(training_args, name, None)) for name in _RESULT_TRAINING_ARGUMENTS
                   if name != "negatives_x_device"})
    if training_args.head_learning_rate is not None:  # recorded only when given: older records stay valid
        record["head_learning_rate"] = training_args.head_learning_rate
    if data_args.query_folds:  # likewise
        record.update(query_folds=data_args.query_folds, held_out_fold=data_args.held_out_fold)
    return json.loads(json.dumps(record))
