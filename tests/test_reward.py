"""Preference pairs and the reward model library on the tiny random Llama (fast: one thread, a few seconds)."""
from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from sciexplain import preferences as prefs
from sciexplain.sheets import sheet_hashes
from sciexplain.records import DataError, UserError, stable_id
from sciexplain.models import load_tokenizer
from sciexplain.reward import (ChatEncoder, chat_prompt, RewardScorer, check_pooling, constant_loss, encode_pairs,
                               pair_loss)
from sciexplain.reward_eval import majority_agreement
from sciexplain.reward_train import train_reward_model
from sciexplain.rubric import RubricJudge


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two BLAS threads on a busy 2-core machine are ~50x slower for tiny matrices."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tiny_base):
    return load_tokenizer(tiny_base)


WORDS = "sky light water energy star atom cell wave heat rock".split()
MARKER = " therefore"


def synthetic(tok, n, seed, margin=1.0):
    """Easy preferences: the chosen answer ends with a marker word, the rejected one does not."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        q = f"Why {r.choice(WORDS)} {seed}-{i}?"
        body = " ".join(r.choice(WORDS) for _ in range(r.randint(3, 8)))
        out.append({"id": stable_id(q), "question": q, "prompt": chat_prompt(tok, q), "chosen": body + MARKER,
                    "rejected": body, "margin": margin, "strength": "Significantly better", "source": "x/alice"})
    return out


TRAINER = {"learning_rate": 3e-3, "lr_scheduler_type": "linear", "num_train_epochs": 3, "per_device_train_batch_size": 8,
           "max_length": 64, "seed": 0}
TRAIN_KW = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, trainer=TRAINER)


def kw_with(**trainer) -> dict:
    """TRAIN_KW with these reward_model.trainer settings changed."""
    return {**TRAIN_KW, "trainer": {**TRAINER, **trainer}}


@pytest.fixture(scope="module")
def trained(tiny_base, tok, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    train, val = synthetic(tok, 64, 1), synthetic(tok, 32, 2)
    res = train_reward_model(tiny_base, train, tmp / "rm", scratch_dir=tmp / "scratch", live_dir=tmp / "live", **TRAIN_KW)
    return {"dir": tmp, "res": res, "train": train, "val": val, "scorer": RewardScorer(tiny_base, tmp / "rm")}


# --------------------------------------------------------------------------- input format

def test_encoder_uses_chat_template_and_ends_with_end_of_turn(tok):
    enc = ChatEncoder(tok, 256)
    q, a = "Why is the sky blue?", "Blue light scatters most."
    ids, cut = enc.encode(enc.prompt(q), a)
    full = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
    assert not cut and ids == tok(full.rstrip(), add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") and tok.pad_token_id not in ids
    # literal special-token text inside an answer stays plain text (never a pad or an early end-of-turn)
    ids2, _ = enc.encode(enc.prompt(q), "x <|endoftext|> y <|im_end|> z")
    assert tok.pad_token_id not in ids2 and ids2.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2  # user turn + end


def test_encoder_truncates_the_answer_only(tok):
    enc = ChatEncoder(tok, 40)
    prompt = enc.prompt("Why?")
    long = " ".join(["energy"] * 100)
    ids, cut = enc.encode(prompt, long)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert cut and len(ids) == 40 and ids[:len(p_ids)] == p_ids and ids[-1] == enc.eot_ids[-1]
    with pytest.raises(DataError, match="max_length"):
        ChatEncoder(tok, len(p_ids)).encode(prompt, "a")


def test_encoder_refuses_pad_equal_to_end_of_turn(tiny_base):
    bad = load_tokenizer(tiny_base)
    bad.pad_token = "<|im_end|>"
    with pytest.raises(UserError, match="pad token"):
        ChatEncoder(bad, 64)


def test_truncation_counted_nothing_dropped(tiny_base, tok, tmp_path):
    pairs = synthetic(tok, 6, 3)
    for p in pairs[:2]:
        p["chosen"] = " ".join(["water"] * 200)  # far beyond max_length
    pairs[2]["rejected"] = " ".join(["heat"] * 200)
    _, natural = encode_pairs(pairs[3:], ChatEncoder(tok, 10_000))
    assert natural["tokens"] < 3 * 2 * 64  # the untouched pairs fit easily
    rows, counts = encode_pairs(pairs, ChatEncoder(tok, 64))
    assert counts["truncated_pairs"] == 3 and counts["truncated_sequences"] == 3
    assert all(len(r["chosen_ids"]) <= 64 and len(r["rejected_ids"]) <= 64 for r in rows)
    assert max(len(r["chosen_ids"]) for r in rows) == 64
    res = train_reward_model(tiny_base, pairs, tmp_path / "rm", scratch_dir=tmp_path / "s",
                             **kw_with(max_length=64, num_train_epochs=1))
    assert res["pairs"] == 6 and res["truncated_pairs"] == 3 and res["dropped"] == 0
    assert res["steps"] == 1  # all 6 pairs in one batch of 8: none was filtered out


# --------------------------------------------------------------------------- training and scoring

def test_learns_easy_preferences(trained):
    sc, val = trained["scorer"], trained["val"]
    c = sc.score([p["question"] for p in val], [p["chosen"] for p in val])
    r = sc.score([p["question"] for p in val], [p["rejected"] for p in val])
    assert sum(a > b for a, b in zip(c, r)) >= 0.9 * len(val)
    margins = [p["margin"] for p in val]
    assert pair_loss(c, r, margins) < constant_loss(margins)  # it learned: below the constant predictor's loss
    res = trained["res"]
    assert res["dev"] is None  # no dev pairs: every epoch runs, the last is kept
    assert res["dropped"] == 0 and res["trainable_params"] > 0 and res["train_loss"] > 0
    assert (trained["dir"] / "live" / "plots" / "metrics" / "loss.tsv").exists()


def test_adapter_holds_the_head_and_reloads_to_identical_scores(trained, tiny_base):
    from safetensors import safe_open

    with safe_open(str(trained["dir"] / "rm" / "adapter_model.safetensors"), "pt") as f:
        heads = [f.get_tensor(k) for k in f.keys() if "score" in k]
    assert len(heads) == 1
    val = trained["val"][:8]
    qs, answers = [p["question"] for p in val], [p["chosen"] for p in val]
    torch.manual_seed(1234)  # a different random head at load time must not matter
    again = RewardScorer(tiny_base, trained["dir"] / "rm")
    seqs = [again.encode(q, a) for q, a in zip(qs, answers)]
    assert seqs == [trained["scorer"].encode(q, a) for q, a in zip(qs, answers)]
    assert again.score_ids(seqs, 4) == trained["scorer"].score_ids(seqs, 4)  # same batches: bitwise equal
    score = again.model.base_model.model.score
    assert torch.equal(score.modules_to_save["default"].weight, heads[0])  # the saved, trained head is active
    assert not torch.equal(score.original_module.weight, heads[0])  # ... not the random one from load time


def test_scores_deterministic_and_batched_equals_single(trained):
    sc, val = trained["scorer"], trained["val"]
    qs = [p["question"] for p in val[:10]]
    ans = [p["chosen"] if i % 2 else p["rejected"] + " and more heat" * i for i, p in enumerate(val[:10])]
    seqs = [sc.encode(q, a) for q, a in zip(qs, ans)]
    assert len({len(s) for s in seqs}) > 3  # different lengths, so the batches really pad
    batched = sc.score_ids(seqs, batch_size=4)
    single = [sc.score_ids([s], batch_size=1)[0] for s in seqs]
    assert batched == pytest.approx(single, abs=1e-5)
    assert sc.score_ids(seqs, batch_size=4) == batched
    assert len(set(round(x, 6) for x in batched)) > 1


def test_pooling_scores_the_end_of_turn(trained):
    sc, val = trained["scorer"], trained["val"]
    chk = sc.check_pooling([val[0]["question"], val[1]["question"]], [val[0]["rejected"], val[1]["chosen"] * 5])
    assert chk["pools_end_of_turn"] and chk["max_abs_diff"] < 1e-5
    # the check can fail: a pad id inside the sequence moves the pooled token
    seq = sc.encode(val[0]["question"], val[0]["chosen"])
    broken = check_pooling(sc.model, sc.tokenizer, [seq[:-1] + [sc.tokenizer.pad_token_id], seq + seq],
                           sc.encoder.eot_ids)
    assert not broken["pools_end_of_turn"]


def test_retraining_is_deterministic(trained, tiny_base, tmp_path):
    train_reward_model(tiny_base, trained["train"], tmp_path / "rm", scratch_dir=tmp_path / "s", **TRAIN_KW)
    a = (trained["dir"] / "rm" / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "rm" / "adapter_model.safetensors").read_bytes() == a


def test_early_stopping_restores_the_best_dev_epoch(tiny_base, tok, tmp_path):
    """Dev pairs that prefer the *unmarked* answer: the better the model learns the marker, the worse its dev loss,
    so epoch 1 is best, training stops after epoch 2 (patience 1, cap 4) and the saved model is epoch 1's."""
    train = synthetic(tok, 32, 11)
    dev = [{**p, "chosen": p["rejected"], "rejected": p["chosen"], "margin": 0.5} for p in synthetic(tok, 12, 12)]
    kw = {**kw_with(num_train_epochs=4), "center_rewards_coefficient": None}
    res = train_reward_model(tiny_base, train, tmp_path / "rm", scratch_dir=tmp_path / "s", live_dir=tmp_path / "live",
                             eval_pairs=dev, early_stopping_patience=1, until_beats_constant=False, **kw)
    d = res["dev"]
    losses = [e["eval_loss"] for e in d["loss_by_epoch"]]
    assert [e["epoch"] for e in d["loss_by_epoch"]] == [1.0, 2.0] and losses[1] > losses[0], d
    assert d["best_epoch"] == 1.0 and d["best_loss"] == losses[0] and d["stopped"] == "no better dev loss" and d["epochs_run"] == 2.0
    assert d["constant_loss"] == pytest.approx(constant_loss([0.5] * 12), abs=1e-4) and d["pairs"] == 12
    assert d["beats_constant"] == (d["best_loss"] < d["constant_loss"])
    sc = RewardScorer(tiny_base, tmp_path / "rm")
    c = sc.score([p["question"] for p in dev], [p["chosen"] for p in dev])
    r = sc.score([p["question"] for p in dev], [p["rejected"] for p in dev])
    assert pair_loss(c, r, [0.5] * 12) == pytest.approx(d["best_loss"], abs=2e-4)  # the restored model is epoch 1's
    assert (tmp_path / "live" / "plots" / "metrics" / "eval" / "loss.tsv").exists()
    assert not any((tmp_path / "rm").glob("checkpoint-*"))


