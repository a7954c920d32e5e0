"""Search throughput: exact (our backends vs faiss IndexFlatIP), FAISS index types, reducer peak memory.

    python bench/search_throughput.py                         # exact at 100k and 1M, indexes at 1M: long
    python bench/search_throughput.py --sizes 100000 --queries 2000 --reducer_queries 1000 --skip_indexes
    python bench/search_throughput.py --sizes 1000000 --depths 10 100 --skip_reducer --json runs/search_1m.json   # what the README ran

Exact search: the fp32 matmul peak (bench/common.py: the best of torch.mm and oneDNN on 2048^3) is
measured first, and each row gives the fraction of it our torch backend reached (``t/peak``) and the
fp32-equivalent rate of the torch_bf16 backend against it (``b/peak``: 2 x passages x dim flops per query
over its time, so above 100% means faster than any fp32 GEMM could be).  ``auto q/s`` is the rate of the
backend ``--backend auto`` picks (the default), so ``auto/faiss`` is the default's ratio.

Index types (``--n`` passages, ``--datasets``): for each factory string (built by
tevatron.faiss_retriever.index, the code ``--index`` runs; IVF lists from ``--nlist``) and each search
knob, q/s and recall@10/@100 against exact search of the same queries, the index's size in bytes (what
``faiss.write_index`` writes, which is what it holds in memory) and its build time.  Rows that meet the
target (recall@100 >= 0.95, >= 10x exact q/s, <= 1/4 of exact's memory) are marked ``*``.  Datasets:
``random`` (unit Gaussian vectors: no structure, the worst case of every approximate index) and
``clustered`` (see :func:`clustered_vectors`: a low-dimensional mixture of topics embedded in 768-d,
as dense-retrieval encodings are).

For each collection size (random 768-d float32 vectors) and depth, the same queries are searched by
the torch and torch_bf16 backends and by a raw ``faiss.IndexFlatIP``; queries/s are printed side by side with their
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tevatron.faiss_retriever.index import FaissIndexSearcher, IndexSettings, apply_knobs, build_index
from tevatron.faiss_retriever.retriever import (DEFAULT_BLOCK_ROWS, QUERY_CHUNK_ROWS, PassageShards, build_searcher,
                                                exact_searcher, resolve_backend, search_in_batches)
from tevatron.faiss_retriever.topk import order_by_score_then_position
from tevatron.tensor_files import save_encodings, save_shard_ranking


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="passages per run")
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
    parser.add_argument("--n", type=int, default=1_000_000, help="passages of the index-type table")
    parser.add_argument("--datasets", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists of the index types (IVF{nlist},...)")
    parser.add_argument("--index_queries", type=int, default=1000)
    parser.add_argument("--index_train_size", type=int, default=100_000)
    parser.add_argument("--factories", nargs="+", help="only these factory strings (after {nlist} substitution)")
    parser.add_argument("--skip_indexes", action="store_true")
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


def torch_search(queries, passages, depth, batch_size, backend: str = "torch") -> tuple[float, np.ndarray]:
    searcher = exact_searcher(backend, [passages])
    started = time.perf_counter()
    _, positions = search_in_batches(searcher, queries, depth, batch_size, passages.shape[0], progress=False)
    return queries.shape[0] / (time.perf_counter() - started), positions.numpy()


def faiss_search(index, queries: np.ndarray, depth: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    _, positions = index.search(queries, depth)
    return queries.shape[0] / (time.perf_counter() - started), positions


def bench_size(size: int, args, peak_gflops: float) -> list[dict]:
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
        auto_choice = resolve_backend("auto", args.dim, depth, size)  # measured as a search of this size does
        torch_qps, bf16_qps, faiss_qps = 0.0, 0.0, 0.0
        for _ in range(args.repeats):  # interleaved, best of N: every backend sees the same machine load
            qps, torch_ids = torch_search(queries, passages, depth, args.batch_size)
            torch_qps = max(torch_qps, qps)
            qps, bf16_ids = torch_search(queries, passages, depth, args.batch_size, "torch_bf16")
            bf16_qps = max(bf16_qps, qps)
            qps, faiss_ids = faiss_search(index, queries.numpy(), depth)
            faiss_qps = max(faiss_qps, qps)
        rates = {"torch": torch_qps, "torch_bf16": bf16_qps, "faiss": faiss_qps}
        rows.append({"passages": size, "depth": depth, "queries": args.queries, "torch_qps": torch_qps,
                     "bf16_qps": bf16_qps, "bf16_gflops": bf16_qps * gflop_per_query,
                     "bf16_same_ids": float((bf16_ids == faiss_ids).mean()),
                     "faiss_qps": faiss_qps, "ratio": torch_qps / faiss_qps, "auto": auto_choice, "gemm_qps": gemm_qps,
                     "numpy_gemm_qps": numpy_gemm_qps, "numpy_gemm_gflops": numpy_gemm_qps * gflop_per_query,
                     "torch_gflops": torch_qps * gflop_per_query, "faiss_gflops": faiss_qps * gflop_per_query,
                     "gemm_gflops": gemm_qps * gflop_per_query, "peak_gflops": peak_gflops,
                     "auto_qps": rates[auto_choice],
                     "same_ids": float((torch_ids == faiss_ids).mean())})
        print_search_row(rows[-1])
    del index, passages
    gc.collect()
    return rows


def print_search_row(row: dict) -> None:
    print(f"{row['passages']:>9,d} {row['depth']:>5d} {row['torch_qps']:>10.1f} {row['bf16_qps']:>10.1f} "
          f"{row['faiss_qps']:>10.1f} {row['ratio']:>6.2f}x {row['bf16_qps'] / row['faiss_qps']:>6.2f}x "
          f"{row['auto']:>10} {row['auto_qps'] / row['faiss_qps']:>9.2f}x "
          f"{row['gemm_qps']:>10.1f} {row['torch_gflops']:>7.1f} {row['faiss_gflops']:>7.1f} "
          f"{row['torch_qps'] / row['gemm_qps']:>6.0%} {row['torch_gflops'] / row['peak_gflops']:>6.0%} "
          f"{row['bf16_gflops'] / row['peak_gflops']:>6.0%} "
          f"{row['numpy_gemm_gflops']:>7.1f} {row['same_ids']:>8.4f} {row['bf16_same_ids']:>8.4f}", flush=True)


# --------------------------------------------------------------------------- index types
# (factory, knob, values): {nlist} becomes --nlist.  IVF,SQ6/SQ8 are the compressed-and-fast candidates.
INDEX_CONFIGS = [
    ("HNSW32", "ef_search", [64, 256]),
    ("IVF{nlist},Flat", "nprobe", [16, 64]),
    ("IVF{nlist},SQ8", "nprobe", [16, 64]),
    ("IVF{nlist},SQ6", "nprobe", [8, 16]),   # 6 bits a dimension: under 1/4 of fp32 with the ids and centroids
    ("IVF{nlist},PQ64", "nprobe", [8, 16, 64]),
    ("SQ8", None, [None]),
    ("OPQ64,IVF{nlist},PQ64", "nprobe", [64]),
]


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=1, keepdim=True)


def clustered_vectors(count: int, dim: int, seed: int, topics: int = 1000, latent: int = 64) -> torch.Tensor:
    """Real-like unit vectors: a mixture of ``topics`` Gaussians in a ``latent``-d subspace, mapped into
    ``dim`` dimensions, plus small isotropic noise.  Encodings of real text are like this: their variance
    sits in a few dozen directions and passages cluster by topic, which is what IVF and HNSW exploit.
    The topic centres and the map depend on the dataset seed only, so queries (another seed for the
    draws) come from the same distribution without being copies of passages."""
    layout = torch.Generator().manual_seed(1234)
    centres = torch.randn((topics, latent), generator=layout)
    embedding = torch.randn((latent, dim), generator=layout) / latent ** 0.5
    draws = torch.Generator().manual_seed(seed)
    out = torch.empty((count, dim))
    for start in range(0, count, 100_000):
        rows = min(100_000, count - start)
        topic = torch.randint(0, topics, (rows,), generator=draws)
        points = centres[topic] + 0.7 * torch.randn((rows, latent), generator=draws)
        out[start:start + rows] = unit_rows(points @ embedding + 0.3 * torch.randn((rows, dim), generator=draws)
                                            / dim ** 0.5 * points.norm(dim=1, keepdim=True) / latent ** 0.5)
    return out


def dataset(name: str, count: int, dim: int, seed: int) -> torch.Tensor:
    if name == "clustered":
        return clustered_vectors(count, dim, seed)
    return unit_rows(torch.randn((count, dim), generator=torch.Generator().manual_seed(seed)))


def index_bytes(index) -> int:
    """What faiss.write_index writes (vectors or codes, lists, graph, centroids), counted without a copy."""
    import faiss

    written = [0]

    def count(chunk):
        written[0] += len(chunk)
    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer
    return written[0]


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    hits = [len(set(row[:k].tolist()) & set(truth[:k].tolist())) for row, truth in zip(found, exact)]
    return sum(hits) / (k * len(exact))


def timed_search(searcher, queries: torch.Tensor, depth: int, total: int, repeats: int) -> tuple[float, np.ndarray]:
    best, positions = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        _, positions = search_in_batches(searcher, queries, depth, 4096, total, progress=False)
        best = min(best, time.perf_counter() - started)
    return queries.shape[0] / best, positions.numpy()


def bench_indexes(name: str, args) -> list[dict]:
    depth = 100
    passages = dataset(name, args.n, args.dim, seed=1)
    queries = dataset(name, args.index_queries, args.dim, seed=2)
    shards = PassageShards([Path(name)], [passages], [str(i) for i in range(args.n)])
    exact_qps, exact = timed_search(build_searcher("auto", shards, depth=depth), queries, depth, args.n, args.repeats)
    exact_bytes = passages.numel() * 4
    rows = [{"dataset": name, "passages": args.n, "index": "Flat (exact, --backend auto)", "knob": "",
             "qps": exact_qps, "speedup": 1.0, "recall@10": 1.0, "recall@100": 1.0, "bytes": exact_bytes,
             "memory_ratio": 1.0, "build_s": 0.0}]
    print_index_row(rows[-1])
    for pattern, knob, values in INDEX_CONFIGS:
        factory = pattern.format(nlist=args.nlist)
        if args.factories and factory not in args.factories:
            continue
        started = time.perf_counter()
        index = build_index([passages], IndexSettings(factory, args.index_train_size, 0))
        build_seconds = time.perf_counter() - started
        size = index_bytes(index)
        for value in values:
            settings = IndexSettings(factory, args.index_train_size, 0, **({knob: value} if knob else {}))
            apply_knobs(index, settings)
            qps, found = timed_search(FaissIndexSearcher(index), queries, depth, args.n, args.repeats)
            rows.append({"dataset": name, "passages": args.n, "index": factory,
                         "knob": f"{knob}={value}" if knob else "", "qps": qps, "speedup": qps / exact_qps,
                         "recall@10": recall_at(found, exact, 10), "recall@100": recall_at(found, exact, 100),
                         "bytes": size, "memory_ratio": size / exact_bytes, "build_s": build_seconds})
            print_index_row(rows[-1])
        del index
        gc.collect()
    return rows


def meets_target(row: dict) -> bool:
    return row["recall@100"] >= 0.95 and row["speedup"] >= 10 and row["memory_ratio"] <= 0.25


def print_index_row(row: dict) -> None:
    print(f"{row['dataset']:>9} {row['passages']:>9,d} {row['index']:>28} {row['knob']:>13} {row['qps']:>9.1f} "
          f"{row['speedup']:>7.1f}x {row['recall@10']:>6.3f} {row['recall@100']:>6.3f} {row['bytes'] / 2**20:>9.1f} "
          f"{row['memory_ratio']:>6.3f} {row['build_s']:>7.0f} {'*' if meets_target(row) else ''}", flush=True)


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
def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                    .stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main(argv=None) -> int:
    from common import measure_matmul_peak

    args = parse_arguments(argv)
    peak_rates = measure_matmul_peak(torch.device("cpu"), torch.float32)
    peak = max(peak_rates.values())
    print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} threads={torch.get_num_threads()}; "
          f"fp32 matmul peak {peak:.0f} GFLOP/s ({', '.join(f'{k} {v:.0f}' for k, v in peak_rates.items())})")
    print(f"queries={args.queries}, dim={args.dim}, "
          f"torch batch={args.batch_size} (GEMM {QUERY_CHUNK_ROWS} queries x {DEFAULT_BLOCK_ROWS} passages)")
    print(f"{'passages':>9} {'depth':>5} {'torch q/s':>10} {'bf16 q/s':>10} {'faiss q/s':>10} {'t/f':>7} {'b/f':>7} "
          f"{'auto':>10} {'auto/faiss':>10} {'gemm q/s':>10} {'t GF/s':>7} {'f GF/s':>7} {'t/gemm':>6} {'t/peak':>6} "
          f"{'b/peak':>6} {'np GF/s':>7} {'same ids':>8} {'bf16 ids':>8}")
    report = {"load_average_before": os.getloadavg()[0], "cpu": cpu_model(), "peak_gflops": peak_rates,
              "search": [row for size in args.sizes for row in bench_size(size, args, peak)]}
    if not args.skip_indexes:
        print(f"\nindex types: {args.index_queries} queries, depth 100, unit vectors (inner product = cosine), "
              f"training sample {args.index_train_size}; * = recall@100 >= 0.95, >= 10x exact q/s, <= 1/4 memory")
        print(f"{'dataset':>9} {'passages':>9} {'index':>28} {'knob':>13} {'q/s':>9} {'vs exact':>8} {'R@10':>6} "
              f"{'R@100':>6} {'MiB':>9} {'memory':>6} {'build s':>7}")
        report["indexes"] = [row for name in args.datasets for row in bench_indexes(name, args)]
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
