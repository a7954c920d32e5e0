"""The seed's flow as written: get_data.sh, the README's by-hand commands and run.sh, mine_hard_neg.sh,
train_hn.sh on small synthetic data with a tiny random model; settings, OUT naming and step reports."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from conftest import make_tiny_bert
from helpers import REPO_ROOT, command_path, write_jsonl
from tevatron.text_formats import iter_jsonl, read_qrels, read_run

README = REPO_ROOT / "README.md"
SETTINGS = REPO_ROOT / "settings.sh"
DATA_FILES = ("corpus.tsv", "train.query.txt", "dev.query.txt", "qrels.train.tsv", "qrels.dev.tsv",
              "train.negatives.tsv", "bm25.dev.rank.tsv", "bert/query/train.query.json", "bert/query/dev.query.json",
              "bert/corpus/split00.json", "bert/corpus/split01.json", "bert/train/split00.json")
MAX_STEPS = "2"


# --------------------------------------------------------------------------- synthetic data
def _syllable_words(rng: random.Random, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vo", "ne", "pi", "dor", "qua", "li", "zen", "ba", "ru"]
    return sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(n)})


def make_collection(n_passages: int = 160, n_train: int = 24, n_dev: int = 12, seed: int = 0):
    """Passages of random words; each query repeats words of its one relevant passage (so BM25 finds it)."""
    rng = random.Random(seed)
    vocab = _syllable_words(rng, 500)
    passages = {str(i): (" ".join(rng.sample(vocab, 2)) if i % 4 else "-", " ".join(rng.choices(vocab, k=40)))
                for i in range(n_passages)}
    queries, qrels = {}, {}
    for split, base, count in (("train", 1000, n_train), ("dev", 5000, n_dev)):
        for q in range(base, base + count):
            pid = str(rng.randrange(n_passages))
            words = passages[pid][1].split()
            queries[str(q)] = (split, " ".join(rng.sample(words, 5) + rng.sample(vocab, 2)))
            qrels.setdefault(split, {})[str(q)] = pid
    return passages, queries, qrels


def make_rocketqa(folder: Path, **sizes) -> Path:
    """An MS MARCO folder in RocketQA's layout (what get_data.sh downloads), see tevatron/preprocess/layout.py."""
    passages, queries, qrels = make_collection(**sizes)
    folder.mkdir(parents=True)
    (folder / "para.txt").write_text("".join(f"{pid}\t{text}\n" for pid, (_, text) in passages.items()))
    (folder / "para.title.txt").write_text("".join(f"{pid}\t{title}\n" for pid, (title, _) in passages.items()))
    for split in ("train", "dev"):
        (folder / f"{split}.query.txt").write_text(
            "".join(f"{qid}\t{text}\n" for qid, (s, text) in queries.items() if s == split))
        (folder / f"qrels.{split}.tsv").write_text("".join(f"{q}\t0\t{p}\t1\n" for q, p in qrels[split].items()))
    return folder


def make_beir(folder: Path, with_train: bool = True, **sizes) -> Path:
    passages, queries, qrels = make_collection(**sizes)
    write_jsonl(folder / "corpus.jsonl", ({"_id": pid, "title": "" if title == "-" else title, "text": text}
                                          for pid, (title, text) in passages.items()))
    write_jsonl(folder / "queries.jsonl", ({"_id": qid, "text": text} for qid, (_, text) in queries.items()))
    for split, name in (("train", "train"), ("dev", "test")):
        if split == "train" and not with_train:
            continue
        (folder / "qrels").mkdir(exist_ok=True)
        (folder / "qrels" / f"{name}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{p}\t1\n" for q, p in qrels[split].items()))
    return folder


