"""`gr-train reader-report`: does a reader's answer loss reward the passages a reranker should pick?

G-Rerank (and every Atlas baseline) learns only from the reader's answer loss, so before training a reranker it is
worth knowing whether that loss is lower when the reader sees the right passages. For every question of a labelled
file, in the reader's own input format (its passages encoded once, as in training: in parallel for decoder-only
readers), the token-mean answer NLL (nats per target token, the loss G-Rerank uses) with these passages visible
among the question's first data.n_candidates candidates (a hard 0/1 mask over one encoding, which equals dropping
the others):

    all          every candidate            direct       the direct gold passages (gold, contain the answer) alone
    gold         the gold passages          indirect     the indirect gold passages (gold, no answer: bridges) alone
    no_indirect  all but the indirect gold  none         no passage (the reader's own "no passages" input)

plus the share of questions where gold < all and where direct + indirect < direct alone (the indirect passage
helps), and greedy EM/F1 (answers read by reader.extract_answer) with all and with the gold passages; each with a
95% bootstrap interval over questions (stats.paired_bootstrap with one seed). Yes/no questions have no direct or
indirect passages (answer presence is undefined): they count towards all / gold / none and EM/F1 only, and are
counted. A question without a passage of a kind among its candidates does not count towards that kind.

Signal rule (SIGNAL_RULE): the reader gives G-Rerank a signal for direct passages when both 95% intervals of the
paired differences NLL(none) - NLL(direct) and NLL(all) - NLL(gold) lie above 0 (the answer passage lowers the
loss, and a mask on the gold passages beats reading everything); for indirect passages when both intervals of
NLL(direct) - NLL(direct + indirect) and NLL(all but indirect) - NLL(all) lie above 0 (the bridge lowers the loss
next to the answer passage, and removing it from everything raises it). One of the two: "partly"; neither: "no".

Two readers on the same questions (`gr-train reader-report --against BASELINE.json`, e.g. after fine-tuning
against before): `compare_reports` gives the paired differences this reader - baseline of every per-question value
(the shares, EM/F1, the NLLs and their differences), each with a 95% paired bootstrap interval over the questions.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from gr_train.batching import collate, module_device, move_inputs, passage_states
from gr_train.evaluate import answer_metrics
from gr_train.reader import visible_log_mask
from gr_train.stats import paired_bootstrap

CONDITIONS = ("all", "gold", "direct", "indirect", "no_indirect", "none")
LABELS = {"all": "all passages", "gold": "gold passages", "direct": "direct gold alone",
          "indirect": "indirect gold alone", "no_indirect": "all but the indirect gold", "none": "no passages"}
# name: (minuend, subtrahend), a paired difference of NLLs; > 0 means the second passage set has the lower loss.
DIFFERENCES = {
    "none - direct": ("none", "direct"),
    "all - gold": ("all", "gold"),
    "direct - direct+indirect": ("direct", "pair"),
    "no_indirect - all": ("no_indirect", "all"),
}
SIGNAL_RULE = {"direct": ("none - direct", "all - gold"),
               "indirect": ("direct - direct+indirect", "no_indirect - all")}
RULE_TEXT = ("signal = the 95% interval of each paired NLL difference lies above 0; direct: NLL(none) - NLL(direct "
             "alone) and NLL(all) - NLL(gold); indirect: NLL(direct alone) - NLL(direct + indirect) and NLL(all but "
             "indirect) - NLL(all); both: yes, one: partly, neither: no")


def _visible(records, n_b: int, kind: str) -> torch.Tensor:
    """[B, n_b] bool: which of each record's first n_b candidates the condition `kind` (CONDITIONS but none, or
    pair = direct + indirect) shows; a row of False = undefined for that record (yes/no records have no direct or
    indirect passages; pair needs both kinds; no_indirect needs an indirect passage)."""
    out = torch.zeros(len(records), n_b, dtype=torch.bool)
    for b, r in enumerate(records):
        m = min(n_b, len(r.ctxs))
        gold, direct, indirect = (r.relevance(k)[:m] for k in ("gold", "direct", "indirect"))
        sel = {
            "all": [True] * m,
            "gold": gold,
            "direct": direct,
            "indirect": indirect,
            "pair": [d or i for d, i in zip(direct, indirect)] if any(direct) and any(indirect) else [False] * m,
            "no_indirect": [not i for i in indirect] if any(indirect) else [False] * m,
        }[kind]
        out[b, :m] = torch.tensor(sel, dtype=torch.bool)
    return out


@torch.no_grad()
def per_question(reader, records, cfg, progress: bool = False) -> dict[str, list[float]]:
    """Per-question values (NaN where undefined): nll_<condition> for CONDITIONS and nll_pair (direct + indirect),
    em_all, f1_all, em_gold, f1_gold. One passage encoding per batch of eval.batch_size questions, plus one of the
    questions alone for `none`."""
    n, size = cfg.data.n_candidates, cfg.eval.batch_size
    out: dict[str, list[float]] = {}
    was_training = reader.training
    reader.eval()
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    device = module_device(reader)
    for chunk in tqdm(chunks, desc="reader report", leave=False, disable=not progress):
        batch = collate(chunk, n, None, reader, device=device)
        states = passage_states(batch, reader, cfg)
        n_b = batch.valid.shape[1]
        for kind in (*CONDITIONS[:-1], "pair"):
            visible = _visible(chunk, n_b, kind).to(device) & batch.valid
            loss = reader.answer_loss(states, batch.reader_inputs, visible_log_mask(visible)).float()
            loss = loss.masked_fill(~visible.any(-1), float("nan"))
            out.setdefault(f"nll_{kind}", []).extend(loss.tolist())
            if kind in ("all", "gold"):
                preds = reader.generate(states, batch.reader_inputs, visible_log_mask(visible))
                scores: dict = {}
                answer_metrics(chunk, preds, scores, cfg.eval.answer_normalization)
                for m in ("em", "f1"):
                    vals = [v if bool(visible[b].any()) else float("nan") for b, v in enumerate(scores[m])]
                    out.setdefault(f"{m}_{kind}", []).extend(vals)
        # none: the reader's own input for "no passages" (the question alone), as compare's reader-only row
        inputs = move_inputs(reader.tokenize([r.question for r in chunk], [[] for _ in chunk],
                                             [r.target_text for r in chunk]), device)
        none_states = reader.encode_passages(inputs)
        zeros = torch.zeros(len(chunk), inputs["passage_ids"].shape[1], device=device)
        out.setdefault("nll_none", []).extend(reader.answer_loss(none_states, inputs, zeros).float().tolist())
    reader.train(was_training)
    return out


def _interval(values: list[float]) -> dict:
    """{mean, lo, hi, n} over the non-NaN questions (95% bootstrap); NaN and n 0 when none counts."""
    t = torch.tensor(values, dtype=torch.float64)
    t = t[~torch.isnan(t)][None]  # resample the questions that count only (a replicate never draws none of them)
    if not t.numel():
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    return paired_bootstrap(t)


def _share_below(a: list[float], b: list[float]) -> list[float]:
    """1 where a < b, 0 where not, NaN where either is undefined (per question)."""
    return [math.nan if math.isnan(x) or math.isnan(y) else float(x < y) for x, y in zip(a, b)]


def _difference(a: list[float], b: list[float]) -> list[float]:
    return [math.nan if math.isnan(x) or math.isnan(y) else x - y for x, y in zip(a, b)]


def verdict(differences: dict[str, dict]) -> dict[str, str]:
    """SIGNAL_RULE applied to the differences' intervals → {"direct": yes | partly | no, "indirect": ...}."""
    out = {}
    for kind, names in SIGNAL_RULE.items():
        above = [differences[d]["n"] > 0 and differences[d]["lo"] > 0 for d in names]
        out[kind] = "yes" if all(above) else "partly" if any(above) else "no"
    return out


