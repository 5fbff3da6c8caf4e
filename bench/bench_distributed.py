"""DeepSpeed ZeRO-3 G-Rerank training side by side: reader parameter memory per rank at 1 vs 2 ranks, and step
time with and without activation checkpointing (reranker layers + the reader's answer-pass layers).

    python bench/bench_distributed.py                     # FiD-T5 reader (~12M parameters), 4 runs, ~4 min on 2 cores
    python bench/bench_distributed.py --steps 10 --n 20

Each configuration is one `torchrun --nproc_per_node R` run of the real recipe (gr_train.train, runtime.engine=
deepspeed) on the same synthetic records; rank 0 writes a JSON line. Reported: the reader's parameter elements
each rank holds outside a forward (its ZeRO-3 slice, fp32 bytes), peak RSS per rank, the median step time over
steps 2..S (step 1 pays one-off costs) and its split. Results print as a Markdown table (paste into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ~12M-parameter FiD-T5 (random weights), built under zero.Init through transformers (HfDeepSpeedConfig).
READER = ["reader.kind=fid_t5", "reader.passage_max_tokens=64", "reader.answer_max_tokens=8",
          "reader.model_config={d_model: 256, d_kv: 32, d_ff: 1024, num_layers: 4, num_decoder_layers: 4, "
          "num_heads: 8}"]
RERANKER = ["reranker.max_tokens=64", "reranker.model_config={model_type: bert, hidden_size: 128, "
            "num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 512, max_position_embeddings: 128}"]
WORDS = "the of river town born church record album band film village station founded king county player".split()
RUNS = [  # (label, ranks, activation checkpointing)
    ("1 rank", 1, False),
    ("2 ranks", 2, False),
    ("1 rank, checkpointing", 1, True),
    ("2 ranks, checkpointing", 2, True),
]


def write_data(folder: Path, n: int, questions: int) -> list[str]:
    """Synthetic FiD records + a word-level reranker tokenizer; returns the data overrides."""
    from gr_train.data import Passage, Record, save_records
    from gr_train.reranker import build_word_tokenizer

    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    records = [Record(f"q{i}", text(12), [text(2)], [Passage(text(3), text(40), is_gold=j < 2) for j in range(n)])
               for i in range(questions)]
    save_records(records, folder / "train.jsonl")
    build_word_tokenizer(WORDS).save_pretrained(folder / "tokenizer")
    return [f"data.train_path={folder / 'train.jsonl'}", f"data.n_candidates={n}",
            f"reranker.tokenizer_path={folder / 'tokenizer'}"]


def worker(args) -> None:
    """One rank of one configuration: the recipe's setup + train, then rank 0 prints the measurements."""
    from gr_train import train
    from gr_train.config import load_config
    from gr_train.tensorboard_log import peak_rss_mb

    cfg = load_config(None, args.overrides)
    times: list[dict] = []
    recipe = train.setup(cfg, resume=False)
    train.train(recipe, on_step=lambda step, scalars: times.append(scalars))
    rt = recipe.runtime
    held, total = rt.param_elements(recipe.reader)
    per_rank = rt.all_gather_object({"held": held, "peak_rss_mb": peak_rss_mb()})
    if rt.is_main:
        steady = times[1:] or times
        med = lambda key: statistics.median(s[key] for s in steady)  # noqa: E731
        print("RESULT " + json.dumps({
            "world": rt.world_size, "reader_elements": total, "per_rank": per_rank, "loss": times[-1]["train/loss"],
            **{key: med(key) for key in ("time/step", "time/passage_encoding", "time/reranker", "time/answer_pass",
                                         "time/backward", "time/optimizer")}}), flush=True)
    rt.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--n", type=int, default=10, help="candidates per question")
    p.add_argument("--micro-batch", type=int, default=4, help="questions per rank and step")
    p.add_argument("--port", type=int, default=29790)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp, args.n, 64)
        for i, (label, world, ckpt) in enumerate(RUNS):
            # The global batch is the same in every run: 1 rank takes two micro-batches per step.
            overrides = [*READER, *RERANKER, *data, "runtime.engine=deepspeed", "run.progress=false",
                         f"run.run_dir={tmp / f'run{i}'}", f"train.max_steps={args.steps}",
                         f"train.micro_batch_size={args.micro_batch}", f"train.grad_accum_steps={2 // world}",
                         "train.log_every_steps=1000", f"runtime.reader_checkpointing={str(ckpt).lower()}",
                         f"reranker.gradient_checkpointing={str(ckpt).lower()}"]
            cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(world), "--master_port",
                   str(args.port + i), __file__, "--worker", *overrides]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"run '{label}' failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}")
            rows.append({"label": label, "ckpt": ckpt, "wall_s": time.perf_counter() - t0,
                         **json.loads(lines[-1][len("RESULT "):])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"FiD-T5 reader {rows[0]['reader_elements'] / 1e6:.1f}M parameters; {args.n} candidates; global batch "
          f"{2 * args.micro_batch} questions; median of steps 2..{args.steps}\n")
    print("| run | reader params held per rank (elements / fp32 MB) | peak RSS per rank (MB) | step (s) | "
          "passage enc. | reranker | answer pass | backward | optimizer | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        held = " / ".join(f"{x['held'] / 1e6:.2f}M ({x['held'] * 4 / 2**20:.0f})" for x in r["per_rank"])
        rss = " / ".join(f"{x['peak_rss_mb']:.0f}" for x in r["per_rank"])
        print(f"| {r['label']} | {held} | {rss} | {r['time/step']:.2f} | {r['time/passage_encoding']:.2f} | "
              f"{r['time/reranker']:.2f} | {r['time/answer_pass']:.2f} | {r['time/backward']:.2f} | "
              f"{r['time/optimizer']:.3f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
