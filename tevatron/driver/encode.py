"""``python -m tevatron.driver.encode``: encode queries or passages into vectors, from tokenized files or raw
text (Tevatron v2's ``{"docid", "title", "text"}`` / ``{"query_id", "query"}`` lines, tokenized here with the
prefix the model was trained with unless ``--query_prefix`` / ``--passage_prefix`` say otherwise).

Texts are sorted by length and each batch is padded to its longest member, so little compute goes to
padding; vectors are written back in input order.  The output appears only when complete and carries
the record of what it was made from (:func:`encoding_provenance`); a re-run keeps it only when that
record is unchanged (same model, inputs and result-changing arguments) and ``--overwrite`` is not
given, so a re-run resumes a loop over splits but never reuses vectors of a retrained model.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import Callable

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

from tevatron.argument_checks import parse_dataclasses
from tevatron.arguments import DataArguments, EncodeArguments, ModelArguments, resolve_mixed_precision
from tevatron.data import (SequencePadder, encode_input_files, encode_input_format, length_sorted_batches,
                           read_encode_records, shard_range)
from tevatron.preprocess.tokenize import TEXT, iter_batches, prefix_record
from tevatron.raw_text import TextTokenizer, check_tokenized_prefix, encoding_prefix
from tevatron.cli import CommandError, command
from tevatron.distributed_encode import EncodeJob, encode_job
from tevatron.files import InputError, check_output_file
from tevatron.provenance import file_identity, model_identity, up_to_date
from tevatron.tensor_files import encodings_provenance, save_encodings
from tevatron.cpu_kernels import use_onednn_linear
from tevatron.lora import base_model_of, is_adapter_folder
from tevatron.modeling import DenseModel, check_model_folder
from tevatron.tokenization import load_tokenizer

logger = logging.getLogger("tevatron.driver.encode")


def encode_texts(model: DenseModel, padder: SequencePadder, texts, max_len: int, is_query: bool,
                 batch_size: int, device, autocast_dtype=None, fixed_padding: bool = False,
                 progress: bool = True, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Vectors for ``texts`` (token-id lists) in their input order; ``on_batch(n)`` is told of every
    batch of ``n`` texts done."""
    model.eval()
    lengths = [len(t) for t in texts]
    batches = (length_sorted_batches(lengths, batch_size) if not fixed_padding
               else [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)])
    encode = model.encode_query if is_query else model.encode_passage
    output = None
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for batch_indices in tqdm(batches, desc="encoding", unit="batch", disable=not progress):
            batch = padder([texts[i] for i in batch_indices], max_len, max_len if fixed_padding else None)
            reps = encode({k: v.to(device) for k, v in batch.items()}).float().cpu()
            if output is None:
                output = torch.empty((len(texts), reps.shape[1]), dtype=torch.float32)
            output[torch.tensor(batch_indices)] = reps
            if on_batch is not None:
                on_batch(len(batch_indices))
    if output is None:
        output = torch.empty((0, 0), dtype=torch.float32)
    return output


def encoding_provenance(model_args: ModelArguments, data_args: DataArguments, model: DenseModel, max_len: int,
                        precision: str, dtype: str = "float32", prefix: str = "", data_format: str = "tokenized"
                        ) -> dict:
    """What the vectors depend on: the model and tokenizer, the pooling and normalisation the loaded model
    actually uses, the side (query or passage encoder) and its max length after the cut to the model's
    positions, the input files, the shard, the precision and the stored dtype.  Not recorded, because
    they do not change the vectors: the temperature (it only scales training similarities) and the
    batch size, device and CPU kernel choice (they change rounding only)."""
    record = {"model": model_identity(model_args.model_name_or_path),
              "tokenizer": model_identity(model_args.tokenizer_name) if model_args.tokenizer_name else "the model's",
              "pooling": model.dense_config.pooling, "normalize": bool(model.dense_config.normalize),
              "side": "query" if data_args.encode_is_qry else "passage", "max_len": max_len,
              "inputs": [file_identity(path) for path in data_args.encode_in_path],
              "shard": {"count": data_args.encode_num_shard, "index": data_args.encode_shard_index},
              "precision": precision}
    if dtype != "float32":  # recorded only when not the default, so float32 files of older versions stay valid
        record["dtype"] = dtype
    if model.dense_config.append_eos_token:  # likewise
        record["append_eos_token"] = True
    if model_args.lora_name_or_path:  # --model_name_or_path is then the base model
        record["lora adapter"] = model_identity(model_args.lora_name_or_path)
    elif is_adapter_folder(model_args.model_name_or_path):  # an adapter folder: the record names its base too
        record["lora base model"] = model_identity(base_model_of(model_args.model_name_or_path))
    side = "query" if data_args.encode_is_qry else "passage"
    record.update(prefix_record(**{f"{side}_prefix": prefix}, data_format=data_format))  # likewise
    return record


