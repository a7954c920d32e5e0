"""Stage 3 (rerank.sh, distil.sh) on small synthetic data with a tiny random model.

The scripts call ``tevatron.reranker.driver.{train,rerank,score_groups}``.  One flow runs them (the
scripts end to end are the suite's costliest step, so it runs once and every test below reads it):
``PYTHON`` points at a wrapper that records the flags each of those three modules gets (calls.jsonl) and
runs the real reranker; where ``tevatron.reranker`` cannot be imported it answers them with
:data:`STAND_IN` instead, which writes outputs of the same shape, so the scripts' steps, flags, skips and
the real distillation training, encoding and evaluation are tested either way.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_bert
from helpers import REPO_ROOT, command_python
from tevatron.provenance import model_identity
from tevatron.tensor_files import load_encodings
from tevatron.text_formats import iter_jsonl
from test_pipeline import (check_ok, make_rocketqa, out_folder, pipeline_env, recorded_commands, run_script,
                           shell_settings, step_sections)

# Stands in for tevatron.reranker's three drivers: the same flags, outputs of the same shape and a skip
# when called again with the same flags.
STAND_IN = r'''
import argparse, json, sys
from pathlib import Path
from tevatron.data import list_data_files
from tevatron.text_formats import iter_jsonl, read_run, write_jsonl, write_ranking

driver, args = sys.argv[1], sys.argv[2:]
parser = argparse.ArgumentParser()
for flag in ("output_dir", "train_dir", "run", "rerank_output", "rerank_depth"):
    parser.add_argument("--" + flag)
known, _ = parser.parse_known_args(args)

def finished(folder):
    record = Path(folder, ".complete")
    if record.is_file() and json.loads(record.read_text()) == {"provenance": args}:
        print(f"{folder} is up to date; skipping", file=sys.stderr)
        return True
    return False

def mark(folder):
    Path(folder, ".complete").write_text(json.dumps({"provenance": args}))

if driver == "train":
    if not finished(known.output_dir):
        Path(known.output_dir).mkdir(parents=True, exist_ok=True)
        mark(known.output_dir)
elif driver == "score_groups":
    if not finished(known.output_dir):
        Path(known.output_dir).mkdir(parents=True, exist_ok=True)
        for path in list_data_files(known.train_dir):
            records = [record for _, record in iter_jsonl(path)]
            for record in records:
                record["positive_scores"] = [5.0 + len(p) % 3 for p in record["positives"]]
                record["negative_scores"] = [(sum(n) % 11) / 2.0 for n in record["negatives"]]
            write_jsonl(Path(known.output_dir, path.name), records)
        mark(known.output_dir)
elif driver == "rerank":
    run = read_run(known.run)
    depth = int(known.rerank_depth)
    write_ranking(known.rerank_output, [
        (qid, [(pid, 1.0 / rank) for rank, (pid, _) in enumerate(sorted(hits.items(), key=lambda h: -h[1])[:depth], 1)])
        for qid, hits in run.items()])
'''

# PYTHON for the scripts: records a reranker driver's flags in calls.jsonl beside it, then runs the driver
# ({reranker}: the real module, or the stand-in's "STAND_IN DRIVER ARGS...").
WRAPPER = """#!/usr/bin/env bash
if [[ $1 == -m && $2 == tevatron.reranker.driver.* ]]; then
  {python} -c 'import json, sys; open(sys.argv[1], "a").write(json.dumps(sys.argv[2:]) + "\\n")' \\
    {calls} "${{2##*.}}" "${{@:3}}" || exit 1
  exec {reranker}
