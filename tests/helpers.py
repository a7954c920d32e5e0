"""Small builders shared by tests: tiny models, toy training groups and batches, tokenized corpora, CLI runners.

Fixtures live in ``conftest.py``; anything a test module imports lives here."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from forkserver import BIN_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[1]


def toy_groups(n_groups: int = 32, n_negatives: int = 10, seed: int = 0, vocab=(1000, 2000)) -> list[dict]:
    """Learnable toy groups: the positive repeats the query's tokens, negatives are random."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n_groups):
        query = [rng.randint(*vocab) for _ in range(rng.randint(3, 12))]
        positive = query + [rng.randint(*vocab) for _ in range(rng.randint(2, 30))]
        negatives = [[rng.randint(*vocab) for _ in range(rng.randint(4, 50))] for _ in range(n_negatives)]
        groups.append({"query": query, "positives": [positive], "negatives": negatives})
    return groups


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def toy_corpus(n: int = 60, seed: int = 1, max_len: int = 150, prefix: str = "doc") -> list[dict]:
    rng = random.Random(seed)
    return [{"text_id": f"{prefix}-{i}", "text": [rng.randint(1000, 29000) for _ in range(rng.randint(1, max_len))]}
            for i in range(n)]


def command_python() -> str:
    """The ``python`` the tests start commands with: tests/forkserver.py's shim (imports paid once), or
    this interpreter when that is off."""
    shims = os.environ.get(BIN_VARIABLE)
    return os.path.join(shims, "python") if shims else sys.executable


def command_path() -> str:
    """PATH for scripts that call ``python`` by name: the shim first, then this interpreter's folder."""
    folders = [os.environ.get(BIN_VARIABLE), os.path.dirname(sys.executable),
               os.environ.get("PATH", "")]
    return os.pathsep.join(folder for folder in folders if folder)


def run_module(module: str, *args, cwd=None, timeout: int = 600, env_extra: dict | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([command_python(), "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- tiny models and batches
def make_tiny_bert(path: Path, vocab_size: int = 30522, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a tiny random BertModel (with bert-base-uncased's tokenizer where available) to ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=160,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(path)
    from tevatron.tokenization import packaged_minilm_dir
    packaged = packaged_minilm_dir()
    if packaged is not None:
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained(str(packaged)).save_pretrained(path)
    return path


def build_model(path, **overrides):
    """A :class:`tevatron.modeling.DenseModel` from ``path`` with a 32 -> 16 pooler shape."""
    from tevatron.arguments import ModelArguments
    from tevatron.modeling import DenseModel

    args = ModelArguments(model_name_or_path=str(path), projection_in_dim=32, projection_out_dim=16, **overrides)
    return DenseModel.build(args)


def make_batch(tokenizer, groups, n_passages=4, epoch=0, fixed=False):
    from tevatron.data import SequencePadder, TrainCollator, sample_group

    features = [sample_group(g, i, epoch, 42, n_passages) for i, g in enumerate(groups)]
    collator = TrainCollator(SequencePadder(tokenizer), q_max_len=16, p_max_len=80, pad_to_max_length=fixed)
    return collator(features)


def teacher_score(passage, positive: bool) -> float:
    """A toy teacher: a score that follows from the passage's tokens (so a test can tell which passage a
    score belongs to), positives above negatives."""
    return (sum(passage) % 101) / 20.0 + (4.0 if positive else 0.0)


def scored_groups(groups) -> list[dict]:
    """Groups with ``positive_scores``/``negative_scores`` as ``tevatron.reranker.driver.score_groups`` writes them."""
    return [dict(group, positive_scores=[teacher_score(p, True) for p in group["positives"]],
                 negative_scores=[teacher_score(n, False) for n in group["negatives"]]) for group in groups]


def make_distil_batch(tokenizer, groups, n_passages=4, epoch=0):
    """:func:`make_batch` of scored groups through the distillation dataset and collator (``teacher_scores`` added)."""
    from tevatron.data import SequencePadder, TrainCollator, TrainDataset
    from tevatron.distillation import DistillationCollator, DistillationDataset

    dataset = DistillationDataset(TrainDataset(groups, n_passages, 42))
    dataset.set_epoch(epoch)
    collator = DistillationCollator(TrainCollator(SequencePadder(tokenizer), q_max_len=16, p_max_len=80))
    return collator([dataset[i] for i in range(len(groups))])


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def make_tiny_reranker(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2, positions: int = 160) -> Path:
    """Save a tiny random one-logit BertForSequenceClassification as the reranker drivers save it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tevatron.reranker.modeling import save_cross_encoder
    from tevatron.tokenization import packaged_minilm_dir

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=positions, num_labels=1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    packaged = packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(packaged)) if packaged is not None else None
    save_cross_encoder(BertForSequenceClassification(config), path, tokenizer)
    return path


def make_tiny_decoder_tokenizer(path: Path):
    """A word-level tokenizer like a decoder's: ``<s>`` before every text, no suffix, ``</s>`` as eos and
    a ``<pad>`` token (ids 0-3); other words map to ``<unk>`` (the toy data are token ids already)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "hello": 4, "world": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_decoder(path: Path, model_type: str = "llama", vocab_size: int = 30522, seed: int = 0,
                      hidden: int = 32, layers: int = 2) -> Path:
    """Save a tiny random decoder-only model (``llama`` or ``qwen2``, grouped key/value heads) as AutoModel
    saves it (``LlamaModel``), with :func:`make_tiny_decoder_tokenizer`'s tokenizer, to ``path``."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                                  tie_word_embeddings=False)
    AutoModel.from_config(config).save_pretrained(path)
    make_tiny_decoder_tokenizer(path)
    return path


def build_lora_model(path, negatives_x_device: bool = False):
    """A LoRA bi-encoder built the same way in every process: seeded adapter init, and non-zero B matrices
    (peft starts them at zero, which would leave the A matrices without gradient)."""
    import torch
    from tevatron.arguments import ModelArguments
    from tevatron.modeling import DenseModel

    torch.manual_seed(0)
    model = DenseModel.build(ModelArguments(model_name_or_path=str(path), lora=True, lora_r=4, lora_dropout=0.0),
                             negatives_x_device=negatives_x_device)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def stopped_training_script(driver_module: str) -> str:
    """A ``python -c`` script running ``driver_module``'s ``main`` that ends the process right after the
    checkpoint of step ``$STOP_AT`` is saved, as a run killed then would (a finished run removes its
    checkpoints, so this is how a test keeps one)."""
    return f"""
import os, sys
from transformers import TrainerCallback
import tevatron.trainer
from {driver_module} import main

class StopAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["STOP_AT"]):
            os._exit(3)

init = tevatron.trainer.TevatronTrainer.__init__
def stopping_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.add_callback(StopAfterSave())
tevatron.trainer.TevatronTrainer.__init__ = stopping_init
sys.exit(main(sys.argv[1:]))
"""