def tokenize_raw(tokenizer, texts, max_len: int, is_query: bool, prefix: str, batch_size: int = 1000) -> list:
    """Raw ``[title, text]`` pairs (``["", query]``) to token ids, as the tokenize scripts would make them."""
    text_tokenizer = TextTokenizer(tokenizer, max_len, max_len, query_prefix=prefix, passage_prefix=prefix)
    token_ids = []
    for batch in tqdm(list(iter_batches(texts, batch_size)), desc="tokenizing", unit="batch", mininterval=5):
        token_ids.extend(text_tokenizer.queries([text for _, text in batch]) if is_query
                         else text_tokenizer.passages(batch))
    return token_ids


def all_rows_equal(reps: torch.Tensor, tolerance: float = 1e-6, chunk: int = 65536) -> bool:
    """True when every vector equals the first within ``tolerance`` (chunked: no copy of the whole matrix)."""
    first = reps[:1]
    return all(bool(((reps[start:start + chunk] - first).abs() <= tolerance).all())
               for start in range(0, reps.shape[0], chunk))


FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def stored_vectors(reps: torch.Tensor, dtype: str, save_path) -> torch.Tensor:
    """``reps`` in the stored dtype; a value beyond float16's range would become inf, so it is refused."""
    if dtype == "float32":
        return reps
    largest = float(reps.abs().max()) if reps.numel() else 0.0
    if largest > FLOAT16_MAX:
        raise CommandError(f"{save_path}: a vector value ({largest:.4g}) is beyond float16's range "
                           f"({FLOAT16_MAX:.0f}); nothing written (use --encode_dtype float32)")
    return reps.to(torch.float16)


def check_not_degenerate(reps: torch.Tensor, texts, save_path, max_len: int, is_query: bool, pooling: str) -> None:
    """One vector for every one of several distinct texts means the encoder ignored the text, and a NaN or
    infinite value poisons every score it meets; searching with either would rank arbitrarily, so nothing
    is written."""
    bad_rows = (~torch.isfinite(reps)).any(dim=1).nonzero().flatten()
    if bad_rows.numel():
        raise CommandError(f"{save_path}: {bad_rows.numel()} of {reps.shape[0]} vectors hold NaN or inf (the first "
                           f"is input row {int(bad_rows[0])}); nothing written (the model's weights are not finite?)")
    if reps.shape[0] < 2 or not all_rows_equal(reps):
        return
    first = texts[0]
    if all(text == first for text in texts):
        return
    flag = "--q_max_len" if is_query else "--p_max_len"
    raise CommandError(f"{save_path}: all {reps.shape[0]} vectors are identical although the texts differ; "
                       f"nothing written (likely cause: {flag} {max_len} cuts the texts to the same tokens, "
                       f"or --pooling {pooling} / the model ignores the text)")


@command
def main(argv=None) -> int:
    # Under torchrun with several processes each encodes a share and rank 0 writes the output.
    with encode_job() as job:
        return encode_command(argv, job)