# --------------------------------------------------------------------------- running scripts
def pipeline_env(**settings) -> dict:
    """The environment of a user running the scripts: offline hub, this checkout's python first on PATH."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PATH=command_path(),
               PYTHONPATH=str(REPO_ROOT))
    for name in ("PROFILE", "DATA", "DATASET", "DATA_DIR", "OUT", "MODEL", "TOKENIZER", "LR", "TRAIN_EXTRA", "NPROC",
                 "LORA", "LORA_R", "LORA_ALPHA", "RERANK_DIR", "DISTIL_DIR", "SEED", "STAGE3_SEED"):
        env.pop(name, None)           # a developer's own settings must not leak in
    env.update(settings)
    return env


def run_script(name: str, env: dict, cwd: Path, *args) -> subprocess.CompletedProcess:
    """stdout and stderr together, in order: the steps' names and the stages' log lines interleave."""
    return subprocess.run(["bash", str(REPO_ROOT / name), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)


def check_ok(result: subprocess.CompletedProcess, what: str) -> str:
    assert result.returncode == 0, f"{what} exited {result.returncode}\n{result.stdout[-6000:]}"
    return result.stdout


def out_folder(log: str, cwd: Path) -> Path:
    match = re.search(r"^==> OUT=(\S+)", log, re.M)
    assert match, log[:3000]
    return cwd / match.group(1)


def step_sections(log: str) -> dict[str, list[str]]:
    """Each step's output: the lines from ``==> NAME`` to its timing line ``==> NAME 1.234s`` (the last run)."""
    sections, current = {}, None
    for line in log.splitlines():
        start = re.fullmatch(r"==> (\w+)", line)
        if start:
            current = start.group(1)
            sections[current] = []
        elif current and re.fullmatch(rf"==> {current} \d+\.\d+s", line):
            current = None
        elif current:
            sections[current].append(line)
    return sections


UP_TO_DATE = re.compile(r"(up to date|exists|is complete)\b.*skip", re.I)


def mrr_at_10(qrels: dict, run: dict) -> float:
    """MS MARCO's MRR@10, written out here independently of tevatron.evaluation: ties broken by passage id,
    the sum over the judged queries divided by their number (unranked ones count 0)."""
    total = 0.0
    for qid, judged in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda hit: (-hit[1], hit[0]))[:10]
        total += next((1.0 / rank for rank, (pid, _) in enumerate(ranked, 1) if judged.get(pid, 0) > 0), 0.0)
    return total / len(qrels)


def marco_run(path: Path) -> dict:
    """A ``qid pid rank`` file as scores (higher is better)."""
    run: dict = {}
    for line in path.read_text().splitlines():
        qid, pid, rank = line.split()
        run.setdefault(qid, {})[pid] = -float(rank)
    return run


def readme_by_hand_block() -> str:
    """The README's by-hand commands (the bash block after "The same stages by hand")."""
    text = README.read_text()
    section = text[text.index("## MS MARCO passage ranking"):]
    section = section[section.index("The same stages by hand"):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    return block[:block.index("```")]


def groups_in(folder: Path, pattern: str) -> list[dict]:
    return [record for path in sorted(folder.glob(pattern)) for _, record in iter_jsonl(path)]


# --------------------------------------------------------------------------- the seed's flow
@pytest.fixture(scope="module")
def seed_flow(tmp_path_factory):
    """get_data.sh, the README's by-hand block (tiny model, --max_steps), then the four scripts."""
    root = tmp_path_factory.mktemp("seed")
    source = make_rocketqa(root / "rocketqa-small")
    model = make_tiny_bert(root / "tiny-bert")
    work = root / "work"
    work.mkdir()
    env = pipeline_env(DATA=str(source), MODEL=str(model), N_SPLITS="2", DEPTH="10",    # the block's --depth 10
                       TRAIN_EXTRA=f"--max_steps {MAX_STEPS}")
    logs = {"get_data.sh (first)": check_ok(run_script("get_data.sh", env, work), "get_data.sh")}
    data_times = {name: (work / "marco" / name).stat().st_mtime_ns for name in DATA_FILES}

    block = readme_by_hand_block().replace("bert-base-uncased", str(model))
    block = block.replace("-m tevatron.driver.train ", f"-m tevatron.driver.train --max_steps {MAX_STEPS} ")
    block = block.replace("msmarco-passage-ranking/", f"{REPO_ROOT}/msmarco-passage-ranking/")
    by_hand = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=900)
    logs["by hand"] = check_ok(by_hand, "the README's by-hand commands")

    for script in ("get_data.sh", "run.sh", "mine_hard_neg.sh", "train_hn.sh"):
        logs[script] = check_ok(run_script(script, env, work), script)
    return {"work": work, "env": env, "logs": logs, "data_times": data_times, "model": model,
            "out": out_folder(logs["run.sh"], work)}


