"""Encoding throughput: our encode driver against Tevatron v1's, and dynamic against fixed padding in our
own code, side by side in one run, with tokens/s against the machine's matmul peak.

all-MiniLM-L6-v2 (CLS pooling, as in v1), p_max_len 128, q_max_len 32, the same batch size for every
run (``--batch_size``, default 128; v1's own default is 8).  Three workloads:

  scifact  SciFact abstracts, ``title [SEP] text`` tokenized and cut to 126 ids (+ [CLS], [SEP]).
  marco    MS MARCO-like passages.  Their lengths are drawn to match real MS MARCO passages under
           this tokenizer (median ~72 tokens, mean ~79, ~10% at the 128 cap; lengths count [CLS] and
           [SEP]).  Log-length is a two-piece normal around ln 72: the upper sigma puts 10% at or
           over the cap, the lower sigma is fitted so that the capped mean is 79.  The ids are
           windows of consecutive real SciFact tokens, so the model sees realistic text.
  queries  MS MARCO-like queries, the same way: median 9 tokens, lengths 3..30, ``--encode_is_qry``.
The measured median, mean and cap fraction of each workload are printed.

How each number is measured:
  * drivers (``python -m tevatron.driver.encode`` under Tevatron v1's venv and under this checkout):
    each runs twice in a fresh process, on the first N/2 and on all N items of the workload; the
    difference of the two wall times covers the other N/2 items, so interpreter start-up, imports,
    model loading and the first (slower) batch cancel out.  Reading the input and saving the vectors
    stay in, as parts of the driver.  The long runs' vectors are compared (v1 against ours).
  * in-process: the same loaded model (with the driver's default ``--cpu_linear auto``) encodes the
    timed N/2 items with ``encode_texts(..., fixed_padding=True)`` (every batch padded to the maximum
    length, as v1 does) and with ``fixed_padding=False`` (length-sorted batches padded to their
    longest member, what our driver does), after one untimed warm-up batch.  On a CPU whose flags list
    ``avx512_bf16`` or ``amx_bf16`` the dynamic run is repeated under bf16 autocast (what ``--bf16``
    uses where it measures faster) and its rate is printed against fp32 (``bf16/fp32``).
  * physical limit: the best fp32 matmul rate of torch.mm (MKL) and oneDNN's linear on a large product
    is the machine's peak; the ideal rate is peak / (2 x non-embedding parameters) tokens/s (the
    pooler, which sees one token per text, is left out too; attention's own products are not
    counted).  Each run's real tokens (texts' lengths with [CLS] and [SEP], padding not counted)
    per second are printed as a fraction of it.
Timings on a shared machine move with its load, which is printed at the end.

    python bench/encode_throughput.py                                  # CPU, ~6 min on 2 cores
    python bench/encode_throughput.py --n_passages 64 --n_queries 64   # a smoke test
    python bench/encode_throughput.py --fp16                           # on a GPU (both drivers)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (V1_PYTHON, cpu_has_bf16, measure_matmul_peak, minilm_dir, non_embedding_parameters, run_timed,  # noqa: E402
                    scifact_texts, v1_available)

Q_MAX_LEN, P_MAX_LEN = 32, 128
MARCO_PASSAGE = dict(median=72, mean=79, cap_fraction=0.10, low=16, high=P_MAX_LEN)
MARCO_QUERY = dict(median=9, sigma=0.35, low=3, high=30)
WORKLOADS = ("scifact", "marco", "queries")


# --------------------------------------------------------------------------- workloads
def _two_piece_lengths(z_values, median, sigma_low, sigma_high, low, high):
    """Total lengths (specials included) whose log is a two-piece normal around ln(median), clipped."""
    return [min(high, max(low, round(median * math.exp(z * (sigma_high if z > 0 else sigma_low)))))
            for z in z_values]


def fit_passage_sigmas(median, mean, cap_fraction, low, high):
    """Upper sigma from the cap fraction; lower sigma by bisection so that the clipped mean is ``mean``."""
    normal = statistics.NormalDist()
    sigma_high = math.log((high - 0.5) / median) / normal.inv_cdf(1 - cap_fraction)  # round() reaches the cap
    grid = [normal.inv_cdf((i + 0.5) / 20000) for i in range(20000)]
    lo, hi = 0.01, 1.5  # a smaller lower sigma raises the mean
    for _ in range(40):
        mid = (lo + hi) / 2
        if statistics.fmean(_two_piece_lengths(grid, median, mid, sigma_high, low, high)) > mean:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2, sigma_high


def token_windows(stream, lengths, rng):
    """For each total length, a window of ``length - 2`` consecutive ids from ``stream``."""
    texts = []
    for length in lengths:
        n_ids = length - 2
        start = rng.randrange(0, len(stream) - n_ids)
        texts.append(stream[start: start + n_ids])
    return texts


def build_workloads(tokenizer, args):
    """{name: (texts, is_query)}; texts are id lists without special tokens, in the order they are used."""
    passages, queries, _ = scifact_texts(tokenizer, Q_MAX_LEN, P_MAX_LEN)
    rng = random.Random(args.seed)
    out = {}
    if "scifact" in args.workloads:
        pids = sorted(passages)
        rng.shuffle(pids)
        if args.n_passages > len(pids):
            print(f"[scifact] only {len(pids)} abstracts; using them all")
        out["scifact"] = ([passages[p] for p in pids[: args.n_passages]], False)
    if "marco" in args.workloads:
        spec = MARCO_PASSAGE
        sigma_low, sigma_high = fit_passage_sigmas(**spec)
        z = [rng.gauss(0, 1) for _ in range(args.n_passages)]
        lengths = _two_piece_lengths(z, spec["median"], sigma_low, sigma_high, spec["low"], spec["high"])
        stream = [t for p in sorted(passages) for t in passages[p]]
        out["marco"] = (token_windows(stream, lengths, rng), False)
        print(f"[marco] log-length two-piece normal: sigma below the median {sigma_low:.3f}, "
              f"above {sigma_high:.3f}")
    if "queries" in args.workloads:
        spec = MARCO_QUERY
        z = [rng.gauss(0, 1) for _ in range(args.n_queries)]
        lengths = _two_piece_lengths(z, spec["median"], spec["sigma"], spec["sigma"], spec["low"], spec["high"])
        stream = [t for q in sorted(queries) for t in queries[q]]
        out["queries"] = (token_windows(stream, lengths, rng), True)
    return out


def describe(name, texts, max_len):
    lengths = [len(t) + 2 for t in texts]
    print(f"[{name}] {len(lengths)} texts, tokens with [CLS]/[SEP]: median {statistics.median(lengths):.0f}, "
          f"mean {statistics.fmean(lengths):.1f}, min {min(lengths)}, max {max(lengths)}, "
          f"{sum(n >= max_len for n in lengths) / len(lengths):.1%} at the {max_len} cap")


def write_jsonl(path: Path, texts, offset=0):
    with open(path, "w") as handle:
        for i, ids in enumerate(texts):
            handle.write(json.dumps({"text_id": str(offset + i), "text": ids}) + "\n")
    return path


# --------------------------------------------------------------------------- the physical limit
# --------------------------------------------------------------------------- timing
def driver_command(python, in_path, save_path, out_dir, is_query, args):
    return [python, "-m", "tevatron.driver.encode", "--model_name_or_path", minilm_dir(),
            "--output_dir", out_dir, "--encode_in_path", in_path, "--encoded_save_path", save_path,
            "--p_max_len", P_MAX_LEN, "--q_max_len", Q_MAX_LEN, "--per_device_eval_batch_size", args.batch_size,
            *(["--encode_is_qry"] if is_query else []), *(["--fp16"] if args.fp16 else [])]


def driver_seconds(python, files, work: Path, tag: str, is_query: bool, args):
    """Wall seconds of the long run minus the short run, and the long run's output path."""
    seconds = {}
    for size, in_path in files.items():
        save_path = work / f"{tag}-{size}.enc"
        command = driver_command(python, in_path, save_path, work / f"{tag}-out", is_query, args)
        start = time.perf_counter()
        run_timed(command, cwd=work, ours=python == sys.executable)
        seconds[size] = time.perf_counter() - start
    short, long = sorted(seconds)
    return seconds[long] - seconds[short], work / f"{tag}-{long}.enc"


