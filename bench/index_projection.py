"""The index-type table of ``bench/search_throughput.py``, projected to MS MARCO's 8.8M passages in shards.

    python bench/search_throughput.py --sizes 1000000 --json runs/search_1m.json ...
    python bench/index_projection.py runs/search_1m.json                  # 10 shards, the clustered set

For each index row measured at ``passages`` (``--n`` of the bench), per shard of the target:
  * index GiB: the index's bytes per passage (what ``faiss.write_index`` writes: codes, ids, centroids,
    graph) times the shard's passages;
  * process GiB (modelled): the index plus what a search process holds besides it, as bench/scale.py
    models it: one id string per passage, every query vector and id, the [queries x depth] results; the
    interpreter, torch and FAISS themselves (a few hundred MiB, measured by bench/scale.py) come on top;
  * build min: the measured build time scaled by passages (IVF's k-means trains on a fixed-size sample,
    so this over-states it; HNSW grows slightly faster than linear);
  * search minutes for each MS MARCO scenario, all shards one after another: queries / measured q/s,
    scaled linearly by passages per shard.  Exact search and IVF scan a fixed fraction of the passages,
    so linear is their model; HNSW grows ~logarithmically, so its figure is an upper bound.  The
    measured depth is 100; deeper rankings cost somewhat more (not modelled).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import MSMARCO_PASSAGES, PY_STR_BYTES, RESULT_BYTES, SCENARIOS  # noqa: E402

GiB = 2 ** 30


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="the JSON written by bench/search_throughput.py --json")
    parser.add_argument("--dataset", default="clustered", help="which dataset's rows to project")
    parser.add_argument("--target_passages", type=int, default=MSMARCO_PASSAGES)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--dim", type=int, default=768)
    return parser.parse_args(argv)


def process_bytes(index_bytes: float, shard_passages: int, queries: int, depth: int, dim: int) -> float:
    return index_bytes + shard_passages * PY_STR_BYTES + queries * (dim * 4 + PY_STR_BYTES) + queries * depth * RESULT_BYTES


def projected_rows(rows: list[dict], target_passages: int, shards: int, dim: int) -> list[dict]:
    shard_passages = -(-target_passages // shards)
    projected = []
    for row in rows:
        scale = shard_passages / row["passages"]
        index_bytes = row["bytes"] * scale
        scenarios = {}
        for name, queries, depth in SCENARIOS[1:]:  # the MS MARCO ones
            minutes = queries / row["qps"] * scale * shards / 60
            scenarios[name] = {"minutes": minutes, "process_gib": process_bytes(index_bytes, shard_passages, queries,
                                                                              depth, dim) / GiB}
        projected.append({"index": row["index"], "knob": row["knob"], "recall@100": row["recall@100"],
                          "index_gib": index_bytes / GiB, "build_min": row["build_s"] * scale / 60,
                          "scenarios": scenarios})
    return projected


def main(argv=None) -> int:
    args = parse_arguments(argv)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    rows = [row for row in report.get("indexes", []) if row["dataset"] == args.dataset]
    if not rows:
        sys.exit(f"{args.report}: no index rows for dataset {args.dataset!r}")
    measured = rows[0]["passages"]
    shard_passages = -(-args.target_passages // args.shards)
    print(f"measured at {measured:,d} {args.dataset} passages ({report.get('cpu', '?')}); projected to "
          f"{args.target_passages:,d} passages in {args.shards} shards of {shard_passages:,d}")
    names = [name for name, _, _ in SCENARIOS[1:]]
    header = " | ".join(f"{name}: search min | process GiB" for name in names)
    print(f"| index | knob | recall@100 | index GiB/shard | build min/shard | {header} |")
    print("|---|---|---|---|---|" + "---|---|" * len(names))
    for row in projected_rows(rows, args.target_passages, args.shards, args.dim):
        cells = " | ".join(f"{row['scenarios'][name]['minutes']:,.1f} | {row['scenarios'][name]['process_gib']:.1f}"
                           for name in names)
        print(f"| {row['index']} | {row['knob']} | {row['recall@100']:.3f} | {row['index_gib']:.2f} | "
              f"{row['build_min']:.1f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
