"""What a conditional reranker picks first on the shortcut questions, and whether its start would bring the bridge back
at step 2: a measurement for the selection study (the KL penalty to the start, docs/study/selection/README.md).

    python bench/selection_order.py RUN_DIR [RUN_DIR ...]

For each trained run folder (its config.yaml, whose reranker.name_or_path is the start, and final/reranker), on the
dev questions of kind "shortcut" (synthetic.question_kind: two-hop, the answer passage names the work, so the bridge
adds nothing the reader needs): the kinds (answer passage, bridge, other) of the trained reranker's greedy picks at
steps 1 and 2, counted, and of its start's first pick; and, on the questions whose first pick is not the bridge, the
mean step-2 probability of the bridge (softmax of the step-2 scores over the remaining candidates, kappa 1) under
the trained reranker and under its start given the same first pick: the policy gumbel.kl_coef pulls step 2 towards
(with gumbel.kl_reference=conditional). One thread; the labels are used by the report only.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import selection, synthetic  # noqa: E402
from gr_train.batching import candidate_texts, collate  # noqa: E402
from gr_train.config import load_config  # noqa: E402
from gr_train.data import load_records  # noqa: E402
from gr_train.models import build_models  # noqa: E402


def kind(passage) -> str:
    return "answer" if passage.is_gold and passage.direct else "bridge" if passage.is_gold else "other"


@torch.no_grad()
def report(run: Path, batch_size: int = 32) -> None:
    cfg = load_config(run / "config.yaml", [f"reranker.name_or_path={run / 'final' / 'reranker'}"])
    _, trained = build_models(cfg)
    _, start = build_models(load_config(run / "config.yaml"))  # the run's own start
    trained.eval()
    start.eval()
    records = [r for r in load_records(cfg.data.dev_path) if synthetic.question_kind(r) == "shortcut"]
    n = cfg.data.n_candidates
    picks: collections.Counter = collections.Counter()
    start_first: collections.Counter = collections.Counter()
    p_bridge: dict[str, list[float]] = {"trained": [], "start": []}
    for s in range(0, len(records), batch_size):
        chunk = records[s : s + batch_size]
        batch = collate(chunk, n, reranker=trained, reader=None)
        scorer = trained.step_scorer(batch.reranker_inputs, *candidate_texts(batch))
        chosen = selection.beam(scorer, batch.valid, 2, 1).indices  # greedy
        start_batch = collate(chunk, n, reranker=start, reader=None)
        start_scorer = start.step_scorer(start_batch.reranker_inputs, *candidate_texts(start_batch))
        second = {"trained": scorer(chosen[:, :1]), "start": start_scorer(chosen[:, :1])}
        start_top = start_scorer(chosen[:, :0]).float().masked_fill(~batch.valid, float("-inf")).argmax(-1)
        for b, rec in enumerate(chunk):
            first = int(chosen[b, 0])
            start_first[kind(rec.ctxs[int(start_top[b])])] += 1
            picks[(kind(rec.ctxs[first]), kind(rec.ctxs[int(chosen[b, 1])]))] += 1
            bridge = [i for i, p in enumerate(rec.ctxs) if kind(p) == "bridge"]
            if kind(rec.ctxs[first]) == "bridge" or not bridge:
                continue
            remaining = batch.valid[b].clone()
            remaining[first] = False
            for who, w in second.items():
                p = torch.softmax(w[b].float().masked_fill(~remaining, float("-inf")), -1)
                p_bridge[who].append(float(p[bridge].sum()))
    print(f"{run}: {len(records)} shortcut questions; (step 1, step 2) picks: "
          + ", ".join(f"{a} then {b}: {c}" for (a, b), c in picks.most_common())
          + "; the start's first pick: " + ", ".join(f"{a}: {c}" for a, c in start_first.most_common()))
    if p_bridge["trained"]:
        m = len(p_bridge["trained"])
        print(f"  first pick not the bridge ({m}): step-2 p(bridge) trained {sum(p_bridge['trained']) / m:.3f}, "
              f"its start {sum(p_bridge['start']) / m:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml, final/reranker)")
    args = p.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        report(run)


if __name__ == "__main__":
    main()
