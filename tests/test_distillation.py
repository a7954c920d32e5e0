"""--distillation: the KL loss by hand, teacher scores sampled with their passages, bad scores, grad cache,
the driver end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import (build_model, error_lines, loss_and_grads, make_batch, make_distil_batch, run_module,
                     scored_groups, teacher_score, toy_groups, write_jsonl)
from tevatron.arguments import DataArguments, TevatronTrainingArguments
from tevatron.data import TrainDataset
from tevatron.distillation import DistillationDataset, load_scored_groups
from tevatron.files import InputError
from tevatron.gradcache import grad_cache_step
from tevatron.loss import contrastive_loss, distillation_loss
from tevatron.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return load_tokenizer(str(tiny_bert_dir))


# --------------------------------------------------------------------------- the loss, by hand
# Two queries of three passages each (the positive first), 2-d vectors, dot products:
#   q1 = (1, 0): passages (1, 0) (0, 1) (0, 0) -> group scores s1 = [1, 0, 0]
#   q2 = (0, 1): passages (0, 2) (1, 0) (0, 1) -> group scores s2 = [2, 0, 1]
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
# teacher scores t1 = [2, 0, 0] (with distil_temperature 2: softmax([1, 0, 0]), the student's own s1, so KL 0)
# and t2 = [5, 5, 5] (uniform: P2 = 1/3 each)
TEACHER = torch.tensor([[2.0, 0.0, 0.0], [5.0, 5.0, 5.0]])


def test_distillation_loss_by_hand():
    # query 1: P1 = Q1 -> KL1 = 0
    # query 2: KL2 = sum_j 1/3 (log 1/3 - log Q2j), log Q2j = s2j - log(e^2 + e^0 + e^1)
    #        = -log 3 - (2 + 0 + 1) / 3 + log(e^2 + 1 + e) = -1.0986123 - 1 + 2.4076059 = 0.3089936
    kl2 = -math.log(3) - 1 + math.log(math.e ** 2 + 1 + math.e)
    assert kl2 == pytest.approx(0.3089936, abs=1e-7)
    kl = (0 + kl2) / 2                                                # mean over queries: 0.1544968
    assert distillation_loss(Q, P, TEACHER, distil_temperature=2.0).item() == pytest.approx(kl, abs=1e-12)

    # plus 0.5 x the in-batch contrastive loss: each query against all six passages
    #   q1: scores [1, 0, 0, 0, 1, 0], target 0: log(2e + 4) - 1 = 1.2445919
    #   q2: scores [0, 1, 0, 2, 0, 1], target 3: log(3 + 2e + e^2) - 2 = 0.7616301
    ce1 = math.log(2 * math.e + 4) - 1
    ce2 = math.log(3 + 2 * math.e + math.e ** 2) - 2
    assert (ce1, ce2) == (pytest.approx(1.2445919, abs=1e-7), pytest.approx(0.7616301, abs=1e-7))
    assert contrastive_loss(Q, P).item() == pytest.approx((ce1 + ce2) / 2, abs=1e-12)
    total = kl + 0.5 * (ce1 + ce2) / 2                                # 0.1544968 + 0.5 x 1.0031110 = 0.6560523
    got = distillation_loss(Q, P, TEACHER, distil_temperature=2.0, distil_weight=0.5)
    assert got.item() == pytest.approx(total, abs=1e-12) and total == pytest.approx(0.6560523, abs=1e-7)

    # the student's --temperature 0.5 doubles its scores: s2 = [4, 0, 2]; the teacher's side is unchanged
    # and distil_temperature 1 makes P1 = softmax([2, 0, 0])
    p1 = [math.exp(t) / (math.exp(2) + 2) for t in (2, 0, 0)]
    log_q1 = [s - math.log(math.exp(2) + 2) for s in (2, 0, 0)]
    kl1 = sum(p * (math.log(p) - lq) for p, lq in zip(p1, log_q1))
    assert kl1 == pytest.approx(0.0, abs=1e-12), "teacher [2, 0, 0] at 1 equals student [1, 0, 0] at 0.5"
    kl2 = -math.log(3) - (4 + 0 + 2) / 3 + math.log(math.exp(4) + 1 + math.exp(2))
    assert distillation_loss(Q, P, TEACHER, temperature=0.5).item() == pytest.approx((kl1 + kl2) / 2, abs=1e-12)


def test_distillation_loss_is_torchs_kl_divergence_on_random_scores():
    torch.manual_seed(0)
    q, p, teacher = torch.randn(5, 8, dtype=torch.float64), torch.randn(20, 8, dtype=torch.float64), torch.randn(5, 4)
    student = torch.einsum("qd,qnd->qn", q, p.view(5, 4, 8)) / 0.1
    expected = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher.double() / 3.0, 1), reduction="batchmean")
    got = distillation_loss(q, p, teacher, temperature=0.1, distil_temperature=3.0)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


def test_a_teacher_certain_of_one_passage_gives_a_finite_loss():
    """Probabilities that underflow to 0 add 0 log 0 = 0, not NaN."""
    teacher = torch.tensor([[1e30, 0.0, -1e30], [0.0, 0.0, 0.0]])
    loss = distillation_loss(Q.float(), P.float(), teacher, distil_temperature=0.01)
    assert torch.isfinite(loss) and loss.item() > 0


def test_passage_count_must_match_the_teacher_scores():
    with pytest.raises(ValueError, match="5 passage vectors for 2 queries of 3 passages each"):
        distillation_loss(Q, P[:5], TEACHER)


# --------------------------------------------------------------------------- scores travel with their passages
def test_scores_are_sampled_with_the_passages_the_plain_dataset_picks():
    groups = scored_groups(toy_groups(12, n_negatives=10, seed=3) + toy_groups(4, n_negatives=2, seed=4))
    for group in groups[:3]:  # several positives: the positive rotates with the epoch
        group["positives"].append(group["negatives"][0] + [7])
        group["positive_scores"].append(teacher_score(group["positives"][-1], True))
    plain = TrainDataset(groups, 6, 42)
    distil = DistillationDataset(TrainDataset(groups, 6, 42))
    for epoch in range(3):
        plain.set_epoch(epoch)
        distil.set_epoch(epoch)
        for index in range(len(groups)):
            query, passages, scores = distil[index]
            assert (query, passages) == plain[index]
            assert scores == [teacher_score(passages[0], True)] + [teacher_score(p, False) for p in passages[1:]]


def test_the_batch_carries_a_teacher_score_tensor(tokenizer):
    groups = scored_groups(toy_groups(5))
    batch = make_distil_batch(tokenizer, groups, n_passages=4)
    plain = make_batch(tokenizer, groups, n_passages=4)
    assert batch["teacher_scores"].shape == (5, 4) and batch["teacher_scores"].dtype == torch.float32
    for side in ("query", "passage"):
        assert all(torch.equal(batch[side][k], plain[side][k]) for k in plain[side])


def test_diverging_samplers_are_refused_not_mixed_up():
    groups = scored_groups(toy_groups(2))

    class Reversed(TrainDataset):  # a sampler that picks other passages than sample_group
        def __getitem__(self, index):
            query, passages = super().__getitem__(index)
            return query, passages[::-1]

    with pytest.raises(RuntimeError, match="teacher scores were sampled for other passages"):
        DistillationDataset(Reversed(groups, 4, 42))[0]


# --------------------------------------------------------------------------- bad scores
BAD_SCORES = [
    (lambda g: g.pop("negative_scores"), "missing field 'negative_scores' (teacher scores, needed for --distillation)"),
    (lambda g: g["negative_scores"].pop(), "negative_scores has 9 scores for 10 negatives"),
    (lambda g: g["positive_scores"].__setitem__(0, float("nan")), "positive_scores[0] nan is not a finite number"),
    (lambda g: g["negative_scores"].__setitem__(2, 1e39), "negative_scores[2] 1e+39 is not a finite number"),
    (lambda g: g["negative_scores"].__setitem__(1, "high"), 'negative_scores[1] "high" is not a number'),
    (lambda g: g["negative_scores"].__setitem__(1, None), "negative_scores[1] null is not a number"),
    (lambda g: g.__setitem__("positive_scores", 3.0), "positive_scores must be a list of numbers"),
]


@pytest.mark.parametrize("spoil, message", BAD_SCORES)
def test_bad_teacher_scores_name_file_and_line(tmp_path, spoil, message):
    groups = scored_groups(toy_groups(3))
    spoil(groups[1])
    path = write_jsonl(tmp_path / "train" / "split00.json", groups)
    args = DataArguments(train_dir=str(path.parent), train_n_passages=4)
    with pytest.raises(InputError) as caught:
        load_scored_groups(args, vocab_size=30522, cache_dir=str(tmp_path / "cache"))
    assert str(caught.value) == f"{path}:2: {message}"


def test_scored_groups_load_with_their_scores(tmp_path):
    groups = scored_groups(toy_groups(3))
    path = write_jsonl(tmp_path / "train" / "split00.json", groups)
    loaded = load_scored_groups(DataArguments(train_dir=str(path.parent), train_n_passages=4), vocab_size=30522,
                                cache_dir=str(tmp_path / "cache"))
    assert [row["negative_scores"] for row in loaded] == [g["negative_scores"] for g in groups]
    assert [row["positive_scores"] for row in loaded] == [g["positive_scores"] for g in groups]


def test_distillation_flags_need_distillation(tmp_path):
    with pytest.raises(ValueError, match="--distil_temperature and --distil_weight apply only with --distillation"):
        TevatronTrainingArguments(output_dir=str(tmp_path), distil_weight=0.5)
    with pytest.raises(ValueError, match="--distil_temperature must be greater than 0, not 0.0"):
        TevatronTrainingArguments(output_dir=str(tmp_path), distillation=True, distil_temperature=0.0)
    with pytest.raises(ValueError, match="--distil_weight must be at least 0, not -1.0"):
        TevatronTrainingArguments(output_dir=str(tmp_path), distillation=True, distil_weight=-1.0)


# --------------------------------------------------------------------------- model, grad cache
def test_a_few_steps_move_the_student_towards_the_teacher(tiny_bert_dir, tokenizer):
    torch.manual_seed(0)
    model = build_model(tiny_bert_dir)
    batch = make_distil_batch(tokenizer, scored_groups(toy_groups(8)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.75, losses


@pytest.mark.parametrize("distil_weight", [0.0, 0.5])
def test_grad_cache_equals_plain_step_with_distillation(tiny_bert_dir, tokenizer, distil_weight):
    for untie in (False, True):
        model = build_model(tiny_bert_dir, untie_encoder=untie, add_pooler=True)
        model.distil_temperature, model.distil_weight = 0.7, distil_weight
        batch = make_distil_batch(tokenizer, scored_groups(toy_groups(8)))
        loss_plain, grads_plain = loss_and_grads(model, batch)
        expected = distillation_loss(*(model(query=batch["query"], passage=batch["passage"])[k] for k in ("q_reps", "p_reps")),
                                     batch["teacher_scores"], distil_temperature=0.7, distil_weight=distil_weight)
        assert torch.allclose(loss_plain, expected), "the model's loss is the distillation loss"
        model.zero_grad()
        loss_cached = grad_cache_step(model, batch["query"], batch["passage"], 3, 5,
                                      lambda q, p: model.compute_loss(q, p, batch["teacher_scores"]))
        grads_cached = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert torch.allclose(loss_plain, loss_cached, atol=1e-5)
        assert grads_plain.keys() == grads_cached.keys()
        for name in grads_plain:
            assert torch.allclose(grads_plain[name], grads_cached[name], atol=1e-5, rtol=1e-4), name


# --------------------------------------------------------------------------- the driver
def _train(tmp_path, model_dir, out, *extra, data="scored"):
    folder = tmp_path / data
    if not folder.is_dir():
        groups = toy_groups(16)
        write_jsonl(folder / "split00.json", scored_groups(groups) if data == "scored" else groups)
    return run_module("tevatron.driver.train", "--output_dir", out, "--model_name_or_path", model_dir,
                      "--train_dir", folder, "--per_device_train_batch_size", 4, "--train_n_passages", 3,
                      "--learning_rate", 1e-3, "--seed", 7, "--q_max_len", 16, "--p_max_len", 48,
                      "--cache_dir", tmp_path / "cache", "--dataloader_num_workers", 0, "--max_steps", 3, *extra)


@pytest.mark.slow
def test_driver_distils_and_grad_cache_gives_the_same_model(tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file
    from tevatron.provenance import read_folder_record

    plain = _train(tmp_path, tiny_bert_dir, tmp_path / "plain")
    distil = _train(tmp_path, tiny_bert_dir, tmp_path / "distil", "--distillation", "--distil_temperature", 0.5,
                    "--distil_weight", 0.2)
    cached = _train(tmp_path, tiny_bert_dir, tmp_path / "cached", "--distillation", "--distil_temperature", 0.5,
                    "--distil_weight", 0.2, "--grad_cache", "--gc_q_chunk_size", 3, "--gc_p_chunk_size", 5)
    for result in (plain, distil, cached):
        assert result.returncode == 0, result.stderr[-3000:]
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in ("plain", "distil", "cached")}
    def largest_difference(a, b):
        return max((weights[a][k] - weights[b][k]).abs().max().item() for k in weights[a])

    # Adam's normalised steps turn float-rounding differences of the gradients into ~1e-5 of the weights;
    # grad cache without the teacher scores (contrastive loss) would land as far off as the plain run (~3e-3)
    assert largest_difference("distil", "cached") < 2e-4
    assert largest_difference("distil", "plain") > 1e-3, "the teacher scores change the training"
    record = read_folder_record(tmp_path / "distil")["provenance"]
    assert (record["distillation"], record["distil_temperature"], record["distil_weight"]) == (True, 0.5, 0.2)
    assert "distillation" not in read_folder_record(tmp_path / "plain")["provenance"], "plain records unchanged"


@pytest.mark.slow
def test_driver_refuses_groups_without_scores_and_groups_of_one(tmp_path, tiny_bert_dir):
    unscored = _train(tmp_path, tiny_bert_dir, tmp_path / "out", "--distillation", data="unscored")
    assert unscored.returncode == 2 and "Traceback" not in unscored.stderr
    assert error_lines(unscored.stderr) == [
        f"error: {tmp_path / 'unscored' / 'split00.json'}:1: missing field 'positive_scores' (teacher scores, "
        "needed for --distillation)"]
    one = _train(tmp_path, tiny_bert_dir, tmp_path / "out", "--distillation", "--train_n_passages", 1)
    assert one.returncode == 2 and error_lines(one.stderr) == [
        "error: --distillation needs --train_n_passages of at least 2: the teacher's distribution over a group "
        "of one passage is always 1"]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- raw text
def test_raw_and_tokenized_groups_give_the_same_teacher_scores_and_distillation_loss(tiny_reranker_dir,
                                                                                    tiny_bert_dir, tmp_path):
    """score_groups writes the teacher scores beside raw-text groups under the same names; the distillation
    data path reads them, and raw and tokenized groups give the same scores, batches and loss."""
    from test_raw_text import build, make_data
    from tevatron.data import SequencePadder, TrainCollator
    from tevatron.distillation import DistillationCollator
    from tevatron.raw_text import TextTokenizer
    from tevatron.reranker.data import PairBuilder
    from tevatron.reranker.driver.score_groups import scored_records
    from tevatron.reranker.modeling import load_cross_encoder
    from tevatron.text_formats import write_jsonl as write_lines

    data = make_data(tmp_path / "data")
    folders = {"tokenized": build(data, tmp_path / "tokenized", tiny_reranker_dir, n_sample=6),
               "text": build(data, tmp_path / "text", tiny_reranker_dir, n_sample=6, format="text")}
    tokenizer = load_tokenizer(str(tiny_reranker_dir))
    reranker = load_cross_encoder(tiny_reranker_dir)
    builder = PairBuilder(tokenizer, q_max_len=8, p_max_len=24)
    scored = {}
    for name, folder in folders.items():
        records = scored_records(folder / "split00.json", [(reranker, builder)], 16, torch.device("cpu"),
                                 data_format=name)
        scored[name] = tmp_path / f"scored-{name}"
        write_lines(scored[name] / "split00.json", records)
    first = {name: json.loads((folder / "split00.json").read_text().splitlines()[0]) for name, folder in scored.items()}
    assert len(first["text"]["positive_scores"]) == len(first["text"]["positive_passages"])
    assert len(first["text"]["negative_scores"]) == len(first["text"]["negative_passages"])
    for key in ("positive_scores", "negative_scores"):
        assert first["text"][key] == first["tokenized"][key]

    n_passages, q_len, p_len = 4, 12, 20
    loaded = {name: load_scored_groups(DataArguments(train_dir=str(folder), train_n_passages=n_passages),
                                       vocab_size=len(tokenizer), cache_dir=str(tmp_path / "cache"))
              for name, folder in scored.items()}
    padder = SequencePadder(tokenizer)
    collators = {"tokenized": DistillationCollator(TrainCollator(padder, q_len, p_len)),
                 "text": DistillationCollator(TrainCollator(padder, q_len, p_len,
                                                            text_tokenizer=TextTokenizer(tokenizer, q_len, p_len)))}
    model = build_model(tiny_bert_dir)
    model.distil_temperature, model.distil_weight = 2.0, 0.3

    def distil_batches(name, epochs=2, batch_size=4):
        dataset = DistillationDataset(TrainDataset(loaded[name], n_passages, 42))
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            for start in range(0, len(dataset), batch_size):
                yield collators[name]([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])

    count = 0
    for ahead, fly in zip(distil_batches("tokenized"), distil_batches("text")):
        assert torch.equal(ahead["teacher_scores"], fly["teacher_scores"])
        for side in ("query", "passage"):
            assert torch.equal(ahead[side]["input_ids"], fly[side]["input_ids"])
        with torch.no_grad():
            assert model(**ahead)["loss"].item() == model(**fly)["loss"].item()
        count += 1
    assert count == 6  # 10 groups, 3 batches an epoch, 2 epochs
