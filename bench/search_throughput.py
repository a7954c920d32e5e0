"""Search throughput (torch backend vs faiss IndexFlatIP) and reducer peak memory.

    python bench/search_throughput.py                         # 100k and 1M passages, ~5 min on 2 cores
    python bench/search_throughput.py --sizes 100000 --queries 2000 --reducer_queries 1000

For each collection size (random 768-d float32 vectors) and depth, the same queries are searched by
the torch backend and by a raw ``faiss.IndexFlatIP``; queries/s are printed side by side with their
ratio and the backend ``--backend auto`` picks for that dimension and depth (from its small random
sample, measured before the timings: compare it with the ratio), next to the bare blocked-GEMM rate
with torch.matmul (MKL; the ceiling of the torch backend) and with numpy.matmul (OpenBLAS, the BLAS family FAISS links).  Timings on a shared machine move
with its load, which is printed at the end.  The reducer is then run
in a child process on ``--reducer_shards`` random shard rankings and its peak RSS is reported, along
with the RSS the child had after its imports (so the difference is the reducer's own memory).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tevatron.faiss_retriever.retriever import (DEFAULT_BLOCK_ROWS, QUERY_CHUNK_ROWS, TorchFlatIPSearcher,
                                                measured_backend, search_in_batches)
from tevatron.faiss_retriever.topk import order_by_score_then_position
from tevatron.tensor_files import save_encodings, save_shard_ranking


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="passages per run")
    parser.add_argument("--queries", type=int, default=1024, help="queries searched per size and depth")
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch_size", type=int, default=4096, help="query batch of the torch backend")
    parser.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    parser.add_argument("--ceiling_queries", type=int, default=512, help="queries timed for the bare-GEMM ceilings")
    parser.add_argument("--reducer_shards", type=int, default=10)
    parser.add_argument("--reducer_queries", type=int, default=6980, help="MS MARCO dev has 6980 queries")
    parser.add_argument("--reducer_depth", type=int, default=1000)
    parser.add_argument("--reducer_passages", type=int, default=200_000, help="passage ids per shard")
    parser.add_argument("--skip_reducer", action="store_true")
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- search throughput
def gemm_queries_per_second(queries: torch.Tensor, passages: torch.Tensor, library: str = "torch") -> float:
    """Bare blocked GEMM over the shapes the torch backend uses: the ceiling of exact search.

    ``library`` "torch" is torch.matmul (MKL here); "numpy" is numpy.matmul (OpenBLAS, the BLAS family
    FAISS uses), to tell a library difference from search overhead.
    """
    buffer = torch.empty(QUERY_CHUNK_ROWS * DEFAULT_BLOCK_ROWS)
    started = time.perf_counter()
    for start in range(0, queries.shape[0], QUERY_CHUNK_ROWS):
        batch = queries[start:start + QUERY_CHUNK_ROWS]
        for first in range(0, passages.shape[0], DEFAULT_BLOCK_ROWS):
            block = passages[first:first + DEFAULT_BLOCK_ROWS]
            out = buffer[: batch.shape[0] * block.shape[0]].view(batch.shape[0], -1)
            if library == "numpy":
                np.matmul(batch.numpy(), block.numpy().T, out=out.numpy())
            else:
                torch.matmul(batch, block.T, out=out)
    return queries.shape[0] / (time.perf_counter() - started)


def torch_search(queries, passages, depth, batch_size) -> tuple[float, np.ndarray]:
    searcher = TorchFlatIPSearcher([passages])
    started = time.perf_counter()
    _, positions = search_in_batches(searcher, queries, depth, batch_size, passages.shape[0], progress=False)
    return queries.shape[0] / (time.perf_counter() - started), positions.numpy()


def faiss_search(index, queries: np.ndarray, depth: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    _, positions = index.search(queries, depth)
    return queries.shape[0] / (time.perf_counter() - started), positions


def bench_size(size: int, args) -> list[dict]:
    import faiss

    generator = torch.Generator().manual_seed(size)
    passages = torch.randn((size, args.dim), generator=generator)
    queries = torch.randn((args.queries, args.dim), generator=generator)
    index = faiss.IndexFlatIP(args.dim)
    index.add(passages.numpy())
    ceiling_queries = queries[: args.ceiling_queries]
    gemm_qps = max(gemm_queries_per_second(ceiling_queries, passages, "torch") for _ in range(args.repeats))
    numpy_gemm_qps = max(gemm_queries_per_second(ceiling_queries, passages, "numpy") for _ in range(args.repeats))
    gflop_per_query = 2 * size * args.dim / 1e9
    rows = []
    for depth in args.depths:
        auto_choice = measured_backend(args.dim, depth)  # once per process and shape, as in a search
        torch_qps, faiss_qps = 0.0, 0.0
        for _ in range(args.repeats):  # interleaved, best of N: both backends see the same machine load
            qps, torch_ids = torch_search(queries, passages, depth, args.batch_size)
            torch_qps = max(torch_qps, qps)
            qps, faiss_ids = faiss_search(index, queries.numpy(), depth)
            faiss_qps = max(faiss_qps, qps)
        rows.append({"passages": size, "depth": depth, "queries": args.queries, "torch_qps": torch_qps,
                     "faiss_qps": faiss_qps, "ratio": torch_qps / faiss_qps, "auto": auto_choice, "gemm_qps": gemm_qps,
                     "numpy_gemm_qps": numpy_gemm_qps, "numpy_gemm_gflops": numpy_gemm_qps * gflop_per_query,
                     "torch_gflops": torch_qps * gflop_per_query, "faiss_gflops": faiss_qps * gflop_per_query,
                     "gemm_gflops": gemm_qps * gflop_per_query,
                     "same_ids": float((torch_ids == faiss_ids).mean())})
        print_search_row(rows[-1])
    del index, passages
    gc.collect()
    return rows


def print_search_row(row: dict) -> None:
    print(f"{row['passages']:>9,d} {row['depth']:>5d} {row['torch_qps']:>10.1f} {row['faiss_qps']:>10.1f} "
          f"{row['ratio']:>6.2f}x {row['auto']:>5} {row['gemm_qps']:>10.1f} {row['torch_gflops']:>7.1f} {row['faiss_gflops']:>7.1f} "
          f"{row['torch_qps'] / row['gemm_qps']:>6.0%} {row['numpy_gemm_gflops']:>7.1f} {row['same_ids']:>8.4f}", flush=True)


# --------------------------------------------------------------------------- reducer memory
# Peak RSS is read from /proc/self/status (VmHWM): unlike getrusage's ru_maxrss it starts afresh at
# exec, so the benchmark's own multi-GB footprint (inherited through fork) is not counted.
REDUCER_CHILD = """
import sys
from tevatron.faiss_retriever import reducer
import transformers
def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak_kb()
code = reducer.main(sys.argv[1:])
print(f"RSS_KB {before} {peak_kb()}")
sys.exit(code)
"""


def write_random_shards(folder: Path, args) -> Path:
    """Random shard rankings shaped like real ones: rows sorted by score, ids like MS MARCO's."""
    generator = torch.Generator().manual_seed(0)
    query_ids = [str(1_000_000 + i) for i in range(args.reducer_queries)]
    save_encodings(folder / "queries.pt", torch.zeros((args.reducer_queries, 1)), query_ids)
    k = args.reducer_depth
    for shard in range(args.reducer_shards):
        scores = torch.randn((args.reducer_queries, k), generator=generator)
        indices = torch.randint(0, args.reducer_passages, (args.reducer_queries, k), generator=generator)
        scores, indices = order_by_score_then_position(scores, indices)
        passage_ids = [str(shard * args.reducer_passages + i) for i in range(args.reducer_passages)]
        save_shard_ranking(folder / "scores" / f"shard{shard:02d}.pt", query_ids, passage_ids, scores, indices)
    return folder / "queries.pt"