def reader_report(reader, records, cfg, progress: bool = False) -> dict:
    """The report for `records` (labelled; the first eval.max_questions when set) read by `reader`.

    Returns {"questions", "question_ids" (in order), "yes_no_questions", "two_hop_questions", "nll": {condition:
    interval}, "gold_below_all", "indirect_helps", "em_all", "f1_all", "em_gold", "f1_gold" (intervals),
    "differences": {name: interval}, "signal": {"direct", "indirect"}, "rule", "reader": the reader settings,
    "per_question": the raw values}.
    NLLs are nats per target token. Raises ValueError when a passage has no is_gold label.
    """
    if cfg.eval.max_questions:
        records = records[: cfg.eval.max_questions]
    pq = per_question(reader, records, cfg, progress)
    nll = {c: _interval(pq[f"nll_{c}"]) for c in (*CONDITIONS, "pair")}
    diffs = {name: _interval(_difference(pq[f"nll_{a}"], pq[f"nll_{b}"])) for name, (a, b) in DIFFERENCES.items()}
    rd = cfg.reader
    return {
        "questions": len(records),
        "question_ids": [r.id for r in records],
        "yes_no_questions": sum(r.yes_no for r in records),
        "two_hop_questions": int(sum(not math.isnan(v) for v in pq["nll_pair"])),
        "nll": nll,
        "gold_below_all": _interval(_share_below(pq["nll_gold"], pq["nll_all"])),
        "indirect_helps": _interval(_share_below(pq["nll_pair"], pq["nll_direct"])),
        **{m: _interval(pq[m]) for m in ("em_all", "f1_all", "em_gold", "f1_gold")},
        "differences": diffs,
        "signal": verdict(diffs),
        "rule": RULE_TEXT,
        "reader": {"kind": rd.kind, "name_or_path": rd.name_or_path, "prompt": rd.prompt,
                   "answer_eos": rd.answer_eos, "passage_max_tokens": rd.passage_max_tokens,
                   "n_candidates": cfg.data.n_candidates},
        "per_question": pq,
    }


