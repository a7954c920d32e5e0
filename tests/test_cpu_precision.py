"""CPU --bf16: bf16 autocast where a measurement on the model's shape shows it clearly faster, else fp32."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import toy_corpus, write_jsonl
from tevatron import cpu_kernels
from tevatron.arguments import resolve_mixed_precision
from tevatron.driver import encode as encode_driver
from tevatron.tensor_files import encodings_provenance, load_encodings

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU precision choice applies without CUDA")


def test_the_measurement_returns_a_bool_once_per_process_and_shape():
    cpu_kernels._measured_bf16_speedup.cache_clear()
    assert isinstance(cpu_kernels.cpu_bf16_is_faster(16), bool)
    first = cpu_kernels.cpu_bf16_speedup(16)
    assert first > 0
    assert cpu_kernels.cpu_bf16_speedup(16, training=False) == first
    info = cpu_kernels._measured_bf16_speedup.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def _encode(model_dir, tmp_path, name, monkeypatch, speedup, *extra):
    in_path = tmp_path / "corpus.jsonl"
    if not in_path.exists():
        write_jsonl(in_path, toy_corpus(24))
    used_dtypes = []
    real_encode_texts = encode_driver.encode_texts

    def spy(*args, **kwargs):
        used_dtypes.append(args[7] if len(args) > 7 else kwargs.get("autocast_dtype"))
        return real_encode_texts(*args, **kwargs)

    monkeypatch.setattr(encode_driver, "encode_texts", spy)
    monkeypatch.setattr(cpu_kernels, "cpu_bf16_speedup", lambda hidden_size, training=False: speedup)
    out_path = tmp_path / f"{name}.pt"
    assert encode_driver.main(["--output_dir", str(tmp_path), "--model_name_or_path", str(model_dir),
                               "--per_device_eval_batch_size", "8", "--encode_in_path", str(in_path),
                               "--encoded_save_path", str(out_path), "--p_max_len", "64", *extra]) == 0
    reps, ids = load_encodings(out_path)
    return reps, ids, encodings_provenance(out_path)["precision"], used_dtypes


def test_bf16_autocast_encodes_where_measured_faster(tiny_bert_dir, tmp_path, monkeypatch, caplog):
    fp32, fp32_ids, fp32_precision, _ = _encode(tiny_bert_dir, tmp_path, "fp32", monkeypatch, 2.0)
    with caplog.at_level(logging.INFO, logger="tevatron.arguments"):
        bf16, bf16_ids, precision, dtypes = _encode(tiny_bert_dir, tmp_path, "bf16", monkeypatch, 2.0, "--bf16")
    assert (fp32_precision, precision, dtypes) == ("fp32", "bf16", [torch.bfloat16])
    assert bf16_ids == fp32_ids
    assert not torch.equal(bf16, fp32)  # bf16 rounding shows: autocast was on
    assert F.cosine_similarity(bf16, fp32, dim=1).min() >= 0.999
    chosen = [r.getMessage() for r in caplog.records if "--bf16 on CPU" in r.getMessage()]
    assert len(chosen) == 1 and "2.00x" in chosen[0] and "encoding" in chosen[0]


def test_fp32_with_a_warning_where_bf16_measured_slower(tiny_bert_dir, tmp_path, monkeypatch, caplog):
    fp32, _, _, _ = _encode(tiny_bert_dir, tmp_path, "fp32", monkeypatch, 0.5)
    with caplog.at_level(logging.INFO, logger="tevatron.arguments"):
        reps, _, precision, dtypes = _encode(tiny_bert_dir, tmp_path, "bf16", monkeypatch, 0.5, "--bf16")
    assert (precision, dtypes) == ("fp32", [None])
    assert torch.equal(reps, fp32)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "--bf16" in r.getMessage()]
    assert len(warnings) == 1 and "running in fp32" in warnings[0] and "0.50x" in warnings[0]


def _args(**flags):
    return SimpleNamespace(**{"fp16": False, "bf16": False, "mixed_precision": "no", **flags})


def test_training_uses_bf16_only_where_the_training_step_also_wins(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "cpu_bf16_speedup", lambda hidden_size, training=False: 0.9 if training else 2.0)
    args = _args(bf16=True)
    assert resolve_mixed_precision(args) == "fp32" and args.cpu_bf16_requested  # parse time: shape unknown
    assert resolve_mixed_precision(args, 768, training=True) == "fp32"
    assert (args.bf16, args.mixed_precision) == (False, "no")

    monkeypatch.setattr(cpu_kernels, "cpu_bf16_speedup", lambda hidden_size, training=False: 1.5)
    args = _args(bf16=True)
    resolve_mixed_precision(args)
    assert resolve_mixed_precision(args, 768, training=True) == "bf16"
    assert (args.bf16, args.mixed_precision) == (True, "bf16")


def test_fp16_on_cpu_still_falls_back_without_measuring(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "cpu_bf16_speedup", lambda *a, **k: pytest.fail("measured for --fp16"))
    args = _args(fp16=True)
    assert resolve_mixed_precision(args) == "fp32"
    assert resolve_mixed_precision(args, 768) == "fp32" and not args.fp16 and not args.bf16


@pytest.mark.slow
@pytest.mark.parametrize("speedup", [2.0, 0.5])
def test_training_records_the_precision_it_used(tiny_bert_dir, tmp_path, monkeypatch, speedup):
    from helpers import toy_groups
    from tevatron.driver import train as train_driver
    from tevatron.modeling import DenseModel
    from tevatron.provenance import read_folder_record

    monkeypatch.setattr(cpu_kernels, "cpu_bf16_speedup", lambda hidden_size, training=False: speedup)
    autocast_in_forward = []
    real_forward = DenseModel.forward

    def spy(self, *args, **kwargs):
        autocast_in_forward.append(torch.is_autocast_cpu_enabled() and torch.get_autocast_dtype("cpu"))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(DenseModel, "forward", spy)
    write_jsonl(tmp_path / "data" / "train.jsonl", toy_groups(8))
    out = tmp_path / "out"
    assert train_driver.main(["--output_dir", str(out), "--model_name_or_path", str(tiny_bert_dir), "--bf16",
                              "--train_dir", str(tmp_path / "data"), "--per_device_train_batch_size", "4",
                              "--train_n_passages", "2", "--max_steps", "2", "--q_max_len", "16", "--p_max_len", "32",
                              "--save_steps", "100", "--dataloader_num_workers", "0",
                              "--cache_dir", str(tmp_path / "cache")]) == 0
    used_bf16 = speedup >= cpu_kernels.CPU_BF16_MIN_SPEEDUP
    assert read_folder_record(out)["provenance"]["bf16"] is used_bf16
    assert autocast_in_forward == [torch.bfloat16 if used_bf16 else False] * 2


def test_a_kernel_choice_is_measured_once_per_machine_and_read_by_later_processes(tmp_path, monkeypatch, caplog):
    """Two runs of one command must not pick different kernels (they round differently) because the
    machine was busier during one of them: the first measurement is recorded and reused."""
    import json
    import os
    import subprocess
    import sys

    monkeypatch.setenv("TEVATRON_CACHE", str(tmp_path / "cache"))
    measured = []

    def measure():
        measured.append(1)
        return len(measured) == 1  # a second measurement would answer otherwise

    with caplog.at_level(logging.INFO, logger="tevatron.cpu_kernels"):
        assert cpu_kernels.measured_on_this_machine("some_kernel", measure, bool) is True
    assert cpu_kernels.measured_on_this_machine("some_kernel", measure, bool) is True
    assert measured == [1]
    assert "measured some_kernel = True on this machine" in caplog.text
    path = tmp_path / "cache" / "cpu_choices.json"
    assert json.loads(path.read_text()) == {f"some_kernel: {cpu_kernels._machine_key()}": True}
    # another process reads the recorded choice instead of measuring
    code = ("from tevatron import cpu_kernels; import sys; "
            "print(cpu_kernels.measured_on_this_machine('some_kernel', lambda: sys.exit('measured again'), bool))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, TEVATRON_CACHE=str(tmp_path / "cache")))
    assert (other.returncode, other.stdout.strip()) == (0, "True"), other.stderr
    # a damaged record is measured again and rewritten
    path.write_text("{not json")
    assert cpu_kernels.measured_on_this_machine("some_kernel", measure, bool) is False and len(measured) == 2
    assert json.loads(path.read_text())[f"some_kernel: {cpu_kernels._machine_key()}"] is False
    # a recorded answer outside the allowed ones (a hand-edited file) is measured again and rewritten
    key = f"backend: {cpu_kernels._machine_key()}"
    path.write_text(json.dumps({key: "fastest"}))
    assert cpu_kernels.measured_on_this_machine("backend", lambda: "faiss", str, allowed=("torch", "faiss")) == "faiss"
    assert json.loads(path.read_text())[key] == "faiss"
    assert cpu_kernels.measured_on_this_machine("backend", lambda: pytest.fail("measured again"), str,
                                                allowed=("torch", "faiss")) == "faiss"
    # where nothing can be recorded, the process measures for itself and says so
    monkeypatch.setenv("TEVATRON_CACHE", str(path / "not-a-folder"))
    with caplog.at_level(logging.WARNING, logger="tevatron.cpu_kernels"):
        assert cpu_kernels.measured_on_this_machine("some_kernel", measure, bool) is False and len(measured) == 3
    assert "cannot record kernel choices" in caplog.text
