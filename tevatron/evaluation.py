"""Ranking metrics for MS MARCO passage ranking: MRR@10 (official definition), Recall@50/100/1000, nDCG@10.

``python -m tevatron.evaluation QRELS RUN [--run_format auto|score|rank|trec] [--json OUT]``

Conventions, shared by every function here and by ``score_to_marco``:

* A run's format is decided by its content (:func:`tevatron.text_formats.read_run_with_format`), never
  by its file name.  A score run (``qid pid score`` or TREC) is ranked by score descending, ties by
  passage id ascending (string order), and a passage's rank is its position in that order.
* An MS MARCO run (``qid pid rank``) keeps the ranks the file gives, as the official
  ``ms_marco_eval.py`` does: a passage at rank 12 is outside MRR@10 even when fewer than 11 passages
  are listed, and a first relevant passage at rank 5 scores 1/5.
* Every query in the qrels counts, and averages are over the qrels queries: a query missing from the
  run scores 0, exactly like the official script (which divides the MRR sum by the number of qrels
  queries; it warns when queries are missing, and so do we).  Run queries without judgements are
  ignored.  A run that is empty or shares no query with the qrels is an error, as in the official script.
* A passage is relevant when its judged relevance is > 0; nDCG gains are the relevance values
  (trec_eval's linear gain, log2 discount).
* Recall@K is computed only when the run ranks K passages for some query; on a shallower run it would
  be Recall@depth under another name, so it is left out with a warning.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from tevatron.cli import command
from tevatron.files import InputError, atomic_text_writer, check_output_file
from tevatron.text_formats import (RUN_FORMATS, check_trec_tag, iter_ranking_groups, marco_run_lines, read_qrels,
                                   read_run_with_format, trec_run_lines)

logger = logging.getLogger("tevatron.evaluation")  # the same name under python -m

MRR_CUTOFF = 10
RECALL_CUTOFFS = (50, 100, 1000)
NDCG_CUTOFF = 10
METRIC_NAMES = ("MRR@10", "Recall@50", "Recall@100", "Recall@1000", "nDCG@10")

Ranked = Sequence[tuple[int, str]]  # (rank, passage id), best first


# --------------------------------------------------------------------------- ordering
def ranked_passages(hits: Mapping[str, float]) -> list[str]:
    """Passage ids best first: score descending, then id ascending, so ties are reproducible."""
    return sorted(hits, key=lambda pid: (-hits[pid], pid))


def ranked_hits(hits: Mapping[str, float], given_ranks: bool = False) -> list[tuple[int, str]]:
    """``(rank, pid)`` best first.  Scores: ranks are positions 1, 2, ... in :func:`ranked_passages`
    order.  ``given_ranks`` (an MS MARCO run, read with score ``-rank``): the file's own ranks."""
    order = ranked_passages(hits)
    if given_ranks:
        return [(int(-hits[pid]), pid) for pid in order]
    return list(enumerate(order, start=1))


def run_depth(run: Mapping[str, Mapping[str, float]], given_ranks: bool = False) -> int:
    """The deepest rank the run gives any query (0 for an empty run)."""
    if given_ranks:
        return max((int(-score) for hits in run.values() for score in hits.values()), default=0)
    return max((len(hits) for hits in run.values()), default=0)


# --------------------------------------------------------------------------- per-query metrics
def reciprocal_rank(ranked: Ranked, relevant: set[str], cutoff: int = MRR_CUTOFF) -> float:
    for rank, pid in ranked:
        if rank > cutoff:
            break
        if pid in relevant:
            return 1.0 / rank
    return 0.0


def recall(ranked: Ranked, relevant: set[str], cutoff: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for rank, pid in ranked if rank <= cutoff and pid in relevant) / len(relevant)


def ndcg(ranked: Ranked, judged: Mapping[str, int], cutoff: int = NDCG_CUTOFF) -> float:
    """nDCG with gain = relevance (positive only) and discount 1/log2(rank + 1), as trec_eval's ndcg_cut."""
    dcg = sum(judged.get(pid, 0) / math.log2(rank + 1) for rank, pid in ranked
              if rank <= cutoff and judged.get(pid, 0) > 0)
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:cutoff]
    ideal = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal_gains, start=1))
    return dcg / ideal if ideal > 0 else 0.0


