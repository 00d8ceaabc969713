"""Teacher vs student on the answers bench/teacher_levers.py cached: the check the teacher stage runs before SFT.

Reads a teacher condition's cache and the student's (bare question) cache for the same sft questions, cleans the
teacher answers as the stage does, cuts student answers longer than ``--student-budget`` tokens to that budget
(unfinished), and runs :func:`sciexplain.teacher_check.teacher_vs_student` with the judge panel of params.yaml
and the judges' human agreement from a validate metrics file.

    python -m bench.teacher_vs_student --teacher /tmp/teacher_levers/teacher-none_2_384.jsonl \
        --student /tmp/teacher_levers/student-384.jsonl --validation metrics/validate.json
"""
from __future__ import annotations

import json

import click


@click.command()
@click.option("--teacher", "teacher_cache", required=True)
@click.option("--student", "student_cache", required=True)
@click.option("--split", default="data/prepared/sft.jsonl", show_default=True)
@click.option("--n", "n_questions", default=16, show_default=True)
@click.option("--student-budget", default=None, type=int, help="cut student answers to this many tokens")
@click.option("--validation", default="metrics/validate.json", show_default=True)
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--base", "base_dir", default="models/base", show_default=True)
def main(teacher_cache, student_cache, split, n_questions, student_budget, validation, params_path, base_dir):
    from sciexplain import prompts
    from sciexplain.cli import read_params
    from sciexplain.records import read_jsonl
    from sciexplain.judges import Panel
    from sciexplain.teacher_check import teacher_vs_student

    p = read_params(params_path)
    questions = {q["id"]: q for q in read_jsonl(split)[:n_questions]}
    load = lambda path: {r["id"]: r for r in read_jsonl(path) if r["id"] in questions}  # noqa: E731
    t_raw, s_raw = load(teacher_cache), load(student_cache)
    teacher = []
    for qid, r in t_raw.items():
        answer, reason = prompts.clean_teacher_answer(r["text"], r["finished"], p.teacher.min_words,
                                                      p.teacher.unfinished)
        teacher.append({"id": qid, "question": questions[qid]["question"], "answer": answer, "finished": r["finished"],
                        "keep": reason is None})
    tok = None
    student = []
    for qid, r in s_raw.items():
        text, finished = r["text"], r["finished"]
        if student_budget and r["completion_tokens"] > student_budget:
            if tok is None:
                from transformers import AutoTokenizer
                tok = AutoTokenizer.from_pretrained(base_dir)
            text, finished = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:student_budget]), False
        student.append({"id": qid, "question": questions[qid]["question"], "answer": text, "finished": finished, "sample": 0})
    val = json.load(open(validation))
    panel = Panel(p.judge.panel, base_dir=base_dir, progress=False)
    v = teacher_vs_student(teacher, student, panel, val, seed=p.teacher.seed)
    click.echo(json.dumps({k: v[k] for k in v if k != "judges"}, indent=1))


if __name__ == "__main__":
    main()
