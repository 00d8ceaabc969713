"""Rubric judge: scores one scientific explanation on measurable text features.

No model, no network: standard library + numpy only, fast and deterministic (the same
inputs always give the same floats). It measures *form* -- structure, coherence, clarity,
register, repetition, length -- not factual accuracy.

Sub-scores, each in [0, 1]:

* ``structure``  -- a direct opening sentence (content words shared with the question, no
  filler opener), several paragraphs / list items, a concluding sentence with a summary cue
  ("In summary", "Overall", "Thus", ...), signposting connectives.
* ``coherence``  -- content-word Jaccard overlap of adjacent sentences inside a good band
  (too low = disjoint, too high = repetitive), share of sentences linked to the previous one,
  connectives per sentence.
* ``clarity``    -- mean sentence length in a comfortable band, few run-on sentences, term
  definitions ("refers to", "is called", parenthetical glosses ...), few very long words.
* ``register``   -- hedging / scientific vocabulary; multiplicative penalties for chit-chat
  ("Great question", "As an AI", "I hope this helps"), exclamation marks, emojis, meta-text
  ("(150 tokens)", "Answer:", "Here is my explanation"), filler, first/second person, contractions.
* ``repetition`` -- 1 = no repetition: distinct-3-gram ratio and share of repeated sentences
  (degenerate outputs loop).
* ``length``     -- soft length factor: saturating credit up to ``[target_lo, target_hi]``
  words, steep penalty below ``min_words``, mild penalty above ``target_hi``.

Total::

    quality = weighted mean of structure, coherence, clarity, register   (``weights``)
    total   = quality * repetition ** rep_gamma * length ** len_gamma * finished

Repetition and length act as gates, so a looping or near-empty answer cannot reach a high
total through the other dimensions, and within the target range more words earn nothing.
``finished`` is 1 for an answer that ends on a sentence end (``. ! ? ) " ' * ]``). An answer cut
off mid-sentence is scored, always, as its complete part (cut after its last full sentence; the
dangling fragment earns nothing) with ``finished = unfinished_factor`` (0.5): a cut answer therefore
never outscores the same answer trimmed to its last full sentence, whatever else it holds.
An answer without any word scores 0 everywhere.

:meth:`RubricJudge.judge_pair` maps ``d = total_a - total_b`` onto the study's 4-point scale
(see the thresholds in :class:`RubricJudge`).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Mapping

import numpy as np
from pydantic import ValidationError

from .params_schema import RUBRIC_WEIGHTS, RubricParams

RUBRIC_VERSION = "2"  # bump when scoring changes, so cached judgements are invalidated

SUBSCORES = ("structure", "coherence", "clarity", "register", "repetition", "length", "finished")

# --------------------------------------------------------------------------- lexicons

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can could did do does doing done down during each either
    few for from further had has have having he her here hers herself him himself his how i if in
    into is isn't it it's its itself just let like made make makes many may me might more most much
    must my myself no nor not now of off on once one only or other our ours ourselves out over own
    per same shall she should so some such than that that's the their theirs them themselves then
    there these they this those through thus to too under until up upon us very via was we were what
    when where whereas which while who whom whose why will with within without would yet you your
    yours yourself yourselves""".split()
)