def test_training_stops_once_the_dev_loss_beats_the_constant(tiny_base, tok, tmp_path):
    """Easy dev pairs like the training ones: the first epoch already beats the constant predictor, so the cap
    (4 epochs) is not used."""
    res = train_reward_model(tiny_base, synthetic(tok, 64, 13), tmp_path / "rm", scratch_dir=tmp_path / "s",
                             eval_pairs=synthetic(tok, 16, 14, margin=0.0), **kw_with(num_train_epochs=4))
    d = res["dev"]
    assert d["stopped"] == "beat the constant" and d["epochs_run"] == 1.0 and len(d["loss_by_epoch"]) == 1, d
    assert d["beats_constant"] and d["best_loss"] < d["constant_loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_margin_changes_the_loss(tiny_base, tok, tmp_path):
    losses = {}
    for m in (0.0, 1.0):
        res = train_reward_model(tiny_base, synthetic(tok, 8, 5, margin=m), tmp_path / f"rm{m}",
                                 scratch_dir=tmp_path / "s", **kw_with(num_train_epochs=1))
        losses[m] = res["train_loss"]
    # one step from the same init: -logsigmoid(d - margin) with d ~ 0 is ~0.69 vs ~1.31
    assert losses[1.0] > losses[0.0] + 0.3, losses


# --------------------------------------------------------------------------- preference pairs

SHEET = [
    {"item_id": "i1", "question": "Why is the sky blue?", "answer_a": "Scattering.", "answer_b": "Dunno lol"},
    {"item_id": "i2", "question": "Why does ice float?", "answer_a": "It is less dense.", "answer_b": "Magic."},
    {"item_id": "i3", "question": "What is a star?", "answer_a": "A ball of plasma.", "answer_b": "A light."},
]
KEY = [{"item_id": "i1", "a_model": "sft", "b_model": "base"}, {"item_id": "i2", "a_model": "base", "b_model": "sft"},
       {"item_id": "i3", "a_model": "sft", "b_model": "base"}]


def _jsonl(path, recs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture()
def compare_dirs(tmp_path):
    _jsonl(tmp_path / "compare/base_vs_sft/sheet.jsonl", SHEET)
    _jsonl(tmp_path / "compare/base_vs_sft/key.jsonl", KEY)
    d = tmp_path / "annotations/base_vs_sft"
    d.mkdir(parents=True)
    h = sheet_hashes(SHEET)  # every annotation row is bound to the sheet item it was made on
    with open(d / "alice.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "choice", "strength", "comment", "item_hash"])
        w.writerows([["i1", "A", "Significantly better", "", h["i1"]], ["i2", "B", "better", "", h["i2"]],
                     ["i3", "", "Unsure", "", h["i3"]]])
    _jsonl(tmp_path / "judgments/base_vs_sft/judge-rubric.jsonl",
           [{"item_id": "i1", "item_hash": h["i1"], "choice": "A", "strength": "Slightly better", "annotator_type": "judge"},
            {"item_id": "i2", "item_hash": h["i2"], "choice": "A", "strength": "Better", "annotator_type": "judge"}])
    return tmp_path


def _data(root):
    return prefs.read_pair_annotations("base_vs_sft", root / "compare", [root / "annotations", root / "judgments"])


def test_annotation_pairs_drop_unsure(compare_dirs, tok):
    pairs = prefs.annotation_pairs("base_vs_sft", _data(compare_dirs), lambda q: chat_prompt(tok, q), "drop")
    got = {(p["source"], p["item_id"]): (p["chosen"], p["rejected"], round(p["margin"], 4), p["chosen_model"]) for p in pairs}
    assert got == {
        ("base_vs_sft/alice", "i1"): ("Scattering.", "Dunno lol", 1.0, "sft"),
        ("base_vs_sft/alice", "i2"): ("Magic.", "It is less dense.", 0.6667, "sft"),
        ("base_vs_sft/judge-rubric", "i1"): ("Scattering.", "Dunno lol", 0.3333, "sft"),
        ("base_vs_sft/judge-rubric", "i2"): ("It is less dense.", "Magic.", 0.6667, "base"),
    }
    p = pairs[0]
    assert p["id"] == stable_id("Why is the sky blue?") and p["prompt"].endswith("<|im_start|>assistant\n")
    assert "Why is the sky blue?" in p["prompt"]
    humans = prefs.annotation_pairs("base_vs_sft", _data(compare_dirs), str, "drop", annotators="humans")
    judges = prefs.annotation_pairs("base_vs_sft", _data(compare_dirs), str, "drop", annotators="judges")
    assert {p["source"] for p in humans} == {"base_vs_sft/alice"} and {p["source"] for p in judges} == {"base_vs_sft/judge-rubric"}
    assert {p["judge"] for p in humans} == {None} and {p["judge"] for p in judges} == {"rubric"}


def test_human_pairs_become_training_pairs(tok):
    """Vote pairs (margin 0..1 from the score gap) keep their margin; a strength maps to the study's margin; a plain
    preference (neither) gets margin 0, counted; the prompt is the chat-templated question; no judge."""
    recs = [{"id": "a", "pair_id": "p1", "question": "Why?", "chosen": "Because.", "rejected": "No.", "margin": 0.5806,
             "strength": None, "source": "stackexchange:ai.stackexchange.com"},
            {"id": "b", "pair_id": "p2", "question": "How?", "chosen": "Thus.", "rejected": "Eh.", "margin": None,
             "strength": "Better", "source": "pairs"},
            {"id": "c", "pair_id": "p3", "question": "What?", "chosen": "It.", "rejected": "Hm.", "margin": None,
             "strength": None, "source": "pairs"}]
    pairs, counts = prefs.human_pairs(recs, lambda q: chat_prompt(tok, q))
    assert [p["margin"] for p in pairs] == [0.5806, pytest.approx(2 / 3), 0.0] and counts == {"pairs": 3, "null_margin": 1}
    assert all(p["judge"] is None for p in pairs) and pairs[0]["source"] == "human_pairs/stackexchange:ai.stackexchange.com"
    assert pairs[0]["prompt"] == chat_prompt(tok, "Why?") and pairs[0]["id"] == "a" and pairs[0]["item_id"] == "p1"
    with pytest.raises(DataError, match="margin"):
        prefs.human_pairs([{**recs[0], "margin": -1}], str)
    with pytest.raises(DataError, match="chosen"):
        prefs.human_pairs([{**recs[0], "chosen": ""}], str)
    kept, removed = prefs.drop_questions(pairs, {"b"})
    assert removed == 1 and [p["id"] for p in kept] == ["a", "c"]


def test_annotation_pairs_keep_unsure_with_zero_margin(compare_dirs):
    pairs = prefs.annotation_pairs("base_vs_sft", _data(compare_dirs), str, "keep")
    unsure = [p for p in pairs if p["strength"] == "Unsure"]
    assert len(pairs) == 5 and len(unsure) == 1 and unsure[0]["margin"] == 0.0
    # arbitrary but deterministic, and independent of which answer was shown as A
    a = prefs.make_pair("q", "q", "one", "two", "", "Unsure", "s", "keep")
    b = prefs.make_pair("q", "q", "two", "one", "", "Unsure", "s", "keep")
    assert (a["chosen"], a["rejected"]) == (b["chosen"], b["rejected"])
    assert prefs.make_pair("q", "q", "one", "two", "", "Unsure", "s", "drop") is None
    # a bad reward_model.unsure stops at the params check (tests/test_params_schema.py), before any pair is built


GOOD = ("The sky looks blue because air molecules scatter short wavelengths of sunlight more strongly than long ones, "
        "which is called Rayleigh scattering. First, sunlight contains all colours; however, blue light is scattered "
        "in every direction, so it reaches our eyes from the whole sky.\n\nIn summary, the blue colour results from "
        "wavelength-dependent scattering by molecules in the atmosphere.")
POOR = "Great question!!! I think it's just how things are lol. Hope this helps!!"


def test_judge_pairs_on_rm_split(tok):
    qs = [{"id": "q1", "question": "Why is the sky blue?"}, {"id": "q2", "question": "Why is grass green?"}]
    gens = {"base": {"q1": {"answer": POOR}, "q2": {"answer": POOR}},
            "sft": {"q1": {"answer": GOOD}, "q2": {"answer": POOR}},
            "teacher": {"q1": {"answer": GOOD + " Overall, thus."}}}
    pf = lambda q: chat_prompt(tok, q)  # noqa: E731
    pairs, counts = prefs.judge_pairs(qs, gens, RubricJudge(), pf, "drop")
    assert counts["missing"] == 2 and counts["compared"] == 4 and counts["unsure"] >= 1  # q2 base == sft
    bs = [p for p in pairs if {p["chosen_model"], p["rejected_model"]} == {"base", "sft"}]
    assert len(bs) == 1 and bs[0]["chosen_model"] == "sft" and bs[0]["margin"] > 0 and bs[0]["source"] == prefs.RUBRIC_SOURCE
    assert all(p["judge"] == "rubric" for p in pairs)  # judge-labelled pairs name their judge
    kept, _ = prefs.judge_pairs(qs, gens, RubricJudge(), pf, "keep")
    assert len(kept) == counts["compared"] and any(p["margin"] == 0.0 for p in kept)


def test_read_generations_takes_lowest_sample(tmp_path):
    _jsonl(tmp_path / "g.jsonl", [{"id": "q1", "question": "Q", "sample": 1, "answer": "late"},
                                  {"id": "q1", "question": "Q", "sample": 0, "answer": "first"}])
    assert prefs.read_generations(tmp_path / "g.jsonl")["q1"]["answer"] == "first"
    _jsonl(tmp_path / "bad.jsonl", [{"id": "q1", "question": "Q"}])
    with pytest.raises(DataError, match="answer"):
        prefs.read_generations(tmp_path / "bad.jsonl")


def test_dedupe_split_and_cap(tok):
    pairs = synthetic(tok, 40, 7)
    pairs.append(dict(pairs[0]))
    pairs.append({**pairs[1], "source": "y/bob"})  # same texts from another annotator: a duplicate
    deduped, n = prefs.dedupe_pairs(pairs)
    assert n == 2 and len(deduped) == 40
    # several pairs per question, so the split must keep questions together
    extra = [{**p, "chosen": p["chosen"] + " x", "source": prefs.RUBRIC_SOURCE, "judge": "rubric"} for p in deduped]
    allp = deduped + extra
    train, val = prefs.split_pairs(allp, 0.25, seed=0)
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in val})
    assert len({p["id"] for p in val}) == 10 and len(train) + len(val) == 80
    assert prefs.split_pairs(allp, 0.25, seed=0) == (train, val)
    assert prefs.split_pairs(allp, 0.25, seed=1)[1] != val
    kept, removed = prefs.cap_pairs(train, 20, seed=0)
    assert len(kept) == 20 and removed == len(train) - 20
    assert all(p["source"] != prefs.RUBRIC_SOURCE for p in kept)  # people's pairs come first
    with pytest.raises(DataError, match="val_fraction"):
        prefs.validation_ids(["a"], 1.5, 0)


def test_validation_is_not_prepare_s_eval_split():
    """prepare ranks ids by sha256(f"{seed}:{id}"); an unsalted ranking here picked exactly its eval questions."""
    import hashlib

    ids = [stable_id(f"question {i}") for i in range(80)]
    prepare_order = sorted(ids, key=lambda q: hashlib.sha256(f"0:{q}".encode()).hexdigest())
    val = prefs.validation_ids(ids, 0.2, 0)
    assert len(val) == 16 and not val <= set(prepare_order[:32])


def test_majority_agreement(trained, compare_dirs):
    data = _data(compare_dirs)
    # i1: alice A, judge A -> A; i2: alice B, judge A -> tie; i3: alice Unsure -> tie
    out = majority_agreement(trained["scorer"], {"base_vs_sft": data}, set(), RubricJudge())
    assert out["n_items"] == 3 and out["n_decisive"] == 1 and out["all"]["n"] == 1 and out["heldout"]["n"] == 1
    assert out["baselines"]["longer_answer"]["accuracy"] == 1.0  # "Scattering." is longer than "Dunno lol"
    seen = majority_agreement(trained["scorer"], {"base_vs_sft": data}, {stable_id("Why is the sky blue?")})
    assert seen["heldout"]["n"] == 0 and seen["all"]["n"] == 1
    sa, sb = trained["scorer"].score(["Why is the sky blue?"] * 2, ["Scattering.", "Dunno lol"])
    assert out["all"]["correct"] == int(sa > sb)
