"""Conditional selection's cost: one G-Rerank training step (objectives.gumbel_rerank: passage encoding, reranker,
selection, answer passes, backward, AdamW) of a conditional reranker as a ratio to the pointwise step, same reader,
batch and noise, measured in the same run.

    python bench/bench_selection.py                       # bi_encoder and cross_encoder, n = 10 and 20, k = 2 and 5
    python bench/bench_selection.py --rerankers bi_encoder --n 10 --k 2 --repeat 5

Rows (reranker.conditional, gumbel.estimator, gumbel.samples):
  pointwise_st     false, straight_through, 1   (the reference: today's pointwise step)
  conditional_st   true,  straight_through, 1   (k reranker passes: step 1 plus k - 1 conditioned ones)
  pointwise_sf     false, score_function, 4     (4 sampled sets, answer passes without autograd)
  conditional_sf   true,  score_function, 4     (4 sampled sequences, each with k - 1 conditioned passes)
  conditional_sf_ckpt  the same, reranker.gradient_checkpointing=true
  conditional_sf_kl    conditional_sf with gumbel.kl_coef=0.1 (a frozen copy of the reranker, no-grad passes)
A row whose worker fails (killed for memory: exit -9) is reported as failed and the others still run.
The reader is bench_step.py's ~12M-parameter FiD-T5 (random weights, L passage tokens); the reranker a
MiniLM-L6-shaped BERT (384 hidden, 6 layers, random weights). Each row runs in a fresh subprocess so that peak RSS is
its own: memory = peak RSS during the steps minus RSS before the first step. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import READERS, batch_records, rss_mb  # noqa: E402

ROWS = {
    "pointwise_st": ["reranker.conditional=false", "gumbel.estimator=straight_through", "gumbel.samples=1"],
    "conditional_st": ["reranker.conditional=true", "gumbel.estimator=straight_through", "gumbel.samples=1"],
    "pointwise_sf": ["reranker.conditional=false", "gumbel.estimator=score_function", "gumbel.samples=4"],
    "conditional_sf": ["reranker.conditional=true", "gumbel.estimator=score_function", "gumbel.samples=4"],
    # the same with the reranker's activation checkpointing: the k - 1 conditioned passes of every sample are what
    # the step keeps for backward
    "conditional_sf_ckpt": ["reranker.conditional=true", "gumbel.estimator=score_function", "gumbel.samples=4",
                            "reranker.gradient_checkpointing=true"],
    # the KL penalty to the start: a frozen copy of the reranker scores the candidates again (no grad), once per
    # question with the default pointwise reference (its step-1 scores), at every sample's prefixes with the
    # conditional one
    "conditional_sf_kl": ["reranker.conditional=true", "gumbel.estimator=score_function", "gumbel.samples=4",
                          "gumbel.kl_coef=0.1"],
    "conditional_sf_kl_conditional": ["reranker.conditional=true", "gumbel.estimator=score_function",
                                      "gumbel.samples=4", "gumbel.kl_coef=0.1", "gumbel.kl_reference=conditional"],
}
MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
                "max_position_embeddings": 512}


def worker(args) -> dict:
    import torch

    from gr_train import batching, gumbel, objectives, train
    from gr_train.config import load_config
    from gr_train.models import build_reader
    from gr_train.reranker import build_reranker, build_word_tokenizer

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = READERS["fid_t5"]
    cfg = load_config(None, [f"reader.kind={spec['kind']}", f"reader.passage_max_tokens={args.L}",
                             "reader.answer_max_tokens=8", f"gumbel.k={args.k}", f"data.n_candidates={args.n}",
                             f"reranker.kind={args.reranker}", "reranker.max_tokens=64", *ROWS[args.row]])
    cfg.reader.model_config = dict(spec["model_config"])
    cfg.reranker.model_config = dict(MINILM_SHAPE)
    reader = build_reader(cfg.reader)
    records = batch_records(args.batch, args.n, args.words, seed=1)
    tok = build_word_tokenizer([r.question for r in records] + [c.text for r in records for c in r.ctxs])
    reranker = build_reranker(cfg.reranker, tok).train()
    reference = train.start_copy(reranker) if cfg.gumbel.kl_coef > 0 else None
    opt = torch.optim.AdamW([p for p in reranker.parameters() if p.requires_grad], lr=1e-4)
    batch = batching.collate(records, args.n, reranker, reader)
    noise = gumbel.sample_gumbel((cfg.gumbel.samples * args.k, args.batch, args.n),
                                 torch.Generator().manual_seed(0))

    def step() -> float:
        out = objectives.gumbel_rerank(batch, reranker, reader, cfg, 0, noise, reference)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    base = rss_mb()
    loss = step()  # warm-up, counted in peak memory
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"reranker": args.reranker, "n": args.n, "k": args.k, "row": args.row,
            "step_s": sorted(times)[len(times) // 2], "peak_mb_over_base": peak - base, "loss": loss}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rerankers", nargs="+", default=["bi_encoder", "cross_encoder"])
    p.add_argument("--n", nargs="+", type=int, default=[10, 20])
    p.add_argument("--k", nargs="+", type=int, default=[2, 5])
    p.add_argument("--rows", nargs="+", default=["pointwise_st", "conditional_st", "pointwise_sf", "conditional_sf"],
                   choices=list(ROWS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--L", type=int, default=64, help="reader passage tokens")
    p.add_argument("--words", type=int, default=40, help="words per generated passage")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reranker", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.n, args.k = args.n[0], args.k[0]
        print(json.dumps(worker(args)))
        return
    rows = []
    for reranker in args.rerankers:
        for n in args.n:
            for k in args.k:
                for row in args.rows:
                    cmd = [sys.executable, __file__, "--worker", "--reranker", reranker, "--row", row, "--n", str(n),
                           "--k", str(k), "--batch", str(args.batch), "--L", str(args.L), "--words", str(args.words),
                           "--repeat", str(args.repeat), "--threads", str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"worker failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}",
                              file=sys.stderr)
                        rows.append({"reranker": reranker, "n": n, "k": k, "row": row, "failed": out.returncode})
                        continue
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), file=sys.stderr)
    ref = {(r["reranker"], r["n"], r["k"]): r for r in rows if r["row"] == "pointwise_st"}
    print("| reranker | n | k | row | step (s) | peak memory over base (MB) | time / pointwise_st | "
          "memory / pointwise_st |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            why = "killed (out of memory)" if r["failed"] == -9 else f"exit {r['failed']}"
            print(f"| {r['reranker']} | {r['n']} | {r['k']} | {r['row']} | failed: {why} | – | – | – |")
            continue
        base = ref.get((r["reranker"], r["n"], r["k"]))
        ok = base is not None and "failed" not in base
        ratios = (f"{r['step_s'] / base['step_s']:.2f} | "
                  f"{r['peak_mb_over_base'] / max(base['peak_mb_over_base'], 1):.2f}" if ok else "– | –")
        print(f"| {r['reranker']} | {r['n']} | {r['k']} | {r['row']} | {r['step_s']:.3f} | "
              f"{r['peak_mb_over_base']:.0f} | {ratios} |")


if __name__ == "__main__":
    main()