def _cell(v: dict, fmt: str = ".3f") -> str:
    if not v["n"]:
        return "–"
    return f"{v['mean']:{fmt}} [{v['lo']:{fmt}}, {v['hi']:{fmt}}]"


def format_report(report: dict, title: str | None = None) -> str:
    """Markdown: the NLL per condition, the two shares, EM/F1, the paired differences and the verdict in words."""
    rd = report["reader"]
    lines = ([f"### {title}", ""] if title else []) + [
        f"Reader {rd['kind']} `{rd['name_or_path'] or 'built from config'}`, prompt {rd['prompt']}, answer eos "
        f"{'on' if rd['answer_eos'] else 'off'}, {rd['passage_max_tokens']} tokens per passage, first "
        f"{rd['n_candidates']} candidates; {report['questions']} questions ({report['yes_no_questions']} yes/no, "
        f"left out of direct / indirect; {report['two_hop_questions']} with a direct and an indirect gold passage). "
        "Token-mean answer NLL (nats/token) and shares with 95% bootstrap intervals over questions.", "",
        "| passages visible | NLL | questions |", "|---|---|---|"]
    for c in CONDITIONS:
        lines.append(f"| {LABELS[c]} | {_cell(report['nll'][c])} | {report['nll'][c]['n']} |")
    lines.append(f"| direct + indirect gold | {_cell(report['nll']['pair'])} | {report['nll']['pair']['n']} |")
    lines += ["", "| measure | value | questions |", "|---|---|---|",
              f"| share with NLL(gold) < NLL(all) | {_cell(report['gold_below_all'])} | "
              f"{report['gold_below_all']['n']} |",
              f"| share with NLL(direct + indirect) < NLL(direct alone) | {_cell(report['indirect_helps'])} | "
              f"{report['indirect_helps']['n']} |",
              f"| EM / F1, all passages | {_cell(report['em_all'])} / {_cell(report['f1_all'])} | "
              f"{report['em_all']['n']} |",
              f"| EM / F1, gold passages | {_cell(report['em_gold'])} / {_cell(report['f1_gold'])} | "
              f"{report['em_gold']['n']} |"]
    for name, v in report["differences"].items():
        a, b = DIFFERENCES[name]
        lines.append(f"| NLL({LABELS.get(a, 'direct + indirect')}) - NLL({LABELS.get(b, 'direct + indirect')}) | "
                     f"{_cell(v)} | {v['n']} |")
    s = report["signal"]
    lines += ["", f"Signal for G-Rerank: direct passages **{s['direct']}**, indirect passages **{s['indirect']}** "
              f"({report['rule']})."]
    return "\n".join(lines)


