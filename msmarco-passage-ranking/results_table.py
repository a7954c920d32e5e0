"""Print a pipeline run's results as a markdown table (and optionally pin them as a regression file).

    python msmarco-passage-ranking/results_table.py runs/scifact-quick
    python msmarco-passage-ranking/results_table.py runs/scifact-quick --pin regressions/scifact-quick.json \
        --env PROFILE=quick DATA=../shared/data/scifact
    python msmarco-passage-ranking/results_table.py runs/scifact-quick \
        --rerank_dir runs/scifact-quick/rerank-1a2b3c4d --distil_dir runs/scifact-quick/rerank-1a2b3c4d/distil-5e6f7a8b

Reads ``OUT/metrics/{bm25,zero_shot,stage1,stage2}.json`` (written by the pipeline's evaluation steps), the
stage-3 rows from the folders rerank.sh and distil.sh print (``RERANK_DIR/metrics/rerank_{bm25,stage2}.json``,
``DISTIL_DIR/metrics/distil.json``; one folder per stage-3 configuration, so they are never guessed), and
each folder's ``step_times.log`` (every step's wall time).
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
# the stage-3 rows' folder (RERANK_DIR of rerank.sh, DISTIL_DIR of distil.sh); the other rows are OUT's
STAGE3_FOLDER = {"rerank_bm25": "rerank", "rerank_stage2": "rerank", "distil": "distil"}


def metrics_files(out: Path, rerank_dir: Path | None = None, distil_dir: Path | None = None) -> dict[str, Path]:
    """Each row's metrics file; a stage-3 row only when its folder is given."""
    folders = {"rerank": rerank_dir, "distil": distil_dir}
    files = {}
    for name in ROWS:
        base = folders[STAGE3_FOLDER[name]] if name in STAGE3_FOLDER else out
        if base is not None:
            files[name] = Path(base) / "metrics" / f"{name}.json"
    return files


def load_rows(files: dict[str, Path]) -> dict[str, dict]:
    return {name: json.loads(path.read_text()) for name, path in files.items() if path.is_file()}


def render(rows: dict[str, dict], folders: list[Path]) -> str:
    lines = ["| run | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, metrics in rows.items():
        lines.append(f"| {ROWS[name]} | " + " | ".join(f"{metrics[m]:.3f}" for m in METRICS) + " |")
    entries = [entry for folder in folders if (folder / "step_times.log").is_file()
               for entry in (folder / "step_times.log").read_text().splitlines()]
    if entries:
        lines += ["", "| script | step | wall time |", "|---|---|---|"]
        for entry in entries:
            script, step, seconds = entry.split()
            lines.append(f"| {script} | {step} | {float(seconds.rstrip('s')):.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the pipeline's OUT folder")
    parser.add_argument("--rerank_dir", type=Path, help="rerank.sh's RERANK_DIR (the stage-3 reranker rows)")
    parser.add_argument("--distil_dir", type=Path, help="distil.sh's DISTIL_DIR (the distilled bi-encoder row)")
    parser.add_argument("--pin", type=Path, help="write these metrics as a regression file")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings the run used")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    rows = load_rows(metrics_files(args.out, args.rerank_dir, args.distil_dir))
    if not rows:
        print(f"error: no metrics in {args.out / 'metrics'}", file=sys.stderr)
        return 2
    stage3 = sorted(p.name for p in args.out.glob("rerank-*") if p.is_dir())
    if stage3 and args.rerank_dir is None and args.distil_dir is None:
        print(f"note: {args.out} holds stage-3 folders ({', '.join(stage3)}); give --rerank_dir/--distil_dir "
              "(printed by rerank.sh and distil.sh) for their rows", file=sys.stderr)
    folders = [args.out] + [folder for folder in (args.rerank_dir, args.distil_dir) if folder is not None]
    print(render(rows, folders))
    if args.pin:
        spec = {"env": dict(item.split("=", 1) for item in args.env), "tolerance": args.tolerance,
                "expected": {name: {m: round(metrics[m], 4) for m in METRICS} for name, metrics in rows.items()}}
        args.pin.parent.mkdir(parents=True, exist_ok=True)
        args.pin.write_text(json.dumps(spec, indent=2) + "\n")
        print(f"\npinned to {args.pin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
