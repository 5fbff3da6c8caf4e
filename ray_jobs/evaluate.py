r"""Evaluate a reranker on a Ray cluster: the dev set (FiD JSON/JSONL or preprocessed Parquet) is split into
`eval.ray_tasks` chunks, each scored (and, with the reader, answered from its hard top-k) by one Ray task;
the driver computes Recall/NDCG@k and MRR (all / direct / indirect), reader EM/F1 and the score spread.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.evaluate --config configs/x.yaml data.dev_path=runs/pre-dev reranker.name_or_path=DIR

Same numbers as `gr-train evaluate` (gr_train/evaluate.py), less the soft-vs-hard loss gap. Writes
<run_dir>/eval.json (or --output).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import ray

from gr_train import checks
from gr_train.config import RunConfig
from ray_jobs import run_job, start_job

log = logging.getLogger("ray_jobs.evaluate")


@ray.remote
def evaluate_chunk(cfg: RunConfig, records: list, with_reader: bool) -> tuple[list, list | None, list]:
    """(scores of each record's first n candidates, reader answers from its top-k or None, the step-1 scores
    (score_records' step_one: a conditional reranker's spread is read from them)) for one chunk."""
    import torch

    from gr_train import gumbel
    from gr_train.evaluate import reader_answers, score_records
    from gr_train.models import build_models

    torch.manual_seed(cfg.run.seed)  # a reranker built from a config gets the same weights in every task
    reader, reranker = build_models(cfg)
    step_one: list = []
    scores = score_records(reranker, records, cfg.data.n_candidates, cfg.eval.batch_size, depth=cfg.selection_depth(),
                           step_one=step_one)
    if not with_reader:
        return scores, None, step_one
    k = cfg.reader_k()
    tops = [gumbel.topk_indices(s[None], k)[0].tolist() for s in scores]
    return scores, reader_answers(reader, records, lambda b, r: tops[b], cfg.eval.batch_size), step_one


def run(cfg: RunConfig, with_reader: bool = True, output: str | None = None) -> dict:
    from gr_train.evaluate import answer_metrics, ranking_metrics, score_spread
    from gr_train.data import load_split

    if not cfg.data.dev_path:
        raise ValueError("evaluate: set data.dev_path (FiD JSON/JSONL or a preprocessed Parquet folder)")
    t0 = time.perf_counter()
    records = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    if cfg.eval.max_questions:
        records = records[: cfg.eval.max_questions]
    workers = max(1, min(cfg.eval.ray_tasks, len(records)))
    bounds = [len(records) * w // workers for w in range(workers + 1)]
    chunks = [records[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    task = evaluate_chunk.options(num_cpus=cfg.eval.task_num_cpus)
    parts = ray.get([task.remote(cfg, chunk, with_reader) for chunk in chunks])
    scores = [s for part, _, _ in parts for s in part]
    step_one = [s for _, _, part in parts for s in part]
    result = {"questions": len(records), "n_candidates": cfg.data.n_candidates,
              "ranking": ranking_metrics(records, scores, cfg.eval.ks),
              "scores": score_spread(step_one, cfg.eval.separation_min_std)}
    if with_reader:
        preds = [p for _, part, _ in parts for p in part]
        result["reader"] = dict(answer_metrics(records, preds), k=cfg.reader_k())
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    out = Path(output) if output else Path(cfg.run.run_dir) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    def flags(parser):
        parser.add_argument("--output", help="JSON result path (default <run_dir>/eval.json)")
        parser.add_argument("--no-reader", action="store_true", help="ranking metrics only")

    args, cfg = start_job("evaluate", __doc__, argv, flags,
                          check=lambda args, cfg: checks.check_config(cfg, "evaluate", reader_used=not args.no_reader))
    result = run(cfg, not args.no_reader, args.output)
    print("evaluate summary: " + json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(run_job("python -m ray_jobs.evaluate", main))
