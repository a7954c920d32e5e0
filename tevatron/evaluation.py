"""Ranking metrics for MS MARCO passage ranking: MRR@10 (official definition), Recall@50/100/1000, nDCG@10.

``python -m tevatron.evaluation QRELS RUN [--json OUT]``

Conventions, shared by every function here and by ``score_to_marco``:

* A run is ranked by score descending, ties by passage id ascending (string order).  For MS MARCO
  ``.marco`` runs the score is ``-rank``, so this is the file's rank order.
* Every query in the qrels counts, and averages are over the qrels queries: a query missing from the
  run scores 0, exactly like the official ``ms_marco_eval.py`` (which divides the MRR sum by the number
  of qrels queries).  Run queries without judgements are ignored.
* A passage is relevant when its judged relevance is > 0; nDCG gains are the relevance values
  (trec_eval's linear gain, log2 discount).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from tevatron.cli import command
from tevatron.files import InputError, atomic_text_writer, check_output_file
from tevatron.text_formats import iter_ranking_groups, read_qrels, read_run, write_marco_run, write_trec_run

MRR_CUTOFF = 10
RECALL_CUTOFFS = (50, 100, 1000)
NDCG_CUTOFF = 10
METRIC_NAMES = ("MRR@10", "Recall@50", "Recall@100", "Recall@1000", "nDCG@10")


# --------------------------------------------------------------------------- ordering
def ranked_passages(hits: Mapping[str, float]) -> list[str]:
    """Passage ids best first: score descending, then id ascending, so ties are reproducible."""
    return sorted(hits, key=lambda pid: (-hits[pid], pid))


# --------------------------------------------------------------------------- per-query metrics
def reciprocal_rank(ranked: Sequence[str], relevant: set[str], cutoff: int = MRR_CUTOFF) -> float:
    for rank, pid in enumerate(ranked[:cutoff], start=1):
        if pid in relevant:
            return 1.0 / rank
    return 0.0


def recall(ranked: Sequence[str], relevant: set[str], cutoff: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for pid in ranked[:cutoff] if pid in relevant) / len(relevant)


def ndcg(ranked: Sequence[str], judged: Mapping[str, int], cutoff: int = NDCG_CUTOFF) -> float:
    """nDCG with gain = relevance (positive only) and discount 1/log2(rank + 1), as trec_eval's ndcg_cut."""
    gains = [judged.get(pid, 0) for pid in ranked[:cutoff]]
    dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1) if gain > 0)
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:cutoff]
    ideal = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal_gains, start=1))
    return dcg / ideal if ideal > 0 else 0.0


def query_metrics(judged: Mapping[str, int], hits: Mapping[str, float] | None) -> dict[str, float]:
    """All metrics for one query; an absent or empty ranking scores 0 everywhere."""
    ranked = ranked_passages(hits) if hits else []
    relevant = {pid for pid, rel in judged.items() if rel > 0}
    values = {"MRR@10": reciprocal_rank(ranked, relevant, MRR_CUTOFF)}
    for cutoff in RECALL_CUTOFFS:
        values[f"Recall@{cutoff}"] = recall(ranked, relevant, cutoff)
    values["nDCG@10"] = ndcg(ranked, judged, NDCG_CUTOFF)
    return values


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
              ) -> dict[str, dict[str, float]]:
    """Metrics for every qrels query (those absent from the run included, at 0)."""
    return {qid: query_metrics(judged, run.get(qid)) for qid, judged in qrels.items()}


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over all qrels queries (the official MS MARCO denominator)."""
    if not qrels:
        raise ValueError("no qrels queries to evaluate")
    values = per_query(qrels, run)
    return {name: sum(query[name] for query in values.values()) / len(values) for name in METRIC_NAMES}


def query_counts(qrels: Mapping, run: Mapping) -> dict[str, int]:
    return {"QueriesRanked": len(run), "QueriesInQrels": len(qrels),
            "QueriesRankedAndJudged": sum(1 for qid in run if qid in qrels)}


# --------------------------------------------------------------------------- conversions
def iter_reranked_groups(path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Groups of a ``qid pid score`` ranking re-ordered by the evaluation rule (score desc, pid asc).

    Streams one query at a time; a query split over two separate blocks is an error because its
    ranks could not be assigned without holding the whole file.
    """
    seen: set[str] = set()
    for qid, hits in iter_ranking_groups(path):
        if qid in seen:
            raise InputError(path, f"query {qid} appears in two separate blocks; group the lines by query")
        seen.add(qid)
        scores = {}
        for pid, score in hits:
            if pid in scores:
                raise InputError(path, f"passage {pid} listed twice for query {qid}")
            scores[pid] = score
        yield qid, [(pid, scores[pid]) for pid in sorted(scores, key=lambda pid: (-float(scores[pid]), pid))]


def convert_ranking(path, trec: bool = False, tag: str = "tevatron") -> list[Path]:
    """Write ``PATH.marco`` (``qid pid rank``) and, with ``trec``, ``PATH.trec``; return the paths written."""
    path = Path(path)
    outputs = [path.with_name(path.name + ".marco")]
    write_marco_run(outputs[0], iter_reranked_groups(path))
    if trec:
        outputs.append(path.with_name(path.name + ".trec"))
        write_trec_run(outputs[1], iter_reranked_groups(path), tag)
    return outputs


# --------------------------------------------------------------------------- command line
def format_report(metrics: Mapping[str, float], counts: Mapping[str, int]) -> str:
    lines = ["#####################", f"MRR @10: {metrics['MRR@10']:.4f}",
             f"QueriesRanked: {counts['QueriesRanked']}", f"QueriesInQrels: {counts['QueriesInQrels']}",
             f"QueriesRankedAndJudged: {counts['QueriesRankedAndJudged']}"]
    lines += [f"{name}: {metrics[name]:.4f}" for name in METRIC_NAMES if name != "MRR@10"]
    lines.append("#####################")
    return "\n".join(lines)


def write_metrics_json(path, metrics: Mapping[str, float], counts: Mapping[str, int], qrels_path, run_path) -> None:
    record = {**metrics, **counts, "qrels": str(qrels_path), "run": str(run_path)}
    with atomic_text_writer(path) as out:
        out.write(json.dumps(record, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MRR@10 (official MS MARCO), Recall@50/100/1000, nDCG@10.")
    parser.add_argument("qrels", help="TREC/MS MARCO 4-column or BEIR 3-column (with header) qrels")
    parser.add_argument("run", help="'qid pid score' ranking, 'qid pid rank' .marco file, or TREC 6-column run")
    parser.add_argument("--run_format", choices=("auto", "score", "rank", "trec"), default="auto",
                        help="auto: 6 columns = TREC; 3 columns = rank for *.marco, else score")
    parser.add_argument("--json", dest="json_path", help="also write the metrics and counts as JSON here")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json_path:
        check_output_file(args.json_path)
    qrels = read_qrels(args.qrels)
    run = read_run(args.run, args.run_format)
    metrics, counts = evaluate(qrels, run), query_counts(qrels, run)
    print(format_report(metrics, counts))
    if args.json_path:
        write_metrics_json(args.json_path, metrics, counts, args.qrels, args.run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
