"""Automatic judges for the blind A/B sheets: a panel of a rubric judge and LLM judges.

Every judge turns a sheet (``{item_id, question, answer_a, answer_b}`` records, see
:mod:`sciexplain.annotations`) into ``{item_id: Annotation(choice, strength, comment)}``, the same
shape a human annotation file holds, so the statistics treat judges and humans alike.

* **rubric** -- :class:`sciexplain.rubric.RubricJudge` ``.judge_pair`` on each item (deterministic, fast).
* **llm** -- a chat model through a generation backend built by :func:`sciexplain.backends.make_backend`
  (``local``: a transformers model, optionally with a LoRA adapter; ``vllm``: the same on vLLM's engine;
  ``openai``: any OpenAI-compatible server, ``weights`` fingerprinting what it serves), every call cached by
  :func:`sciexplain.cache.generate_cached`. The prompt (``prompts/judge.md``) shows the question and
  the two answers and asks for a final line ``Verdict: A|B|Tie, Strength: <label>``. Each item is asked
  twice, the second time with A and B swapped. If either reply is unparseable, or the two verdicts
  (the second mapped back) prefer different sides, the item is ``Unsure``; otherwise the judge keeps
  the common choice with the weaker of the two strengths.

The panel is a list of specs (``judge.panel`` in params.yaml)::

    - {name: rubric, type: rubric, params: {t_unsure: 0.02}}            # params: RubricJudge kwargs
    - {name: llm-local, type: llm, backend: local, adapter: null, max_new_tokens: 24}
    - {name: gpt, type: llm, backend: openai, model: gpt-4o-mini, base_url: null, api_key_env: OPENAI_API_KEY}
    - {name: big, type: llm, backend: vllm, base: models/judge, vllm: {gpu_memory_utilization: 0.4}}
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping

from . import panel
from .annotations import Annotation
from .backends import judge_backend
from .cache import generate_cached
from .generation import Backend, GenRequest, SamplingParams
from .panel import PanelResult, apply_finished_rule, rubric_annotations, short_call, validate_panel  # noqa: F401
from .records import DataError
from .strengths import STRENGTHS, UNSURE, normalize_strength

__all__ = [
    "PROMPT_PATH", "parse_call", "swap_call", "combine_calls", "load_template", "render_prompt",
    "rubric_annotations", "apply_finished_rule", "LLMJudge", "validate_panel", "Panel", "PanelResult",
    "run_panel",
]

PROMPT_PATH = "prompts/judge.md"
PLACEHOLDERS = ("question", "answer_a", "answer_b")

# "Verdict: A, Strength: Better" on one line; markdown emphasis and quotes are ignored.
_CALL_RE = re.compile(
    r"verdict\s*[:=]\s*(?P<side>a|b|tie|none|neither)\b[\s,;.|-]*"
    r"(?:strength\s*[:=]\s*(?P<strength>significantly\s+better|slightly\s+better|better|unsure))?",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- calls
# A judge's answer on one item is a *call*, ``(choice, strength)``, the same shape a person's annotation row has;
# a comparison's outcome over all items is a *verdict* (:mod:`sciexplain.verdicts`).

def parse_call(text: str | None) -> tuple[str, str] | None:
    """``(choice, strength)`` from a judge reply, or None when it holds no valid verdict line.

    The last line that matches ``Verdict: A|B|Tie[,] Strength: <label>`` wins (so a reply may reason
    first). ``A``/``B`` need one of the decisive labels or ``Unsure`` (which makes it a tie);
    ``Tie`` (or None/Neither) gives ``("", "Unsure")`` with or without a strength.
    """
    if not text:
        return None
    for line in reversed(text.splitlines()):
        clean = re.sub(r"[*_`\"'#>]", "", line)
        matches = list(_CALL_RE.finditer(clean))
        if not matches:
            continue
        m = matches[-1]
        side = m.group("side").upper()
        strength = normalize_strength(m.group("strength")) if m.group("strength") else None
        if side not in ("A", "B"):
            return ("", UNSURE)
        if strength is None:
            return None
        return ("", UNSURE) if strength == UNSURE else (side, strength)
    return None


def swap_call(verdict: tuple[str, str] | None) -> tuple[str, str] | None:
    """Map a verdict given on the swapped prompt (B shown as A) back to the sheet's A/B."""
    if verdict is None:
        return None
    choice, strength = verdict
    return ({"A": "B", "B": "A"}.get(choice, ""), strength)


def combine_calls(first: tuple[str, str] | None, second: tuple[str, str] | None) -> tuple[Annotation, str]:
    """Merge the verdicts of the two orders (both in the sheet's A/B) into one annotation and a reason.

    Reasons: ``"unparseable"`` (either is None), ``"disagree"`` (different sides, a tie counts as a
    side), ``"tie"`` (both Unsure), ``"agree"`` (same choice; the weaker strength is kept).
    """
    if first is None or second is None:
        return Annotation("", UNSURE, ""), "unparseable"
    side1 = first[0] if first[1] != UNSURE else ""
    side2 = second[0] if second[1] != UNSURE else ""
    if side1 != side2:
        return Annotation("", UNSURE, ""), "disagree"
    if not side1:
        return Annotation("", UNSURE, ""), "tie"
    weaker = max(first[1], second[1], key=STRENGTHS.index)
    return Annotation(side1, weaker, ""), "agree"


# --------------------------------------------------------------------------- prompt

