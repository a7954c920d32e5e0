"""``python -m tevatron.driver.encode``: encode tokenized queries or passages into vectors.

Texts are sorted by length and each batch is padded to its longest member, so little compute goes to
padding; vectors are written back in input order.  The output appears only when complete, and a
complete output is kept unless ``--overwrite`` is given, so a re-run resumes a loop over splits.
"""
from __future__ import annotations

import contextlib
import logging
import sys

import torch
from tqdm import tqdm
from transformers import HfArgumentParser

from tevatron.arguments import DataArguments, EncodeArguments, ModelArguments
from tevatron.data import SequencePadder, length_sorted_batches, read_encode_records, shard_range
from tevatron.cli import CommandError, command
from tevatron.files import InputError
from tevatron.tensor_files import is_complete_encodings, save_encodings
from tevatron.cpu_kernels import use_onednn_linear
from tevatron.modeling import DenseModel, check_model_folder
from tevatron.tokenization import load_tokenizer

logger = logging.getLogger("tevatron.driver.encode")


def encode_texts(model: DenseModel, padder: SequencePadder, texts, max_len: int, is_query: bool,
                 batch_size: int, device, autocast_dtype=None, fixed_padding: bool = False,
                 progress: bool = True) -> torch.Tensor:
    """Vectors for ``texts`` (token-id lists) in their input order."""
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
    if output is None:
        output = torch.empty((0, 0), dtype=torch.float32)
    return output


@command
def main(argv=None) -> int:
    parser = HfArgumentParser((ModelArguments, DataArguments, EncodeArguments))
    model_args, data_args, encode_args = parser.parse_args_into_dataclasses(args=argv)
    if not data_args.encode_in_path or not data_args.encoded_save_path:
        raise CommandError("give --encode_in_path and --encoded_save_path")
    if is_complete_encodings(data_args.encoded_save_path) and not data_args.overwrite:
        logger.info("%s is complete; skipping (use --overwrite to redo it)", data_args.encoded_save_path)
        return 0

    check_model_folder(model_args.model_name_or_path, model_args, for_encoding=True)
    model = DenseModel.load(model_args.model_name_or_path, model_args, pooling=model_args.pooling,
                            normalize=model_args.normalize)
    ids, texts = read_encode_records(data_args.encode_in_path, vocab_size=model.vocab_size())
    shard = shard_range(len(ids), data_args.encode_num_shard, data_args.encode_shard_index)
    ids, texts = ids[shard.start: shard.stop], texts[shard.start: shard.stop]
    if not ids:
        raise InputError(data_args.encode_in_path[0], "nothing to encode (empty input or shard)")
    if data_args.encode_is_qry:
        max_len = model.fit_max_len(data_args.q_max_len, "--q_max_len")
    else:
        max_len = model.fit_max_len(data_args.p_max_len, "--p_max_len")
    logger.info("encoding %d %s (shard %d of %d), max length %d", len(ids),
                "queries" if data_args.encode_is_qry else "passages", data_args.encode_shard_index,
                data_args.encode_num_shard, max_len)

    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                               cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code)
    device = encode_args.device
    model.to(device)
    if device.type == "cpu":
        use_onednn_linear(model, model_args.cpu_linear)
    autocast_dtype = torch.float16 if encode_args.fp16 else torch.bfloat16 if encode_args.bf16 else None
    reps = encode_texts(model, SequencePadder(tokenizer), texts, max_len, data_args.encode_is_qry,
                        encode_args.per_device_eval_batch_size, device, autocast_dtype)
    save_encodings(data_args.encoded_save_path, reps, ids)
    logger.info("saved %d vectors of dimension %d to %s", reps.shape[0], reps.shape[1],
                data_args.encoded_save_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
