"""Does lower precision move the scores?  SciFact test queries, one model, three ways of making the vectors:

- fp32: the reference;
- bf16: encoded under bf16 autocast (forced here, whether or not ``--bf16`` would pick it on this CPU);
- fp16 storage: the fp32 vectors rounded to float16, as ``--encode_dtype float16`` stores them (search
  widens them back to fp32).

It prints the cosine of each vector to its fp32 twin and nDCG@10, MRR@10 and Recall@100 of an exact
search with each, side by side.  Targets (issue #12): bf16 nDCG@10 within 0.003 of fp32, cosine >= 0.999;
fp16 storage Recall@100 within 0.001.

    python bench/precision_quality.py                      # the packaged all-MiniLM-L6-v2
    python bench/precision_quality.py --model runs/.../model-hn --pooling cls
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SCIFACT_DIR, minilm_dir  # noqa: E402


def scifact_test_texts(tokenizer, q_max_len: int, p_max_len: int):
    """Tokenized SciFact corpus and test queries (ids without special tokens), and the test qrels."""
    from tevatron.text_formats import iter_jsonl, read_qrels
    docs = [record for _, record in iter_jsonl(SCIFACT_DIR / "corpus.jsonl")]
    joined = [f'{d["title"]} {tokenizer.sep_token} {d["text"]}' for d in docs]
    passages = tokenizer(joined, add_special_tokens=False, truncation=True, max_length=p_max_len - 2)["input_ids"]
    qrels = read_qrels(SCIFACT_DIR / "qrels" / "test.tsv")
    query_text = {str(r["_id"]): r["text"] for _, r in iter_jsonl(SCIFACT_DIR / "queries.jsonl")}
    qids = sorted(q for q in qrels if q in query_text)
    queries = tokenizer([query_text[q] for q in qids], add_special_tokens=False, truncation=True,
                        max_length=q_max_len - 2)["input_ids"]
    return [str(d["_id"]) for d in docs], passages, qids, queries, {q: qrels[q] for q in qids}


def search_metrics(q_reps, p_reps, qids, pids, qrels, depth: int = 100) -> dict[str, float]:
    from tevatron.evaluation import evaluate
    from tevatron.faiss_retriever.topk import exact_topk
    scores, positions = exact_topk(q_reps @ p_reps.T, depth)
    run = {qid: {pids[int(p)]: float(s) for s, p in zip(row_scores, row_positions)}
           for qid, row_scores, row_positions in zip(qids, scores.tolist(), positions.tolist())}
    return evaluate(qrels, run, names=("MRR@10", "nDCG@10", "Recall@100"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--pooling", default="auto")
    parser.add_argument("--normalize", action="store_true", help="for a plain model without a saved choice")
    parser.add_argument("--q_max_len", type=int, default=64)
    parser.add_argument("--p_max_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from tevatron.cpu_kernels import cpu_bf16_speedup
    from tevatron.data import SequencePadder
    from tevatron.driver.encode import encode_texts
    from tevatron.modeling import DenseModel
    from tevatron.tokenization import load_tokenizer

    model_dir = args.model or str(minilm_dir())
    tokenizer = load_tokenizer(model_dir)
    pids, passages, qids, queries, qrels = scifact_test_texts(tokenizer, args.q_max_len, args.p_max_len)
    model = DenseModel.load(model_dir, pooling=args.pooling, normalize=args.normalize)
    padder = SequencePadder(tokenizer)
    device = torch.device("cpu")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU")
    hidden = model.lm_q.config.hidden_size
    print(f"model {model_dir} ({model.dense_config.pooling} pooling, normalize={model.dense_config.normalize}); "
          f"{len(passages)} passages, {len(queries)} test queries; {cpu}, {torch.get_num_threads()} threads; "
          f"bf16 linear speedup at hidden size {hidden}: {cpu_bf16_speedup(hidden):.2f}x")

    vectors, seconds = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        start = time.perf_counter()
        p_reps = encode_texts(model, padder, passages, args.p_max_len, False, args.batch_size, device, dtype)
        seconds[name] = time.perf_counter() - start
        q_reps = encode_texts(model, padder, queries, args.q_max_len, True, args.batch_size, device, dtype)
        vectors[name] = (q_reps, p_reps)
    q32, p32 = vectors["fp32"]
    vectors["fp16 storage"] = (q32.half().float(), p32.half().float())

    reference = search_metrics(q32, p32, qids, pids, qrels)
    print(f"{'vectors':<14}{'min cosine':>11}{'MRR@10':>9}{'nDCG@10':>9}{'R@100':>8}"
          f"{'d nDCG@10':>11}{'d R@100':>9}{'passages/s':>12}")
    for name, (q_reps, p_reps) in vectors.items():
        cosine = min(float(F.cosine_similarity(p_reps, p32, dim=1).min()),
                     float(F.cosine_similarity(q_reps, q32, dim=1).min()))
        metrics = reference if name == "fp32" else search_metrics(q_reps, p_reps, qids, pids, qrels)
        speed = f"{len(passages) / seconds[name]:.0f}" if name in seconds else "-"
        print(f"{name:<14}{cosine:>11.6f}{metrics['MRR@10']:>9.4f}{metrics['nDCG@10']:>9.4f}"
              f"{metrics['Recall@100']:>8.4f}{metrics['nDCG@10'] - reference['nDCG@10']:>+11.4f}"
              f"{metrics['Recall@100'] - reference['Recall@100']:>+9.4f}{speed:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
