"""Print a pipeline run's results as a markdown table (and optionally pin them as a regression file).

    python msmarco-passage-ranking/results_table.py runs/scifact-quick
    python msmarco-passage-ranking/results_table.py runs/scifact-quick --pin regressions/scifact-quick.json \
        --env PROFILE=quick DATA=../shared/data/scifact

Reads ``OUT/metrics/{bm25,zero_shot,stage1,stage2,rerank_bm25,rerank_stage2,distil}.json`` (written by the pipeline's evaluation steps)
and ``OUT/step_times.log`` (every step's wall time).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROWS = {"bm25": "BM25 (bm25s, k1 0.9, b 0.4)", "zero_shot": "zero-shot", "stage1": "stage 1 (BM25 negatives)",
        "stage2": "stage 2 (BM25 + hard negatives)",
        # stage 3 (rerank.sh, distil.sh)
        "rerank_bm25": "reranker over BM25 top-100", "rerank_stage2": "reranker over stage-2 top-100",
        "distil": "distilled bi-encoder"}
METRICS = ("MRR@10", "nDCG@10", "Recall@100")


def load_rows(out: Path) -> dict[str, dict]:
    rows = {}
    for name in ROWS:
        path = out / "metrics" / f"{name}.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
    return rows


def render(rows: dict[str, dict], out: Path) -> str:
    lines = ["| run | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, metrics in rows.items():
        lines.append(f"| {ROWS[name]} | " + " | ".join(f"{metrics[m]:.3f}" for m in METRICS) + " |")
    log = out / "step_times.log"
    if log.is_file():
        lines += ["", "| script | step | wall time |", "|---|---|---|"]
        for entry in log.read_text().splitlines():
            script, step, seconds = entry.split()
            lines.append(f"| {script} | {step} | {float(seconds.rstrip('s')):.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the pipeline's OUT folder")
    parser.add_argument("--pin", type=Path, help="write these metrics as a regression file")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings the run used")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    rows = load_rows(args.out)
    if not rows:
        print(f"error: no metrics in {args.out / 'metrics'}", file=sys.stderr)
        return 2
    print(render(rows, args.out))
    if args.pin:
        spec = {"env": dict(item.split("=", 1) for item in args.env), "tolerance": args.tolerance,
                "expected": {name: {m: round(metrics[m], 4) for m in METRICS} for name, metrics in rows.items()}}
        args.pin.parent.mkdir(parents=True, exist_ok=True)
        args.pin.write_text(json.dumps(spec, indent=2) + "\n")
        print(f"\npinned to {args.pin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
