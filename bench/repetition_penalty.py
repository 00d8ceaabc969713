"""Does a repetition penalty end the 135M model's loops? (issue 11: >= 90% of teacher and eval answers finish)

Teacher: the questions whose teacher answer hit the cap in ``data/generations/teacher/*.jsonl`` (a run at penalty
1.0) plus as many it finished, asked again at ``--penalty``: how many of the cut ones now finish, and does any
finished one break. Student: the eval split answered by ``--adapter`` (e.g. models/sft) at 384 new tokens.

    python -m bench.repetition_penalty teacher --penalty 1.1
    python -m bench.repetition_penalty student --penalty 1.1 --adapter models/sft
"""
from __future__ import annotations

import json
import random
import time

import click


@click.command()
@click.argument("who", type=click.Choice(["teacher", "student"]))
@click.option("--penalty", default=1.1, show_default=True)
@click.option("--adapter", default=None)
@click.option("--base", "base_dir", default="models/base", show_default=True)
def main(who, penalty, adapter, base_dir):
    from sciexplain import prompts
    from sciexplain.generation import GenRequest, SamplingParams
    from sciexplain.records import read_jsonl
    from sciexplain.local_backend import LocalBackend

    if who == "teacher":
        system = prompts.load_system_prompt("prompts", "none")
        shots = prompts.load_few_shot("prompts", 2, "none")
        qs = {q["id"]: q for s in ("sft", "rm", "eval") for q in read_jsonl(f"data/prepared/{s}.jsonl")}
        gens = [g for s in ("sft", "rm", "eval") for g in read_jsonl(f"data/generations/teacher/{s}.jsonl")]
        cut = [g["id"] for g in gens if not g["finished"]]
        done = [g["id"] for g in gens if g["finished"]]
        random.Random(0).shuffle(done)
        ids = cut + done[:len(cut)]
        reqs = [GenRequest.from_messages(i, prompts.teacher_messages(qs[i]["question"], system, shots, "none"))
                for i in ids]
        backend = LocalBackend(base_dir, batch_size=8)
    else:
        qs = read_jsonl("data/prepared/eval.jsonl")
        reqs = [GenRequest.from_messages(q["id"], prompts.student_messages(q["question"])) for q in qs]
        cut = []
        backend = LocalBackend(base_dir, adapter=adapter, batch_size=16)
    t0 = time.time()
    res = backend.generate(reqs, SamplingParams(max_new_tokens=384, temperature=0.7, top_p=0.9, seed=0,
                                                repetition_penalty=penalty))
    k = len(cut)
    print(json.dumps({"who": who, "penalty": penalty, "adapter": adapter, "seconds": round(time.time() - t0),
                      "n": len(res), "finished": sum(r.finished for r in res),
                      "previously_cut_now_finished": sum(r.finished for r in res[:k]) if k else None,
                      "previously_finished_still_finished": sum(r.finished for r in res[k:]) if k else None,
                      "empty": sum(not r.text.strip() for r in res),
                      "mean_tokens": round(sum(r.completion_tokens for r in res) / len(res), 1)}))


if __name__ == "__main__":
    main()