def encode_command(argv, job: EncodeJob | None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, EncodeArguments))
    model_args, data_args, encode_args = parse_dataclasses(parser, argv)
    if not data_args.encode_in_path or not data_args.encoded_save_path:
        raise CommandError("give --encode_in_path and --encoded_save_path")
    check_output_file(data_args.encoded_save_path)

    check_model_folder(model_args.model_name_or_path, model_args, for_encoding=True)
    # The model is loaded before deciding: the record holds what it resolves (pooling, max length).
    model = DenseModel.load(model_args.model_name_or_path, model_args, pooling=model_args.pooling,
                            normalize=model_args.normalize)
    if data_args.encode_is_qry:
        max_len = model.fit_max_len(data_args.q_max_len, "--q_max_len")
    else:
        max_len = model.fit_max_len(data_args.p_max_len, "--p_max_len")
    config = model.lm_q.config
    precision = resolve_mixed_precision(encode_args, getattr(config, "hidden_size", None)
                                        or model.lm_q.get_input_embeddings().embedding_dim)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    side = "query" if data_args.encode_is_qry else "passage"
    prefix = encoding_prefix(getattr(data_args, f"{side}_prefix"), getattr(model.dense_config, f"{side}_prefix"), side)
    data_format = encode_input_format(data_args.encode_in_path)
    if data_format != TEXT:  # token ids already hold a prefix: it must be this one
        check_tokenized_prefix(encode_input_files(data_args.encode_in_path), f"{side}_prefix", prefix)
    provenance = encoding_provenance(model_args, data_args, model, max_len, precision, encode_args.encode_dtype,
                                     prefix, data_format)
    output_up_to_date = functools.partial(up_to_date, data_args.encoded_save_path, provenance, encodings_provenance,
                                          data_args.overwrite, redo="re-encoding")
    if job.decide(output_up_to_date) if job else output_up_to_date():  # under torchrun rank 0 decides for all
        return 0

    ids, texts = read_encode_records(data_args.encode_in_path, vocab_size=model.vocab_size(),
                                     is_query=data_args.encode_is_qry)
    shard = shard_range(len(ids), data_args.encode_num_shard, data_args.encode_shard_index)
    ids, texts = ids[shard.start: shard.stop], texts[shard.start: shard.stop]
    if not ids:
        raise InputError(data_args.encode_in_path[0], "nothing to encode (empty input or shard)")
    logger.info("encoding %d %s (%s%s, shard %d of %d), max length %d", len(ids),
                "queries" if data_args.encode_is_qry else "passages", data_format,
                f", prefix {prefix!r}" if prefix else "", data_args.encode_shard_index,
                data_args.encode_num_shard, max_len)

    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    if data_format == TEXT:
        texts = tokenize_raw(tokenizer, texts, max_len, data_args.encode_is_qry, prefix)
    device = job.device if job else encode_args.device
    model.to(device)
    if device.type == "cpu":
        use_onednn_linear(model, model_args.cpu_linear)
    padder = SequencePadder(tokenizer, append_eos=model.dense_config.append_eos_token)
    padder.check_room(max_len, "--q_max_len" if data_args.encode_is_qry else "--p_max_len")

    def encode_share(share_texts, on_batch=None) -> torch.Tensor:
        return encode_texts(model, padder, share_texts, max_len, data_args.encode_is_qry,
                            encode_args.per_device_eval_batch_size, device, autocast_dtype,
                            progress=job is None, on_batch=on_batch)
    reps = job.encode_shares(texts, encode_share, data_args.encoded_save_path) if job else encode_share(texts)
    if reps is None:
        return 0  # not rank 0: rank 0 writes the output
    check_not_degenerate(reps, texts, data_args.encoded_save_path, max_len, data_args.encode_is_qry,
                         model.dense_config.pooling)
    reps = stored_vectors(reps, encode_args.encode_dtype, data_args.encoded_save_path)
    save_encodings(data_args.encoded_save_path, reps, ids, provenance)
    logger.info("saved %d %s vectors of dimension %d to %s", reps.shape[0], encode_args.encode_dtype,
                reps.shape[1], data_args.encoded_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