def load_template(path: str | os.PathLike = PROMPT_PATH) -> str:
    """Read a judge prompt template; it must hold the ``{question}``, ``{answer_a}``, ``{answer_b}`` slots."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, None, "judge prompt file not found") from None
    for name in PLACEHOLDERS:
        if "{" + name + "}" not in text:
            raise DataError(path, None, name, f"the judge prompt needs a {{{name}}} slot")
    return text


def render_prompt(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """Fill the template in one pass (text inside an answer is never substituted again)."""
    values = {"question": question.strip(), "answer_a": answer_a.strip() or "(empty answer)",
              "answer_b": answer_b.strip() or "(empty answer)"}
    return re.sub(r"\{(question|answer_a|answer_b)\}", lambda m: values[m.group(1)], template)


# --------------------------------------------------------------------------- judges

class LLMJudge:
    """An LLM judge: one backend, one prompt template, greedy by default, every call cached.

    :meth:`judge` asks every item twice (order ``ab`` as on the sheet, then ``ba`` swapped) and merges
    the two verdicts with :func:`combine_calls`. After a call, :attr:`last_stats` holds counts:
    ``items, calls, unparseable`` (replies), ``unparseable_items, disagree, ties, agree`` (items), ``unfinished``
    (replies cut by max_new_tokens) and the cache ``hits, misses``.
    """

    def __init__(self, backend: Backend, template: str, sampling: SamplingParams | None = None,
                 cache_path: str | os.PathLike = "data/cache/judge/llm.jsonl", name: str = "llm"):
        self.backend, self.template, self.name = backend, template, name
        self.sampling = sampling or SamplingParams(max_new_tokens=24, temperature=0.0)
        self.cache_path = Path(cache_path)
        self.last_stats: dict = {}

    def requests(self, sheet: list[Mapping]) -> list[GenRequest]:
        reqs = []
        for item in sheet:
            q, a, b = item["question"], item["answer_a"], item["answer_b"]
            for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
                content = render_prompt(self.template, q, first, second)
                reqs.append(GenRequest.from_messages(f"{item['item_id']}:{order}", [{"role": "user", "content": content}]))
        return reqs

    def judge(self, sheet: Iterable[Mapping], desc: str | None = None, progress: bool = True) -> dict[str, Annotation]:
        sheet = list(sheet)
        results = generate_cached(self.backend, self.requests(sheet), self.sampling, self.cache_path,
                                  desc=desc or f"judge {self.name}", progress=progress)
        stats = {"items": len(sheet), "calls": len(results), "unparseable": 0, "unparseable_items": 0,
                 "disagree": 0, "ties": 0, "agree": 0, "unfinished": sum(not r.finished for r in results),
                 "hits": results.stats.hits, "misses": results.stats.misses}
        count_as = {"unparseable": "unparseable_items", "disagree": "disagree", "tie": "ties", "agree": "agree"}
        out = {}
        for n, item in enumerate(sheet):
            v_ab = parse_call(results[2 * n].text)
            v_ba = swap_call(parse_call(results[2 * n + 1].text))
            stats["unparseable"] += (v_ab is None) + (v_ba is None)
            ann, reason = combine_calls(v_ab, v_ba)
            stats[count_as[reason]] += 1
            out[item["item_id"]] = ann._replace(comment=f"{reason}: ab={short_call(v_ab)}; ba={short_call(v_ba)}")
        self.last_stats = stats
        return out


# --------------------------------------------------------------------------- the panel

class Panel(panel.Panel):
    """A panel of judges built once from specs; :meth:`judge` runs every judge on one sheet.

    Backends are created on first use and reused across sheets; ``backends={name: backend}``
    injects ready backends (tests, or a caller that already holds a model). LLM judge caches are
    ``<cache_dir>/<name>.jsonl``; the prompt is the spec's ``prompt`` or ``prompt_path``.
    """

    def __init__(self, panel_spec, *, base_dir: str | os.PathLike = "models/base",
                 cache_dir: str | os.PathLike = "data/cache/judge", prompt_path: str | os.PathLike = PROMPT_PATH,
                 backends: Mapping[str, Backend] | None = None, progress: bool = True):
        super().__init__(panel_spec, progress=progress)
        self.base_dir, self.cache_dir, self.prompt_path = base_dir, Path(cache_dir), prompt_path
        self._backends = dict(backends or {})
        self._llm: dict[str, LLMJudge] = {}

    def _llm_judge(self, spec: dict) -> LLMJudge:
        name = spec["name"]
        if name not in self._llm:
            template = load_template(spec.get("prompt") or self.prompt_path)
            backend = self._backends.get(name) or judge_backend(spec, self.base_dir)
            sampling = SamplingParams(max_new_tokens=int(spec["max_new_tokens"]), temperature=float(spec["temperature"]),
                                      top_p=float(spec["top_p"]), seed=int(spec["seed"]))
            self._llm[name] = LLMJudge(backend, template, sampling, self.cache_dir / f"{name}.jsonl", name=name)
        return self._llm[name]


def run_panel(sheet: Iterable[Mapping], panel_spec, **kwargs) -> PanelResult:
    """Run every judge of ``panel_spec`` on ``sheet``: ``{judge_name: {item_id: Annotation}}`` (+ ``.stats``).

    Keyword arguments go to :class:`Panel` (base_dir, cache_dir, prompt_path, backends, progress).
    """
    return Panel(panel_spec, **kwargs).judge(sheet)
