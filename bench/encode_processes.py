"""Encoding with several processes against one, on the same cores, side by side in one run.

The encode driver on all-MiniLM-L6-v2 (p_max_len 128) encodes SciFact abstracts (shuffled, ``title
[SEP] text``) twice per configuration:

  threads    one process using all P cores (``OMP_NUM_THREADS=P``), as ``NPROC=1`` runs it;
  processes  P processes of one thread each under ``torchrun --nproc_per_node P`` (``NPROC=P``): each
             encodes a share, rank 0 merges the parts and writes the output.

Each configuration runs on the first N/2 and on all N texts; the difference of the two wall times covers
the other N/2 texts, so start-up (torchrun's too), imports and model loading cancel out, while the merge
and the save stay in.  The vectors of the two long runs are compared.  On a GPU machine the same
command with ``--processes <GPUs>`` measures one process per GPU against one GPU.

    python bench/encode_processes.py                     # 2 cores: 2 x 1 thread against 1 x 2 threads
    python bench/encode_processes.py --n_passages 200    # a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import minilm_dir, run_timed, scifact_texts  # noqa: E402

P_MAX_LEN = 128


def write_jsonl(path: Path, texts) -> Path:
    with open(path, "w") as handle:
        for i, ids in enumerate(texts):
            handle.write(json.dumps({"text_id": str(i), "text": ids}) + "\n")
    return path


def encode_command(n_processes: int, in_path: Path, save_path: Path, args) -> list:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n_processes]
                if n_processes > 1 else [sys.executable])
    return [*launcher, "-m", "tevatron.driver.encode", "--model_name_or_path", minilm_dir(),
            "--output_dir", save_path.parent, "--encode_in_path", in_path, "--encoded_save_path", save_path,
            "--p_max_len", P_MAX_LEN, "--per_device_eval_batch_size", args.batch_size]


def timed_seconds(n_processes: int, threads: int, files: dict, work: Path, tag: str, args) -> tuple[float, Path]:
    """Wall seconds of the long run minus the short run, and the long run's output."""
    seconds = {}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for size, in_path in files.items():
        save_path = work / tag / f"{size}.pt"
        start = time.perf_counter()
        run_timed(encode_command(n_processes, in_path, save_path, args), cwd=work, ours=True)
        seconds[size] = time.perf_counter() - start
    short, long = sorted(seconds)
    return seconds[long] - seconds[short], work / tag / f"{long}.pt"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_passages", type=int, default=1600, help="texts of the long run (SciFact has 5,183)")
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="P: processes (and cores) compared")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from tevatron.tensor_files import load_encodings
    from tevatron.tokenization import load_tokenizer

    passages, _, _ = scifact_texts(load_tokenizer(str(minilm_dir())), p_max_len=P_MAX_LEN)
    pids = sorted(passages)
    random.Random(args.seed).shuffle(pids)
    texts = [passages[p] for p in pids[:args.n_passages]]
    half = len(texts) // 2
    print(f"{len(texts)} SciFact abstracts (timed: the last {len(texts) - half}), all-MiniLM-L6-v2, "
          f"batch {args.batch_size}, {args.processes} cores; {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = {half: write_jsonl(work / "half.json", texts[:half]), len(texts): write_jsonl(work / "all.json", texts)}
        one, one_out = timed_seconds(1, args.processes, files, work, "threads", args)
        many, many_out = timed_seconds(args.processes, 1, files, work, "processes", args)
        (one_reps, one_ids), (many_reps, many_ids) = load_encodings(one_out), load_encodings(many_out)
        same_ids = one_ids == many_ids
        largest_difference = float((one_reps - many_reps).abs().max())
    timed = len(texts) - half
    print(f"1 process x {args.processes} threads:     {timed / one:8.1f} passages/s")
    print(f"{args.processes} processes x 1 thread:     {timed / many:8.1f} passages/s")
    print(f"ratio processes / threads:  {one / many:8.2f}x")
    print(f"outputs: ids {'identical' if same_ids else 'DIFFER'}, largest vector difference {largest_difference:.2e}")
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