# name: the per-question value that compare_reports pairs (a function of one report's per_question values)
COMPARED = {
    "gold < all (share)": lambda pq: _share_below(pq["nll_gold"], pq["nll_all"]),
    "direct + indirect < direct (share)": lambda pq: _share_below(pq["nll_pair"], pq["nll_direct"]),
    "EM, gold passages": lambda pq: pq["em_gold"],
    "F1, gold passages": lambda pq: pq["f1_gold"],
    "EM, all passages": lambda pq: pq["em_all"],
    "F1, all passages": lambda pq: pq["f1_all"],
    **{f"NLL({LABELS[c]})": (lambda pq, c=c: pq[f"nll_{c}"]) for c in ("all", "gold", "none")},
    **{f"NLL {name}": (lambda pq, a=a, b=b: _difference(pq[f"nll_{a}"], pq[f"nll_{b}"]))
       for name, (a, b) in DIFFERENCES.items()},
}


def check_same_questions(ids: list[str], base_ids: list[str]) -> None:
    """Raise ValueError naming the first position where two reports' question ids (in order) differ."""
    if ids != base_ids:
        i = next((i for i, (a, b) in enumerate(zip(ids, base_ids)) if a != b), min(len(ids), len(base_ids)))
        first = ids[i] if i < len(ids) else "(none)"
        other = base_ids[i] if i < len(base_ids) else "(none)"
        raise ValueError(f"the two reports read different questions ({len(ids)} and {len(base_ids)}): question {i} "
                         f"is {first!r} here and {other!r} in the baseline")


def compare_reports(report: dict, baseline: dict) -> dict[str, dict]:
    """Paired differences report - baseline on the same questions, {name of COMPARED: {mean, lo, hi, n}} (95%
    bootstrap of the per-question differences over the questions defined in both; the others do not count).

    Both are reader_report results (or their JSON) with per_question values; report["question_ids"] must equal
    baseline["question_ids"], in order. Raises ValueError naming the first question that differs, or the missing key.
    """
    for name, r in (("report", report), ("baseline", baseline)):
        if "per_question" not in r or "question_ids" not in r:
            raise ValueError(f"{name}: no per_question values or question_ids (a reader report written by this "
                             "version of gr-train reader-report is needed)")
    check_same_questions(report["question_ids"], baseline["question_ids"])
    return {name: _interval(_difference(value(report["per_question"]), value(baseline["per_question"])))
            for name, value in COMPARED.items()}


def format_comparison(comparison: dict[str, dict], this: str, baseline: str) -> str:
    """Markdown table of compare_reports: this reader - the baseline reader, paired over the same questions."""
    lines = [f"Paired differences, {this} - {baseline}, on the same questions (95% paired bootstrap intervals):", "",
             "| measure | difference | questions |", "|---|---|---|"]
    lines += [f"| {name} | {_cell(v)} | {v['n']} |" for name, v in comparison.items()]
    return "\n".join(lines)
