"""One G-Rerank training step: passage encoding without autograd versus the naive path, time and peak memory.

    python bench/bench_step.py                      # fid_t5 and causal_lm readers, n = 10 and 40
    python bench/bench_step.py --readers fid_t5 --n 10 40 --repeat 5
    python bench/bench_step.py --paths no_grad --k 5 --estimators max_softmax subset straight_through
    python bench/bench_step.py --paths no_grad cached --checkpointing off on   # reader answer-pass checkpointing

Paths, for the same reranker, reader, batch and Gumbel noise:
  naive    the whole reader under autograd: reader parameters require grad (as when a framework only leaves
           them out of the optimizer), passages encoded with a graph, backward through everything;
  no_grad  gr-train's step: passages encoded under torch.no_grad(), only the answer pass (T tokens) and the
           reranker carry autograd (objectives.gumbel_rerank);
  cached   as no_grad, with the passage states computed once and reused (encoding not timed), the case of
           several objectives or epochs over one encoding.
Estimators (gumbel.estimator): the mask of each step is max_softmax (the paper's, the reference), subset or
straight_through; the table gives each one's step time and memory as ratios to max_softmax on the same (reader, n,
path), measured in the same run.
Checkpointing (--checkpointing off on): runtime.checkpoint_answer_pass on the reader, i.e. every answer-pass layer
recomputed in backward (runtime.reader_checkpointing); a second table gives time and memory as ratios to `off`.
Each (reader, n, path, estimator, checkpointing) runs in a fresh subprocess so that peak RSS is its own: memory = peak
RSS during the steps minus RSS before the first step. "Saved activations" = bytes autograd keeps for backward during
one step's forward (torch.autograd.graph.saved_tensors_hooks; reader and reranker parameters excluded), the quantity
checkpointing reduces, free of allocator noise. Results print as Markdown tables (paste into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

READERS = {
    # ~12M-parameter T5 (random weights): big enough that the encoder dominates, small enough for 2 CPU cores.
    "fid_t5": {"kind": "fid_t5", "model_config": {"d_model": 256, "d_kv": 32, "d_ff": 1024, "num_layers": 4,
                                                   "num_decoder_layers": 4, "num_heads": 8}},
    # ~10M-parameter Llama-style decoder-only reader with parallel passage encoding.
    "causal_lm": {"kind": "causal_lm", "model_config": {"model_type": "llama", "hidden_size": 256,
                                                         "intermediate_size": 1024, "num_hidden_layers": 4,
                                                         "num_attention_heads": 8, "num_key_value_heads": 4}},
}
WORDS = "the of river town born church record album band film village station founded king county player".split()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def batch_records(B: int, n: int, words: int, seed: int):
    from gr_train.data import Passage, Record

    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [Record(f"q{b}", text(12), [text(2)], [Passage(text(3), text(words), is_gold=i < 2) for i in range(n)])
            for b in range(B)]


def worker(args) -> dict:
    import torch

    from gr_train import batching, gumbel
    from gr_train.config import load_config
    from gr_train.models import build_reader
    from gr_train.reranker import build_reranker, build_word_tokenizer
    from gr_train.runtime import checkpoint_answer_pass

    torch.manual_seed(0)
    args.n = args.n[0]  # the worker runs one n
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = READERS[args.reader]
    cfg = load_config(None, [f"reader.kind={spec['kind']}", f"reader.passage_max_tokens={args.L}",
                             "reader.answer_max_tokens=8", f"gumbel.k={args.k}", f"data.n_candidates={args.n}",
                             "reranker.max_tokens=64"])
    cfg.reader.model_config = dict(spec["model_config"])
    cfg.reranker.model_config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                 "intermediate_size": 128, "max_position_embeddings": 128}
    reader = build_reader(cfg.reader)
    records = batch_records(args.batch, args.n, args.words, seed=1)
    tok = build_word_tokenizer([r.question for r in records] + [c.text for r in records for c in r.ctxs])
    reranker = build_reranker(cfg.reranker, tok)
    reranker.train()
    opt = torch.optim.AdamW([p for p in reranker.parameters() if p.requires_grad], lr=1e-4)
    if args.path == "naive":
        reader.requires_grad_(True)  # the whole reader under autograd; its grads are computed, never applied
    batch = batching.collate(records, args.n, reranker, reader)
    noise = gumbel.sample_gumbel((args.k, args.batch, args.n), torch.Generator().manual_seed(0))
    smooth = args.estimator in gumbel.SMOOTH_LOG
    cached = reader.encode_passages(batch.reader_inputs) if args.path == "cached" else None
    if args.ckpt == "on":
        checkpoint_answer_pass(reader)
    params = {p.untyped_storage().data_ptr() for m in (reader, reranker) for p in m.parameters()}
    saved: dict[int, int] = {}

    def pack(t):  # every tensor autograd keeps for backward, counted once per storage
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = max(saved.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    def step():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return forward_backward()

    def forward_backward():
        w = reranker(batch.reranker_inputs)
        M = gumbel.training_mask(args.estimator, w, args.k, 0.5, 1.0, True, batch.valid, noise)
        log_M = gumbel.log_mask(M, 1e-9, batch.valid, smooth)
        if args.path == "naive":
            loss = reader.answer_loss_naive(batch.reader_inputs, log_M).mean()
        else:
            states = cached if cached is not None else reader.encode_passages(batch.reader_inputs)
            loss = reader.answer_loss(states, batch.reader_inputs, log_M).mean()
        saved_mb.append(sum(saved.values()) / 2**20)
        saved.clear()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        reader.zero_grad(set_to_none=True)
        return loss.item()

    saved_mb: list[float] = []
    base = rss_mb()
    loss = step()  # warm-up (allocator, first-call overheads), counted in peak memory
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"reader": args.reader, "n": args.n, "path": args.path, "estimator": args.estimator,
            "checkpointing": args.ckpt, "saved_mb": saved_mb[-1],
            "step_s": sorted(times)[len(times) // 2],
            "peak_mb_over_base": peak - base, "loss": loss,
            "reader_params_m": sum(p.numel() for p in reader.parameters()) / 1e6,
            "passage_tokens": int(batch.reader_inputs.get("passage_mask", batch.valid).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readers", nargs="+", default=list(READERS))
    p.add_argument("--n", nargs="+", type=int, default=[10, 40])
    p.add_argument("--paths", nargs="+", default=["naive", "no_grad", "cached"])
    p.add_argument("--estimators", nargs="+", default=["max_softmax"], help="gumbel.estimator values")
    p.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"],
                   help="reader answer-pass activation checkpointing (runtime.reader_checkpointing)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--L", type=int, default=128, help="passage tokens")
    p.add_argument("--words", type=int, default=100, help="words per generated passage")
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reader", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--estimator", default="max_softmax", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", default="off", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for reader in args.readers:
        for n in args.n:
            for path in args.paths:
                for estimator in args.estimators:
                    for ckpt in args.checkpointing:
                        if ckpt == "on" and path == "naive":
                            continue  # checkpointing applies to the answer pass of the split paths
                        cmd = [sys.executable, __file__, "--worker", "--reader", reader, "--path", path, "--n", str(n),
                               "--batch", str(args.batch), "--L", str(args.L), "--words", str(args.words),
                               "--k", str(args.k), "--repeat", str(args.repeat), "--threads", str(args.threads),
                               "--estimator", estimator, "--ckpt", ckpt]
                        out = subprocess.run(cmd, capture_output=True, text=True)
                        if out.returncode != 0:
                            sys.exit(f"worker failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
                        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                        print(json.dumps(rows[-1]), file=sys.stderr)
    if "on" in args.checkpointing:
        checkpointing_table(rows)
    rows = [r for r in rows if r["checkpointing"] == "off"]
    ref = {(r["reader"], r["n"], r["path"]): r for r in rows if r["estimator"] == "max_softmax"}
    print("| reader | params | n | passage tokens | path | estimator | step (s) | peak memory over base (MB) | "
          "time / max_softmax | memory / max_softmax | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = ref.get((r["reader"], r["n"], r["path"]))
        ratios = (f"{r['step_s'] / base['step_s']:.2f} | {r['peak_mb_over_base'] / max(base['peak_mb_over_base'], 1):.2f}"
                  if base else "– | –")
        print(f"| {r['reader']} | {r['reader_params_m']:.1f}M | {r['n']} | {r['passage_tokens']} | {r['path']} | "
              f"{r['estimator']} | {r['step_s']:.3f} | {r['peak_mb_over_base']:.0f} | {ratios} | {r['loss']:.4f} |")


def checkpointing_table(rows: list[dict]) -> None:
    """Checkpointing on vs off for each (reader, n, path, estimator) measured both ways, as ratios to off."""
    off = {(r["reader"], r["n"], r["path"], r["estimator"]): r for r in rows if r["checkpointing"] == "off"}
    print("| reader | params | n | passage tokens | path | checkpointing | step (s) | peak memory over base (MB) | "
          "saved activations (MB) | time / off | memory / off | saved activations / off | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = off.get((r["reader"], r["n"], r["path"], r["estimator"]))
        if base is None:
            continue
        ratios = (f"{r['step_s'] / base['step_s']:.2f} | "
                  f"{r['peak_mb_over_base'] / max(base['peak_mb_over_base'], 1):.2f} | "
                  f"{r['saved_mb'] / max(base['saved_mb'], 1e-9):.3f}")
        print(f"| {r['reader']} | {r['reader_params_m']:.1f}M | {r['n']} | {r['passage_tokens']} | {r['path']} | "
              f"{r['checkpointing']} | {r['step_s']:.3f} | {r['peak_mb_over_base']:.0f} | {r['saved_mb']:.1f} | "
              f"{ratios} | {r['loss']:.4f} |")
    print()


if __name__ == "__main__":
    main()
