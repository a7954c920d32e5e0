"""Seconds per training step, ours against Tevatron v1, side by side in one run; peak memory with and
without --grad_cache.

all-MiniLM-L6-v2, batch 8 queries x 8 passages, q_max_len 32, p_max_len 128, SciFact text.  Each
driver runs twice (SHORT and LONG steps); the difference of the Trainer's ``train_runtime`` divided by
the extra steps is the steady-state step time (start-up and the first, slower step cancel out).

    python bench/train_throughput.py                     # CPU, both drivers + memory
    python bench/train_throughput.py --fp16 --skip_memory   # on a GPU

On a CPU whose flags list avx512_bf16 or amx_bf16, ours also runs with ``--bf16`` (which uses bf16 autocast
only where a measurement of the model's shape shows it clearly faster; the driver's decision line is
printed) and its step time is compared with fp32's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (V1_PYTHON, cpu_has_bf16, measure_matmul_peak, minilm_dir, non_embedding_parameters, run_timed,  # noqa: E402
                    train_runtime, v1_available, write_train_groups)


def physical_limit(model_dir: Path, train_file: Path, batch: int, n_passages: int, gflops: float) -> float:
    """3 (fwd + 2x bwd) x 2 x non-embedding parameters x real tokens of an average step, at the peak."""
    import json
    non_embedding = non_embedding_parameters(model_dir)
    groups = [json.loads(line) for line in open(train_file)]
    q_tokens = sum(len(g["query"]) + 2 for g in groups) / len(groups)
    p_tokens = sum(len(p) + 2 for g in groups for p in g["positives"][:1] + g["negatives"]) / len(groups)
    tokens = batch * (q_tokens + p_tokens * n_passages / (1 + len(groups[0]["negatives"])))
    return 3 * 2 * non_embedding * tokens / (gflops * 1e9)


def driver_command(python, train_dir, out, steps, args, extra=()):
    return [python, "-m", "tevatron.driver.train", "--model_name_or_path", minilm_dir(), "--train_dir", train_dir,
            "--output_dir", out, "--per_device_train_batch_size", args.batch, "--train_n_passages", args.n_passages,
            "--q_max_len", 32, "--p_max_len", 128, "--learning_rate", 2e-5, "--max_steps", steps,
            "--report_to", "none", "--save_strategy", "no", "--logging_steps", 1000,
            "--dataloader_num_workers", args.workers, "--overwrite_output_dir", *(["--fp16"] if args.fp16 else []),
            *extra]


def seconds_per_step(python, train_dir, work: Path, name: str, args, extra=()) -> float:
    runtimes = {}
    for steps in (args.short, args.long):
        output, _ = run_timed(driver_command(python, train_dir, work / f"{name}-{steps}", steps, args, extra),
                              cwd=work, ours=python == sys.executable)
        runtimes[steps] = train_runtime(output)
    for line in output.splitlines():  # the driver's precision decision, where --bf16 was asked
        if "--bf16" in line:
            print(f"  [{name}] {line.strip()}")
    return (runtimes[args.long] - runtimes[args.short]) / (args.long - args.short)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n_passages", type=int, default=8)
    parser.add_argument("--short", type=int, default=2)
    parser.add_argument("--long", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers (same for both)")
    parser.add_argument("--fp16", action="store_true", help="mixed precision (GPU)")
    parser.add_argument("--skip_v1", action="store_true")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--memory_batch", type=int, default=64)
    args = parser.parse_args()

    from tevatron.tokenization import load_tokenizer
    tokenizer = load_tokenizer(str(minilm_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_groups = max(args.batch * (args.long + 1), args.memory_batch * 2)
        train_file = write_train_groups(work / "train" / "train.jsonl", tokenizer, n_groups)
        import torch
        rates = measure_matmul_peak(torch.device("cuda" if args.fp16 else "cpu"),
                                    torch.float16 if args.fp16 else torch.float32)
        gflops = max(rates.values())
        limit = physical_limit(minilm_dir(), train_file, args.batch, args.n_passages, gflops)
        print("matmul peak here: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items())
              + f" GFLOP/s; physical limit of one step at {gflops:.0f}: {limit:.2f} s")

        results = {}
        if not args.skip_v1 and v1_available():
            results["tevatron v1"] = seconds_per_step(V1_PYTHON, work / "train", work, "v1", args)
        results["ours"] = seconds_per_step(sys.executable, work / "train", work, "ours", args)
        if not args.fp16 and cpu_has_bf16():
            results["ours --bf16"] = seconds_per_step(sys.executable, work / "train", work, "ours-bf16", args,
                                                      ("--bf16",))
        print(f"\nseconds per step (batch {args.batch} x {args.n_passages} passages, q32/p128, "
              f"{'fp16' if args.fp16 else 'fp32'}):")
        for name, seconds in results.items():
            print(f"  {name:12s} {seconds:6.2f} s/step   {limit / seconds:5.0%} of the physical limit")
        if "tevatron v1" in results:
            print(f"  speed-up over v1: {results['tevatron v1'] / results['ours']:.2f}x")
        if "ours --bf16" in results:
            print(f"  --bf16 against fp32 (ours): {results['ours'] / results['ours --bf16']:.2f}x")

        if not args.skip_memory:
            print(f"\npeak memory at batch {args.memory_batch} x {args.n_passages} (1 step, ours):")
            for label, extra in (("plain", ()), ("--grad_cache", ("--grad_cache",))):
                command = driver_command(sys.executable, work / "train", work / f"mem-{label}", 1, args, extra)
                command[command.index("--per_device_train_batch_size") + 1] = args.memory_batch
                _, peak_kb = run_timed(command, cwd=work, ours=True)
                print(f"  {label:13s} {peak_kb / 1024 ** 2:6.2f} GiB")


if __name__ == "__main__":
    main()
