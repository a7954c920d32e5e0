"""Small builders shared by tests: toy training groups, tokenized corpora, CLI runners."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def toy_groups(n_groups: int = 32, n_negatives: int = 10, seed: int = 0, vocab=(1000, 2000)) -> list[dict]:
    """Learnable toy groups: the positive repeats the query's tokens, negatives are random."""
    rng = random.Random(seed)
    groups = []
    for _ in range(n_groups):
        query = [rng.randint(*vocab) for _ in range(rng.randint(3, 12))]
        positive = query + [rng.randint(*vocab) for _ in range(rng.randint(2, 30))]
        negatives = [[rng.randint(*vocab) for _ in range(rng.randint(4, 50))] for _ in range(n_negatives)]
        groups.append({"query": query, "positives": [positive], "negatives": negatives})
    return groups


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def toy_corpus(n: int = 60, seed: int = 1, max_len: int = 150, prefix: str = "doc") -> list[dict]:
    rng = random.Random(seed)
    return [{"text_id": f"{prefix}-{i}", "text": [rng.randint(1000, 29000) for _ in range(rng.randint(1, max_len))]}
            for i in range(n)]


def run_module(module: str, *args, cwd=None, timeout: int = 600, env_extra: dict | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