@pytest.mark.slow
def test_seed_commands_and_scripts_agree(seed_flow):
    work, logs, out = seed_flow["work"], seed_flow["logs"], seed_flow["out"]
    data = work / "marco"
    # One data folder: the seed's layout, prepared once and read by everything.
    assert not (data / "rocketqa-small").exists() and not (work / "runs" / "marco").exists()
    assert out.parent == work / "runs" and re.fullmatch(r"rocketqa-small-marco-[0-9a-f]{8}", out.name)
    for script in ("run.sh", "mine_hard_neg.sh", "train_hn.sh"):
        assert f"==> OUT=runs/{out.name} " in logs[script]
        assert "==> data: marco" in logs[script]

    qrels = read_qrels(data / "qrels.dev.tsv")
    by_hand_mrr = mrr_at_10(qrels, marco_run(work / "ranking" / "rank.txt.marco"))
    scripts_mrr = mrr_at_10(qrels, read_run(out / "ranking" / "stage1" / "dev.rank.tsv"))
    metrics = json.loads((out / "metrics" / "stage1.json").read_text())
    assert metrics["MRR@10"] == pytest.approx(scripts_mrr, abs=1e-12)
    assert by_hand_mrr == pytest.approx(scripts_mrr, abs=1e-12)
    printed = re.findall(r"MRR @10: (\S+)", logs["by hand"]) + re.findall(r"MRR @10: (\S+)", logs["run.sh"])
    assert printed == [f"{by_hand_mrr:.4f}", f"{json.loads((out / 'metrics' / 'bm25.json').read_text())['MRR@10']:.4f}",
                       f"{scripts_mrr:.4f}"]

    # The same hard negatives, in v1's names, with the BM25 groups linked in beside them.
    hn_by_hand, hn_scripts = groups_in(data / "bert" / "train-hn", "split*.hn.json"), groups_in(out / "train-hn",
                                                                                                "split*.hn.json")
    assert hn_by_hand and hn_by_hand == hn_scripts
    bm25 = groups_in(data / "bert" / "train", "split*.json")
    for folder in (data / "bert" / "train-hn", out / "train-hn"):
        links = sorted(p for p in folder.iterdir() if re.fullmatch(r"split\d+\.json", p.name))
        assert links and all(p.is_symlink() for p in links)
        assert [r for p in links for _, r in iter_jsonl(p)] == bm25
    expected = (f"{len(bm25) + len(hn_scripts):,} training groups: {len(hn_scripts):,} from split*.hn.json, "
                f"{len(bm25):,} from split*.json")
    assert expected in logs["by hand"] and expected in logs["train_hn.sh"]

    # No data step ran twice: get_data.sh ran three times (by itself twice, once inside run.sh), and
    # every stage after the first run found its output up to date.
    assert {name: (data / name).stat().st_mtime_ns for name in DATA_FILES} == seed_flow["data_times"]
    for run in ("get_data.sh", "run.sh"):
        sections = step_sections(logs[run])
        for step in ("prepare_data", "bm25_negatives", "build_train", "tokenize_train_queries",
                     "tokenize_dev_queries", "tokenize_passages"):
            assert any(UP_TO_DATE.search(line) for line in sections[step]), (run, step, sections[step])
    assert "==> zero_shot: not requested (ZERO_SHOT=0)" in logs["run.sh"]
    assert "outputs complete, skipped" not in "".join(logs.values())


@pytest.mark.slow
def test_rerun_reports_up_to_date_and_identical_metrics(seed_flow):
    work, out = seed_flow["work"], seed_flow["out"]
    before = {path.name: path.read_text() for path in (out / "metrics").glob("*.json")}
    log = check_ok(run_script("run.sh", seed_flow["env"], work), "run.sh again")
    assert {path.name: path.read_text() for path in (out / "metrics").glob("*.json")} == before
    sections = step_sections(log)
    assert any("up to date" in line and "skipping training" in line for line in sections["train"])
    assert any(UP_TO_DATE.search(line) for line in sections["stage1_eval"])


