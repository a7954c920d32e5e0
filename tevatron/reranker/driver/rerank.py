"""``python -m tevatron.reranker.driver.rerank``: rerank the top of each query of a run with a cross-encoder.

Reads a run in any format :func:`tevatron.text_formats.read_run_with_format` reads (the reducer's
``qid pid score``, MS MARCO ranks, TREC), the queries and corpus the encode driver reads (tokenized, or raw
text: ``{"query_id", "query"}`` / ``{"docid", "title", "text"}``, tokenized here, only the passages reranked), and
scores the top ``--rerank_depth`` passages of each query (by the run's order; passages below the depth
are left out of the output).  The output is ``qid pid score`` like the reducer's, score descending, ties
by the passage's row in the corpus as the retriever breaks them.

Sharding (``--encode_num_shard N --encode_shard_index I``) splits the run's queries into N contiguous
parts in run order; each shard is a complete run for its queries, so concatenating the shard outputs in
index order (``cat out.0 out.1 ...``) gives exactly the unsharded output.  The output carries a
provenance record (model, run, inputs, depth, lengths, shard, precision): a re-run with the same inputs
skips, a retrained model or a changed run redoes it.
"""
from __future__ import annotations

import logging
import sys

import torch
from transformers import HfArgumentParser

from tevatron.argument_checks import parse_dataclasses
from tevatron.cli import CommandError, command
from tevatron.cpu_kernels import use_onednn_linear
from tevatron.data import encode_input_format, read_encode_records, shard_range
from tevatron.driver.encode import tokenize_raw
from tevatron.faiss_retriever.topk import order_by_score_then_position
from tevatron.files import InputError, check_output_file
from tevatron.preprocess.tokenize import TEXT
from tevatron.provenance import file_identity, model_identity, read_file_record, up_to_date, write_file_record
from tevatron.text_formats import iter_lines, read_run_with_format, write_ranking

from ..arguments import RerankArguments, RerankerModelArguments, ScoringArguments
from ..data import PairBuilder
from ..scoring import autocast_dtype_for, load_scorer, expand_inputs, score_pairs

logger = logging.getLogger("tevatron.reranker.driver.rerank")


def top_of_run(run: dict[str, dict[str, float]], depth: int) -> dict[str, list[str]]:
    """Each query's best ``depth`` passages by the run's score (ties: the order of the run file)."""
    return {qid: [pid for pid, _ in sorted(hits.items(), key=lambda hit: -hit[1])[:depth]]
            for qid, hits in run.items()}


def line_of(path, qid: str, pid: str | None = None) -> int | None:
    """The first line of run ``path`` naming ``qid`` (and ``pid``); only for an error message."""
    for number, line in iter_lines(path):
        fields = line.split("\t") if "\t" in line else line.split()
        if not fields or fields[0].strip() != qid:
            continue
        if pid is None or pid in (f.strip() for f in fields[1:3]):
            return number
    return None


def rerank_provenance(model_args, args, inputs: dict, max_len: int, precision: str) -> dict:
    return {"model": model_identity(model_args.model_name_or_path),
            "tokenizer": model_identity(model_args.tokenizer_name) if model_args.tokenizer_name else "the model's",
            "run": file_identity(args.run), "queries": [file_identity(p) for p in inputs["queries"]],
            "corpus": [file_identity(p) for p in inputs["corpus"]], "depth": args.rerank_depth,
            "q_max_len": args.q_max_len, "pair_max_len": max_len,
            "shard": {"count": args.encode_num_shard, "index": args.encode_shard_index}, "precision": precision}


def tokenize_reranked(tokenizer, builder: PairBuilder, top: dict[str, list[str]], query_text: dict,
                      passage_row: dict, passage_text: list) -> tuple[dict, dict]:
    """Raw queries and passages to ids, only those ``top`` reranks, cut to what a pair can hold (as
    :func:`tevatron.reranker.data.pair_text_tokenizer` cuts training groups); returns the two lookups
    ``rerank`` reads: qid -> ids, corpus row -> ids."""
    qids = list(top)
    queries = tokenize_raw(tokenizer, [query_text[qid] for qid in qids], builder.query_budget, True, "")
    rows = sorted({passage_row[pid] for pids in top.values() for pid in pids})
    passages = tokenize_raw(tokenizer, [passage_text[row] for row in rows], builder.max_len - builder.pair_special,
                            False, "")
    return dict(zip(qids, queries)), dict(zip(rows, passages))


