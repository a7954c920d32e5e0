"""Every command line starts in a fresh interpreter.

The other tests run commands through tests/forkserver.py, whose children start with torch, transformers,
peft and the drivers already imported: a command that used a module it never imports would pass there and
fail for a user.  Here each entry point prints its help in an interpreter of its own."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # a fresh interpreter per command

MODULES = ("tevatron.driver.train", "tevatron.driver.encode", "tevatron.faiss_retriever",
           "tevatron.faiss_retriever.reducer", "tevatron.evaluation", "tevatron.export", "tevatron.merge_lora",
           "tevatron.reranker.driver.train", "tevatron.reranker.driver.rerank", "tevatron.reranker.driver.score_groups")
SCRIPTS = ("bm25_negatives.py", "build_train.py", "build_train_hn.py", "check_regression.py", "ms_marco_eval.py",
           "prepare_data.py", "results_table.py", "score_to_marco.py", "tokenize_passages.py", "tokenize_queries.py")


def test_the_lists_name_every_entry_point():
    found = {str(path.relative_to(REPO_ROOT)) for folder in ("tevatron", "msmarco-passage-ranking")
             for path in (REPO_ROOT / folder).rglob("*.py") if '__name__ == "__main__"' in path.read_text()}
    listed = {("tevatron/" + module[len("tevatron."):].replace(".", "/")
               + ("/__main__.py" if module == "tevatron.faiss_retriever" else ".py")) for module in MODULES}
    assert found == listed | {f"msmarco-passage-ranking/{script}" for script in SCRIPTS}


@pytest.mark.parametrize("entry", [("-m", module) for module in MODULES]
                         + [(str(REPO_ROOT / "msmarco-passage-ranking" / script),) for script in SCRIPTS],
                         ids=lambda entry: entry[-1].rsplit("/", 1)[-1])
def test_each_command_prints_its_help_from_a_fresh_interpreter(entry, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, *entry, "--help"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout and "Traceback" not in result.stderr, result.stdout[-2000:]