@pytest.mark.slow
def test_changed_lr_goes_elsewhere_or_is_refused(seed_flow):
    work, out = seed_flow["work"], seed_flow["out"]
    old_metrics = (out / "metrics" / "stage1.json").read_text()
    changed = dict(seed_flow["env"], LR="1e-5")
    # The default OUT follows the settings: a new folder, a new model, its own scores.
    log = check_ok(run_script("run.sh", changed, work), "run.sh with LR=1e-5")
    new_out = out_folder(log, work)
    assert new_out != out and new_out.parent == out.parent
    record = json.loads((new_out / "model" / ".complete").read_text())
    assert record["provenance"]["learning_rate"] == 1e-5
    new_mrr = json.loads((new_out / "metrics" / "stage1.json").read_text())["MRR@10"]
    assert re.findall(r"MRR @10: (\S+)", log)[-1] == f"{new_mrr:.4f}"
    assert (out / "metrics" / "stage1.json").read_text() == old_metrics
    # An OUT given explicitly is used as given: the finished model there was trained otherwise, so training
    # stops with one line naming the difference, and no stage-1 score is reported.
    refused = run_script("run.sh", dict(changed, OUT=str(out)), work)
    assert refused.returncode == 2, refused.stdout[-3000:]
    errors = [line for line in refused.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "learning_rate" in errors[0] and str(out / "model") in errors[0]
    assert 'run.sh: step "train" failed (exit 2)' in refused.stdout
    assert "RETRAIN=1 with the script that trains it trains it again in place" in refused.stdout
    assert "==> stage1_eval" not in refused.stdout
    assert (out / "metrics" / "stage1.json").read_text() == old_metrics
    # RETRAIN=1 trains the given folder again in place: new_out, back at the first LR, scores the first run's MRR
    log = check_ok(run_script("run.sh", dict(seed_flow["env"], OUT=str(new_out), RETRAIN="1"), work), "RETRAIN=1")
    assert not any("up to date" in line for line in step_sections(log)["train"])
    learning_rates = [json.loads((folder / "model" / ".complete").read_text())["provenance"]["learning_rate"]
                      for folder in (new_out, out)]
    assert learning_rates[0] == learning_rates[1] != 1e-5
    mrrs = [json.loads((folder / "metrics" / "stage1.json").read_text())["MRR@10"] for folder in (new_out, out)]
    assert mrrs[0] == mrrs[1]


# --------------------------------------------------------------------------- failures and odd data
@pytest.mark.slow
def test_failed_step_reports_its_exit_status(tmp_path, tiny_bert_dir):
    source = make_beir(tmp_path / "broken")
    with open(source / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "x", "text": \n')
    env = pipeline_env(DATA=str(source), MODEL=str(tiny_bert_dir), N_SPLITS="1")
    result = run_script("run.sh", env, tmp_path)
    assert result.returncode == 2
    assert 'get_data.sh: step "prepare_data" failed (exit 2)' in result.stdout
    assert 'run.sh: step "data" failed (exit 2)' in result.stdout
    assert "==> bm25_eval" not in result.stdout


@pytest.mark.slow
def test_evaluation_only_data_set_scores_and_stops_cleanly(tmp_path, tiny_bert_dir):
    source = make_beir(tmp_path / "evalonly", with_train=False, n_passages=80)
    env = pipeline_env(PROFILE="quick", DATA=str(source), MODEL=str(tiny_bert_dir), N_SPLITS="1", ZERO_SHOT="0")
    log = check_ok(run_script("run.sh", env, tmp_path, "--all"), "run.sh on an evaluation-only set")
    out = out_folder(log, tmp_path)
    assert sorted(p.name for p in (out / "metrics").glob("*.json")) == ["bm25.json", "zero_shot.json"]
    assert log.strip().splitlines()[-1].startswith("==> nothing to train on: marco/evalonly has no training qrels")
    assert "build_train: no training qrels" in log and not (out / "model").exists()
    assert re.fullmatch(r"evalonly-quick-[0-9a-f]{8}", out.name)    # zero-shot ran although ZERO_SHOT=0
    for script in ("mine_hard_neg.sh", "train_hn.sh"):
        tail = check_ok(run_script(script, env, tmp_path), script).strip().splitlines()[-1]
        assert tail.startswith("==> nothing to train on: marco/evalonly has no training qrels")


@pytest.mark.slow
def test_offline_hub_model_stops_before_any_work(tmp_path):
    source = make_beir(tmp_path / "beir")
    env = pipeline_env(DATA=str(source), HF_HOME=str(tmp_path / "empty_hf_home"), HF_HUB_CACHE="")
    env.pop("HF_HUB_CACHE")
    result = subprocess.run(["bash", str(REPO_ROOT / "run.sh")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: MODEL=bert-base-uncased is not a local folder and not in the Hugging Face cache, and the hub is "
        "offline; set MODEL=/path/to/a/local/model/folder (or PROFILE=quick for the packaged all-MiniLM-L6-v2)"]
    assert "==> data" not in result.stdout.splitlines() and not (tmp_path / "marco").exists()


# --------------------------------------------------------------------------- settings (bash only)
def shell_settings(names, env_overrides: dict, settings_file: Path = SETTINGS, resolve: bool = False,
                   cwd: Path = REPO_ROOT) -> dict:
    """Values the scripts would use: settings.sh sourced as they source it (plus pipeline_common.sh)."""
    script = f'set -a; source "{settings_file}"; set +a\n'
    if resolve:
        script += f'source "{REPO_ROOT}/msmarco-passage-ranking/pipeline_common.sh"; resolve_settings\n'
    script += "".join(f'printf "%s\\n" "${name}"\n' for name in names)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=pipeline_env(**env_overrides),
                            capture_output=True, text=True, timeout=60, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return dict(zip(names, result.stdout.splitlines()))


def recorded_commands(body: str, cwd: Path, **settings) -> subprocess.CompletedProcess:
    """``body`` run after the scripts' settings and shell functions (resolve_settings done), with a PYTHON that
    prints each command it is given (one line) instead of running it."""
    recorder = cwd / "python"
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*"\n')
    recorder.chmod(0o755)
    script = (f'set -a; source "{SETTINGS}"; set +a\n'
              f'source "{REPO_ROOT}/msmarco-passage-ranking/pipeline_common.sh"\nresolve_settings\n{body}')
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60,
                          env=pipeline_env(PYTHON=str(recorder), **settings), cwd=cwd)


def test_settings_edits_and_environment_win_over_the_profile(tmp_path):
    names = ("PROFILE", "LR", "HN_LR", "EPOCHS", "DATA", "BATCH", "CORPUS_MAX_LEN")
    assert shell_settings(names, {}) == {"PROFILE": "marco", "LR": "5e-6", "HN_LR": "5e-6", "EPOCHS": "2",
                                         "DATA": "msmarco", "BATCH": "8", "CORPUS_MAX_LEN": "128"}
    assert shell_settings(names, {"PROFILE": "quick"}) == {
        "PROFILE": "quick", "LR": "2e-5", "HN_LR": "2e-5", "EPOCHS": "3", "DATA": "scifact", "BATCH": "8",
        "CORPUS_MAX_LEN": "256"}
    # An edit in YOUR SETTINGS counts under the quick profile too; the environment still wins over it.
    edited = tmp_path / "settings.sh"
    text = SETTINGS.read_text()
    line = re.compile(r"^LR=\$\{LR:-\}", re.M)
    assert len(line.findall(text)) == 1
    edited.write_text(line.sub("LR=${LR:-1e-5}", text))
    assert shell_settings(("LR", "HN_LR", "EPOCHS"), {"PROFILE": "quick"}, edited) == {
        "LR": "1e-5", "HN_LR": "1e-5", "EPOCHS": "3"}
    assert shell_settings(("LR",), {"PROFILE": "quick", "LR": "3e-5"}, edited) == {"LR": "3e-5"}
    # DATA is the one name for the data source; DATASET is read as an alias.
    assert shell_settings(("DATA",), {"DATASET": "nfcorpus"}) == {"DATA": "nfcorpus"}


def test_settings_file_runs_no_python():
    text = SETTINGS.read_text()
    assert "python -" not in text and "$PYTHON" not in text and "$(" not in text.replace("$(nproc", "")


def test_default_out_and_data_folder(tmp_path):
    marco = make_rocketqa(tmp_path / "mymarco", n_passages=20, n_train=2, n_dev=2)
    beir = make_beir(tmp_path / "mybeir", n_passages=20, n_train=2, n_dev=2)
    names = ("DATA_DIR", "OUT")
    base = shell_settings(names, {"DATA": str(marco)}, resolve=True, cwd=tmp_path)
    assert base["DATA_DIR"] == "marco" and re.fullmatch(r"runs/mymarco-marco-[0-9a-f]{8}", base["OUT"])
    assert shell_settings(names, {}, resolve=True, cwd=tmp_path)["DATA_DIR"] == "marco"   # msmarco
    assert shell_settings(names, {"DATA": str(beir)}, resolve=True, cwd=tmp_path)["DATA_DIR"] == "marco/mybeir"
    for name, value in (("LR", "1e-5"), ("SKIP_TOP", "3"), ("SEED", "7"), ("TRAIN_EXTRA", "--max_steps 5")):
        other = shell_settings(names, {"DATA": str(marco), name: value}, resolve=True, cwd=tmp_path)
        assert other["OUT"] != base["OUT"], name
    for name, value in (("ENCODE_BATCH", "64"), ("WORKERS", "0"), ("LOGGING_STEPS", "1"), ("ZERO_SHOT", "1"),
                        ("NPROC", "2")):
        same = shell_settings(names, {"DATA": str(marco), name: value}, resolve=True, cwd=tmp_path)
        assert same["OUT"] == base["OUT"], name
    given = shell_settings(names, {"DATA": str(marco), "OUT": "mine"}, resolve=True, cwd=tmp_path)
    assert given["OUT"] == "mine"


def test_encoding_steps_run_nproc_processes_under_torchrun(tmp_path):
    """NPROC > 1 launches the encode driver under torchrun (one process per GPU or core); 1 runs it plainly."""
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "$@"\n')
    fake_python.chmod(0o755)
    script = (f'set -a; source "{SETTINGS}"; set +a; source "{REPO_ROOT}/msmarco-passage-ranking/pipeline_common.sh"; '
              f'resolve_settings; encode_driver --encode_in_path x.json')
    launched = {}
    for nproc in ("1", "3", "0", "two"):
        launched[nproc] = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                                         env=pipeline_env(PYTHON=str(fake_python), NPROC=nproc, MODEL=str(tmp_path)),
                                         cwd=tmp_path, timeout=60)
    assert launched["1"].stdout.splitlines() == ["-m tevatron.driver.encode --encode_in_path x.json"]
    assert launched["3"].stdout.splitlines() == [
        "-m torch.distributed.run --standalone --nproc_per_node 3 -m tevatron.driver.encode --encode_in_path x.json"]
    for bad in ("0", "two"):
        assert launched[bad].returncode == 2 and launched[bad].stderr.splitlines() == [
            f"error: NPROC must be a positive whole number of processes, not '{bad}' (settings.sh)"]


# --------------------------------------------------------------------------- hard-negative file names
def test_hard_negative_groups_live_beside_the_bm25_groups(tmp_path, caplog):
    import logging

    from tevatron.arguments import DataArguments
    from tevatron.data import load_train_groups
    from tevatron.preprocess import build_train, build_train_hn, layout
    from tevatron.text_formats import iter_collection, write_negatives, write_tsv

    data = tmp_path / "data"
    layout.prepare(str(make_rocketqa(tmp_path / "marco", n_passages=40, n_train=6, n_dev=2)), data)
    pids = [pid for _, pid, _, _ in iter_collection(data / "corpus.tsv")]
    qids = [line.split("\t")[0] for line in (data / "train.query.txt").read_text().splitlines()]
    write_negatives(data / "train.negatives.tsv", {q: pids[i:i + 10] for i, q in enumerate(qids)})
    write_tsv(data / "train.rank.tsv", [(q, pid, f"{30 - r}") for i, q in enumerate(qids)
                                        for r, pid in enumerate(pids[i + 5:i + 25])])
    common = ("bert-base-uncased",)
    files = (data / "qrels.train.tsv", data / "train.query.txt", data / "corpus.tsv")
    build_train.build_train(*common, data / "train.negatives.tsv", *files, data / "train",
                            build_train.TrainSetOptions(n_sample=4, shard_size=4))
    hn = data / "train-hn"
    build_train_hn.build_train_hn(*common, data / "train.rank.tsv", *files, hn,
                                  options=build_train.TrainSetOptions(n_sample=4, shard_size=4))
    assert sorted(p.name for p in hn.glob("split*")) == ["split00.hn.json", "split01.hn.json"]
    for path in sorted((data / "train").glob("split*.json")):
        (hn / path.name).symlink_to(path)
    # Rebuilt with other options: its own files are replaced, the linked BM25 groups stay.
    build_train_hn.build_train_hn(*common, data / "train.rank.tsv", *files, hn,
                                  options=build_train.TrainSetOptions(n_sample=3, shard_size=10))
    assert sorted(p.name for p in hn.glob("split*")) == ["split00.hn.json", "split00.json", "split01.json"]
    caplog.set_level(logging.INFO, logger="tevatron.data")
    groups = load_train_groups(DataArguments(train_dir=str(hn), train_n_passages=2), vocab_size=30522,
                               cache_dir=str(tmp_path / "cache"))
    n_bm25 = sum(1 for p in (data / "train").glob("split*.json") for _ in iter_jsonl(p))
    n_hn = sum(1 for _ in iter_jsonl(hn / "split00.hn.json"))
    assert len(groups) == n_bm25 + n_hn
    assert f"{n_bm25 + n_hn} training groups: {n_hn} from split*.hn.json, {n_bm25} from split*.json" in caplog.text


# --------------------------------------------------------------------------- raw text (FORMAT=text)
@pytest.mark.slow
def test_format_text_prefixes_reach_training_and_encoding(tmp_path):
    """Prefixes reach the raw data's training and encoding (the tokenized files': tested elsewhere; FORMAT=text
    giving the tokenized flow's numbers: tests/test_stage3_pipeline.py, which runs both flows anyway)."""
    source = make_rocketqa(tmp_path / "rocketqa-small")
    model = make_tiny_bert(tmp_path / "tiny-bert")
    work = tmp_path / "work"
    work.mkdir()
    prefixed = pipeline_env(DATA=str(source), MODEL=str(model), N_SPLITS="2", DEPTH="10",
                            TRAIN_EXTRA=f"--max_steps {MAX_STEPS}", FORMAT="text", QUERY_PREFIX="query: ",
                            PASSAGE_PREFIX="passage: ")
    log = check_ok(run_script("run.sh", prefixed, work), "run.sh with prefixes")
    prefixed_out = out_folder(log, work)
    assert re.fullmatch(r"rocketqa-small-marco-text-[0-9a-f]{8}", prefixed_out.name)
    saved = json.loads((prefixed_out / "model" / "tevatron_config.json").read_text())
    assert (saved["query_prefix"], saved["passage_prefix"]) == ("query: ", "passage: ")
    unprefixed = shell_settings(("OUT",), dict(prefixed, QUERY_PREFIX="", PASSAGE_PREFIX=""), resolve=True, cwd=work)
    assert work / unprefixed["OUT"] != prefixed_out, "a prefix changes the numbers: another OUT"


# --------------------------------------------------------------------------- RETRAIN
def test_retrain_reaches_each_scripts_training_step_and_no_check_step(tmp_path):
    """RETRAIN=1: run.sh's, train_hn.sh's, rerank.sh's and distil.sh's own training steps (the fold rerankers too) get
    --overwrite_output_dir; the check steps (a later script confirming an earlier model) never do."""
    out = tmp_path / "out"
    for folder in ("model", "model-hn", "rerank/reranker"):
        (out / folder).mkdir(parents=True)
        (out / folder / ".complete").write_text("{}")
    steps = "".join(line + "\n" for script in ("run.sh", "train_hn.sh", "rerank.sh", "distil.sh")
                    for line in (REPO_ROOT / script).read_text().splitlines()
                    if re.match(r"do_train\w*\(\)", line))
    assert steps.count("\n") == 5, steps
    body = (f'INIT_MODEL=init; DISTIL_INIT_MODEL=init; PRECISION=\n{steps}'
            'do_train; do_train_hn; do_train_reranker; do_train_fold_rerankers; do_train_distil; echo CHECKS\n'
            'check_stage1_model; check_stage2_model; check_reranker\n')
    for retrain in ("0", "1", "2"):
        result = recorded_commands(body, tmp_path, MODEL=str(tmp_path), OUT=str(out), RERANK_DIR=str(out / "rerank"),
                                   RETRAIN=retrain, DISTIL_FOLDS="2")
        if retrain == "2":
            assert result.returncode == 2
            assert result.stderr.splitlines() == ["error: RETRAIN must be 0 or 1, not '2' (settings.sh)"]
            continue
        assert result.returncode == 0, result.stderr
        trained, checked = result.stdout.split("CHECKS\n")
        trained = "".join(line + "\n" for line in trained.splitlines() if not line.startswith("==> "))  # commands only
        outputs = [line.split("--output_dir ")[1].split()[0] for line in trained.splitlines()]
        assert outputs == [f"{out}/model", f"{out}/model-hn", f"{out}/rerank/reranker", f"{out}/rerank/folds-2/reranker-0",
                           f"{out}/rerank/folds-2/reranker-1", f"{out}/rerank/{Path(outputs[5]).parent.name}/model-distil"]
        assert [line.endswith(" --overwrite_output_dir") for line in trained.splitlines()] == [retrain == "1"] * 6
        assert len(checked.splitlines()) == 3 and "--overwrite_output_dir" not in checked