# (multi-)word connectives and signposts, matched on word boundaries in lower-cased text
CONNECTIVES = (
    "because", "therefore", "thus", "hence", "however", "although", "though", "whereas",
    "since", "consequently", "as a result", "as a consequence", "for example", "for instance",
    "such as", "in contrast", "in addition", "moreover", "furthermore", "similarly", "likewise",
    "first", "firstly", "second", "secondly", "third", "finally", "next", "then", "instead",
    "so that", "which means", "this means", "in turn", "on the other hand", "in summary",
    "overall", "in short", "specifically", "namely", "that is", "e.g.", "i.e.", "due to",
    "leading to", "results in", "resulting in", "this is why", "accordingly", "nevertheless",
    "nonetheless", "in other words", "in particular", "by contrast", "meanwhile", "because of",
    "in conclusion", "to summarize", "to sum up", "as shown", "for this reason",
)
SUMMARY_CUES = (
    "in summary", "overall", "in short", "thus", "therefore", "hence", "in conclusion",
    "to summarize", "to summarise", "to sum up", "in essence", "in brief", "taken together",
    "consequently", "as a result", "in sum", "summary",
)
# a sentence opening with one of these is explicitly linked to the previous one
ANAPHORS = ("this", "these", "that", "those", "such", "it", "they", "its", "their", "the same")
DEFINITION_PATTERNS = (
    r"\b(?:is |are |so-)?called\b", r"\bknown as\b", r"\brefers? to\b", r"\bmeans\b",
    r"\bis defined as\b", r"\bare defined as\b", r"\bdefined as\b", r"\bis termed\b",
    r"\bwhich (?:is|are) (?:a|an|the\b|\w+s\b)", r"\bi\.e\.", r"\bthat is,",
    r"\([^()\d\s]+(?:\s+[^()\d\s]+){2,15}\)",  # parenthetical gloss of 3-16 words, "(the smallest unit of ...)"
    r"\b\w[\w-]{0,40}\s*,\s*(?:a|an|the)\s+\w+[^,.]{0,50}\s*,",  # appositive: "photons, the particles of light,"
    r"\b\w+\s+[—–-]{1,2}\s+(?:a|an|the)\s",  # dash gloss: "entropy -- a measure of ..."
)
HEDGES = (
    "typically", "generally", "usually", "often", "suggests", "suggest", "indicates",
    "indicate", "approximately", "roughly", "likely", "unlikely", "may", "might", "tends to",
    "tend to", "in most cases", "largely", "partly", "partially", "estimated", "relatively",
    "commonly", "primarily", "mainly", "appears to", "appear to", "is thought", "are thought",
    "is believed", "evidence", "consistent with", "on average", "in general", "to some extent",
    "predominantly", "plausibly", "presumably", "measured", "observed", "experiments",
    "studies", "research", "data",
)
CHITCHAT = (
    "great question", "good question", "excellent question", "interesting question",
    "fantastic question", "what a question", "happy to help", "glad to help", "i'd be happy",
    "i would be happy", "i hope this helps", "hope this helps", "hope that helps",
    "let me know", "feel free", "thanks for asking", "thank you for asking", "let's dive",
    "dive in", "dive into", "buckle up", "you might be wondering", "isn't it", "pretty cool",
    "super cool", "awesome", "amazing", "so cool", "fun fact", "stay curious", "sure thing",
    "of course!", "certainly!", "sure!", "absolutely!",
)
AS_AI = (
    "as an ai", "as a language model", "as an artificial intelligence", "i am an ai",
    "i'm an ai", "as a large language model", "i am a language model", "i'm a language model",
    "i don't have personal", "i do not have personal",
)
FILLER = (
    "it is important to note", "it's important to note", "it is worth noting",
    "it's worth noting", "it should be noted", "needless to say", "at the end of the day",
    "basically", "essentially,", "actually", "literally", "kind of", "sort of",
    "as mentioned", "as i mentioned", "as previously mentioned", "as stated above",
    "in today's world", "it goes without saying", "all in all", "when it comes to",
    "the fact of the matter", "in this day and age", "a lot of", "really", "very very",
    "it is interesting to note", "interestingly enough", "there are many aspects",
    "many different factors", "this is a complex topic", "this is a fascinating topic",
    "this is an important topic",
)
META_PATTERNS = (
    r"\(\s*(?:~|about |approx\.? )?\d+\s*(?:tokens?|words?|characters?|chars?)\s*\)",
    r"\b\d+\s*(?:tokens?|words?)\s*(?:or less|or fewer|max(?:imum)?|limit|long|answer|response|explanation)\b",
    r"\b(?:in|within|under|using) (?:about |around |approximately )?\d+ (?:tokens?|words?)\b",
    r"\b(?:word|token|character) (?:count|limit|budget)\b",
    r"^\s*(?:\*\*)?(?:final )?(?:answer|response|explanation|output|assistant|reply)(?:\*\*)?\s*:",
    r"\bhere(?:'s| is| are) (?:my|an?|the|your) (?:\w+ ){0,3}(?:explanation|answer|response|summary|overview|breakdown)\b",
    r"\b(?:below is|the following is) (?:my|an?|the) (?:\w+ ){0,3}(?:explanation|answer|response)\b",
    r"\b(?:in this|this) (?:response|answer|explanation)(?:,)? i\b",
    r"\bi will (?:explain|answer|describe|now)\b", r"\blet me explain\b",
    r"\bas requested\b", r"\bend of (?:answer|response|explanation)\b",
    r"\bexplanation for a (?:non-expert|layperson|general audience)\b",
    r"\[(?:insert|citation needed|your)[^\]]*\]", r"<\/?(?:answer|response|s|eos|end)>",
)
OPENING_FILLER = re.compile(
    r"^(?:great|good|excellent|interesting|fantastic|wonderful|what a|sure|certainly|of course|"
    r"absolutely|okay|ok\b|well,|so,|hi\b|hello|hey|thanks|thank you|let me|let's|let us|"
    r"here is|here's|here are|i |i'm|i'd|i'll|as an ai|as a language model|answer:|"
    r"response:|that's a|this is a (?:great|good|fascinating|complex|common)|"
    r"you (?:might|may|probably)|have you ever|imagine)",
    re.IGNORECASE,
)
PERSONAL = frozenset({"i", "me", "my", "mine", "myself", "you", "your", "yours", "yourself",
                      "i'm", "i'd", "i'll", "i've", "you're", "you'd", "you'll", "you've"})
