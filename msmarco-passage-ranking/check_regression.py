"""Re-run a pinned pipeline and compare its scores with the pinned ones (like Pyserini's regressions).

    python msmarco-passage-ranking/check_regression.py msmarco-passage-ranking/regressions/scifact-quick.json
    python msmarco-passage-ranking/check_regression.py REGRESSION.json --skip_run --out runs/scifact-quick

The regression file names the environment of the run (``env``), the metrics pinned for each row
(``expected``) and the allowed absolute difference (``tolerance``).  Without ``--skip_run`` the
pipeline (``run.sh --all``, then ``rerank.sh`` and ``distil.sh`` when stage-3 rows are pinned) runs first
into ``--out``; finished steps there are skipped, so point ``--out`` at a fresh folder for a full re-run.
Stage-3 rows are read from the folders the scripts nest in ``--out`` (RERANK_DIR, DISTIL_DIR), which the
scripts' own shell code works out from the same settings (one implementation of their hash).
Exit status 1 when any metric is off, or not pinned yet (``null``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from results_table import metrics_files  # this script's folder (on the path when run, or imported by the tests)

REPO_ROOT = Path(__file__).resolve().parents[1]

# the stage-3 scripts a pinned row needs (after run.sh --all)
STAGE3_SCRIPTS = {"rerank_bm25": "rerank.sh", "rerank_stage2": "rerank.sh", "distil": "distil.sh"}


def pipeline_scripts(expected: dict) -> list[list[str]]:
    """``run.sh --all``, then each stage-3 script a pinned row needs, in pipeline order."""
    needed = {STAGE3_SCRIPTS[row] for row in expected if row in STAGE3_SCRIPTS}
    return [["run.sh", "--all"]] + [[script] for script in ("rerank.sh", "distil.sh") if script in needed]


def stage3_folders(env: dict) -> tuple[Path, Path]:
    """RERANK_DIR and DISTIL_DIR as rerank.sh and distil.sh work them out with these settings."""
    script = ('set -a; source settings.sh; set +a; source msmarco-passage-ranking/pipeline_common.sh; '
              'resolve_settings; printf "%s\\n" "$RERANK_DIR" "$DISTIL_DIR"')
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"error: cannot work out the stage-3 folders: {result.stderr.strip()}", file=sys.stderr)
        raise SystemExit(2)
    rerank_dir, distil_dir = result.stdout.splitlines()
    return REPO_ROOT / rerank_dir, REPO_ROOT / distil_dir


def compare(expected: dict, files: dict[str, Path], tolerance: float) -> list[str]:
    """Print the comparison table (``files``: each row's metrics file); return the lines that fail."""
    failures = []
    print(f"{'row':13s} {'metric':11s} {'pinned':>8s} {'measured':>9s} {'diff':>8s}")
    for row, pinned in expected.items():
        path = files.get(row)
        measured = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        for metric, value in pinned.items():
            got = measured.get(metric)
            if value is None:  # a row laid out before its first measured run
                failures.append(f"{row} {metric}: not pinned yet (null in the regression file)")
                print(f"{row:13s} {metric:11s} {'pending':>8s} {'-' if got is None else f'{got:9.4f}':>9s}")
                continue
            if got is None:
                failures.append(f"{row} {metric}: no measurement in {path or 'any metrics file (unknown row)'}")
                print(f"{row:13s} {metric:11s} {value:8.4f} {'missing':>9s}")
                continue
            diff = got - value
            flag = "" if abs(diff) <= tolerance else "  <-- off"
            print(f"{row:13s} {metric:11s} {value:8.4f} {got:9.4f} {diff:+8.4f}{flag}")
            if flag:
                failures.append(f"{row} {metric}: pinned {value:.4f}, measured {got:.4f}")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("regression", type=Path)
    parser.add_argument("--out", type=Path, help="run folder (default runs/regression-<name>)")
    parser.add_argument("--skip_run", action="store_true", help="only compare the metrics already in --out")
    args = parser.parse_args(argv)
    spec = json.loads(args.regression.read_text())
    out = args.out or REPO_ROOT / "runs" / f"regression-{args.regression.stem}"
    env = dict(os.environ, **{k: str(v) for k, v in spec.get("env", {}).items()}, OUT=str(out))
    if not args.skip_run:
        print(f"running the pipeline into {out} with {spec.get('env', {})}", flush=True)
        for script, *script_args in pipeline_scripts(spec["expected"]):
            result = subprocess.run(["bash", str(REPO_ROOT / script), *script_args], cwd=REPO_ROOT, env=env)
            if result.returncode != 0:
                print(f"error: the pipeline failed in {script} (exit {result.returncode})", file=sys.stderr)
                return 2
    rerank_dir = distil_dir = None
    if any(row in STAGE3_SCRIPTS for row in spec["expected"]):
        rerank_dir, distil_dir = stage3_folders(env)
        print(f"stage-3 folders: RERANK_DIR={rerank_dir} DISTIL_DIR={distil_dir}")
    files = metrics_files(out, rerank_dir, distil_dir)
    failures = compare(spec["expected"], files, float(spec.get("tolerance", 0.01)))
    if failures:
        print("\nregression FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall metrics within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
