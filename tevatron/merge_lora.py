"""``python -m tevatron.merge_lora``: fold a LoRA adapter folder into its base model's weights, giving a
plain model folder (with the tokenizer and ``tevatron_config.json``) that encodes and exports like any."""
from __future__ import annotations

import argparse
import logging
import sys

from tevatron.cli import command
from tevatron.files import check_output_dir, staged_files

logger = logging.getLogger("tevatron.merge_lora")


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tevatron.merge_lora", description=__doc__)
    parser.add_argument("--lora_name_or_path", required=True, help="a LoRA model folder saved by training")
    parser.add_argument("--model_name_or_path", default=None,
                        help="its base model (default: the one the adapter folder names)")
    parser.add_argument("--output_dir", required=True, help="where the merged model goes")
    args = parser.parse_args(argv)
    merge_adapter(args.lora_name_or_path, args.output_dir, args.model_name_or_path)
    return 0


def merge_adapter(adapter_dir, output_dir, base: str | None = None) -> None:
    """Write ``output_dir``: the adapter in ``adapter_dir`` merged into ``base`` (default: the base it names)."""
    from tevatron.arguments import ModelArguments
    from tevatron.lora import base_model_of, check_adapter_folder
    from tevatron.modeling import DenseModel, check_model_folder
    from tevatron.tokenization import load_tokenizer

    check_adapter_folder(adapter_dir)
    check_output_dir(output_dir)
    base = base or base_model_of(adapter_dir)
    model_args = ModelArguments(model_name_or_path=base, lora_name_or_path=str(adapter_dir))
    check_model_folder(base, model_args, for_encoding=True)
    model = DenseModel.load(base, model_args, merge_lora=True)
    model.save(output_dir)
    try:
        tokenizer = load_tokenizer(str(adapter_dir))
    except (OSError, ValueError):
        tokenizer = load_tokenizer(base)
    with staged_files(output_dir) as staging:
        tokenizer.save_pretrained(staging)
    logger.info("merged %s into %s: %s", adapter_dir, base, output_dir)


if __name__ == "__main__":
    sys.exit(main())