CONTRACTION = re.compile(r"\b\w+(?:n't|'re|'ve|'ll|'d|'m)\b|\b(?:it|that|there|what|here|let)'s\b",
                         re.IGNORECASE)
EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U0001F900-\U0001F9FF\U00002B00-\U00002BFF"
    "\U0000FE0F\U0000200D\U00002190-\U000021FF]"
)
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "approx.", "dr.", "fig.", "al.", "ca.", "cf.",
                 "no.", "mr.", "ms.", "st.", "u.s.", "eq.", "resp.", "ref.", "p.")

_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*|\d+(?:[.,]\d+)*")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)]|[a-z][.)])\s+")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S.*|\*\*[^*]{1,80}\*\*:?|__[^_]{1,80}__:?|[A-Z][^.!?]{0,60}:)\s*$")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")  # as sciexplain.prompts.trim_to_sentence
_SENT_SPLIT = re.compile(r"(?<=[.!?])[\"')\]»”’]*\s+")
_CONNECTIVE_RE = re.compile(
    r"(?<![\w.])(?:" + "|".join(re.escape(c) for c in sorted(CONNECTIVES, key=len, reverse=True)) + r")(?![\w])"
)


def _phrase_re(phrases) -> re.Pattern:
    alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(r"(?<![\w])(?:" + alts + r")(?![\w])")


_SUMMARY_RE = _phrase_re(SUMMARY_CUES)
_HEDGE_RE = _phrase_re(HEDGES)
_CHITCHAT_RE = re.compile(
    r"(?<![\w])(?:" + "|".join(re.escape(p) for p in sorted(CHITCHAT, key=len, reverse=True)) + r")"
)
_AS_AI_RE = _phrase_re(AS_AI)
_FILLER_RE = re.compile(
    r"(?<![\w])(?:" + "|".join(re.escape(p) for p in sorted(FILLER, key=len, reverse=True)) + r")"
)
_META_RE = re.compile("|".join(f"(?:{p})" for p in META_PATTERNS), re.IGNORECASE | re.MULTILINE)
_DEF_RE = re.compile("|".join(f"(?:{p})" for p in DEFINITION_PATTERNS), re.IGNORECASE)
_ANAPHOR_RE = re.compile(r"^(?:" + "|".join(re.escape(a) for a in ANAPHORS) + r")\b", re.IGNORECASE)


# --------------------------------------------------------------------------- text helpers

def _normalize(text: str | None) -> str:
    if text is None:
        return ""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("’", "'").replace("‘", "'")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _stem(word: str) -> str:
    """Very crude suffix stripping so 'waves'/'wave', 'scattering'/'scatter' match."""
    w = word.lower().replace("'", "")
    if w.endswith("s'") or w.endswith("'s"):
        w = w[:-2]
    for suf, rep, min_len in (("ies", "y", 5), ("ing", "", 6), ("ed", "", 5), ("es", "", 5),
                              ("ly", "", 6), ("s", "", 4)):
        if w.endswith(suf) and len(w) >= min_len and not w.endswith("ss"):
            return w[: len(w) - len(suf)] + rep
    return w