def query_metrics(judged: Mapping[str, int], hits: Mapping[str, float] | None, given_ranks: bool = False,
                  names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """The metrics ``names`` for one query; an absent or empty ranking scores 0 everywhere."""
    ranked = ranked_hits(hits, given_ranks) if hits else []
    relevant = {pid for pid, rel in judged.items() if rel > 0}
    values = {"MRR@10": reciprocal_rank(ranked, relevant, MRR_CUTOFF)}
    for cutoff in RECALL_CUTOFFS:
        values[f"Recall@{cutoff}"] = recall(ranked, relevant, cutoff)
    values["nDCG@10"] = ndcg(ranked, judged, NDCG_CUTOFF)
    return {name: values[name] for name in names}


def per_query(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
              given_ranks: bool = False, names: Sequence[str] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """Metrics for every qrels query (those absent from the run included, at 0)."""
    return {qid: query_metrics(judged, run.get(qid), given_ranks, names) for qid, judged in qrels.items()}


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
             given_ranks: bool = False, names: Sequence[str] = METRIC_NAMES) -> dict[str, float]:
    """Mean of each metric over all qrels queries (the official MS MARCO denominator)."""
    if not qrels:
        raise ValueError("no qrels queries to evaluate")
    values = per_query(qrels, run, given_ranks, names)
    return {name: sum(query[name] for query in values.values()) / len(values) for name in names}


def query_counts(qrels: Mapping, run: Mapping) -> dict[str, int]:
    return {"QueriesRanked": len(run), "QueriesInQrels": len(qrels),
            "QueriesRankedAndJudged": sum(1 for qid in run if qid in qrels)}


def supported_metrics(depth: int) -> tuple[str, ...]:
    """The metrics a run of this depth supports: MRR@10 and nDCG@10 always (as the official script and
    trec_eval compute them on any run), Recall@K only when the run reaches rank K."""
    return tuple(name for name in METRIC_NAMES if not name.startswith("Recall@") or int(name[7:]) <= depth)


def check_overlap(run_path, qrels_path, counts: Mapping[str, int]) -> None:
    """An empty run, or one sharing no query with the qrels, would score a silent 0: an InputError.
    A run covering only part of the qrels queries gets a warning with the counts (the rest count as 0)."""
    ranked, judged, both = counts["QueriesRanked"], counts["QueriesInQrels"], counts["QueriesRankedAndJudged"]
    if ranked == 0:
        raise InputError(run_path, f"empty run: it ranks no query ({judged} queries in {qrels_path})")
    if both == 0:
        raise InputError(run_path, f"none of the run's {ranked} queries is in {qrels_path} ({judged} queries); "
                                   "wrong qrels or wrong query set?")
    if both < judged:
        logger.warning("%s ranks %d of the %d queries in %s; the other %d count as 0 in every average",
                       run_path, both, judged, qrels_path, judged - both)


# --------------------------------------------------------------------------- conversions
def iter_reranked_groups(path, trec_ids: bool = False) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Groups of a ``qid pid score`` ranking re-ordered by the evaluation rule (score desc, pid asc).

    Streams one query at a time; a query split over two separate blocks is an error because its
    ranks could not be assigned without holding the whole file.  ``trec_ids``: see
    :func:`tevatron.text_formats.iter_ranking_groups`.
    """
    seen: set[str] = set()
    for qid, hits in iter_ranking_groups(path, trec_ids=trec_ids):
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
    """Write ``PATH.marco`` (``qid pid rank``) and, with ``trec``, ``PATH.trec``; return the paths written.

    One pass writes both; each appears only when the whole input was read without error, so a bad
    line (or an id a TREC run cannot hold) leaves neither file behind."""
    path = Path(path)
    if trec:
        check_trec_tag(tag)
    outputs = [path.with_name(path.name + ".marco")] + ([path.with_name(path.name + ".trec")] if trec else [])
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(atomic_text_writer(output)) for output in outputs]
        empty = True
        for group in iter_reranked_groups(path, trec_ids=trec):
            empty = False
            files[0].writelines(marco_run_lines(outputs[0], [group]))
            if trec:
                files[1].writelines(trec_run_lines(outputs[1], [group], tag))
        if empty:
            raise InputError(path, "empty ranking: no qid<TAB>pid<TAB>score lines")
    return outputs


# --------------------------------------------------------------------------- command line
def format_report(metrics: Mapping[str, float], counts: Mapping[str, int]) -> str:
    lines = ["#####################", f"MRR @10: {metrics['MRR@10']:.4f}",
             f"QueriesRanked: {counts['QueriesRanked']}", f"QueriesInQrels: {counts['QueriesInQrels']}",
             f"QueriesRankedAndJudged: {counts['QueriesRankedAndJudged']}"]
    lines += [f"{name}: {metrics[name]:.4f}" for name in METRIC_NAMES if name != "MRR@10" and name in metrics]
    lines.append("#####################")
    return "\n".join(lines)


def write_metrics_json(path, metrics: Mapping[str, float], counts: Mapping[str, int], qrels_path, run_path,
                       run_format: str | None = None, depth: int | None = None) -> None:
    record = {**metrics, **counts, "RunFormat": run_format, "RunDepth": depth,
              "qrels": str(qrels_path), "run": str(run_path)}
    with atomic_text_writer(path) as out:
        out.write(json.dumps(record, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="MRR@10 (official MS MARCO), Recall@50/100/1000, nDCG@10.")
    parser.add_argument("qrels", help="TREC/MS MARCO 4-column or BEIR 3-column (with header) qrels")
    parser.add_argument("run", help="'qid pid score' ranking, 'qid pid rank' MS MARCO run, or TREC 6-column run")
    parser.add_argument("--run_format", choices=RUN_FORMATS, default="auto",
                        help="auto (by content, not file name): 6 columns = TREC; 3 columns = ranks when the third "
                             "column runs 1, 2, 3... per query, scores when it holds any non-integer; other "
                             "all-integer columns are ambiguous and need this option")
    parser.add_argument("--json", dest="json_path", help="also write the metrics and counts as JSON here")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json_path:
        check_output_file(args.json_path)
    qrels = read_qrels(args.qrels)
    run, run_format = read_run_with_format(args.run, args.run_format)
    counts = query_counts(qrels, run)
    check_overlap(args.run, args.qrels, counts)
    given_ranks = run_format == "rank"
    depth = run_depth(run, given_ranks)
    names = supported_metrics(depth)
    left_out = [name for name in METRIC_NAMES if name not in names]
    if left_out:
        logger.warning("%s ranks passages only down to rank %d; leaving out %s (deeper than the run)",
                       args.run, depth, ", ".join(left_out))
    metrics = evaluate(qrels, run, given_ranks, names)
    print(format_report(metrics, counts))
    if args.json_path:
        write_metrics_json(args.json_path, metrics, counts, args.qrels, args.run, run_format, depth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
