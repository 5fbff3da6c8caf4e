"""Structure statistics of a labelled multi-hop dataset: the properties that separate the reranker objectives
(repeated gold facts, answer-bearing and answer-typed distractors, distractors that name a question entity,
one-hop shortcuts), measured the same way on real samples and on the embedded generator's settings.

Run as `gr-train structure FILE [FILE ...]`; `configs/study.yaml` says which generator settings resemble which data.
Entities are found by surface form only (no tagger): a question entity is a run of capitalised tokens after the
first word, or a quoted span; an answer is date/number-typed when it is a year or a number. These are proxies,
stated as such wherever they are reported.
"""

from __future__ import annotations

import re
import statistics

from gr_train.data import Record, normalize_answer

_CAPS = re.compile(r"\b[A-Z][\w'’.-]*(?:\s+(?:of|the|de|von|van|and|&)?\s*[A-Z][\w'’.-]*)*")
_QUOTED = re.compile(r"[\"“]([^\"”]{3,})[\"”]")
_NUMBER = re.compile(r"\b\d{1,4}(?:[.,]\d+)?\b")
_YES_NO = {"yes", "no"}


def question_entities(question: str) -> list[str]:
    """Capitalised runs after the first word, and quoted spans, of at least 3 characters."""
    first = question.split(" ", 1)
    rest = first[1] if len(first) > 1 else ""
    runs = [m.group(0).strip() for m in _CAPS.finditer(rest)] + _QUOTED.findall(question)
    return list(dict.fromkeys(r for r in runs if len(r) >= 3))


def names_entity(passage_text: str, entities: list[str]) -> bool:
    text = f" {normalize_answer(passage_text)} "
    return any(f" {normalize_answer(e)} " in text for e in entities if normalize_answer(e))


def answer_type(answers: list[str]) -> str:
    """yes_no | number (a year or a number) | span."""
    a = answers[0].strip().lower()
    if a in _YES_NO:
        return "yes_no"
    return "number" if _NUMBER.fullmatch(a.replace(" ", "")) or re.fullmatch(r"\d{3,4}", a) else "span"


def _near_duplicate(a: str, b: str) -> bool:
    ta, tb = set(normalize_answer(a).split()), set(normalize_answer(b).split())
    return bool(ta and tb) and len(ta & tb) / len(ta | tb) >= 0.8


def record_stats(r: Record) -> dict[str, float]:
    """One record's counts (see dataset_stats for their meaning)."""
    gold = [p for p in r.ctxs if p.is_gold]
    other = [p for p in r.ctxs if not p.is_gold]
    ents = question_entities(r.question)
    kind = answer_type(r.answers)
    repeated = any((a.title.strip() and a.title.strip().lower() == b.title.strip().lower())
                   or _near_duplicate(a.text, b.text) for i, a in enumerate(gold) for b in gold[i + 1 :])
    direct = [p for p in gold if p.direct]
    two_hop = any(p.indirect for p in gold) and bool(direct)
    out = {"candidates": len(r.ctxs), "gold": len(gold), "repeated_gold_fact": float(repeated),
           "distractors_naming_question_entity": sum(names_entity(f"{p.title} {p.text}", ents) for p in other),
           "answer_bearing_distractors": sum(bool(p.has_answer) for p in other) if kind != "yes_no" else float("nan"),
           "number_typed_distractors": (sum(bool(_NUMBER.search(p.text)) for p in other) if kind == "number"
                                        else float("nan")),
           "yes_no": float(kind == "yes_no"), "two_hop": float(two_hop),
           # the answer passage names a question entity: it can be found without the bridge
           "one_hop_shortcut": (float(any(names_entity(f"{p.title} {p.text}", ents) for p in direct)) if two_hop
                                else float("nan"))}
    return out


def dataset_stats(records: list[Record]) -> dict[str, float]:
    """Means over records (NaN entries left out, their count in `<key>_questions`):

    candidates, gold: passages per question; repeated_gold_fact: share of questions with two gold passages of one
    title or near-identical text (token Jaccard >= 0.8); distractors_naming_question_entity: non-gold passages per
    question that contain a question entity; answer_bearing_distractors: non-gold passages that contain an answer
    string (yes/no questions left out); number_typed_distractors: non-gold passages with a number, on questions with a
    number/year answer; yes_no, two_hop: shares of questions (two_hop: an indirect and a direct gold passage);
    one_hop_shortcut: share of two-hop questions whose direct gold passage names a question entity.
    """
    rows = [record_stats(r) for r in records]
    out: dict[str, float] = {"questions": len(rows)}
    for key in rows[0]:
        values = [row[key] for row in rows if row[key] == row[key]]
        out[key] = statistics.fmean(values) if values else float("nan")
        if len(values) != len(rows):
            out[f"{key}_questions"] = len(values)
    return out


def format_stats(stats: dict[str, dict[str, float]]) -> str:
    """Markdown, one column per dataset."""
    keys = [k for k in next(iter(stats.values())) if not k.endswith("_questions")]
    lines = ["| statistic | " + " | ".join(stats) + " |", "|---" * (len(stats) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{s.get(k, float('nan')):.2f}" for s in stats.values()) + " |")
    return "\n".join(lines)
