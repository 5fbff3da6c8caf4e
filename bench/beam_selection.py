"""Does beam selection pay over greedy selection? A measurement for the selection study (issue: beam selection "if it
pays").

    python bench/beam_selection.py RUN_DIR [RUN_DIR ...] [--k 3] [--widths 1 4 16] [--weights final]

For each trained run folder (its config.yaml and <weights>/reranker, a conditional reranker), the dev questions
(data.dev_path of the run's config) are selected with beam search over the step policies (selection.beam, kappa 1)
at every width; width 1 is greedy selection, what evaluation uses. Per width it prints: fact coverage@k over all dev
questions and per synthetic question kind (synthetic.question_kind: one_hop, shortcut, binding, three_hop), the
frozen reader's EM reading exactly the k selected passages, and the mean sequence log-probability sum_t log
p(i_t | i_<t). The EM difference of each width against greedy comes with its paired bootstrap interval over the dev
questions (stats.paired_bootstrap), pooled over the run folders given (one per seed). One thread; no labels are used
by the selection, only by the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import ranking, selection, synthetic  # noqa: E402
from gr_train.batching import candidate_texts, collate  # noqa: E402
from gr_train.config import load_config  # noqa: E402
from gr_train.data import fact_ids, load_records  # noqa: E402
from gr_train.evaluate import answer_metrics, reader_answers  # noqa: E402
from gr_train.models import build_models  # noqa: E402
from gr_train.stats import paired_bootstrap  # noqa: E402


@torch.no_grad()
def select_all(reranker, records, n: int, k: int, width: int, batch_size: int = 32) -> tuple[list[list[int]], list]:
    """(per record the k selected candidate indices, -1 dropped; per record the sequence log-probability)."""
    picks, log_probs = [], []
    for start in range(0, len(records), batch_size):
        batch = collate(records[start : start + batch_size], n, reranker=reranker, reader=None)
        scorer = reranker.step_scorer(batch.reranker_inputs, *candidate_texts(batch))
        sel = selection.beam(scorer, batch.valid, k, width)
        picks += [[i for i in row if i >= 0] for row in sel.indices.tolist()]
        log_probs += sel.log_prob.tolist()
    return picks, log_probs


def coverage(records, picks: list[list[int]], k: int) -> list[float]:
    """Fact coverage@k per record of the selection (ranking.fact_coverage_at_k on scores that rank it first)."""
    n = max(len(r.ctxs) for r in records)
    scores = torch.zeros(len(records), n)
    fact = torch.full((len(records), n), -1, dtype=torch.long)
    valid = torch.zeros(len(records), n, dtype=torch.bool)
    for b, (rec, chosen) in enumerate(zip(records, picks)):
        m = len(rec.ctxs)
        valid[b, :m] = True
        fact[b, :m] = torch.tensor(fact_ids(rec)[:m])
        for t, i in enumerate(chosen):
            scores[b, i] = float(k - t)
    return ranking.fact_coverage_at_k(scores, fact, k, valid).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml, <weights>/reranker), one per seed")
    p.add_argument("--k", type=int, default=0, help="passages selected (default: the run's gumbel.k)")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--weights", default="final", help="the run's weights folder: final or best")
    p.add_argument("--json", type=Path, help="write the per-question figures here")
    args = p.parse_args()
    torch.set_num_threads(1)
    em: dict[int, list[list[float]]] = {w: [] for w in args.widths}  # per run (seed), per question
    cov: dict[int, list[float]] = {w: [] for w in args.widths}
    kinds: list[str] = []
    out = {}
    for run in args.runs:
        cfg = load_config(run / "config.yaml", [f"reranker.name_or_path={run / args.weights / 'reranker'}"])
        k = args.k or cfg.gumbel.k
        reader, reranker = build_models(cfg)
        reader.eval()
        reranker.eval()
        records = load_records(cfg.data.dev_path)
        kinds += [synthetic.question_kind(r) for r in records]
        out[str(run)] = {}
        for width in args.widths:
            picks, log_probs = select_all(reranker, records, cfg.data.n_candidates, k, width)
            answers: dict = {}
            preds = reader_answers(reader, records, lambda b, r, picks=picks: picks[b], cfg=cfg)
            answer_metrics(records, preds, answers, cfg.eval.answer_normalization)
            em[width].append(answers["em"])
            cov[width] += coverage(records, picks, k)
            out[str(run)][width] = {"em": answers["em"], "log_prob": log_probs}
            print(f"{run} width {width}: EM@{k} {sum(answers['em']) / len(records):.3f}, coverage@{k} "
                  f"{sum(cov[width][-len(records):]) / len(records):.3f}, mean log p(sequence) "
                  f"{sum(log_probs) / len(log_probs):.3f}", flush=True)
    print(f"\npooled over {len(args.runs)} run(s), {len(kinds)} questions:")
    for width in args.widths:
        by_kind = {kind: [c for c, q in zip(cov[width], kinds) if q == kind] for kind in sorted(set(kinds))}
        kind_cells = ", ".join(f"{kind} {sum(v) / len(v):.3f}" for kind, v in by_kind.items())
        line = f"width {width}: EM {sum(map(sum, em[width])) / len(kinds):.3f}, coverage " \
               f"{sum(cov[width]) / len(kinds):.3f} ({kind_cells})"
        if width != args.widths[0]:  # [seeds, questions], paired with the first width
            diff = paired_bootstrap(torch.tensor(em[width]), torch.tensor(em[args.widths[0]]))
            line += f"; EM - width {args.widths[0]}: {diff['mean']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}]"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