fi
exec {python} "$@"
"""


def reranker_available() -> bool:
    try:
        return importlib.util.find_spec("tevatron.reranker.driver.score_groups") is not None
    except ModuleNotFoundError:
        return False


def printed_folder(name: str, log: str, cwd: Path) -> Path:
    """A folder a script prints at the start (``==> RERANK_DIR=...``)."""
    match = re.search(rf"^==> {name}=(\S+)", log, re.M)
    assert match, log[:3000]
    return cwd / match.group(1)


def flag(args: list, name: str) -> str:
    """The value after NAME in a recorded command line."""
    return args[args.index(name) + 1]


@pytest.fixture(scope="module")
def stage3_flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage3")
    source = make_rocketqa(root / "rocketqa-small")
    model = make_tiny_bert(root / "tiny-bert")
    work = root / "work"
    work.mkdir()
    settings = dict(DATA=str(source), MODEL=str(model), N_SPLITS="1", DEPTH="20", TRAIN_EXTRA="--max_steps 2",
                    RERANKER_EPOCHS="1", RERANK_DEPTH="5", RERANK_P_MAX_LEN="40", DISTIL_INIT="stage1",
                    DISTIL_WEIGHT="0.5", DISTIL_TEMPERATURE="2")
    (root / "bin").mkdir()
    calls = root / "bin" / "calls.jsonl"
    if reranker_available():
        reranker = f'{command_python()} "$@"'
    else:
        stand_in = root / "bin" / "stand_in_reranker.py"
        stand_in.write_text(STAND_IN)
        reranker = f'{command_python()} {stand_in} "${{2##*.}}" "${{@:3}}"'
    wrapper = root / "bin" / "python"
    wrapper.write_text(WRAPPER.format(python=command_python(), calls=calls, reranker=reranker))
    wrapper.chmod(0o755)
    settings["PYTHON"] = str(wrapper)
    env = pipeline_env(**settings)
    logs = {"run.sh": check_ok(run_script("run.sh", env, work, "--all"), "run.sh --all")}
    out = out_folder(logs["run.sh"], work)
    logs["distil.sh (too early)"] = run_script("distil.sh", env, work)
    logs["rerank.sh"] = check_ok(run_script("rerank.sh", env, work), "rerank.sh")
    logs["distil.sh"] = check_ok(run_script("distil.sh", env, work), "distil.sh")
    folds_env = {**env, "DISTIL_FOLDS": "2"}
    logs["distil.sh (folds)"] = check_ok(run_script("distil.sh", folds_env, work), "DISTIL_FOLDS=2 distil.sh")
    logs["distil.sh (folds, again)"] = check_ok(run_script("distil.sh", folds_env, work), "DISTIL_FOLDS=2 again")
    return {"kind": "real reranker" if reranker_available() else "stand-in reranker", "work": work, "out": out,
            "logs": logs, "env": env,
            "rerank_dir": printed_folder("RERANK_DIR", logs["rerank.sh"], work),
            "distil_dir": printed_folder("DISTIL_DIR", logs["distil.sh"], work),
            "calls": [json.loads(line) for line in calls.read_text().splitlines()]}


@pytest.mark.slow  # runs the pipeline scripts
def test_stage3_steps_run_in_order_with_their_times(stage3_flow):
    logs, out = stage3_flow["logs"], stage3_flow["out"]
    rerank_dir, distil_dir = stage3_flow["rerank_dir"], stage3_flow["distil_dir"]
    assert re.findall(r"^==> (\w+) \d+\.\d+s$", logs["rerank.sh"], re.M) == [
        "check_stage2", "train_reranker", "rerank_stage2", "rerank_bm25"]
    assert re.findall(r"^==> (\w+) \d+\.\d+s$", logs["distil.sh"], re.M) == [
        "check_stage2", "check_reranker", "score_groups", "train_distil", "distil_eval"]
    # stage 3 nests in the run folder of stages 1 and 2, the distillation folder in the reranker's
    assert rerank_dir.parent == out and re.fullmatch(r"rerank-[0-9a-f]{8}", rerank_dir.name)
    assert distil_dir.parent == rerank_dir and re.fullmatch(r"distil-[0-9a-f]{8}", distil_dir.name)
    for script in ("rerank.sh", "distil.sh"):
        assert f"==> OUT=runs/{out.name} " in logs[script]
        assert "RERANK_DEPTH=5" in logs[script] and "DISTIL_WEIGHT=0.5" in logs[script]
        assert f"==> RERANK_DIR=runs/{out.name}/{rerank_dir.name} " in logs[script]
        assert f"==> DISTIL_DIR=runs/{out.name}/{rerank_dir.name}/{distil_dir.name} " in logs[script]
    assert "RERANK_DEPTH" not in logs["run.sh"] and "RERANK_DIR" not in logs["run.sh"]
    rerank_steps, distil_steps = (rerank_dir / "step_times.log").read_text(), (distil_dir / "step_times.log").read_text()
    assert "rerank.sh train_reranker" in rerank_steps and "rerank.sh rerank_stage2" in rerank_steps
    assert "distil.sh train_distil" in distil_steps and "rerank.sh" not in distil_steps
    assert "rerank.sh" not in (out / "step_times.log").read_text()
    for folder, name in ((rerank_dir, "rerank_bm25"), (rerank_dir, "rerank_stage2"), (distil_dir, "distil")):
        metrics = json.loads((folder / "metrics" / f"{name}.json").read_text())
        assert 0 <= metrics["MRR@10"] <= 1
        assert not (out / "metrics" / f"{name}.json").exists()
    assert (rerank_dir / "ranking" / "rerank_stage2" / "dev.rank.tsv").is_file()
    assert (distil_dir / "ranking" / "distil" / "dev.rank.tsv").is_file()
    assert not (out / "reranker").exists() and not (out / "model-distil").exists()


@pytest.mark.slow  # runs the pipeline scripts
def test_distil_before_rerank_stops_naming_the_missing_reranker(stage3_flow):
    early, rerank_dir = stage3_flow["logs"]["distil.sh (too early)"], stage3_flow["rerank_dir"]
    assert early.returncode == 2
    errors = [line for line in early.stdout.splitlines() if line.startswith("error:")]
    assert errors == [f"error: no finished reranker in {rerank_dir.relative_to(stage3_flow['work'])}/reranker; "
                      "run rerank.sh first (same settings)"]
    assert "==> check_reranker" in early.stdout
    assert "==> score_groups" not in early.stdout


@pytest.mark.slow  # runs the pipeline scripts
def test_the_distilled_model_learnt_from_the_scored_groups(stage3_flow):
    out, distil_dir = stage3_flow["out"], stage3_flow["distil_dir"]
    record = json.loads((distil_dir / "model-distil" / ".complete").read_text())["provenance"]
    assert (record["distillation"], record["distil_temperature"], record["distil_weight"]) == (True, 2.0, 0.5)
    trained_on = sorted(Path(f["path"]).name for f in record["training data"]["files"])
    assert trained_on == sorted(p.name for p in (out / "train-hn").glob("split*.json"))
    assert all(Path(f["path"]).parent == (distil_dir / "train-distil").resolve()
               for f in record["training data"]["files"])
    assert record["model"] == model_identity(out / "model"), "starts from the stage-1 model (DISTIL_INIT=stage1)"
    scored = [json.loads(line) for path in sorted((distil_dir / "train-distil").glob("split*.json"))
              for line in path.read_text().splitlines()]
    assert scored and all(len(g["negative_scores"]) == len(g["negatives"]) for g in scored)


@pytest.mark.slow  # runs the pipeline scripts
def test_a_rerun_skips_every_finished_stage(stage3_flow):
    # One re-run (DISTIL_FOLDS=2's: the fold rerankers, the scoring with them, the distillation) stands for
    # both flows: each step checks its output the same way. The reranker check skips in the first distil.sh.
    first = step_sections(stage3_flow["logs"]["distil.sh"])
    assert any("up to date" in line and "skipping training" in line for line in first["check_reranker"])
    again = step_sections(stage3_flow["logs"]["distil.sh (folds, again)"])
    assert sum("up to date" in line and "skipping training" in line for line in again["train_fold_rerankers"]) == 2
    assert any("up to date" in line for line in again["score_groups"])
    assert any("up to date" in line and "skipping training" in line for line in again["train_distil"])
    assert any("up to date" in line for line in again["distil_eval"])


@pytest.mark.slow  # runs the pipeline scripts
def test_distil_folds_trains_one_reranker_per_fold_and_scores_each_group_out_of_fold(stage3_flow):
    work, out, rerank_dir = stage3_flow["work"], stage3_flow["out"], stage3_flow["rerank_dir"]
    log = stage3_flow["logs"]["distil.sh (folds)"]
    assert re.findall(r"^==> (\w+) \d+\.\d+s$", log, re.M) == [
        "check_stage2", "train_fold_rerankers", "score_groups", "train_distil", "distil_eval"]
    distil_dir = printed_folder("DISTIL_DIR", log, work)
    assert distil_dir.parent == rerank_dir and distil_dir != stage3_flow["distil_dir"]
    assert "DISTIL_FOLDS=2" in log
    folds = [f"{rerank_dir.relative_to(work)}/folds-2/reranker-{fold}" for fold in (0, 1)]
    trained = [call[1:] for call in stage3_flow["calls"] if call[0] == "train" and "--query_folds" in call]

    assert [(flag(c, "--output_dir"), flag(c, "--query_folds"), flag(c, "--held_out_fold")) for c in trained][:2] == [
        (folds[0], "2", "0"), (folds[1], "2", "1")]
    assert all(flag(c, "--train_dir") == f"{out.relative_to(work)}/train-hn" for c in trained)
    scored = [call[1:] for call in stage3_flow["calls"] if call[0] == "score_groups" and "--fold_models" in call]
    assert scored and scored[0][scored[0].index("--fold_models") + 1:][:2] == folds
    assert "--model_name_or_path" not in scored[0]
    assert flag(scored[0], "--output_dir") == f"{distil_dir.relative_to(work)}/train-distil"
    assert json.loads((distil_dir / "metrics" / "distil.json").read_text())["MRR@10"] >= 0
    if stage3_flow["kind"] == "real reranker":
        record = json.loads((distil_dir / "train-distil" / ".complete").read_text())["provenance"]
        assert [identity for identity in record["model"]["fold models"]] == [
            model_identity(work / folder) for folder in folds]


@pytest.mark.slow  # runs the pipeline scripts
def test_the_scripts_pass_the_stage3_settings(stage3_flow):
    out = str(stage3_flow["out"].relative_to(stage3_flow["work"]))
    rerank_dir = str(stage3_flow["rerank_dir"].relative_to(stage3_flow["work"]))
    distil_dir = str(stage3_flow["distil_dir"].relative_to(stage3_flow["work"]))
    calls = {}
    for call in stage3_flow["calls"]:  # each driver's first call: rerank.sh's and distil.sh's own (DISTIL_FOLDS=0)
        calls.setdefault(call[0], call[1:])

    assert flag(calls["train"], "--train_dir") == f"{out}/train-hn"
    assert flag(calls["train"], "--output_dir") == f"{rerank_dir}/reranker"
    assert flag(calls["train"], "--p_max_len") == "40" and flag(calls["train"], "--num_train_epochs") == "1"
    reranked = [call[1:] for call in stage3_flow["calls"] if call[0] == "rerank"]
    assert {flag(c, "--run") for c in reranked} == {"marco/bm25.dev.rank.tsv", f"{out}/ranking/stage2/dev.rank.tsv"}
    assert all(flag(c, "--rerank_depth") == "5" and flag(c, "--model_name_or_path") == f"{rerank_dir}/reranker"
               for c in reranked)
    assert {flag(c, "--rerank_output") for c in reranked} == {
        f"{rerank_dir}/ranking/rerank_bm25/dev.rank.tsv", f"{rerank_dir}/ranking/rerank_stage2/dev.rank.tsv"}
    assert flag(calls["score_groups"], "--model_name_or_path") == f"{rerank_dir}/reranker"
    assert flag(calls["score_groups"], "--output_dir") == f"{distil_dir}/train-distil"


# --------------------------------------------------------------------------- settings, regression file
def test_stage3_settings_have_profile_defaults(tmp_path):
    names = ("RERANKER_MODEL", "RERANKER_LR", "RERANKER_HEAD_LR", "RERANKER_EPOCHS", "RERANK_DEPTH", "RERANK_P_MAX_LEN", "DISTIL_INIT",
             "DISTIL_TEMPERATURE", "DISTIL_WEIGHT", "DISTIL_LR", "DISTIL_EPOCHS", "DISTIL_FOLDS")
    assert shell_settings(names, {}) == {
        "RERANKER_MODEL": "bert-base-uncased", "RERANKER_LR": "2e-5", "RERANKER_HEAD_LR": "2e-5", "RERANKER_EPOCHS": "1", "RERANK_DEPTH": "100",
        "RERANK_P_MAX_LEN": "128", "DISTIL_INIT": "initial", "DISTIL_TEMPERATURE": "1", "DISTIL_WEIGHT": "0",
        "DISTIL_LR": "5e-6", "DISTIL_EPOCHS": "2", "DISTIL_FOLDS": "0"}
    assert shell_settings(names, {"PROFILE": "quick"}) == {
        "RERANKER_MODEL": "all-MiniLM-L6-v2", "RERANKER_LR": "6e-5", "RERANKER_HEAD_LR": "1e-3", "RERANKER_EPOCHS": "2", "RERANK_DEPTH": "100",
        "RERANK_P_MAX_LEN": "224", "DISTIL_INIT": "stage1", "DISTIL_TEMPERATURE": "1", "DISTIL_WEIGHT": "0.2",
        "DISTIL_LR": "2e-5", "DISTIL_EPOCHS": "2", "DISTIL_FOLDS": "0"}


FOLDERS = ("OUT", "RERANK_DIR", "DISTIL_DIR")


def test_stage3_settings_name_nested_folders_and_never_move_stages_1_and_2(tmp_path):
    marco = make_rocketqa(tmp_path / "mymarco", n_passages=20, n_train=2, n_dev=2)

    def folders(**changed):
        return shell_settings(FOLDERS, {"DATA": str(marco), **changed}, resolve=True, cwd=tmp_path)

    base = folders()
    assert re.fullmatch(r"runs/mymarco-marco-[0-9a-f]{8}", base["OUT"])
    assert re.fullmatch(re.escape(base["OUT"]) + r"/rerank-[0-9a-f]{8}", base["RERANK_DIR"])
    assert re.fullmatch(re.escape(base["RERANK_DIR"]) + r"/distil-[0-9a-f]{8}", base["DISTIL_DIR"])
    # a reranker setting: a new reranker folder (and so new distillation folders), stages 1 and 2 stay
    for name, value in (("RERANKER_LR", "1e-5"), ("RERANKER_HEAD_LR", "1e-2"), ("RERANKER_MODEL", str(marco)),
                        ("RERANKER_EPOCHS", "3"),
                        ("RERANKER_BATCH", "4"), ("RERANKER_N_PASSAGES", "4"), ("RERANK_DEPTH", "50"),
                        ("RERANK_P_MAX_LEN", "64"), ("STAGE3_SEED", "7")):
        moved = folders(**{name: value})
        assert moved["OUT"] == base["OUT"], name
        assert moved["RERANK_DIR"] != base["RERANK_DIR"], name
        assert moved["DISTIL_DIR"].startswith(moved["RERANK_DIR"] + "/distil-"), name
    # a distillation setting: only the distillation folder
    for name, value in (("DISTIL_LR", "1e-5"), ("DISTIL_WEIGHT", "0.5"), ("DISTIL_INIT", "stage2"),
                        ("DISTIL_TEMPERATURE", "2"), ("DISTIL_EPOCHS", "5")):
        moved = folders(**{name: value})
        assert (moved["OUT"], moved["RERANK_DIR"]) == (base["OUT"], base["RERANK_DIR"]), name
        assert moved["DISTIL_DIR"] != base["DISTIL_DIR"], name
    # an out-of-fold teacher: a new distillation folder; DISTIL_FOLDS=0 (the default) keeps the folder's name
    moved = folders(DISTIL_FOLDS="2")
    assert (moved["OUT"], moved["RERANK_DIR"]) == (base["OUT"], base["RERANK_DIR"])
    assert moved["DISTIL_DIR"] != base["DISTIL_DIR"] and folders(DISTIL_FOLDS="0") == base
    for bad in ("1", "two", "-2", "02"):
        result = subprocess.run(
            ["bash", "-c", f'set -a; source "{REPO_ROOT}/settings.sh"; set +a; '
                           f'source "{REPO_ROOT}/msmarco-passage-ranking/pipeline_common.sh"; resolve_settings'],
            env=pipeline_env(DATA=str(marco), DISTIL_FOLDS=bad), capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 2 and f"DISTIL_FOLDS must be 0 (rerank.sh's reranker) or a number of query " \
            f"folds >= 2, not '{bad}' (settings.sh)" in result.stdout + result.stderr, (bad, result.stderr)
    # speed only, or a stage-3 seed equal to SEED (the default): nothing moves; a stage-1 setting moves everything
    assert folders(RERANK_BATCH="8") == base
    assert folders(STAGE3_SEED="42") == base
    assert all(folders(LR="1e-5")[name] != base[name] for name in FOLDERS)
    # folders given are used as given; distillation nests in a given reranker folder
    given = folders(RERANK_DIR="my-reranker")
    assert given["OUT"] == base["OUT"] and given["RERANK_DIR"] == "my-reranker"
    assert given["DISTIL_DIR"] == "my-reranker/" + Path(base["DISTIL_DIR"]).name
    assert folders(DISTIL_DIR="my-distil") == {**base, "DISTIL_DIR": "my-distil"}


def test_stage3_seed_reaches_the_reranker_and_the_distillation_only(tmp_path):
    """STAGE3_SEED trains stage 3 again with another seed; stages 1 and 2 keep SEED."""
    marco = make_rocketqa(tmp_path / "mymarco", n_passages=20, n_train=2, n_dev=2)
    result = recorded_commands("DISTIL_INIT_MODEL=init; PRECISION=\ntrain_stage1; train_reranker; train_distilled\n",
                               tmp_path, DATA=str(marco), SEED="5", STAGE3_SEED="7")
    assert result.returncode == 0, result.stderr
    stage1, reranker, distilled = result.stdout.splitlines()
    seed = lambda command: command.split(" --seed ")[1].split()[0]  # noqa: E731
    assert (seed(stage1), seed(reranker), seed(distilled)) == ("5", "7", "7")
    assert "tevatron.reranker.driver.train" in reranker and "--distillation" in distilled


def test_stage1_and_2_folder_hash_covers_only_their_settings():
    """The default OUT of a run made before stage 3 existed keeps its name (the same settings, the same hash)."""
    text = (REPO_ROOT / "msmarco-passage-ranking" / "pipeline_common.sh").read_text()
    listed = re.search(r"^RESULT_SETTINGS=\(([^)]*)\)", text, re.M).group(1).split()
    assert listed[:23] == ["DATA", "MODEL", "TOKENIZER", "POOLING", "NORMALIZE", "TEMPERATURE", "LR", "EPOCHS",
                           "BATCH", "N_PASSAGES", "Q_MAX_LEN", "P_MAX_LEN", "CORPUS_MAX_LEN", "N_SAMPLE", "SEED",
                           "DEPTH", "FP16", "TRAIN_EXTRA", "HN_DEPTH", "SKIP_TOP", "HN_INIT", "HN_LR", "HN_EPOCHS"]
    assert not [name for name in listed if name.startswith(("RERANK", "DISTIL"))]


def test_regression_runs_stage3_scripts_for_stage3_rows_and_fails_unpinned_ones(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "msmarco-passage-ranking"))
    try:
        import check_regression
    finally:
        sys.path.pop(0)
    assert check_regression.pipeline_scripts({"stage2": {}}) == [["run.sh", "--all"]]
    assert check_regression.pipeline_scripts({"distil": {}, "rerank_bm25": {}}) == [
        ["run.sh", "--all"], ["rerank.sh"], ["distil.sh"]]
    (tmp_path / "distil.json").write_text(json.dumps({"MRR@10": 0.7}))
    failures = check_regression.compare({"distil": {"MRR@10": None}}, {"distil": tmp_path / "distil.json"}, 0.01)
    assert failures == ["distil MRR@10: not pinned yet (null in the regression file)"]
    spec = json.loads((REPO_ROOT / "msmarco-passage-ranking" / "regressions" / "scifact-quick-stage3.json").read_text())
    assert {"rerank_bm25", "rerank_stage2", "distil"} <= set(spec["expected"])


def test_regression_reads_stage3_rows_from_the_folders_the_scripts_work_out(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "msmarco-passage-ranking"))
    try:
        import check_regression
        import results_table
    finally:
        sys.path.pop(0)
    marco = make_rocketqa(tmp_path / "mymarco", n_passages=20, n_train=2, n_dev=2)
    out = tmp_path / "regression-run"
    settings = {"DATA": str(marco), "RERANKER_LR": "1e-5", "DISTIL_LR": "3e-6"}
    shell = shell_settings(("RERANK_DIR", "DISTIL_DIR"), {**settings, "OUT": str(out)}, resolve=True)
    rerank_dir, distil_dir = check_regression.stage3_folders(pipeline_env(**settings, OUT=str(out)))
    assert (rerank_dir, distil_dir) == (Path(shell["RERANK_DIR"]), Path(shell["DISTIL_DIR"]))
    assert rerank_dir.parent == out and distil_dir.parent == rerank_dir
    files = results_table.metrics_files(out, rerank_dir, distil_dir)
    assert files["stage2"] == out / "metrics" / "stage2.json"
    assert files["rerank_bm25"] == rerank_dir / "metrics" / "rerank_bm25.json"
    assert files["distil"] == distil_dir / "metrics" / "distil.json"
    # without the stage-3 folders, their rows are left out rather than read from somewhere else
    assert set(results_table.metrics_files(out)) == {"bm25", "zero_shot", "stage1", "stage2"}
    for path, mrr in ((files["stage2"], 0.5), (files["rerank_bm25"], 0.6), (files["distil"], 0.7)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"MRR@10": mrr}))
    (out / "metrics" / "distil.json").write_text(json.dumps({"MRR@10": 0.1}))  # a stray file in the wrong place
    pinned = {"stage2": {"MRR@10": 0.5}, "rerank_bm25": {"MRR@10": 0.6}, "distil": {"MRR@10": 0.7}}
    assert check_regression.compare(pinned, files, 0.01) == []
    assert results_table.load_rows(files)["distil"] == {"MRR@10": 0.7}


# --------------------------------------------------------------------------- raw text (FORMAT=text)
@pytest.mark.slow  # runs the pipeline scripts
def test_format_text_stage3_gives_the_tokenized_numbers(stage3_flow):
    """FORMAT=text: build_train writes Tevatron v2's raw schema, training, encoding and the reranker tokenize
    on the fly with the tokenized files' ids, so run.sh, rerank.sh and distil.sh give the tokenized flow's
    numbers (stage 1 with the same vectors) in an OUT of the same hash.  Only the raw-text flow runs here;
    the tokenized one is the real-reranker flow's."""
    if stage3_flow["kind"] != "real reranker":
        pytest.skip("compares the real reranker's numbers")
    work, env = stage3_flow["work"], dict(stage3_flow["env"], FORMAT="text")

    def scores(path):  # the metrics, without the run file's path (a text run lives in its own OUT)
        return {key: value for key, value in json.loads(path.read_text()).items() if key != "run"}

    text_out = out_folder(check_ok(run_script("run.sh", env, work, "--all"), "run.sh --all (text)"), work)
    tokenized_out = stage3_flow["out"]
    assert re.fullmatch(r"rocketqa-small-marco-text-[0-9a-f]{8}", text_out.name)
    assert text_out.name.replace("-text", "") == tokenized_out.name, "FORMAT changes no number: same hash"
    group = next(iter_jsonl(work / "marco" / "text" / "train" / "split00.json"))[1]
    assert isinstance(group["query"], str) and {"docid", "title", "text"} <= set(group["positive_passages"][0])
    corpus_line = next(iter_jsonl(work / "marco" / "text" / "corpus" / "split00.json"))[1]
    assert set(corpus_line) == {"docid", "title", "text"}
    for stage in ("stage1", "stage2"):
        assert scores(text_out / "metrics" / f"{stage}.json") == scores(tokenized_out / "metrics" / f"{stage}.json")
    for name in ("dev.query.pt", "corpus/split00.pt"):
        text_reps = load_encodings(text_out / "encoding" / "stage1" / name)
        tokenized_reps = load_encodings(tokenized_out / "encoding" / "stage1" / name)
        assert text_reps[1] == tokenized_reps[1]
        assert (text_reps[0] - tokenized_reps[0]).abs().max() < 1e-5
    assert json.loads((text_out / "model" / "tevatron_config.json").read_text())["query_prefix"] == ""
    logs = {script: check_ok(run_script(script, env, work), f"{script} (text)") for script in ("rerank.sh", "distil.sh")}
    rerank_dir, distil_dir = (printed_folder(name, logs["distil.sh"], work) for name in ("RERANK_DIR", "DISTIL_DIR"))
    assert rerank_dir.parent.name == stage3_flow["out"].name.replace("-marco-", "-marco-text-")
    assert "==> format: text (marco/text)" in logs["rerank.sh"]
    for name in ("rerank_bm25", "rerank_stage2"):
        assert scores(rerank_dir / "metrics" / f"{name}.json") == scores(
            stage3_flow["rerank_dir"] / "metrics" / f"{name}.json"), name
    # The distilled tiny model scores every passage ~32.0 to within 1e-5, so its ranking (and MRR) is decided
    # by float rounding: on an Intel Xeon the two flows' MRR@10 came out 0.02 and 0.0 from vectors 8e-7
    # apart.  What FORMAT=text must keep is what the numbers are made of: the teacher scores and the
    # distilled model's vectors.
    text_groups = [group for _, group in iter_jsonl(distil_dir / "train-distil" / "split00.json")]
    tokenized_groups = [group for _, group in iter_jsonl(stage3_flow["distil_dir"] / "train-distil" / "split00.json")]
    assert len(text_groups) == len(tokenized_groups)
    for text_group, tokenized_group in zip(text_groups, tokenized_groups):
        for key in ("positive_scores", "negative_scores"):
            assert text_group[key] == pytest.approx(tokenized_group[key], abs=1e-4, rel=0)
    for name in ("dev.query.pt", "corpus/split00.pt"):
        text_reps = load_encodings(distil_dir / "encoding" / "distil" / name)
        tokenized_reps = load_encodings(stage3_flow["distil_dir"] / "encoding" / "distil" / name)
        assert text_reps[1] == tokenized_reps[1]
        assert (text_reps[0] - tokenized_reps[0]).abs().max() < 1e-5
    # the teacher scores sit beside the raw passages, under the tokenized groups' names
    scored = next(iter_jsonl(distil_dir / "train-distil" / "split00.json"))[1]
    assert isinstance(scored["query"], str)
    assert len(scored["positive_scores"]) == len(scored["positive_passages"])
    assert len(scored["negative_scores"]) == len(scored["negative_passages"])
