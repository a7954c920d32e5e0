"""Export a model trained here as a sentence-transformers model folder.

``SentenceTransformer(OUT).encode(texts)`` then gives the vectors ``tevatron.driver.encode`` gives for
the same texts (tokenised as the ``tokenize_*`` scripts do, cut at the same maximum length): the
transformer, then cls or mean pooling, then the trained linear pooler (a ``Dense`` layer without
activation) and ``Normalize`` where the model has them.  The folder also keeps ``tevatron_config.json``
(and ``pooler.safetensors``), so this toolkit loads it as the same model.

Refused in one line (nothing written): untied encoders and a pooler with separate query and passage
layers, since a sentence-transformers model applies one encoder to every text.

    python -m tevatron.export --model_dir MODEL --output_dir OUT [--max_seq_length 128]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from tevatron.argument_checks import TOKEN_LENGTH, int_arg
from tevatron.cli import CommandError, command
from tevatron.files import InputError, check_output_dir, staged_files
from tevatron.modeling import (PASSAGE_MODEL_DIR, POOLER_WEIGHTS, QUERY_MODEL_DIR, ROBERTA_LIKE, TEVATRON_CONFIG,
                               DenseConfig)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEQ_LENGTH = 128  # the encode driver's --p_max_len default (special tokens included)
MODEL_CARD = "README.md"


def read_dense_config(model_dir: Path) -> DenseConfig:
    """The saved bi-encoder settings, refusing a folder this toolkit did not train."""
    path = model_dir / TEVATRON_CONFIG
    if not model_dir.is_dir():
        raise InputError(model_dir, "no such model folder")
    if not path.is_file():
        raise InputError(model_dir, f"no {TEVATRON_CONFIG}: not a model trained with tevatron.driver.train")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    if not isinstance(saved, dict):
        raise InputError(path, "not a JSON object")
    config = DenseConfig(**{k: v for k, v in saved.items() if k in DenseConfig.__dataclass_fields__})
    if config.pooling not in ("cls", "mean", "last"):
        raise InputError(path, f"pooling {config.pooling!r} has no sentence-transformers equivalent")
    if config.append_eos_token:
        raise CommandError(f"{model_dir}: trained with --append_eos_token, which a sentence-transformers model "
                           "does not do (its tokenizer adds no eos token); nothing written")
    return config


def refuse_untranslatable(model_dir: Path, config: DenseConfig) -> None:
    """Refuse what one sentence-transformers pipeline cannot express: different query and passage paths."""
    if config.untie_encoder or (model_dir / QUERY_MODEL_DIR).is_dir():
        raise CommandError(f"{model_dir}: untied query and passage encoders ({QUERY_MODEL_DIR}/, "
                           f"{PASSAGE_MODEL_DIR}/) have no sentence-transformers equivalent (one encoder for "
                           "every text); nothing written")
    if config.add_pooler:
        pooler_path = model_dir / POOLER_WEIGHTS
        if not pooler_path.is_file():
            raise InputError(model_dir, f"{TEVATRON_CONFIG} says add_pooler but {POOLER_WEIGHTS} is missing")
        if any(key.startswith("linear_p.") for key in read_pooler(pooler_path)):
            raise CommandError(f"{pooler_path}: a pooler applied differently to queries and passages has no "
                               "sentence-transformers equivalent; nothing written")


def read_pooler(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def sentence_transformers_api():
    """(SentenceTransformer, Transformer, Pooling, Dense, Normalize), imported only when exporting."""
    try:
        import sentence_transformers
    except ImportError:
        raise CommandError("exporting needs sentence-transformers: pip install sentence-transformers") from None
    try:  # sentence-transformers >= 6 moved the modules; older releases have them under .models
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
    return sentence_transformers.SentenceTransformer, Transformer, Pooling, Dense, Normalize


def build_sentence_transformer(model_dir: Path, config: DenseConfig, max_seq_length: int):
    """The sentence-transformers pipeline computing what :meth:`DenseModel._encode` computes."""
    import torch

    SentenceTransformer, Transformer, Pooling, Dense, Normalize = sentence_transformers_api()
    try:
        transformer = Transformer(str(model_dir), max_seq_length=max_seq_length)
    except (OSError, ValueError) as err:  # e.g. no tokenizer saved with the weights
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(model_dir, f"cannot load it as a sentence-transformers Transformer ({reason})") from None
    config_of_model = transformer.auto_model.config
    positions = getattr(config_of_model, "max_position_embeddings", None)
    if positions and getattr(config_of_model, "model_type", "") in ROBERTA_LIKE:
        positions -= 2  # RoBERTa-style models reserve two positions for the padding offset
    if positions and max_seq_length > positions:
        raise CommandError(f"--max_seq_length {max_seq_length} is longer than the model's {positions} positions")
    # last-token pooling reads the last non-padding token; right padding keeps each text's positions as encode has them
    transformer.tokenizer.padding_side = "right"
    pooling_mode = {"last": "lasttoken"}.get(config.pooling, config.pooling)
    modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), pooling_mode=pooling_mode)]
    if config.add_pooler:
        state = read_pooler(model_dir / POOLER_WEIGHTS)
        weight, bias = state["linear_q.weight"], state["linear_q.bias"]
        # tevatron's pooler is a bare nn.Linear: no activation (Dense defaults to tanh)
        modules.append(Dense(weight.shape[1], weight.shape[0], bias=True, activation_function=torch.nn.Identity(),
                             init_weight=weight, init_bias=bias))
    if config.normalize:
        modules.append(Normalize())
    # the training prefixes as sentence-transformers prompts: encode(texts, prompt_name="query") prepends them
    return SentenceTransformer(modules=modules, device="cpu", prompts=prefix_prompts(config))


def prefix_prompts(config: DenseConfig) -> dict[str, str]:
    """``{"query": query_prefix, "document": passage_prefix}`` (sentence-transformers' prompt names), the
    ones the model was trained with; empty when it was trained without prefixes."""
    prompts = {"query": config.query_prefix, "document": config.passage_prefix}
    return prompts if any(prompts.values()) else {}


def model_card(model_dir: Path, config: DenseConfig, max_seq_length: int, base_model: str) -> str:
    """README.md for the exported folder: what the model computes and how to load it in both libraries."""
    pooler = (f"a trained linear layer {config.projection_in_dim} -> {config.projection_out_dim} (no activation)"
              if config.add_pooler else "none")
    similarity = ("cosine (vectors are L2-normalised)" if config.normalize else "dot product (vectors are not "
                  "normalised; do not use cosine, it changes the ranking)")
    return f"""# Dense retriever exported from tevatron

A bi-encoder trained with this toolkit (`tevatron.driver.train`) on `{base_model}`, exported from
`{model_dir}` by `python -m tevatron.export`.

| | |
|---|---|
| base model | `{base_model}` |
| encoder | one, shared by queries and passages (tied) |
| pooling | {config.pooling} ({"the first token, [CLS]" if config.pooling == "cls" else "mean of the non-padding tokens"}) |
| linear pooler | {pooler} |
| normalisation | {"yes" if config.normalize else "no"} |
| similarity | {similarity} |
| training temperature | {config.temperature} (scores were divided by it in the loss; it does not change rankings) |
| max sequence length | {max_seq_length} tokens, special tokens included |

## Input text

{prompts_line(config)}Queries are given as they are.  Passages must be given as the corpus tokenisation built them:
`"title [SEP] text"` (the title, the tokenizer's separator token between spaces, then the text), or the
text alone when there is no title.  At encoding time this toolkit cuts queries at `--q_max_len`
(32 by default) and passages at `--p_max_len` (128 by default); this model cuts every text at
{max_seq_length} tokens, so set `model.max_seq_length` to the query length when encoding queries to
match exactly.

## Loading

sentence-transformers:

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("PATH/TO/THIS/FOLDER")
vectors = model.encode(["what is dense retrieval", "Title [SEP] passage text"])
```

tevatron (the folder keeps `{TEVATRON_CONFIG}`, so it loads as the same model):

```bash
python -m tevatron.driver.encode --model_name_or_path PATH/TO/THIS/FOLDER ...
```
"""


def prompts_line(config: DenseConfig) -> str:
    """The model card's words on prefixes, when the model was trained with them."""
    if not prefix_prompts(config):
        return ""
    return (f"The model was trained with the query prefix {config.query_prefix!r} and the passage prefix "
            f"{config.passage_prefix!r}; they are saved as the prompts `query` and `document`: encode with "
            "`model.encode(queries, prompt_name=\"query\")` and `model.encode(passages, prompt_name=\"document\")` "
            "(the prefix goes in front of the text, before the title).\n\n")


def base_model_name(model_dir: Path) -> str:
    """The model training started from, where the saved config names it, else the folder itself."""
    config_path = model_dir / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    name = saved.get("_name_or_path") if isinstance(saved, dict) else None
    return name if isinstance(name, str) and name and Path(name) != model_dir else str(model_dir)


def export(model_dir, output_dir, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH) -> Path:
    """Write the sentence-transformers folder ``output_dir`` for the tevatron model in ``model_dir``."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    from tevatron.lora import is_adapter_folder
    if is_adapter_folder(model_dir):  # a LoRA model: exported with the adapter merged into its base
        import tempfile
        with tempfile.TemporaryDirectory() as merged:
            from tevatron.merge_lora import merge_adapter
            merge_adapter(model_dir, merged)
            return export(merged, output_dir, max_seq_length)
    config = read_dense_config(model_dir)
    refuse_untranslatable(model_dir, config)
    if output_dir.resolve() == model_dir.resolve():
        raise CommandError(f"{output_dir}: the output folder must not be the model folder")
    check_output_dir(output_dir)
    model = build_sentence_transformer(model_dir, config, max_seq_length)
    # the tevatron config is renamed into place last: a folder with it is a complete model
    with staged_files(output_dir, last=(TEVATRON_CONFIG,)) as staging:
        model.save(str(staging))
        (staging / MODEL_CARD).write_text(model_card(model_dir, config, max_seq_length, base_model_name(model_dir)),
                                          encoding="utf-8")
        if config.add_pooler:
            shutil.copyfile(model_dir / POOLER_WEIGHTS, staging / POOLER_WEIGHTS)
        shutil.copyfile(model_dir / TEVATRON_CONFIG, staging / TEVATRON_CONFIG)
    logger.info("exported %s to %s (%s pooling%s%s, max %d tokens)", model_dir, output_dir, config.pooling,
                ", linear pooler" if config.add_pooler else "", ", normalized" if config.normalize else "",
                max_seq_length)
    return output_dir


@command
def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a trained model as a sentence-transformers model.")
    parser.add_argument("--model_dir", required=True, help="a model folder saved by tevatron.driver.train")
    parser.add_argument("--output_dir", required=True, help="the sentence-transformers folder to write")
    parser.add_argument("--max_seq_length", type=int_arg(TOKEN_LENGTH), default=DEFAULT_MAX_SEQ_LENGTH,
                        help="longest input in tokens, special tokens included (default: %(default)s, the "
                             "encode driver's --p_max_len default)")
    args = parser.parse_args(argv)
    export(args.model_dir, args.output_dir, args.max_seq_length)


if __name__ == "__main__":
    raise SystemExit(main())