def bench_reducer(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="reducer-bench-") as tmp:
        folder = Path(tmp)
        query_file = write_random_shards(folder, args)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", REDUCER_CHILD, "--score_dir", str(folder / "scores"),
                                 "--query", str(query_file), "--save_ranking_to", str(folder / "merged.txt")],
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"reducer failed: {result.stderr.strip()}")
        before_kb, after_kb = (int(v) for v in result.stdout.split("RSS_KB")[1].split())
        lines = sum(1 for _ in open(folder / "merged.txt", "rb"))
    running_mb = args.reducer_queries * args.reducer_depth * 12 / 2**20
    return {"shards": args.reducer_shards, "queries": args.reducer_queries, "depth": args.reducer_depth,
            "passages_per_shard": args.reducer_passages, "seconds": elapsed, "output_lines": lines,
            "peak_rss_mb": after_kb / 1024, "rss_after_imports_mb": before_kb / 1024,
            "running_topk_mb": running_mb}


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_arguments(argv)
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}; queries={args.queries}, dim={args.dim}, "
          f"torch batch={args.batch_size} (GEMM {QUERY_CHUNK_ROWS} queries x {DEFAULT_BLOCK_ROWS} passages)")
    print(f"{'passages':>9} {'depth':>5} {'torch q/s':>10} {'faiss q/s':>10} {'ratio':>7} {'auto':>5} {'gemm q/s':>10} "
          f"{'t GF/s':>7} {'f GF/s':>7} {'t/gemm':>6} {'np GF/s':>7} {'same ids':>8}")
    report = {"load_average_before": os.getloadavg()[0],
              "search": [row for size in args.sizes for row in bench_size(size, args)]}
    if not args.skip_reducer:
        reduced = bench_reducer(args)
        report["reducer"] = reduced
        print(f"reducer: {reduced['shards']} shards x {reduced['queries']} queries x depth {reduced['depth']} "
              f"({reduced['passages_per_shard']:,d} ids/shard): {reduced['seconds']:.1f} s, peak RSS "
              f"{reduced['peak_rss_mb']:.0f} MB (after imports {reduced['rss_after_imports_mb']:.0f} MB; "
              f"running top-k {reduced['running_topk_mb']:.0f} MB)")
    report["load_average_after"] = os.getloadavg()[0]
    print(f"1-minute load average: {report['load_average_before']:.2f} before, {report['load_average_after']:.2f} after "
          f"(above ~0.5 other processes shared the {os.cpu_count()} cores and the figures are low)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
