"""Can a reranker learn the conditional step at all? A labelled diagnostic for the selection study.

    python bench/conditional_capacity.py --reranker FOLDER --train TRAIN.jsonl --dev DEV.jsonl [--steps 1500]

Teacher-forced step 2 of conditional selection (reranker.conditional), with labels: for every two-hop question of the
training file, the question followed by its gold bridge passage (inputs.conditioned_questions, as the conditional
reranker reads it, through Reranker.step_scorer) is scored against the candidates, the bridge itself masked out, and
the listwise cross-entropy of the gold answer passage is minimised (AdamW, lr 1e-3, 32 questions a step, one thread).
Every 100 steps it prints the dev binding questions' R@1 (synthetic.question_kind == "binding": the answer passage
that does not name the question's work, which only the bridge identifies). The MDR-style supervised reference of the
selection study's issue; a reranker that reaches R@1 near 1 here has the capacity the label-free rows need, so a
label-free row that stays near chance is limited by its training signal, not by the model. """

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import synthetic  # noqa: E402
from gr_train.data import load_records  # noqa: E402
from gr_train.reranker import Reranker, build_reranker  # noqa: E402


def step_two_scores(reranker, records) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [B, n] of every candidate given the question and its gold bridge, the bridge at -1e4; gold answer index
    [B])."""
    questions = [r.question for r in records]
    passages = [[(c.title, c.text) for c in r.ctxs] for r in records]
    bridge = torch.tensor([[next(i for i, c in enumerate(r.ctxs) if c.is_gold and not c.has_answer)]
                           for r in records])
    answer = torch.tensor([next(i for i, c in enumerate(r.ctxs) if c.is_gold and c.has_answer) for r in records])
    # the conditional reranker's own step scorer, as selection and training call it (step 2 given the bridge)
    w = reranker.step_scorer(reranker.tokenize(questions, passages), questions, passages)(bridge)
    return w.scatter(1, bridge, -1e4), answer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reranker", required=True, help="a reranker folder (Reranker.save; loaded as conditional)")
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--dev", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    reranker = build_reranker(dataclasses.replace(Reranker.load(args.reranker).cfg, conditional=True))
    train = [r for r in load_records(args.train) if r.intermediate]
    dev = [r for r in load_records(args.dev) if synthetic.question_kind(r) == "binding"]
    opt = torch.optim.AdamW(reranker.parameters(), lr=1e-3)
    rng = random.Random(args.seed)
    for step in range(1, args.steps + 1):
        reranker.train()
        w, answer = step_two_scores(reranker, rng.sample(train, 32))
        loss = torch.nn.functional.cross_entropy(w, answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            reranker.eval()
            with torch.no_grad():
                w, answer = step_two_scores(reranker, dev)
            r1 = (w.argmax(-1) == answer).float().mean().item()
            print(f"step {step}: train loss {loss.item():.3f}, dev binding R@1 given the gold bridge {r1:.3f} "
                  f"({len(dev)} questions)", flush=True)


if __name__ == "__main__":
    main()
