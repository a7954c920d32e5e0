"""Search + reduce at scale: peak memory and time on synthetic vectors, projected to MS MARCO.

    python bench/scale.py                                       # 1M x 768 in 10 shards, 50k queries, depth 200
    python bench/scale.py --passages 20000 --queries 500        # a smoke test (seconds)
    python bench/scale.py --workdir /data/scale                 # keep (and reuse) the generated files

What runs, each in its own process under GNU time (wall seconds, peak RSS):
  * startup: ``python -c 'import tevatron.faiss_retriever.reducer, transformers'``, the fixed cost
    (interpreter, torch, transformers) that every stage below pays once;
  * search: ``python -m tevatron.faiss_retriever`` once per shard (``--passages / --shards`` random
    float32 vectors with ids ``p<n>``) for all ``--queries`` queries at ``--depth``, binary output;
  * reduce: ``python -m tevatron.faiss_retriever.reducer`` over the shard rankings, text output.

Projection (to ``--target_passages``, 8,841,823 = MS MARCO, in the same number of shards), from the
measured figures and a model of what each process holds:
  * time: a search process costs a fixed part (startup, loading, the GEMM-library probe) plus a part
    per query; shard 0 is searched a second time with a tenth of the queries to separate the two
    (wall = fixed + per-query x queries).  The per-query part is one GEMM row over the shard plus a
    running top-k, so it scales with passages per shard (the top-k's share grows somewhat with depth,
    which is not modelled: depth 1000 figures are a lower bound).  The reducer's time past startup
    scales with queries x depth (merged entries and written lines);
  * memory: a search process holds its shard's vectors (mmap, all touched) and id strings, every
    query vector and id, the [queries x depth] scores (float32) and positions (int64) and a fixed
    score buffer (at most 1024 queries x 32768 passages, float32 + bool mask); the reducer holds the
    running and the merged [queries x depth] top-k, one shard ranking at a time (mmap) and its
    query/passage id lists, plus the passage ids of every shard as compact bytes (the one term that
    grows with passages: ~8 bytes per MS MARCO id).  Projected RSS = measured RSS + (model at the
    target - model at the measured size), so the fixed part is taken from the measurement.
The MS MARCO scenarios are hard-negative mining (500,000 training queries at depth 200) and the dev
evaluation (6,980 queries at depth 1000).  Timings on a shared machine move with its load, which is
printed at the end.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_timed  # noqa: E402

from tevatron.faiss_retriever.retriever import DEFAULT_BLOCK_ROWS, QUERY_CHUNK_ROWS  # noqa: E402
from tevatron.tensor_files import load_encodings, save_encodings

MSMARCO_PASSAGES = 8_841_823
SCENARIOS = (("bench queries", None, None), ("MS MARCO mining", 500_000, 200), ("MS MARCO dev", 6_980, 1000))
PY_STR_BYTES = 64        # a short id string in a list: ~56-byte str object + 8-byte pointer
RESULT_BYTES = 4 + 8     # float32 score + int64 position per (query, rank)
MiB = 2 ** 20


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=200)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch_size", type=int, default=4096, help="the retriever's --batch_size")
    parser.add_argument("--target_passages", type=int, default=MSMARCO_PASSAGES, help="projection target")
    parser.add_argument("--workdir", help="keep the generated files here and reuse them (default: a temp dir)")
    args = parser.parse_args(argv)
    if min(args.passages, args.shards, args.queries, args.depth, args.dim, args.batch_size) < 1:
        parser.error("every size must be positive")
    if args.shards > args.passages:
        parser.error("--shards must not exceed --passages")
    return args


# --------------------------------------------------------------------------- data
def shard_sizes(passages: int, shards: int) -> list[int]:
    base, extra = divmod(passages, shards)
    return [base + (1 if i < extra else 0) for i in range(shards)]


def ensure_encodings(path: Path, rows: int, dim: int, first_id: int, prefix: str, seed: int) -> None:
    """Random float32 vectors with ids ``<prefix><n>``; an existing file of the right shape is kept."""
    if path.is_file():
        try:
            reps, ids = load_encodings(path)
            if tuple(reps.shape) == (rows, dim) and ids[:1] == [f"{prefix}{first_id}"]:
                return
        except Exception:  # unreadable: regenerate
            pass
    rng = np.random.default_rng(seed)
    save_encodings(path, rng.standard_normal((rows, dim), dtype=np.float32),
                   [f"{prefix}{n}" for n in range(first_id, first_id + rows)])


def generate(workdir: Path, args) -> tuple[Path, list[Path]]:
    started = time.perf_counter()
    queries = workdir / "queries.pt"
    ensure_encodings(queries, args.queries, args.dim, 0, "q", seed=12345)
    shards, first = [], 0
    for number, size in enumerate(shard_sizes(args.passages, args.shards)):
        shards.append(workdir / "corpus" / f"corpus.{number:02d}.pt")
        ensure_encodings(shards[-1], size, args.dim, first, "p", seed=number)
        first += size
    print(f"data ready in {time.perf_counter() - started:.1f} s: {args.passages:,d} x {args.dim} passages in "
          f"{args.shards} shards, {args.queries:,d} queries ({workdir})", flush=True)
    return queries, shards


# --------------------------------------------------------------------------- memory model (bytes)
def search_model(queries: int, depth: int, shard_passages: int, dim: int, batch_size: int) -> float:
    k = min(depth, shard_passages)
    buffer = min(batch_size, queries, QUERY_CHUNK_ROWS) * min(DEFAULT_BLOCK_ROWS, shard_passages) * (4 + 1)
    return (shard_passages * (dim * 4 + PY_STR_BYTES) + queries * (dim * 4 + PY_STR_BYTES)
            + queries * k * RESULT_BYTES + buffer)


def reducer_model(queries: int, depth: int, shard_passages: int, total_passages: int, shard_depth: int) -> float:
    id_width = len(f"p{total_passages - 1}")
    return (2 * queries * depth * RESULT_BYTES             # running and merged top-k
            + queries * shard_depth * RESULT_BYTES          # one shard ranking (mmap)
            + 2 * queries * PY_STR_BYTES                    # query ids: the query file's and the shard's
            + shard_passages * PY_STR_BYTES                 # one shard's passage id list
            + total_passages * id_width)                    # compact id tables of every shard


# --------------------------------------------------------------------------- runs
def timed(command: list, cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, output) of one process."""
    started = time.perf_counter()
    output, peak_kb = run_timed(command, cwd=cwd, ours=True)
    return time.perf_counter() - started, peak_kb / 1024, output


