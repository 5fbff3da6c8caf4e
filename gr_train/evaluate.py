"""Evaluation with hard top-k: Recall/NDCG@k and MRR (all, direct, indirect gold passages), reader EM/F1 with
the k selected passages, the soft-vs-hard loss gap, and whether the reranker's scores separate.

Run as `gr-train evaluate --config X data.dev_path=FILE reranker.name_or_path=DIR` on any FiD-format file with
`is_gold` labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from gr_train import gumbel, ranking, selection
from gr_train.batching import candidate_texts, collate, module_device, move_inputs, passage_states
from gr_train.checkpoint import param_checksum
from gr_train.checks import format_counts, question_counts
from gr_train.data import fact_ids, has_answer
from gr_train.gumbel import gumbel_tau_kappa
from gr_train.reader import extract_answer, visible_log_mask
from gr_train.stats import paired_bootstrap

KINDS = ("all", "direct", "indirect")
# Yes/no questions (data.Record.yes_no) have no direct/indirect passages; ranking_metrics reports them on their own.
YES_NO = "yes_no"


def _batches(items: list, size: int, desc: str, progress: bool):
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    return tqdm(chunks, desc=desc, leave=False, disable=not progress)


@torch.no_grad()
def score_records(reranker, records, n: int, batch_size: int = 32, progress: bool = False,
                  depth: int = 0, step_one: list | None = None) -> list[torch.Tensor]:
    """Reranker scores of each record's first n candidates: a list of [min(n, len(ctxs))] fp32 CPU tensors (the
    batches go to the reranker's device). A conditional reranker (reranker.conditional) gives
    selection.ranking_scores: their order is its greedy selection of the first `depth` candidates (config's
    selection_depth(); 0 = all n), then the rest by the last step's scores, so top-k of them is its selection.
    Those values only order the candidates; `step_one`, a list, is extended with each record's step-1 scores w =
    R(q, d_i) (the same tensors as the returned ones for a pointwise reranker), the scores whose spread says whether
    the reranker separates its candidates (score_spread)."""
    was_training = reranker.training
    reranker.eval()
    out = []
    device = module_device(reranker)
    conditional = getattr(getattr(reranker, "cfg", None), "conditional", False)
    for chunk in _batches(records, batch_size, "score", progress):
        batch = collate(chunk, n, reranker=reranker, reader=None, device=device)
        if conditional:
            scorer = reranker.step_scorer(batch.reranker_inputs, *candidate_texts(batch))
            w = selection.ranking_scores(scorer, batch.valid, depth or n).float().cpu()
            w1 = scorer(torch.empty(len(chunk), 0, dtype=torch.long, device=batch.valid.device)).float().cpu()
        else:
            w = w1 = reranker(batch.reranker_inputs).float().cpu()
        out.extend(w[b, : int(batch.valid[b].sum())] for b in range(len(chunk)))
        if step_one is not None:
            step_one.extend(w1[b, : int(batch.valid[b].sum())] for b in range(len(chunk)))
    reranker.train(was_training)
    return out


def ranking_metrics(records, scores: list[torch.Tensor], ks: list[int], per_question: dict | None = None) -> dict:
    """{kind: {recall@k, ndcg@k, mrr, questions}} for kind in all | direct | indirect | yes_no.

    A question counts towards a kind only if it has at least one passage of that kind among its candidates.
    Yes/no questions count towards all, never towards direct or indirect (answer presence is undefined for them);
    yes_no is the gold-passage ranking of the yes/no questions alone ({"questions": 0} when there are none).
    per_question: a dict to fill with {"recall@k" (+ _direct / _indirect / _yes_no): [one float per record, NaN
    where the record has no passage of that kind]}, for paired comparisons (stats.py).
    """
    n = max(len(s) for s in scores)
    B = len(records)
    S = torch.full((B, n), float("-inf"))
    valid = torch.zeros(B, n, dtype=torch.bool)
    rel = {kind: torch.zeros(B, n, dtype=torch.bool) for kind in (*KINDS, YES_NO)}
    for b, (rec, s) in enumerate(zip(records, scores)):
        m = len(s)
        S[b, :m] = s
        valid[b, :m] = True
        for kind in KINDS:
            rel[kind][b, :m] = torch.tensor(rec.relevance("gold" if kind == "all" else kind)[:m], dtype=torch.bool)
        if rec.yes_no:
            rel[YES_NO][b] = rel["all"][b]
    fact = torch.full((B, n), -1, dtype=torch.long)
    for b, (rec, s) in enumerate(zip(records, scores)):
        fact[b, : len(s)] = torch.tensor(fact_ids(rec)[: len(s)])
    table = {}
    kinds = (*KINDS, YES_NO) if any(rec.yes_no for rec in records) else KINDS
    for kind in kinds:
        row = {}
        for k in ks:
            recall = ranking.recall_at_k(S, rel[kind], k, valid)
            row[f"recall@{k}"], count = ranking.nanmean(recall)
            if per_question is not None:
                per_question[f"recall@{k}" + ("" if kind == "all" else f"_{kind}")] = recall.tolist()
            row[f"ndcg@{k}"], _ = ranking.nanmean(ranking.ndcg_at_k(S, rel[kind], k, valid))
        if kind == "all":  # every needed fact has a copy in the top k (gold passages may repeat a fact)
            for k in ks:
                coverage = ranking.fact_coverage_at_k(S, fact, k, valid)
                row[f"coverage@{k}"], _ = ranking.nanmean(coverage)
                if per_question is not None:
                    per_question[f"coverage@{k}"] = coverage.tolist()
        row["mrr"], _ = ranking.nanmean(ranking.mrr(S, rel[kind], valid))
        row["questions"] = count
        table[kind] = row
    table.setdefault(YES_NO, {"questions": 0})
    return table


@torch.no_grad()
def reader_answers(reader, records, select: Callable, batch_size: int = 32, progress: bool = False,
                   cfg=None) -> list[str]:
    """Greedy reader answers when each record's reader sees `select(b, record) -> list of ctx indices`.

    With cfg.objective.cache_passage_states, the reader reads each question's cached states of its first
    data.n_candidates passages with a hard 0/1 mask (the same as dropping the others, see attention.py), so that
    every evaluation of a question after the first costs decoding only. Otherwise the selected passages are
    encoded on their own. Inputs go to the reader's device.
    """
    preds = []
    device = module_device(reader)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        chosen = [select(start + j, r) for j, r in enumerate(chunk)]
        if cfg is not None and cfg.objective.cache_passage_states and all(chosen):
            preds.extend(_answers_from_cached_states(reader, chunk, chosen, cfg))
            continue
        qs = [r.question for r in chunk]
        ps = [[(r.ctxs[i].title, r.ctxs[i].text) for i in c] for r, c in zip(chunk, chosen)]
        n = max(len(p) for p in ps)
        valid = torch.tensor([[i < len(p) for i in range(n)] for p in ps], dtype=torch.bool)
        ps = [p + [("", "")] * (n - len(p)) for p in ps]
        inputs = move_inputs(reader.tokenize(qs, ps), device)
        log_M = gumbel.log_mask(valid.float(), valid=valid).to(device) if n > 0 else None
        preds.extend(reader.generate(reader.encode_passages(inputs), inputs, log_M))
    return preds


def _answers_from_cached_states(reader, records, chosen: list[list[int]], cfg) -> list[str]:
    batch = collate(records, cfg.data.n_candidates, None, reader, device=module_device(reader))
    visible = torch.zeros_like(batch.valid)
    for b, indices in enumerate(chosen):
        visible[b, indices] = True
    if (visible & ~batch.valid).any():
        raise IndexError(f"reader_answers: a selection reaches beyond the first {cfg.data.n_candidates} candidates")
    return reader.generate(passage_states(batch, reader, cfg), batch.reader_inputs, visible_log_mask(visible))


def answer_metrics(records, preds: list[str], per_question: dict | None = None,
                   normalization: str = "typographic") -> dict:
    """{"em", "f1", "questions"}: means over records of SQuAD exact match / F1 of the answers in preds (first line,
    without "The answer is", quotes or a trailing period: reader.extract_answer) against the answers.
    per_question: a dict to fill with {"em": [...], "f1": [...]}, one value per record.
    normalization: eval.answer_normalization (data.normalize_answer's mode)."""
    preds = [extract_answer(p) for p in preds]
    em = [ranking.exact_match(p, r.answers, normalization) for p, r in zip(preds, records)]
    f1 = [ranking.f1_score(p, r.answers, normalization) for p, r in zip(preds, records)]
    if per_question is not None:
        per_question.update(em=em, f1=f1)
    return {"em": sum(em) / len(em), "f1": sum(f1) / len(f1), "questions": len(em)}


@torch.no_grad()
def soft_hard_gap(scores: list[torch.Tensor], reader, records, cfg, batch_size: int = 32,
                  per_question: dict | None = None) -> dict:
    """Mean answer loss under the training mask (gumbel.estimator at the final tau/kappa) and under hard top-k,
    from the reranker scores of score_records (one [min(n, len(ctxs))] tensor per record).

    A large gap means training optimised a mask that inference does not use. For a conditional reranker
    (cfg.reranker.conditional) the scores are selection.ranking_scores, which no training mask reads: loss_soft and
    gap are nan there, loss_hard is its greedy selection's loss. per_question: a dict to fill with
    {"loss_hard": [one value per record]}.
    """
    if cfg.reranker.conditional:
        hard_losses = hard_topk_losses(scores, reader, records, cfg, batch_size)
        if per_question is not None:
            per_question["loss_hard"] = hard_losses.tolist()
        return {"loss_soft": float("nan"), "loss_hard": hard_losses.mean().item(), "gap": float("nan")}
    tau, kappa = gumbel_tau_kappa(cfg, cfg.train.max_steps)
    gen = torch.Generator().manual_seed(cfg.run.seed + 12345)
    soft, hard = [], []
    g = cfg.gumbel
    for batch, w, states in _scored_batches(scores, reader, records, cfg, batch_size):
        valid = batch.valid.cpu()  # the masks are sampled on the CPU (the generator's device), then moved
        M_soft = gumbel.training_mask(g.estimator, w, g.k, tau, kappa, g.noise, valid, generator=gen)
        M_hard = gumbel.hard_topk_mask(w, g.k, valid)
        for M, out in ((M_soft, soft), (M_hard, hard)):
            log_M = gumbel.log_mask(M, g.eps, valid).to(batch.valid.device)
            out.append(reader.answer_loss(states, batch.reader_inputs, log_M))
    if per_question is not None:
        per_question["loss_hard"] = torch.cat(hard).float().cpu().tolist()
    s, h = torch.cat(soft).mean().item(), torch.cat(hard).mean().item()
    return {"loss_soft": s, "loss_hard": h, "gap": h - s}


@torch.no_grad()
def hard_topk_losses(scores: list[torch.Tensor], reader, records, cfg, batch_size: int = 32) -> torch.Tensor:
    """The label-free dev loss per record: the answer loss (token-mean CE of the target) of the frozen reader reading
    only the hard top-k (gumbel.k) of each record's scores. Needs no relevance labels, so it can select checkpoints.

    Args: scores as from score_records (one [min(n, len(ctxs))] fp32 tensor per record).
    Returns: [len(records)] fp32 on the CPU, nats per token.
    """
    losses = []
    for batch, w, states in _scored_batches(scores, reader, records, cfg, batch_size):
        valid = batch.valid.cpu()
        log_M = gumbel.log_mask(gumbel.hard_topk_mask(w, cfg.gumbel.k, valid), cfg.gumbel.eps, valid)
        losses.append(reader.answer_loss(states, batch.reader_inputs, log_M.to(batch.valid.device)).float().cpu())
    return torch.cat(losses)


def hard_topk_loss(scores: list[torch.Tensor], reader, records, cfg, batch_size: int = 32) -> float:
    """The mean of hard_topk_losses over records (nats per token)."""
    return hard_topk_losses(scores, reader, records, cfg, batch_size).mean().item()


def _scored_batches(scores: list[torch.Tensor], reader, records, cfg, batch_size: int):
    """Yield (batch and its passage states on the reader's device, w [B, n] fp32 on the CPU with zeros on padding)
    over records in chunks of batch_size."""
    device = module_device(reader)
    for start in range(0, len(records), batch_size):
        batch = collate(records[start : start + batch_size], cfg.data.n_candidates, None, reader, device=device)
        w = torch.zeros(batch.valid.shape)  # padded candidates are masked out through `valid`
        for b, s in enumerate(scores[start : start + batch_size]):
            w[b, : len(s)] = s
        yield batch, w, passage_states(batch, reader, cfg)


def score_spread(scores: list[torch.Tensor], min_std: float) -> dict:
    """Per-question std of the scores (a conditional reranker's: its step-1 scores, score_records' step_one);
    `separated` is False when the median std is below `min_std`."""
    stds = torch.tensor([s.std(unbiased=False).item() if len(s) > 1 else 0.0 for s in scores])
    return {"w_std_median": stds.median().item(), "w_std_mean": stds.mean().item(),
            "separated": bool(stds.median().item() >= min_std)}


def labelled(records) -> bool:
    """Every passage of every record has an is_gold label (the gold ranking metrics can be computed)."""
    return all(p.is_gold is not None for r in records for p in r.ctxs)


def answer_recall(records, scores: list[torch.Tensor], ks: list[int],
                  mode: str = "typographic") -> dict[str, list[float]]:
    """Answer recall@k per question (DPR's top-k retrieval accuracy): 1 when a passage among the top k of the scores
    contains an answer string (has_answer; computed by data.has_answer, normalisation `mode`, where the file leaves it
    unset), else 0; NaN for yes/no questions (no answer span). Needs no relevance labels.
    → {"answer_recall@k": [one per record]}."""
    out = {f"answer_recall@{k}": [] for k in ks}
    for rec, s in zip(records, scores):
        contains = [p.has_answer if p.has_answer is not None else has_answer(f"{p.title} {p.text}", rec.answers, mode)
                    for p in rec.ctxs[: len(s)]]
        order = torch.sort(s, descending=True, stable=True).indices.tolist()
        for k in ks:
            value = float("nan") if rec.yes_no else float(any(contains[i] for i in order[:k]))
            out[f"answer_recall@{k}"].append(value)
    return out


def label_free_metrics(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """{metric: {"mean", "lo", "hi", "n"}}: each per-question metric's mean with its 95% bootstrap interval over
    questions (stats.paired_bootstrap on one row)."""
    return {name: paired_bootstrap(torch.tensor(v, dtype=torch.float64)[None]) for name, v in values.items()}


def evaluate(cfg, reranker, reader, records, progress: bool = False, per_question: bool = False) -> dict:
    """Everything above for one reranker on `records`. With per_question, the result also holds "per_question":
    {metric: [one value per record]} (ranking_metrics, answer_metrics, and the label-free answer_recall@k and
    loss_hard).

    Label-free, always: "label_free" holds answer recall@k (eval.ks), and with a reader EM, F1 (reader_k passages)
    and the hard top-k answer loss, each as {"mean", "lo", "hi", "n"} with a 95% interval over questions.
    With is_gold on every passage (`labelled`), also "ranking" and "counts" (checks.question_counts: the questions
    with a direct / indirect gold passage among the first n candidates, yes/no, lost every gold passage to the
    cut); "labelled" says which. "reranker_checksum" identifies the evaluated weights (checkpoint.param_checksum;
    export puts only the tables of the exported reranker in its model card)."""
    n = cfg.data.n_candidates
    if cfg.eval.max_questions:
        records = records[: cfg.eval.max_questions]
    step_one: list[torch.Tensor] = []
    scores = score_records(reranker, records, n, cfg.eval.batch_size, progress, cfg.selection_depth(), step_one)
    rows: dict | None = {} if per_question else None
    result = {"questions": len(records), "n_candidates": n, "labelled": labelled(records),
              "reranker_checksum": param_checksum(reranker)}
    if result["labelled"]:
        result["counts"] = question_counts(records, n)
        result["ranking"] = ranking_metrics(records, scores, cfg.eval.ks, rows)
    free = answer_recall(records, scores, cfg.eval.ks, cfg.eval.answer_normalization)
    result["scores"] = score_spread(step_one, cfg.eval.separation_min_std)
    if reader is not None:
        k = cfg.reader_k()
        tops = [gumbel.topk_indices(s[None], k)[0].tolist() for s in scores]
        preds = reader_answers(reader, records, lambda b, r: tops[b], cfg.eval.batch_size, progress, cfg)
        answers: dict = {}
        result["reader"] = dict(answer_metrics(records, preds, answers, cfg.eval.answer_normalization), k=k)
        if rows is not None:
            rows.update(answers)
        result["loss"] = soft_hard_gap(scores, reader, records, cfg, cfg.eval.batch_size, free)
        free.update(em=answers["em"], f1=answers["f1"])
    result["label_free"] = label_free_metrics(free)
    if per_question:
        result["per_question"] = {**rows, **free}
    return result


def reader_reference(reader, records, batch_size: int = 32) -> dict:
    """Reader EM with fixed passage sets: all candidates, all but the indirect gold ones (the bridge removed: a
    reader that does the hop falls to chance among the answer-typed distractors), gold only, direct only, none."""
    selections = {
        "all": lambda b, r: list(range(len(r.ctxs))),
        "no_indirect": lambda b, r: [i for i, p in enumerate(r.ctxs) if not p.indirect],
        "gold": lambda b, r: [i for i, p in enumerate(r.ctxs) if p.is_gold],
        "direct": lambda b, r: [i for i, p in enumerate(r.ctxs) if p.direct],
        "none": lambda b, r: [],
    }
    return {name: answer_metrics(records, reader_answers(reader, records, sel, batch_size))["em"]
            for name, sel in selections.items()}


def format_label_free_table(results: dict[str, dict], ks: list[int]) -> str:
    """Markdown table of the label-free metrics (evaluate's "label_free"), one row per named result: answer
    recall@k, EM, F1 and the hard top-k answer loss, each with its 95% interval over questions; "–" where a result
    has no reader."""
    cols = [(f"answer R@{k}", f"answer_recall@{k}") for k in ks]
    cols += [("EM", "em"), ("F1", "f1"), ("hard top-k loss (nats/token)", "loss_hard")]
    lines = ["| reranker | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cells = []
        for _, key in cols:
            stat = r.get("label_free", {}).get(key)
            cells.append("–" if stat is None else f"{stat['mean']:.3f} [{stat['lo']:.3f}, {stat['hi']:.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    questions = {r["questions"] for r in results.values()}
    lines += ["", "Label-free: no relevance labels used; 95% bootstrap intervals over the "
              f"{'/'.join(map(str, questions))} questions; answer R@k = a passage among the top k contains an answer "
              "string (yes/no questions not counted)."]
    return "\n".join(lines)


def format_table(results: dict[str, dict], ks: list[int]) -> str:
    """Markdown table, one row per named result (e.g. untrained / trained), then the question counts of each row
    (one line when every row has the same). EM / F1 are "–" for a result without a reader (--no-reader)."""
    cols = [f"R@{k} {kind}" for k in ks for kind in KINDS] + ["MRR", "EM", "F1", "w_std"]
    lines = ["| reranker | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cells = [r["ranking"][kind][f"recall@{k}"] for k in ks for kind in KINDS]
        reader = r.get("reader")
        cells += [r["ranking"]["all"]["mrr"], reader["em"] if reader else None, reader["f1"] if reader else None,
                  r["scores"]["w_std_median"]]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines.append("")
    counted = {name: format_counts(r["counts"], r["n_candidates"]) for name, r in results.items() if "counts" in r}
    if len(set(counted.values())) == 1:
        lines.append(next(iter(counted.values())) + ".")
    else:
        lines += [f"{name}: {line}." for name, line in counted.items()]
    if any("reader" not in r for r in results.values()):
        lines.append("EM, F1: – = not computed (no reader was run: --no-reader).")
    return "\n".join(lines)
