"""Training groups with hard negatives mined from a dense ranking (``qid \\t pid \\t score``).

Candidates are ranks ``(skip_top, depth]`` of each query's ranking, best first, minus its positives;
``--skip_top N`` keeps the very top out of the pool, where unjudged relevant passages (false negatives)
gather.  Sampling, tokenising and writing are :mod:`tevatron.preprocess.build_train`'s.

The groups are written as ``split00.hn.json`` ..., Tevatron v1's names, so that the BM25 groups
(``split00.json`` ...) can be linked in beside them to make stage 2's training folder
(``ln -s $PWD/marco/bert/train/split*.json marco/bert/train-hn/``); neither builder touches the other's files.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator, Sequence

from tevatron.argument_checks import NON_NEGATIVE, POSITIVE, int_arg
from tevatron.cli import command
from tevatron.files import InputError, check_output_dir
from tevatron.text_formats import iter_ranking_groups
from tevatron.preprocess.build_train import (TrainSetOptions, add_common_arguments, build_training_set,
                                             options_from_args)
from tevatron.provenance import file_identity

HN_SHARD_SUFFIX = ".hn.json"  # v1's split00.hn.json, beside links to the BM25 split00.json


def iter_ranked_candidates(ranking_file, depth: int = 200, skip_top: int = 0) -> Iterator[tuple[str, list[str]]]:
    """``(qid, pids at ranks skip_top+1 .. depth)`` per query block of a ranking.

    Hits are ordered by score (stable, so a file already best-first keeps its order); rank positions
    are counted before positives are removed, so a positive at the top does not pull a deeper
    passage into the window.
    """
    if depth < 0 or skip_top < 0:
        raise ValueError("depth and skip_top must not be negative")
    for qid, hits in iter_ranking_groups(ranking_file):
        ordered = sorted(hits, key=lambda hit: -float(hit[1]))
        yield qid, [pid for pid, _ in ordered[skip_top:depth]]


def build_train_hn(tokenizer_name: str, hn_file, qrels, queries, collection, save_to, depth: int = 200,
                   skip_top: int = 0, options: TrainSetOptions = TrainSetOptions(), overwrite: bool = False
                   ) -> list[Path]:
    """Write hard-negative training groups from ranking ``hn_file`` (see the module docstring)."""
    if not Path(hn_file).is_file():
        raise InputError(hn_file, "no such file")
    candidates = {"hn_file": file_identity(hn_file), "depth": depth, "skip_top": skip_top,
                  "shards": f"split*{HN_SHARD_SUFFIX}"}  # a folder of older split*.json hard negatives is redone
    return build_training_set(iter_ranked_candidates(hn_file, depth, skip_top), hn_file, tokenizer_name, qrels,
                              queries, collection, save_to, options, candidates, overwrite,
                              shard_suffix=HN_SHARD_SUFFIX)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--hn_file", required=True, help="dense ranking qid \\t pid \\t score (train.rank.tsv)")
    parser.add_argument("--depth", type=int_arg(POSITIVE), default=200, help="deepest rank to take negatives from")
    parser.add_argument("--skip_top", type=int_arg(NON_NEGATIVE), default=0, help="ranks at the top never used as negatives")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.skip_top >= args.depth:
        parser.error(f"--skip_top {args.skip_top} leaves no ranks to take negatives from (--depth {args.depth})")
    check_output_dir(args.save_to)
    build_train_hn(args.tokenizer_name, args.hn_file, args.qrels, args.queries, args.collection, args.save_to,
                   args.depth, args.skip_top, options_from_args(args), args.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    return command(_main)(argv)