def search_seconds(output: str) -> float:
    found = re.findall(r"searched \d+ queries in ([0-9.]+) s", output)
    return float(found[-1]) if found else float("nan")


def main(argv=None) -> int:
    args = parse_arguments(argv)
    temporary = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="tevatron-scale-")
        workdir = Path(temporary.name)
    need = (args.passages + args.queries) * args.dim * 4 + (args.shards + 3) * args.queries * args.depth * RESULT_BYTES
    free = shutil.disk_usage(workdir).free
    if need > free:
        sys.exit(f"{workdir}: needs ~{need / 2**30:.1f} GiB of disk, {free / 2**30:.1f} GiB free")
    load_before = os.getloadavg()[0]
    try:
        query_file, shard_files = generate(workdir, args)
        rows = []
        wall, rss, _ = timed([sys.executable, "-c", "import tevatron.faiss_retriever.reducer, transformers"], workdir)
        startup = {"stage": "startup (imports)", "wall": wall, "rss": rss, "search": float("nan")}
        rows.append(startup)
        score_dir = workdir / "scores"
        shutil.rmtree(score_dir, ignore_errors=True)

        def search(queries: Path, shard: Path, output: Path, label: str) -> dict:
            wall, rss, log = timed([sys.executable, "-m", "tevatron.faiss_retriever", "--query_reps", queries,
                                    "--passage_reps", shard, "--depth", args.depth, "--batch_size", args.batch_size,
                                    "--save_ranking_to", output, "--overwrite", "--quiet"], workdir)
            print(f"  {label}: {wall:.1f} s, peak {rss:,.0f} MiB", flush=True)
            return {"stage": label, "wall": wall, "rss": rss, "search": search_seconds(log)}

        for shard in shard_files:
            rows.append(search(query_file, shard, score_dir / f"{shard.stem}.rank.pt", f"search {shard.stem}"))
        few = max(1, args.queries // 10)
        few_file = workdir / f"queries.first{few}.pt"
        ensure_encodings(few_file, few, args.dim, 0, "q", seed=12345)
        calibration = search(few_file, shard_files[0], workdir / "calibration.rank.pt",
                             f"search {shard_files[0].stem}, {few:,d} queries")
        calibration["queries"] = few
        output_path = workdir / "rank.txt"
        wall, rss, _ = timed([sys.executable, "-m", "tevatron.faiss_retriever.reducer", "--score_dir", score_dir,
                              "--query", query_file, "--save_ranking_to", output_path], workdir)
        lines = sum(1 for _ in open(output_path, "rb"))
        rows.append({"stage": "reduce", "wall": wall, "rss": rss, "search": float("nan")})
        report(args, rows, calibration, lines, load_before)
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


# --------------------------------------------------------------------------- report
def report(args, rows: list[dict], calibration: dict, lines: int, load_before: float) -> None:
    startup, searches, reduce = rows[0], rows[1:-1], rows[-1]
    shard_passages = max(shard_sizes(args.passages, args.shards))
    k = min(args.depth, shard_passages)
    print(f"\nmeasured: {args.passages:,d} x {args.dim} passages in {args.shards} shards (<= {shard_passages:,d} "
          f"each), {args.queries:,d} queries, depth {args.depth}, --batch_size {args.batch_size}")
    print(f"{'stage':<22} {'wall s':>9} {'search s':>9} {'peak MiB':>9} {'model MiB':>10}")
    print(f"{startup['stage']:<22} {startup['wall']:>9.1f} {'':>9} {startup['rss']:>9,.0f} {'':>10}")
    search_wall = sum(r["wall"] for r in searches)
    search_core = sum(r["search"] for r in searches)
    search_peak = max(r["rss"] for r in searches)
    search_fit = startup["rss"] + search_model(args.queries, args.depth, shard_passages, args.dim,
                                               args.batch_size) / MiB
    reduce_fit = startup["rss"] + reducer_model(args.queries, args.depth, shard_passages, args.passages, k) / MiB
    print(f"{'search, per shard':<22} {search_wall / len(searches):>9.1f} {search_core / len(searches):>9.1f} "
          f"{search_peak:>9,.0f} {search_fit:>10,.0f}")
    print(f"{'search, all shards':<22} {search_wall:>9.1f} {search_core:>9.1f} {search_peak:>9,.0f} {'':>10}")
    print(f"{'reduce':<22} {reduce['wall']:>9.1f} {'':>9} {reduce['rss']:>9,.0f} {reduce_fit:>10,.0f}"
          f"   ({lines:,d} lines)")
    print("(search s: the retriever's own timing of its search loop; model: startup RSS + the modelled data)")

    # wall = fixed + per_query x queries, from shard 0's two runs; fixed from the mean of all shards
    spread = searches[0]["wall"] - calibration["wall"]
    per_query = max(spread, 0.0) / max(args.queries - calibration["queries"], 1)
    fixed = max(search_wall / len(searches) - per_query * args.queries, 0.0)
    print(f"search fit: {fixed:.1f} s fixed + {per_query * 1e3:.3f} ms per query per shard "
          f"(shard 0: {calibration['wall']:.1f} s with {calibration['queries']:,d} queries, "
          f"{searches[0]['wall']:.1f} s with {args.queries:,d}) = "
          f"{shard_passages / max(per_query, 1e-12) / 1e9:.2f} G scores/s, "
          f"{shard_passages * 2 * args.dim / max(per_query, 1e-12) / 1e9:.0f} GFLOP/s")
    if spread < 0.25 * searches[0]["wall"]:
        print("  note: the query count is too small to separate per-query from fixed cost; the projected "
              "search times below are not meaningful (run at full size)")
    target_shard = -(-args.target_passages // args.shards)
    reduce_work = max(reduce["wall"] - startup["wall"], 0.0)
    print(f"\nprojected to {args.target_passages:,d} passages in {args.shards} shards ({target_shard:,d} each); "
          f"search runs the shards one after another")
    print(f"{'scenario':<17} {'queries':>8} {'depth':>5} {'search h':>9} {'/shard min':>10} {'search GiB':>10} "
          f"{'reduce min':>10} {'reduce GiB':>10}")
    for name, queries, depth in SCENARIOS:
        queries, depth = queries or args.queries, depth or args.depth
        shard_seconds = fixed + per_query * queries * target_shard / shard_passages
        search_gib = (search_peak + (search_model(queries, depth, target_shard, args.dim, args.batch_size)
                                     - search_model(args.queries, args.depth, shard_passages, args.dim,
                                                    args.batch_size)) / MiB) / 1024
        reduce_seconds = startup["wall"] + reduce_work * (queries * depth) / (args.queries * args.depth)
        reduce_gib = (reduce["rss"] + (reducer_model(queries, depth, target_shard, args.target_passages, depth)
                                       - reducer_model(args.queries, args.depth, shard_passages, args.passages, k))
                      / MiB) / 1024
        print(f"{name:<17} {queries:>8,d} {depth:>5d} {shard_seconds * args.shards / 3600:>9.2f} "
              f"{shard_seconds / 60:>10.1f} {search_gib:>10.1f} {reduce_seconds / 60:>10.1f} {reduce_gib:>10.1f}")
    print(f"(search GiB: one shard's process; reduce GiB is O(queries x depth) plus "
          f"~{len(str(args.target_passages)) + 1} bytes per passage id)")
    load_after = os.getloadavg()[0]
    print(f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after (above ~0.5 other processes "
          f"shared the {os.cpu_count()} cores and the times are high)")


if __name__ == "__main__":
    raise SystemExit(main())
