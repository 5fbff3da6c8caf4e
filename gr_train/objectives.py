"""Training objectives, one signature: `objective(batch, reranker, reader, cfg, step, noise) -> Output`.

`noise` is this micro-batch's slice [k, B, n] of the step's Gumbel noise (see train.step_noise), or None.

`gumbel` is G-Rerank (reranker trained through the frozen reader's answer loss); `reader` pre-trains a reader
with every passage visible (the demo reader). The Atlas baselines (EMDR, PDist, LOOP, ADist) plug in here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from gr_train import gumbel as G


@dataclass
class Batch:
    """A collated micro-batch. n = candidates per question after padding.

    valid: [B, n] bool (False on padded candidates); gold: [B, n] bool (is_gold, False when unlabelled).
    """

    records: list
    valid: torch.Tensor
    gold: torch.Tensor
    reranker_inputs: dict | None
    reader_inputs: dict


def collate(records: list, n: int, reranker=None, reader=None, intermediates: bool = False) -> Batch:
    """Cut each record to its first n candidates, pad to the batch's largest count with ("", ""), tokenize
    for the reranker and the reader (either may be None). Padded candidates have valid False."""
    n_b = max(min(n, len(r.ctxs)) for r in records)
    passages, valid, gold = [], [], []
    for r in records:
        ctxs = r.ctxs[:n_b]
        pad = n_b - len(ctxs)
        passages.append([(c.title, c.text) for c in ctxs] + [("", "")] * pad)
        valid.append([True] * len(ctxs) + [False] * pad)
        gold.append([bool(c.is_gold) for c in ctxs] + [False] * pad)
    questions = [r.question for r in records]
    rr_inputs = reranker.tokenize(questions, passages) if reranker is not None else None
    rd_inputs = None
    if reader is not None:
        extra = {"intermediates": [r.intermediate for r in records]} if intermediates else {}
        rd_inputs = reader.tokenize(questions, passages, [r.target_text for r in records], **extra)
    return Batch(records, torch.tensor(valid), torch.tensor(gold), rr_inputs, rd_inputs)


@dataclass
class Output:
    loss: torch.Tensor  # scalar, mean over the micro-batch's questions
    metrics: dict[str, float] = field(default_factory=dict)  # detached scalars for TensorBoard (train/...)
    timings: dict[str, float] = field(default_factory=dict)


def gumbel_tau_kappa(cfg, step: int) -> tuple[float, float]:
    """(tau, kappa) at `step` from cfg.gumbel's start/end values and schedule."""
    g = cfg.gumbel
    tau = G.schedule_value(g.tau, g.tau_end, step, cfg.train.max_steps, g.schedule)
    kappa = G.schedule_value(g.kappa, g.kappa_end, step, cfg.train.max_steps, g.schedule)
    return tau, kappa


def gumbel(batch: Batch, reranker, reader, cfg, step: int, noise: torch.Tensor | None) -> Output:
    """G-Rerank: w = R(q, d); M = relaxed top-k(w); loss = reader answer CE with log M in its attention.

    Passage states are computed under no_grad (they do not depend on M); only the answer pass and the
    reranker carry autograd.
    """
    t0 = time.perf_counter()
    states = reader.encode_passages(batch.reader_inputs)
    t1 = time.perf_counter()
    w = reranker(batch.reranker_inputs)  # [B, n]
    tau, kappa = gumbel_tau_kappa(cfg, step)
    M = G.relaxed_topk_mask(w, cfg.gumbel.k, tau, kappa, cfg.gumbel.noise, valid=batch.valid, gumbel_noise=noise)
    log_M = G.log_mask(M, cfg.gumbel.eps, batch.valid)
    t2 = time.perf_counter()
    loss = reader.answer_loss(states, batch.reader_inputs, log_M).mean()
    t3 = time.perf_counter()
    with torch.no_grad():
        wv = w.float().masked_fill(~batch.valid, float("nan"))
        w_std = torch.nanmean((wv - torch.nanmean(wv, -1, keepdim=True)).pow(2), -1).sqrt().mean()
        metrics = {
            "train/tau": tau,
            "train/kappa": kappa,
            "train/mask_entropy": G.mask_entropy(M, batch.valid).item(),
            "train/mask_sum": M.sum(-1).mean().item(),
            "train/w_std": w_std.item(),  # per-question score spread; ~0 = scores did not separate
            "train/mask_on_gold": (M * batch.gold).sum(-1).mean().item(),
        }
    return Output(loss, metrics, {"time/passage_encoding": t1 - t0, "time/reranker": t2 - t1, "time/answer_pass": t3 - t2})


def reader_pretrain(batch: Batch, reranker, reader, cfg, step: int, noise) -> Output:
    """Reader pre-training: answer CE with all passages visible, plus the demo reader's deep supervision."""
    if hasattr(reader, "training_loss"):
        answer, aux = reader.training_loss(batch.reader_inputs, None, cfg.reader.aux_loss_weight)
        loss = (answer + aux).mean()
        return Output(loss, {"train/answer_loss": answer.mean().item(), "train/aux_loss": aux.mean().item()})
    raise NotImplementedError(f"reader pre-training is implemented for the demo reader only, not {type(reader)}")


OBJECTIVES = {"gumbel": gumbel, "reader": reader_pretrain}
# Objectives whose loss depends on the scores only through a softmax over a question's candidates: adding a
# constant to every score changes nothing, so the reranker's score bias is frozen for them (zero gradient).
SHIFT_INVARIANT = {"gumbel"}
