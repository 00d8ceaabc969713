"""Regenerate the shipped human-pair file (data/raw/human_pairs/) from a Stack Exchange data-dump Posts.xml.

    python scripts/make_human_pairs.py                      # the defaults below: the AI Stack Exchange dump
    python scripts/make_human_pairs.py --posts path/to/Posts.xml --site physics.stackexchange.com --out ...

Writes ``<out>/<name>.jsonl`` (pairs in the ``pairs`` source format of sciexplain.human_pairs, with post ids,
scores and links) and ``<out>/ATTRIBUTION.md`` (licence, source, the exact command, every question linked).
Deterministic: the same dump and options give the same bytes.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sciexplain.human_pairs import stackexchange_pairs  # noqa: E402
from sciexplain.records import Drops, sha256_file, write_jsonl, write_text  # noqa: E402

ATTRIBUTION = """# Human preference pairs from {site} (Stack Exchange)

`{name}.jsonl`: {n_pairs} answer pairs for {n_questions} questions of the {site_title} Stack Exchange site
({site}), made from its public data-dump `Posts.xml` ({dump}). Each record pairs two answers to the same
question: `chosen` is the answer with the higher vote score, `rejected` the lower one, the scores differing
by at least {min_score_gap}; at most {max_pairs_per_question} pairs per question (pairs where the
higher-scored answer was posted later first); answers longer than {max_answer_chars} characters of text
left out. `margin` = min(1, log2(1 + score gap) / log2(1 + {margin_full_gap})).

## Licence and attribution

- **Source:** Stack Exchange user contributions on {site}, from the Stack Exchange public data dump
  ({dump}), `Posts.xml`, sha256 `{sha}`. The content was posted under CC BY-SA 3.0
  (posts made before 2018-05-02; https://creativecommons.org/licenses/by-sa/3.0/).
- **Authors:** each answer's author is named in its record (`chosen_author`, `rejected_author`: the
  author's profile page on {site}, or the display name a deleted account left); each post is linked:
  the question at `url` (https://{site}/q/<id>), the answers at `chosen_url` / `rejected_url`
  (https://{site}/a/<id>). All questions used are listed below.
- **Modified:** question titles and answer bodies were converted from HTML to plain text (paragraphs,
  lists, code and LaTeX kept; see `sciexplain/data.py::html_to_text`), answers were paired by vote
  score, and the vote scores, post ids and links above were added. Question bodies, comments and
  user data other than the author link are not included.
- **Licence of this file:** this adaptation is licensed under CC BY-SA 4.0
  (https://creativecommons.org/licenses/by-sa/4.0/), as CC BY-SA 3.0 section 4(b) permits for an
  adaptation (a later version of the licence with the same elements). It is not covered by the
  project's code licence. Stack Exchange and the site names are trademarks of Stack Exchange, Inc.;
  this project is not affiliated with or endorsed by it.

## Regenerate

    {command}

## Questions used ({n_questions})

{questions}
"""


@click.command()
@click.option("--posts", "posts_path", default=str(ROOT.parent / "shared/data/stackexchange-ai/Posts.xml"),
              show_default=True, type=click.Path(exists=True, dir_okay=False), help="a data-dump Posts.xml")
@click.option("--site", default="ai.stackexchange.com", show_default=True, help="the site the dump is from")
@click.option("--site-title", default="Artificial Intelligence", show_default=True)
@click.option("--dump", default="December 2016 dump, posts dated 2016-08-02 to 2016-12-11", show_default=True,
              help="which dump, in words")
@click.option("--out", "out_dir", default=str(ROOT / "data/raw/human_pairs"), show_default=True)
@click.option("--name", default="ai_stackexchange", show_default=True, help="file stem of the pair file")
@click.option("--min-score-gap", default=2, show_default=True)
@click.option("--max-pairs-per-question", default=3, show_default=True)
@click.option("--max-answer-chars", default=2500, show_default=True)
@click.option("--margin-full-gap", default=15, show_default=True)
def main(posts_path, site, site_title, dump, out_dir, name, min_score_gap, max_pairs_per_question, max_answer_chars,
         margin_full_gap):
    drops = Drops()
    pairs = stackexchange_pairs(posts_path, drops, min_score_gap=min_score_gap, site=site,
                                max_pairs_per_question=max_pairs_per_question, margin_full_gap=margin_full_gap,
                                max_answer_chars=max_answer_chars)
    out = Path(out_dir)
    write_jsonl(out / f"{name}.jsonl", pairs)
    questions, seen = [], set()
    for p in pairs:
        if p["question_post_id"] not in seen:
            seen.add(p["question_post_id"])
            questions.append(f"- [{p['question_post_id']}]({p['url']}) {p['question'].replace('[', '(').replace(']', ')')}")
    args = [f"--site {shlex.quote(site)}", f"--min-score-gap {min_score_gap}",
            f"--max-pairs-per-question {max_pairs_per_question}", f"--max-answer-chars {max_answer_chars}",
            f"--margin-full-gap {margin_full_gap}", f"--name {name}"]
    command = "python scripts/make_human_pairs.py --posts <Posts.xml> " + " ".join(args)
    write_text(out / "ATTRIBUTION.md", ATTRIBUTION.format(
        name=name, n_pairs=len(pairs), n_questions=len(seen), site=site, site_title=site_title, dump=dump,
        min_score_gap=min_score_gap, max_pairs_per_question=max_pairs_per_question,
        max_answer_chars=max_answer_chars, margin_full_gap=margin_full_gap, sha=sha256_file(posts_path),
        command=command, questions="\n".join(questions)))
    click.echo(f"{len(pairs)} pairs, {len(seen)} questions -> {out / (name + '.jsonl')}; dropped: {dict(drops.counts)}")


if __name__ == "__main__":
    main()