def _content(words: list[str]) -> set[str]:
    return {_stem(w) for w in words if w not in STOPWORDS and len(w) > 2 and not w[0].isdigit()}


def _split_sentences(block: str) -> list[str]:
    pieces = [p for p in _SENT_SPLIT.split(block.strip()) if p.strip()]
    out: list[str] = []
    for p in pieces:
        # re-join a split after an abbreviation ("e.g. photons") or before a lower-case start
        if out and (out[-1].lower().endswith(ABBREVIATIONS) or p[:1].islower()):
            out[-1] = out[-1] + " " + p
        else:
            out.append(p)
    return [s.strip() for s in out if _WORD.search(s)]


def _segment(text: str) -> dict:
    """Paragraphs, list items, headings and sentences of a text."""
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)

    blocks: list[str] = []  # units of text that hold sentences (paragraph bodies / list items)
    n_list, heads = 0, []
    for para in paragraphs:
        body: list[str] = []
        in_item = False  # the previous line of this paragraph was (part of) a list item
        for line in para:
            if _LIST_ITEM.match(line):
                if body:
                    blocks.append(" ".join(body))
                    body = []
                n_list += 1
                blocks.append(_LIST_ITEM.sub("", line, count=1).strip())
                in_item = True
            elif _HEADING.match(line) and len(_words(line)) <= 8:
                if body:
                    blocks.append(" ".join(body))
                    body = []
                heads.append(line.strip())
                in_item = False
            elif in_item:
                blocks[-1] += " " + line.strip()  # continuation line of a list item
            else:
                body.append(line.strip())
        if body:
            blocks.append(" ".join(body))
    sentences = [s for b in blocks for s in _split_sentences(b)]
    return {
        "paragraphs": len(paragraphs),
        "list_items": n_list,
        "headings": heads,
        "blocks": blocks,
        "sentences": sentences,
    }


def _band(x: float, lo0: float, lo1: float, hi1: float, hi0: float, floor: float = 0.0) -> float:
    """1 on [lo1, hi1], linear down to ``floor`` at lo0 and hi0 (and beyond)."""
    if lo1 <= x <= hi1:
        return 1.0
    if x < lo1:
        v = (x - lo0) / (lo1 - lo0) if lo1 > lo0 else 0.0
    else:
        v = (hi0 - x) / (hi0 - hi1) if hi0 > hi1 else 0.0
    return float(floor + (1.0 - floor) * np.clip(v, 0.0, 1.0))


def _clip01(x: float) -> float:
    return float(np.clip(x, 0.0, 1.0))


def _ngrams(words: list[str], n: int) -> list[tuple]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _distinct_ratio(words: list[str], n: int) -> float:
    grams = _ngrams(words, n)
    return len(set(grams)) / len(grams) if grams else 1.0


# --------------------------------------------------------------------------- features

