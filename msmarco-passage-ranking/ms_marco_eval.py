"""Evaluate a run against MS MARCO qrels: MRR @10 (official definition), Recall@50/100/1000, nDCG@10.

    python msmarco-passage-ranking/ms_marco_eval.py QRELS RUN [--run_format auto|score|rank|trec] [--json OUT]

A thin command line over :mod:`tevatron.evaluation` (same as ``python -m tevatron.evaluation``).  The run's
format is read from its content, not its name; an MS MARCO run's ranks count as given, as in the official script.
"""
from tevatron.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
