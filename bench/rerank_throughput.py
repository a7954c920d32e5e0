"""Rerank throughput: our rerank path against a plain transformers sequence-classification loop, side by
side in one run, in pairs/s and as a fraction of the machine's physical limit.

The same (query, passage) pairs for both: the top of a run's queries (default: SciFact BM25 top-100 of the
dev queries, tokenized with MiniLM's tokenizer, as the quick profile prepares them), cut as the rerank
driver cuts them (``[CLS] query [SEP]`` <= --q_max_len, pair <= --q_max_len + --p_max_len).

  * ours: :func:`tevatron.reranker.scoring.score_pairs`, what ``tevatron.reranker.driver.rerank`` runs
    (length-sorted batches padded to their longest pair, oneDNN linear where measured faster on CPU).
  * plain: ``AutoModelForSequenceClassification`` as loaded, batches in input order, every batch padded
    to the maximum pair length (fixed padding), under ``torch.inference_mode``.
Both use the same batch size and the same weights (all-MiniLM-L6-v2 with a fresh one-logit head: speed
does not depend on the head's values); their scores are compared.  Each is timed after one untimed warm-up
batch.  Physical limit: the best fp32 matmul rate (bench/common.py) is the peak; achieved FLOP/s counts
2 x non-embedding parameters per real token (padding and attention's own products not counted).

    python bench/rerank_throughput.py                      # ~1024 pairs, a few minutes on 2 busy cores
    python bench/rerank_throughput.py --n_pairs 128        # a smoke test
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import measure_matmul_peak, minilm_dir, non_embedding_parameters  # noqa: E402

PREPARED = Path(__file__).resolve().parents[1] / "marco" / "scifact"  # what get_data.sh prepares (quick profile)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(PREPARED / "bm25.dev.rank.tsv"))
    parser.add_argument("--queries", default=str(PREPARED / "bert" / "query" / "dev.query.json"))
    parser.add_argument("--corpus", default=str(PREPARED / "bert" / "corpus"))
    parser.add_argument("--n_pairs", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--q_max_len", type=int, default=32)
    parser.add_argument("--p_max_len", type=int, default=192)
    return parser.parse_args(argv)


def load_pairs(args):
    from tevatron.data import read_encode_records
    from tevatron.text_formats import read_run

    run = read_run(args.run)
    queries = dict(zip(*read_encode_records([args.queries])))
    passage_ids, passage_texts = read_encode_records([args.corpus])
    rows = {pid: row for row, pid in enumerate(passage_ids)}
    pairs = []
    for qid, hits in run.items():
        for pid in sorted(hits, key=lambda p: -hits[p]):
            pairs.append((queries[qid], passage_texts[rows[pid]]))
            if len(pairs) == args.n_pairs:
                return pairs
    return pairs


def plain_loop(model, builder, pairs, batch_size):
    scores = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = builder(pairs[start: start + batch_size], pad_to=builder.max_len)
            scores.append(model(**batch).logits.view(-1).float())
    return torch.cat(scores)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main(argv=None):
    args = parse_arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, logging as hf_logging

    from tevatron.cpu_kernels import use_onednn_linear
    from tevatron.reranker.data import PairBuilder
    from tevatron.reranker.modeling import load_cross_encoder, position_limit
    from tevatron.reranker.scoring import score_pairs
    from tevatron.tokenization import load_tokenizer

    hf_logging.set_verbosity_error()
    model_dir = str(minilm_dir())
    tokenizer = load_tokenizer(model_dir)
    pairs = load_pairs(args)
    torch.manual_seed(0)
    ours = load_cross_encoder(model_dir).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    plain.load_state_dict(ours.state_dict())  # the same fresh head
    device = torch.device("cpu")
    use_onednn_linear(ours, "auto")
    builder = PairBuilder(tokenizer, args.q_max_len, args.p_max_len, position_limit(ours))
    lengths = [builder.pair_length(q, p) for q, p in pairs]
    real_tokens = sum(lengths)
    print(f"{len(pairs)} pairs from {args.run}: pair length mean {real_tokens / len(pairs):.1f}, max "
          f"{max(lengths)}, {sum(l == builder.max_len for l in lengths) / len(pairs):.0%} at the cap "
          f"{builder.max_len}; batch size {args.batch_size}, {torch.get_num_threads()} threads")

    warm = pairs[: args.batch_size]
    score_pairs(ours, builder, warm, args.batch_size, device, progress=False)
    plain_loop(plain, builder, warm, args.batch_size)
    ours_s, ours_scores = timed(lambda: score_pairs(ours, builder, pairs, args.batch_size, device, progress=False))
    plain_s, plain_scores = timed(lambda: plain_loop(plain, builder, pairs, args.batch_size))
    difference = (ours_scores - plain_scores).abs().max().item()

    rates = measure_matmul_peak(device, torch.float32)
    peak = max(rates.values())
    params = non_embedding_parameters(model_dir)
    print("matmul peak (fp32): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + f" GFLOP/s -> {peak:.0f}")
    print(f"non-embedding parameters {params / 1e6:.2f} M; physical limit {peak * 1e9 / (2 * params):,.0f} "
          f"real tokens/s")
    print(f"\n{'path':<44}{'seconds':>9}{'pairs/s':>10}{'tokens/s':>10}{'GFLOP/s':>9}{'% peak':>8}")
    for name, seconds in (("ours (length-sorted, oneDNN where faster)", ours_s),
                          (f"plain HF loop (fixed padding to {builder.max_len})", plain_s)):
        flops = 2 * params * real_tokens / seconds / 1e9
        print(f"{name:<44}{seconds:>9.2f}{len(pairs) / seconds:>10.1f}{real_tokens / seconds:>10,.0f}"
              f"{flops:>9.1f}{flops / peak:>8.1%}")
    print(f"\nspeed-up {plain_s / ours_s:.2f}x; largest score difference {difference:.2e}")
    print(f"load average {os.getloadavg()[0]:.2f} (a shared machine: timings move with it)")


if __name__ == "__main__":
    main()