def features(answer: str | None, question: str | None = None) -> dict:
    """Raw measurable features of an answer (plain numbers; for scoring and reports).

    ``question`` is optional; with it, ``opening_overlap`` (share of the question's content
    words found in the first sentence) is filled in, else it is ``None``.
    """
    text = _normalize(answer)
    words = _words(text)
    seg = _segment(text)
    sents = seg["sentences"]
    lower = text.lower()
    sent_words = [_words(s) for s in sents]
    lens = np.array([len(w) for w in sent_words], dtype=float)
    content_sets = [_content(w) for w in sent_words]

    jacc = []
    linked = 0
    for i in range(1, len(sents)):
        a, b = content_sets[i - 1], content_sets[i]
        j = len(a & b) / len(a | b) if (a | b) else 0.0
        jacc.append(j)
        if (a & b) or _ANAPHOR_RE.match(sents[i]) or _CONNECTIVE_RE.match(sents[i].lower()):
            linked += 1

    norm_sents = [" ".join(w) for w in sent_words]
    seen: set[str] = set()
    dup = 0
    for s in norm_sents:
        if s in seen:
            dup += 1
        seen.add(s)

    connectives = _CONNECTIVE_RE.findall(lower)
    first = sents[0] if sents else ""
    # a concluding sentence: a summary cue among the first words of the last sentence, or a
    # "Summary"/"Conclusion" heading over the last section
    last_start = " ".join(_words(sents[-1])[:6]) if sents else ""
    summary_end = len(sents) > 1 and (
        bool(_SUMMARY_RE.search(last_start))
        or bool(seg["headings"] and re.search(r"summary|conclusion|in short|bottom line|takeaway|tl;?dr",
                                              seg["headings"][-1], re.IGNORECASE))
    )
    letters_words = [w for w in words if w[0].isalpha()]
    stripped = text.rstrip()
    q_overlap = None
    if question is not None:
        qc = _content(_words(_normalize(question)))
        fc = _content(_words(first))
        q_overlap = (len(qc & fc) / len(qc)) if qc else None

    return {
        "n_chars": len(text),
        "n_words": len(words),
        "n_sentences": len(sents),
        "n_paragraphs": seg["paragraphs"],
        "n_list_items": seg["list_items"],
        "n_headings": len(seg["headings"]),
        "n_blocks": len(seg["blocks"]),
        "mean_sentence_len": float(lens.mean()) if len(lens) else 0.0,
        "max_sentence_len": int(lens.max()) if len(lens) else 0,
        "share_long_sentences": float((lens > 40).mean()) if len(lens) else 0.0,
        "long_word_share": (sum(len(w) >= 13 for w in letters_words) / len(letters_words)) if letters_words else 0.0,
        "distinct_1gram": _distinct_ratio(words, 1),
        "distinct_2gram": _distinct_ratio(words, 2),
        "distinct_3gram": _distinct_ratio(words, 3),
        "repeated_sentence_share": dup / len(sents) if sents else 0.0,
        "adjacent_overlap": float(np.mean(jacc)) if jacc else 0.0,
        "linked_share": linked / (len(sents) - 1) if len(sents) > 1 else 0.0,
        "n_connectives": len(connectives),
        "n_distinct_connectives": len(set(connectives)),
        "connectives_per_sentence": len(connectives) / len(sents) if sents else 0.0,
        "n_definitions": len(_DEF_RE.findall(text)),
        "n_hedges": len(_HEDGE_RE.findall(lower)),
        "n_chitchat": len(_CHITCHAT_RE.findall(lower)),
        "n_as_ai": len(_AS_AI_RE.findall(lower)),
        "n_meta": len(_META_RE.findall(text)),
        "n_filler": len(_FILLER_RE.findall(lower)),
        "n_exclamations": text.count("!"),
        "n_emojis": len(EMOJI.findall(text)),
        "n_contractions": len(CONTRACTION.findall(text)),
        "personal_pronoun_rate": (sum(w in PERSONAL for w in words) / len(words)) if words else 0.0,
        "opening_filler": bool(first and OPENING_FILLER.match(first.lstrip("*#_ \"'"))),
        "opening_overlap": q_overlap,
        "summary_cue_end": bool(summary_end),
        "ends_cleanly": bool(stripped) and stripped[-1] in ".!?)\"'*]”",
    }


# --------------------------------------------------------------------------- judge

