"""Convert a ``qid<TAB>pid<TAB>score`` ranking into ``FILE.marco`` (``qid pid rank``) and, with
``--trec``, ``FILE.trec`` (``qid Q0 pid rank score tag``).

    python msmarco-passage-ranking/score_to_marco.py ranking/rank.txt [--trec] [--tag NAME]

Ranks follow the evaluation order (score descending, ties by passage id), so evaluating FILE and
FILE.marco gives the same numbers.  Nothing is written unless the whole ranking reads cleanly: NaN or
infinite scores, an MS MARCO run given instead of scores, and (with ``--trec``) ids holding whitespace
are refused with one ``error: FILE:LINE`` line.  The logic lives in :func:`tevatron.evaluation.convert_ranking`.
"""
import argparse

from tevatron.evaluation import convert_ranking
from tevatron.cli import command
from tevatron.files import check_output_file


@command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("score_file", help="qid<TAB>pid<TAB>score ranking, lines grouped by query")
    parser.add_argument("--trec", action="store_true", help="also write FILE.trec")
    parser.add_argument("--tag", default="tevatron", help="run tag for the TREC file (one word)")
    args = parser.parse_args(argv)
    if not args.tag or any(ch.isspace() for ch in args.tag):
        parser.error("--tag must be one non-empty word")
    for suffix in (".marco", ".trec") if args.trec else (".marco",):
        check_output_file(args.score_file + suffix)
    for path in convert_ranking(args.score_file, trec=args.trec, tag=args.tag):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
