"""The reward model's training data, people first: what the ``reward_model`` stage trains on and is tested on.

In order: the validate stage's human pairs (train split; its test split is the held-out set), people's annotation
files on the comparison sheets named by ``reward_model.sources``, and only with ``reward_model.judge_labels`` the
judges' files and rubric-labelled pairs on the rm split. Then duplicates go, pairs on held-out questions go (never
train on a test question), pairs whose prompt does not fit ``max_length`` go, the rest is split train/dev by
question and capped at ``reward_model.max_train_pairs``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import preferences as prefs
from .records import DataError, read_jsonl
from .rubric import RubricJudge


@dataclass
class RewardData:
    train: list[dict]
    dev: list[dict]
    test: list[dict]                     # held-out human pairs (the validate stage's test split)
    pair_data: dict                      # {pair: annotation data} of the comparison sheets read
    counts: dict = field(default_factory=dict)
    rm_counts: dict | None = None        # the rubric-labelled rm split's counts (judge_labels only)
    test_path: str = "data/human_pairs/test.jsonl"

    def summary(self) -> str:
        c = self.counts
        return (f"pairs: {c['from_human_pairs']} human pairs, {c['from_annotations']} from annotation files, "
                f"{c['from_rm_judge']} judge-labelled on the rm split; {c['duplicates_removed']} duplicates, "
                f"{c['on_test_questions_removed']} on held-out questions and {c['prompt_too_long']} with a prompt "
                f"over max_length left out; train {len(self.train)} (capped {c['capped']}), dev {len(self.dev)}, "
                f"held-out human test {len(self.test)}")


def comparison_data(compare_root: Path, declared_pairs: Sequence[str], annotation_roots: tuple) -> dict:
    """``{pair: annotation data}`` of every comparison sheet the stage may read that has annotation files."""
    folders = [compare_root / pair for pair in declared_pairs] if declared_pairs else \
        (sorted(compare_root.iterdir()) if compare_root.is_dir() else [])
    out = {}
    for d in folders:
        if (d / "sheet.jsonl").exists():
            data = prefs.read_pair_annotations(d.name, compare_root, annotation_roots)
            if data["annotations"]:
                out[d.name] = data
    return out


def assemble(rm, enc, *, human_dir, compare_root, declared_pairs: Sequence[str], annotations_root, judgments_root,
             generations_root, rm_split) -> RewardData:
    """The train/dev pairs and the held-out test of ``rm`` (the typed ``reward_model`` params section); ``enc``: the
    stage's :class:`sciexplain.reward.ChatEncoder` (prompt format and length)."""
    seed, unsure, judge_labels = rm.trainer.seed, rm.unsure, rm.judge_labels
    human_dir, compare_root = Path(human_dir), Path(compare_root)
    hp_train, hp_counts = prefs.human_pairs(read_jsonl(human_dir / "train.jsonl", required=("id", "question"),
                                                       allow_empty=True), enc.prompt)
    test = read_jsonl(human_dir / "test.jsonl", required=("id", "question", "pair_id"), allow_empty=False)
    roots = (annotations_root, (judgments_root, "judge")) if judge_labels else (annotations_root,)
    pair_data = comparison_data(compare_root, declared_pairs, roots)
    ann_pairs = []
    for pair in rm.sources:
        if pair not in pair_data:
            why = ("no sheet.jsonl with annotation files for this pair" if not declared_pairs or pair in declared_pairs
                   else f"the stage reads only {', '.join(declared_pairs)} (--pair; a comparison of models trained "
                   "after the reward model cannot train it)")
            raise DataError(compare_root / str(pair), None, "reward_model.sources", why)
        ann_pairs += prefs.annotation_pairs(pair, pair_data[pair], enc.prompt, unsure, "all" if judge_labels else "humans")
    rm_pairs, rm_counts = [], None
    if judge_labels:  # judge-labelled pairs on the rm split: only when asked for
        questions = read_jsonl(rm_split, required=("id", "question"))
        gens = {m: prefs.read_generations(Path(generations_root) / m / "rm.jsonl") for m in rm.rm_models}
        rubric = RubricJudge(**rm.rubric.model_dump(exclude_unset=True)) if rm.rubric is not None else RubricJudge()
        rm_pairs, rm_counts = prefs.judge_pairs(questions, gens, rubric, enc.prompt, unsure)

    pairs, n_dupes = prefs.dedupe_pairs(hp_train + ann_pairs + rm_pairs)
    pairs, n_test_q = prefs.drop_questions(pairs, {r["id"] for r in test})  # never train on a held-out question
    fitting = [x for x in pairs if enc.fits(x["prompt"])]
    n_long_prompt = len(pairs) - len(fitting)
    train, dev = prefs.split_pairs(fitting, rm.val_fraction, seed)
    train, n_capped = prefs.cap_pairs(train, rm.max_train_pairs, seed)
    counts = {"from_human_pairs": len(hp_train), "human_pairs_null_margin": hp_counts["null_margin"],
              "from_annotations": len(ann_pairs), "from_rm_judge": len(rm_pairs), "duplicates_removed": n_dupes,
              "on_test_questions_removed": n_test_q, "prompt_too_long": n_long_prompt, "capped": n_capped,
              "by_label": dict(sorted(Counter(f"judge:{x['judge']}" if x.get("judge") else "human"
                                              for x in train).items()))}
    return RewardData(train, dev, test, pair_data, counts, rm_counts, str(human_dir / "test.jsonl"))