class RubricJudge:
    """Deterministic rubric judge.

    Parameters (all optional):

    * ``min_words`` (25), ``target_lo`` (60), ``target_hi`` (250), ``max_words`` (600),
      ``long_floor`` (0.6) -- length factor: 0 words -> 0, ``min_words`` -> 0.4, full credit on
      ``[target_lo, target_hi]``, then linear down to ``long_floor`` at ``max_words`` (and flat after).
    * ``weights`` -- weights of the quality mean; default structure 0.35, coherence 0.2,
      clarity 0.2, register 0.25.
    * ``rep_gamma`` (1.0), ``len_gamma`` (0.5) -- exponents of the repetition and length gates.
    * ``unfinished_factor`` (0.5) -- the total of an answer cut off mid-sentence is multiplied by this
      (1.0 switches the penalty off).
    * ``t_unsure`` (0.02), ``t_slight`` (0.05), ``t_better`` (0.12) -- pair thresholds on
      ``|total_a - total_b|``: below ``t_unsure`` -> Unsure, below ``t_slight`` -> Slightly
      better, below ``t_better`` -> Better, else Significantly better. The defaults are about
      one minor flaw (a filler phrase, a missing summary sentence), one clear flaw (chit-chat,
      meta-text, no paragraphs) and a severe flaw (looping, far too short) on a good answer.
    """

    DEFAULT_WEIGHTS = dict(RUBRIC_WEIGHTS)

    def __init__(self, **settings):
        """``settings``: any keys of :class:`sciexplain.params_schema.RubricParams` (its defaults and checks)."""
        try:
            s = RubricParams.model_validate(settings)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"])) or str((err.get("ctx") or {}).get("key", ""))
            raise ValueError(f"rubric {where}: {err['msg']}") from None
        min_words, target_lo, target_hi, max_words = s.min_words, s.target_lo, s.target_hi, s.max_words
        long_floor, rep_gamma, len_gamma = s.long_floor, s.rep_gamma, s.len_gamma
        t_unsure, t_slight, t_better, unfinished_factor = s.t_unsure, s.t_slight, s.t_better, s.unfinished_factor
        w = dict(self.DEFAULT_WEIGHTS if s.weights is None else s.weights)
        self.min_words, self.target_lo, self.target_hi = int(min_words), int(target_lo), int(target_hi)
        self.max_words, self.long_floor = int(max_words), float(long_floor)
        self.weights = {k: float(w.get(k, 0.0)) for k in self.DEFAULT_WEIGHTS}
        self.rep_gamma, self.len_gamma = float(rep_gamma), float(len_gamma)
        self.t_unsure, self.t_slight, self.t_better = float(t_unsure), float(t_slight), float(t_better)
        self.unfinished_factor = float(unfinished_factor)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> "RubricJudge":
        """Build from a params.yaml section (same keys as the constructor)."""
        return cls(**dict(cfg or {}))

    def config(self) -> dict:
        """Parameters + rubric version, for provenance in reports and cache keys."""
        return {
            "version": RUBRIC_VERSION, "min_words": self.min_words, "target_lo": self.target_lo,
            "target_hi": self.target_hi, "max_words": self.max_words, "long_floor": self.long_floor,
            "weights": dict(self.weights), "rep_gamma": self.rep_gamma, "len_gamma": self.len_gamma,
            "t_unsure": self.t_unsure, "t_slight": self.t_slight, "t_better": self.t_better,
            "unfinished_factor": self.unfinished_factor,
        }

    # ---- sub-scores

    def features(self, answer: str | None, question: str | None = None) -> dict:
        return features(answer, question)

    def length_score(self, n_words: int) -> float:
        n = float(n_words)
        if n <= 0:
            return 0.0
        if n < self.min_words:
            return 0.4 * n / self.min_words
        if n < self.target_lo:
            return 0.4 + 0.6 * (n - self.min_words) / max(1.0, self.target_lo - self.min_words)
        if n <= self.target_hi:
            return 1.0
        frac = min(1.0, (n - self.target_hi) / (self.max_words - self.target_hi))
        return 1.0 - (1.0 - self.long_floor) * frac

    @staticmethod
    def _structure(f: dict) -> float:
        ov = f["opening_overlap"]
        opening = 1.0 if ov is None else _clip01(ov / 0.5)
        if f["opening_filler"]:
            opening *= 0.3
        units = f["n_blocks"] + f["n_headings"]
        segmentation = {0: 0.0, 1: 0.1, 2: 0.7}.get(units, 1.0)
        if units <= 1 and f["n_sentences"] <= 2 and f["n_words"] < 40:
            segmentation = 0.4  # a very short answer need not be split
        conclusion = 1.0 if f["summary_cue_end"] else 0.0
        signpost = _clip01(f["n_distinct_connectives"] / 4.0)
        return 0.3 * opening + 0.25 * segmentation + 0.25 * conclusion + 0.2 * signpost

    @staticmethod
    def _coherence(f: dict) -> float:
        if f["n_sentences"] < 2:
            return 0.5 * _clip01(f["connectives_per_sentence"]) + 0.25
        overlap = _band(f["adjacent_overlap"], 0.0, 0.06, 0.35, 0.8, floor=0.2)
        linked = _clip01(f["linked_share"] / 0.7)
        conn = _clip01(f["connectives_per_sentence"] / 0.5)
        return 0.4 * overlap + 0.3 * linked + 0.3 * conn

    @staticmethod
    def _clarity(f: dict) -> float:
        sent_len = _band(f["mean_sentence_len"], 3.0, 10.0, 25.0, 50.0)
        sent_len *= 1.0 - 0.6 * f["share_long_sentences"]
        definitions = {0: 0.3, 1: 0.8}.get(f["n_definitions"], 1.0)
        long_words = _band(f["long_word_share"], -1.0, 0.0, 0.06, 0.2)
        return 0.5 * sent_len + 0.3 * definitions + 0.2 * long_words

    @staticmethod
    def _register(f: dict) -> float:
        base = 0.7 + 0.3 * _clip01(f["n_hedges"] / 2.0)
        pen = (0.6 ** min(f["n_chitchat"], 5)) * (0.4 ** min(f["n_as_ai"], 3))
        pen *= 0.5 ** min(f["n_meta"], 4)
        pen *= 0.85 ** min(f["n_filler"], 6)
        pen *= max(0.5, 1.0 - 0.12 * f["n_exclamations"])
        pen *= 0.7 ** min(f["n_emojis"], 5)
        pen *= max(0.85, 1.0 - 0.03 * f["n_contractions"])
        pen *= _band(f["personal_pronoun_rate"], -1.0, 0.0, 0.01, 0.07, floor=0.4)
        return base * pen

    @staticmethod
    def _repetition(f: dict) -> float:
        d3 = _clip01((f["distinct_3gram"] - 0.5) / 0.4)
        dup = _clip01(1.0 - 1.5 * f["repeated_sentence_share"])
        d1 = _clip01((f["distinct_1gram"] - 0.15) / 0.2) if f["n_words"] >= 50 else 1.0
        return d3 * dup * d1

    # ---- public API

    def score(self, question: str | None, answer: str | None) -> dict:
        """Sub-scores (each in [0, 1]) and ``total``; an answer with no words scores 0 everywhere.

        An answer that does not end on a sentence end gets the sub-scores of its complete part (up to its
        last full sentence; none: 0 everywhere), ``finished = unfinished_factor`` and ``total`` = that
        part's total times ``unfinished_factor``.
        """
        f = features(answer, question)
        if f["n_words"] == 0:
            return {k: 0.0 for k in SUBSCORES} | {"total": 0.0}
        if not f["ends_cleanly"]:
            text = _normalize(answer)
            ends = list(_SENTENCE_END.finditer(text))
            complete = text[: ends[-1].end()] if ends else ""
            s = self.score(question, complete) if _words(complete) else {k: 0.0 for k in SUBSCORES} | {"total": 0.0}
            return s | {"finished": self.unfinished_factor, "total": round(s["total"] * self.unfinished_factor, 6)}
        s = {
            "structure": self._structure(f),
            "coherence": self._coherence(f),
            "clarity": self._clarity(f),
            "register": self._register(f),
            "repetition": self._repetition(f),
            "length": self.length_score(f["n_words"]),
            "finished": 1.0,
        }
        s = {k: round(_clip01(v), 6) for k, v in s.items()}
        wsum = sum(self.weights.values())
        quality = sum(self.weights[k] * s[k] for k in self.weights) / wsum
        total = quality * s["repetition"] ** self.rep_gamma * s["length"] ** self.len_gamma
        s["total"] = round(_clip01(total), 6)
        return s

    def strength(self, d: float) -> tuple[str | None, str]:
        """Map a total-score difference ``d = total_a - total_b`` onto (choice, strength)."""
        a = abs(d)
        if a < self.t_unsure or d == 0:
            return None, "Unsure"
        label = "Slightly better" if a < self.t_slight else "Better" if a < self.t_better else "Significantly better"
        return ("A" if d > 0 else "B"), label

    def judge_pair(self, question: str | None, answer_a: str | None, answer_b: str | None) -> tuple[str | None, str]:
        """("A"|"B"|None, strength label) from the difference of the two totals."""
        return self.strength(self.score(question, answer_a)["total"] - self.score(question, answer_b)["total"])

    def compare(self, question: str | None, answer_a: str | None, answer_b: str | None) -> dict:
        """judge_pair plus the scores behind it, for reports."""
        sa, sb = self.score(question, answer_a), self.score(question, answer_b)
        d = sa["total"] - sb["total"]
        choice, strength = self.strength(d)
        return {"choice": choice, "strength": strength, "d": round(d, 6), "a": sa, "b": sb}
