"""``python -m tevatron.reranker.driver.score_groups``: teacher scores for every pair of the training groups.

For each training file of ``--train_dir`` it writes ``--output_dir/<same name>``: each line is the input
JSON record with ``"positive_scores"`` and ``"negative_scores"`` added, floats parallel to the group's
positive and negative passages (``"positives"``/``"negatives"`` of tokenized groups,
``"positive_passages"``/``"negative_passages"`` of raw-text ones: the reranker's logits, as the
distillation loss reads them).  With ``--fold_models`` (rerankers trained with ``--query_folds N
--held_out_fold k``, k = 0 .. N-1) each group is scored by the reranker that held out its query's fold, so
no teacher score comes from a model trained on that group.  The folder gets a
``.complete`` record (model, input files, lengths, precision); a re-run with the same inputs skips, an
interrupted one keeps the files it finished.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
from pathlib import Path

from transformers import HfArgumentParser

from tevatron import provenance
from tevatron.argument_checks import parse_dataclasses
from tevatron.cli import CommandError, command
from tevatron.cpu_kernels import use_onednn_linear
from tevatron.data import _validate_group, list_data_files, query_fold
from tevatron.driver.encode import tokenize_raw
from tevatron.files import InputError, check_output_dir
from tevatron.preprocess.tokenize import TEXT
from tevatron.raw_text import one_format, training_record_format
from tevatron.text_formats import iter_jsonl, write_jsonl

from ..arguments import ScoreGroupsArguments, ScoringArguments, TeacherModelArguments
from ..data import PairBuilder
from ..scoring import autocast_dtype_for, load_scorer, score_pairs

logger = logging.getLogger("tevatron.reranker.driver.score_groups")

SCORE_KEYS = {"positives": "positive_scores", "negatives": "negative_scores"}


def scored_records(path, scorers: list, batch_size: int, device, autocast_dtype=None,
                   data_format: str = "tokenized") -> list[dict]:
    """The records of one training file, each with its passages' scores added (raw text tokenized as the
    reranker's training tokenizes it). ``scorers``: one (model, pair builder), or one per query fold: the
    k-th scores the groups whose query is in fold k (:func:`tevatron.data.query_fold`)."""
    vocab = min(model.get_input_embeddings().num_embeddings for model, _ in scorers)
    records, checked = [], []
    for number, record in iter_jsonl(path):
        checked.append(_validate_group(path, number, record, vocab, False, data_format))
        records.append(record)
    folds = [0 if len(scorers) == 1 else query_fold(group["query"], len(scorers)) for group in checked]
    for fold, (model, builder) in enumerate(scorers):
        members = [(record, group) for record, group, of in zip(records, checked, folds) if of == fold]
        if members:
            _add_scores(members, model, builder, batch_size, device, autocast_dtype, data_format,
                        Path(path).name + (f" (fold {fold})" if len(scorers) > 1 else ""))
    return records


def _add_scores(members, model, builder: PairBuilder, batch_size: int, device, autocast_dtype, data_format: str,
                desc: str) -> None:
    """Score every passage of the (record, checked group) pairs with one model, into the records."""
    queries = [group["query"] for _, group in members]
    passages = [passage for _, group in members for key in SCORE_KEYS for passage in group[key]]
    if data_format == TEXT:
        queries = tokenize_raw(builder.tokenizer, [["", query] for query in queries], builder.query_budget, True, "")
        passages = tokenize_raw(builder.tokenizer, passages, builder.max_len - builder.pair_special, False, "")
    passage_ids = iter(passages)
    pairs = [(query, next(passage_ids)) for query, (_, group) in zip(queries, members)
             for key in SCORE_KEYS for _ in group[key]]
    scores = score_pairs(model, builder, pairs, batch_size, device, autocast_dtype, desc=desc).tolist()
    start = 0
    for record, group in members:
        for key, score_key in SCORE_KEYS.items():
            count = len(group[key])
            record[score_key] = scores[start: start + count]
            start += count


def check_fold_models(paths: list[str]) -> None:
    """Each fold model must be a reranker trained without exactly its fold: the k-th of N held out fold k of N
    (its training record says so). Anything else would score groups the model was trained on."""
    folds = len(paths)
    for fold, path in enumerate(paths):
        record = (provenance.read_folder_record(path) or {}).get("provenance", {})
        held_out = record.get("query_folds"), record.get("held_out_fold")
        if held_out != (folds, fold):
            said = (f"it held out fold {held_out[1]} of {held_out[0]}" if record.get("query_folds")
                    else "its training record names no held-out fold")
            raise InputError(path, f"--fold_models entry {fold} must be a reranker trained with --query_folds "
                             f"{folds} --held_out_fold {fold}; {said}")


def group_confidence(record: dict) -> tuple[float, bool]:
    """The softmax probability (temperature 1) that a scored group's positives get, and whether a positive
    scores highest."""
    positives, negatives = record["positive_scores"], record["negative_scores"]
    top = max(positives + negatives)
    weights = [math.exp(score - top) for score in positives + negatives]
    return sum(weights[:len(positives)]) / sum(weights), not negatives or max(positives) > max(negatives)


def teacher_confidence(confidences: list[tuple[float, bool]]) -> dict:
    """How sure the teacher is on the groups it scored (``group_confidence`` of each): the share of groups
    whose top passage is a positive, and the median of the positives' softmax probability. A median near 1
    means the soft labels carry little beyond the hard one (a reranker scoring the groups it was trained
    on); ``--distil_temperature`` above 1 softens them."""
    if not confidences:
        return {"groups whose top passage is a positive": None, "median softmax share of the positives": None}
    firsts = sum(first for _, first in confidences) / len(confidences)
    return {"groups whose top passage is a positive": round(firsts, 4),
            "median softmax share of the positives": round(statistics.median(share for share, _ in confidences), 4)}


def report_teacher_confidence(confidence: dict, groups: int) -> None:
    first, share = (confidence["groups whose top passage is a positive"],
                    confidence["median softmax share of the positives"])
    if share is None:
        return
    hint = (" (near 1: the soft labels add little to the hard ones; --distil_temperature above 1 softens them)"
            if share >= 0.99 else "")
    logger.info("teacher on these %d groups: a positive scores highest in %.1f%% of them; the positives' softmax "
                "share (temperature 1) has median %.4f%s", groups, 100 * first, share, hint)


@command
def main(argv=None) -> int:
    parser = HfArgumentParser((TeacherModelArguments, ScoreGroupsArguments, ScoringArguments))
    model_args, args, run_args = parse_dataclasses(parser, argv)
    if not args.train_dir or not run_args.output_dir:
        raise CommandError("give --train_dir and --output_dir")
    output_dir = Path(run_args.output_dir)
    check_output_dir(output_dir)
    files = list_data_files(args.train_dir)
    data_format = one_format(files, training_record_format)
    if any(output_dir.resolve() == f.parent.resolve() for f in files):
        raise CommandError(f"--output_dir {output_dir} is the folder of the training files; give another one")
    model_paths = model_args.fold_models or [model_args.model_name_or_path]
    if model_args.fold_models:
        check_fold_models(model_args.fold_models)
    scorers, precisions = [], set()
    for path in model_paths:
        model, builder, precision = load_scorer(dataclasses.replace(model_args, model_name_or_path=path,
                                                                    fold_models=None),
                                                args.q_max_len, args.p_max_len, run_args)
        scorers.append((model, builder))
        precisions.add(precision)
    if len(precisions) > 1:
        raise CommandError(f"the fold models resolve to different precisions ({', '.join(sorted(precisions))}); "
                           "give --fp16/--bf16 explicitly")
    (precision,) = precisions
    pair_lengths = sorted({builder.max_len for _, builder in scorers})
    if len(pair_lengths) > 1:  # one teacher: every group's pairs cut to one length
        raise CommandError(f"the fold models cut a pair to different lengths ({', '.join(map(str, pair_lengths))}: "
                           f"their position limits); give --q_max_len + --p_max_len of at most {pair_lengths[0]}")
    identities = [provenance.model_identity(path) for path in model_paths]
    wanted = {"model": identities[0] if len(identities) == 1 else {"fold models": identities},
              "tokenizer": (provenance.model_identity(model_args.tokenizer_name) if model_args.tokenizer_name
                            else "the model's"),
              "training data": [provenance.file_identity(f) for f in files], "q_max_len": args.q_max_len,
              "pair_max_len": builder.max_len, "precision": precision}
    if provenance.folder_up_to_date(output_dir, wanted, args.overwrite, redo="scoring again"):
        return 0
    names = {f.name for f in files}
    kept = provenance.begin_folder_output(output_dir, wanted, lambda folder: [p for p in folder.iterdir()
                                                                              if p.name in names])
    device = run_args.device
    for model, _ in scorers:
        model.to(device)
        if device.type == "cpu":
            use_onednn_linear(model, model_args.cpu_linear)
    kept_names = {p.name for p in kept}
    total, confidences = 0, []
    for path in files:
        if path.name in kept_names:
            logger.info("%s: kept from the interrupted run", output_dir / path.name)
            confidences += [group_confidence(record) for _, record in iter_jsonl(output_dir / path.name)]
            continue
        records = scored_records(path, scorers, run_args.per_device_eval_batch_size, device,
                                 autocast_dtype_for(precision), data_format)
        write_jsonl(output_dir / path.name, records)
        total += len(records)
        confidences += [group_confidence(record) for record in records]
        logger.info("wrote %d scored groups to %s", len(records), output_dir / path.name)
    confidence = teacher_confidence(confidences)
    report_teacher_confidence(confidence, len(confidences))
    provenance.finish_folder_output(output_dir, wanted, {"files": len(files), "groups scored": total,
                                                         "teacher": confidence})
    return 0


if __name__ == "__main__":
    sys.exit(main())