def load_v1_encodings(path: Path):
    """v1's encode driver pickles ``(numpy reps [N, dim], ids)``."""
    import torch
    with open(path, "rb") as handle:
        reps, ids = pickle.load(handle)
    return torch.as_tensor(reps), [str(i) for i in ids]


def in_process_seconds(model, padder, texts, is_query, args, device, autocast_dtype, fixed_padding):
    from tevatron.driver.encode import encode_texts
    max_len = Q_MAX_LEN if is_query else P_MAX_LEN
    encode_texts(model, padder, texts[: args.batch_size], max_len, is_query, args.batch_size, device,
                 autocast_dtype, fixed_padding=fixed_padding, progress=False)  # warm-up
    start = time.perf_counter()
    encode_texts(model, padder, texts, max_len, is_query, args.batch_size, device, autocast_dtype,
                 fixed_padding=fixed_padding, progress=False)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- main
def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_passages", type=int, default=2000,
                        help="passages per workload: drivers run on the first half and on all; half are timed")
    parser.add_argument("--n_queries", type=int, default=4000, help="queries, the same way")
    parser.add_argument("--batch_size", type=int, default=128, help="for every run (v1's default is 8)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--skip_v1", action="store_true", help="do not run Tevatron v1")
    parser.add_argument("--fp16", action="store_true", help="mixed precision, passed to both drivers (GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.n_passages < 4 or args.n_queries < 4:
        parser.error("--n_passages and --n_queries must be at least 4")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    import torch
    from tevatron.arguments import ModelArguments
    from tevatron.cpu_kernels import use_onednn_linear
    from tevatron.data import SequencePadder
    from tevatron.modeling import DenseModel
    from tevatron.tokenization import load_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars of the models loaded here

    model_dir = minilm_dir()
    tokenizer = load_tokenizer(str(model_dir))
    workloads = build_workloads(tokenizer, args)
    for name, (texts, is_query) in workloads.items():
        describe(name, texts, Q_MAX_LEN if is_query else P_MAX_LEN)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = args.fp16 and device.type == "cuda"
    rates = measure_matmul_peak(device, torch.float16 if half else torch.float32)
    peak = max(rates.values())
    params = non_embedding_parameters(model_dir)
    ideal = peak * 1e9 / (2 * params)
    print(f"\nmatmul peak on {device.type} ({'fp16' if half else 'fp32'}): "
          + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + f" GFLOP/s -> {peak:.0f}")
    print(f"non-embedding parameters {params / 1e6:.2f} M -> physical limit {ideal:,.0f} tokens/s "
          f"(2 x params x tokens at the peak)")

    run_v1 = not args.skip_v1 and v1_available()
    model = DenseModel.load(str(model_dir), ModelArguments(model_name_or_path=str(model_dir)), pooling="cls")
    model.to(device)
    if device.type == "cpu":
        use_onednn_linear(model, "auto")
    padder = SequencePadder(tokenizer)
    autocast_dtype = torch.float16 if half else None

    results = {}
    saved_cache = os.environ.get("HF_DATASETS_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(work / "hf-datasets")  # v1's json->arrow cache stays in tmp
        try:
            run_workloads(workloads, results, work, run_v1, model, padder, device, autocast_dtype, args)
        finally:
            if saved_cache is None:
                os.environ.pop("HF_DATASETS_CACHE", None)
            else:
                os.environ["HF_DATASETS_CACHE"] = saved_cache
    report(results, ideal, args)


def run_workloads(workloads, results, work, run_v1, model, padder, device, autocast_dtype, args):
    """Time every workload: both drivers (short and long run) and the in-process runs."""
    import torch
    from tevatron.tensor_files import load_encodings
    for name, (texts, is_query) in workloads.items():
        n = len(texts)
        short = n // 2
        timed = texts[short:]
        tokens = sum(len(t) + 2 for t in timed)
        files = {short: write_jsonl(work / f"{name}-{short}.jsonl", texts[:short]),
                 n: write_jsonl(work / f"{name}-{n}.jsonl", texts)}
        row = {"n": len(timed), "tokens": tokens}
        print(f"\n[{name}] drivers on {short} and {n} {'queries' if is_query else 'passages'} ...", flush=True)
        if run_v1:
            row["v1"], v1_out = driver_seconds(V1_PYTHON, files, work, f"{name}-v1", is_query, args)
        row["ours"], ours_out = driver_seconds(sys.executable, files, work, f"{name}-ours", is_query, args)
        if run_v1:
            v1_reps, v1_ids = load_v1_encodings(v1_out)
            our_reps, our_ids = load_encodings(ours_out)
            assert v1_ids == our_ids, "the drivers wrote different ids"
            row["max_diff"] = (v1_reps.float() - our_reps.float()).abs().max().item()
        print(f"[{name}] in-process, fixed and dynamic padding on {len(timed)} ...", flush=True)
        row["fixed"] = in_process_seconds(model, padder, timed, is_query, args, device, autocast_dtype, True)
        row["dynamic"] = in_process_seconds(model, padder, timed, is_query, args, device, autocast_dtype, False)
        if device.type == "cpu" and cpu_has_bf16():
            row["dynamic_bf16"] = in_process_seconds(model, padder, timed, is_query, args, device, torch.bfloat16,
                                                     False)
        results[name] = row


def report(results, ideal, args):
    import torch

    def rate(row, key):
        seconds = row.get(key)
        return row["n"] / seconds if seconds and seconds > 0 else float("nan")

    def fmt(value, spec, suffix=""):
        return "-" if value != value else format(value, spec) + suffix

    precision = "fp16" if args.fp16 else "fp32"
    print(f"\ntexts per second, batch {args.batch_size}, q{Q_MAX_LEN}/p{P_MAX_LEN}, {precision}, "
          f"torch threads {torch.get_num_threads()}")
    header = (f"{'workload':9s} | {'v1 p/s':>8s} | {'ours p/s':>8s} | {'ours/v1':>7s} | {'fixed p/s':>9s} | "
              f"{'dyn p/s':>8s} | {'dyn/fixed':>9s} | {'tokens/s':>9s} | {'% limit':>7s}")
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        v1, ours, fixed, dyn = (rate(row, k) for k in ("v1", "ours", "fixed", "dynamic"))
        tokens_per_s = row["tokens"] / row["ours"] if row["ours"] > 0 else float("nan")
        print(f"{name:9s} | {fmt(v1, '8.1f'):>8s} | {fmt(ours, '8.1f'):>8s} | {fmt(ours / v1, '6.2f', 'x'):>7s} | "
              f"{fmt(fixed, '9.1f'):>9s} | {fmt(dyn, '8.1f'):>8s} | {fmt(dyn / fixed, '8.2f', 'x'):>9s} | "
              f"{fmt(tokens_per_s, '9,.0f'):>9s} | {fmt(tokens_per_s / ideal, '6.1%'):>7s}")
    print("(p/s: texts per second; ours/v1 compares the two drivers, dyn/fixed the two in-process runs;"
          " tokens/s and % limit are our driver's)")
    for name, row in results.items():
        if "dynamic_bf16" in row:
            print(f"{name:9s} bf16 autocast {rate(row, 'dynamic_bf16'):8.1f} p/s against fp32 "
                  f"{rate(row, 'dynamic'):8.1f} p/s: bf16/fp32 {rate(row, 'dynamic_bf16') / rate(row, 'dynamic'):.2f}x")

    print(f"\nreal tokens per second of every run, against the physical limit ({ideal:,.0f} tokens/s):")
    labels = {"v1": "v1 driver", "ours": "our driver", "fixed": "fixed padding", "dynamic": "dynamic padding"}
    for name, row in results.items():
        cells = []
        for key, label in labels.items():
            seconds = row.get(key)
            if seconds and seconds > 0:
                cells.append(f"{label} {row['tokens'] / seconds:,.0f} ({row['tokens'] / seconds / ideal:.1%})")
            elif seconds is not None:
                cells.append(f"{label} - (no measurable time)")
        print(f"  {name:9s} " + "; ".join(cells))
    for name, row in results.items():
        if "max_diff" in row:
            print(f"  {name}: v1 and our vectors differ by at most {row['max_diff']:.2e}")
    if any(row.get(k, 1) <= 0 for row in results.values() for k in ("v1", "ours")):
        print("  (a driver's long run was not slower than its short run: too few texts to time; raise the sizes)")
    try:
        print(f"\nload average during the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
              f"on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main()