def rerank(model, builder: PairBuilder, top: dict[str, list[str]], query_text: dict, passage_row: dict,
           passage_text: list, batch_size: int, device, autocast_dtype=None, progress: bool = True):
    """``[(qid, [(pid, score), ...]), ...]`` best first, for the queries of ``top`` in their order."""
    pairs, owners = [], []
    for qid, pids in top.items():
        for pid in pids:
            pairs.append((query_text[qid], passage_text[passage_row[pid]]))
            owners.append(qid)
    scores = score_pairs(model, builder, pairs, batch_size, device, autocast_dtype, progress, desc="reranking")
    ranking, start = [], 0
    for qid, pids in top.items():
        row_scores = scores[start: start + len(pids)].view(1, -1)
        rows = torch.tensor([passage_row[pid] for pid in pids], dtype=torch.int64).view(1, -1)
        ordered_scores, ordered_rows = order_by_score_then_position(row_scores, rows)
        by_row = {passage_row[pid]: pid for pid in pids}
        ranking.append((qid, [(by_row[row], score) for row, score in
                              zip(ordered_rows[0].tolist(), ordered_scores[0].tolist())]))
        start += len(pids)
    return ranking


@command
def main(argv=None) -> int:
    parser = HfArgumentParser((RerankerModelArguments, RerankArguments, ScoringArguments))
    model_args, args, run_args = parse_dataclasses(parser, argv)
    missing = [flag for flag, value in (("--run", args.run), ("--queries", args.queries), ("--corpus", args.corpus),
                                        ("--rerank_output", args.rerank_output)) if not value]
    if missing:
        raise CommandError(f"give {', '.join(missing)}")
    check_output_file(args.rerank_output)
    inputs = {"queries": expand_inputs(args.queries), "corpus": expand_inputs(args.corpus)}
    model, builder, precision = load_scorer(model_args, args.q_max_len, args.p_max_len, run_args)
    wanted = rerank_provenance(model_args, args, inputs, builder.max_len, precision)
    if up_to_date(args.rerank_output, wanted, read_file_record, args.overwrite, redo="reranking"):
        return 0

    run, run_format = read_run_with_format(args.run)
    if not run:
        raise InputError(args.run, "empty run: no ranking to rerank")
    qids = list(run)
    shard = shard_range(len(qids), args.encode_num_shard, args.encode_shard_index)
    top = top_of_run({qid: run[qid] for qid in qids[shard.start: shard.stop]}, args.rerank_depth)
    if not top:
        raise InputError(args.run, f"shard {args.encode_shard_index} of {args.encode_num_shard} has no queries "
                         f"(the run has {len(qids)})")
    formats = {name: encode_input_format(paths) for name, paths in inputs.items()}
    if formats["queries"] != formats["corpus"]:
        raise CommandError(f"--queries are {formats['queries']} but --corpus is {formats['corpus']}; give both "
                           "tokenized or both raw text")
    data_format = formats["corpus"]
    vocab = model.get_input_embeddings().num_embeddings
    query_ids, query_texts = read_encode_records(inputs["queries"], vocab_size=vocab, is_query=True)
    query_text = dict(zip(query_ids, query_texts))
    passage_ids, passage_text = read_encode_records(inputs["corpus"], vocab_size=vocab)
    passage_row = {pid: row for row, pid in enumerate(passage_ids)}
    for qid, pids in top.items():
        if qid not in query_text:
            raise InputError(args.run, f"query {qid!r} is not in the queries ({', '.join(inputs['queries'])})",
                             line_of(args.run, qid))
        for pid in pids:
            if pid not in passage_row:
                raise InputError(args.run, f"passage {pid!r} (query {qid!r}) is not in the corpus "
                                 f"({', '.join(inputs['corpus'])})", line_of(args.run, qid, pid))
    if data_format == TEXT:
        query_text, passage_text = tokenize_reranked(builder.tokenizer, builder, top, query_text, passage_row,
                                                     passage_text)
    n_pairs = sum(len(pids) for pids in top.values())
    logger.info("reranking %d queries (shard %d of %d of %d; %s run), %d pairs, pairs cut to %d tokens", len(top),
                args.encode_shard_index, args.encode_num_shard, len(qids), run_format, n_pairs, builder.max_len)

    device = run_args.device
    model.to(device)
    if device.type == "cpu":
        use_onednn_linear(model, model_args.cpu_linear)
    ranking = rerank(model, builder, top, query_text, passage_row, passage_text,
                     run_args.per_device_eval_batch_size, device, autocast_dtype_for(precision))
    write_ranking(args.rerank_output, ranking)
    write_file_record(args.rerank_output, wanted)
    logger.info("wrote %s", args.rerank_output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
