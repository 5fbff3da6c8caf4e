"""The step cost model (gr_train/cost.py) against measured G-Rerank steps: predicted vs measured step time, with only
the device's efficiency constants fitted (least squares on relative error), and each row's error when it is left out
of the fit.

    python bench/bench_cost.py                      # CPU: 23 sizes (reader size, n, L, B; 1 and 2 ranks), ~6 min idle
    python bench/bench_cost.py --quick              # CPU: 6 tiny sizes, 3 steps each: checks that it runs
    python bench/bench_cost.py --gpu-check bench/results/gpu_check.json   # fit the H200 entry to its 8 measured steps

CPU rows: each a `torchrun --nproc_per_node R` run of the real recipe (gr_train.train, runtime.engine=deepspeed,
fp32, eager attention) on synthetic questions, a Llama-style causal_lm reader built from scratch and a BERT
cross-encoder; measured = the median `time/step` of steps 2..S (step 1 pays one-off costs). Predicted =
cost.predict on hardware "cpu", whose device is one core (every rank runs one thread).
The fitted constants: compute_efficiency, fetch_overhead_s (per ZeRO-3 collective call), comm_efficiency, and the
host's host_per_passage_s (per candidate passage) and multi_rank_step_s (per step with more than one rank). Figures
on a
busy machine are meaningless: run it on an idle one (other jobs paused) and put the fitted constants into
gr_train/hardware.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORDS = "the of river town born church record album band film village station founded king county player".split()
READERS = {  # Llama-style readers built from scratch (random weights), byte-level tokenizer
    "small": "{model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
             "num_attention_heads: 4, num_key_value_heads: 2}",
    "medium": "{model_type: llama, hidden_size: 256, intermediate_size: 1024, num_hidden_layers: 4, "
              "num_attention_heads: 8, num_key_value_heads: 4}",
    "large": "{model_type: llama, hidden_size: 512, intermediate_size: 1536, num_hidden_layers: 4, "
             "num_attention_heads: 8, num_key_value_heads: 4}",
}
RERANKER = ("{model_type: bert, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 128, "
            "max_position_embeddings: 128}")
# (reader, n, L, B, ranks): each fitted constant has rows of its own: the small reader's steps (the per-passage host
# time and the per-call cost: B and n varied at a fixed size), the medium and large readers' (compute), 2 ranks at
# every reader size (communication, and the fixed cost of a multi-rank step)
ROWS = [("small", 4, 32, 2, 1), ("small", 8, 32, 2, 1), ("small", 4, 64, 2, 1), ("small", 4, 32, 4, 1),
        ("medium", 4, 64, 2, 1), ("medium", 8, 128, 4, 1), ("small", 4, 32, 2, 2), ("medium", 8, 128, 4, 2),
        ("small", 4, 32, 1, 1), ("small", 4, 32, 8, 1), ("small", 16, 32, 2, 1), ("medium", 4, 64, 1, 1),
        ("medium", 4, 64, 4, 1), ("large", 8, 128, 2, 1), ("small", 4, 32, 4, 2), ("small", 8, 64, 2, 2),
        ("medium", 4, 64, 2, 2), ("medium", 8, 128, 2, 2), ("large", 8, 128, 2, 2), ("large", 4, 64, 2, 1),
        ("large", 8, 128, 4, 1), ("large", 4, 64, 2, 2), ("large", 8, 128, 4, 2)]
QUICK = [("small", 2, 16, 1, 1), ("small", 4, 16, 1, 1), ("small", 2, 32, 1, 1), ("small", 2, 16, 2, 1),
         ("medium", 2, 16, 1, 1), ("small", 2, 16, 1, 2)]


def overrides(folder: Path, reader: str, n: int, L: int, B: int, steps: int) -> list[str]:
    return ["run.progress=false", f"run.run_dir={folder / 'run'}", f"data.train_path={folder / 'train.jsonl'}",
            f"data.n_candidates={n}", f"reranker.tokenizer_path={folder / 'tokenizer'}", "reranker.kind=cross_encoder",
            "reranker.max_tokens=64", f"reranker.model_config={RERANKER}", "reader.kind=causal_lm",
            "reader.random_init=true", f"reader.passage_max_tokens={L}", "reader.answer_max_tokens=8",
            "reader.attn_implementation=eager", f"reader.model_config={READERS[reader]}",
            "gumbel.estimator=max_softmax", "gumbel.k=2", f"train.max_steps={steps}", f"train.micro_batch_size={B}",
            "train.log_every_steps=1000", "runtime.engine=deepspeed", "run.num_threads=1"]


def write_data(folder: Path, n: int) -> None:
    """Questions of equal length with passages and answers longer than every budget (fixed token counts)."""
    from gr_train.data import Passage, Record, save_records
    from gr_train.reranker import build_word_tokenizer

    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    save_records([Record(f"q{i}", text(6), [text(6)], [Passage(text(2), text(80)) for _ in range(n)])
                  for i in range(64)], folder / "train.jsonl")
    build_word_tokenizer(WORDS).save_pretrained(folder / "tokenizer")


def worker(args) -> None:
    """One rank of one row: the recipe's setup + train; rank 0 prints the median step time and the step's shape."""
    from gr_train import cost, plan, train
    from gr_train.batching import collate
    from gr_train.config import load_config

    cfg = load_config(None, args.overrides)
    times: list[float] = []
    recipe = train.setup(cfg, resume=False)
    train.train(recipe, on_step=lambda step, scalars: times.append(scalars["time/step"]))
    if recipe.runtime.is_main:
        batch = collate(recipe.train_records[: cfg.train.micro_batch_size], cfg.data.n_candidates, recipe.reranker,
                        recipe.reader)
        shape = cost.shape_of(batch, cfg)
        m = plan.models_of(cfg)
        result = {"step_s": statistics.median(times[1:] or times), "shape": dataclasses.asdict(shape),
                  "reader": dataclasses.asdict(m.reader), "reranker": dataclasses.asdict(m.reranker),
                  "world": recipe.runtime.world_size}
        print("RESULT " + json.dumps(result), flush=True)
    recipe.runtime.close()


def measure(rows, steps: int, port: int) -> list[dict]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (reader, n, L, B, ranks) in enumerate(rows):
            folder = Path(tmp) / f"row{i}"
            folder.mkdir()
            write_data(folder, n)
            cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(ranks), "--master_port",
                   str(port + i), __file__, "--worker", *overrides(folder, reader, n, L, B, steps)]
            run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
            lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
            if run.returncode != 0 or not lines:
                sys.exit(f"row {i} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-4000:]}")
            res = json.loads(lines[-1][len("RESULT "):])
            res["label"] = f"{reader} reader, n={n}, L={L}, B={B}, {ranks} rank{'s' if ranks > 1 else ''}"
            out.append(res)
            print(json.dumps(res), file=sys.stderr)
    return out


def terms(row: dict, hw, precision: str = "fp32") -> list[float]:
    """The step's predicted seconds split by fitted constant: [compute at efficiency 1, collective calls,
    communication at efficiency 1, candidate passages (B * n * accum), 1 if more than one rank, optimizer] (cost.predict
    with the
    constants set to 1 and 0): predicted = x . terms[:5] + optimizer for x = [1 / compute_efficiency,
    fetch_overhead_s, 1 / comm_efficiency, host_per_passage_s, multi_rank_step_s]."""
    from gr_train import cost
    from gr_train.architectures import Arch

    m = cost.Models(Arch(**row["reader"]), Arch(**row["reranker"]), row.get("reranker_kind", "cross_encoder"))
    s = cost.StepShape(**row["shape"])
    world, accum = row["world"], row.get("accum", 1)
    unit = dataclasses.replace(hw, compute_efficiency=1.0, comm_efficiency=1.0, fetch_overhead_s=0.0,
                               host_per_passage_s=0.0, multi_rank_step_s=0.0)
    pred = cost.predict(m, s, unit, world, 1, precision, accum=accum, reranker_states=0)
    calls = sum(c.calls for c in pred.collectives)  # comm_seconds charges fetch_overhead_s on every call
    return [sum(pred.compute_s.values()), calls, sum(pred.comm_s.values()), s.B * s.n * accum, float(world > 1),
            pred.optimizer_s]


def fit(rows: list[dict], hw, precision: str, compute_efficiency: float | None = None, host: bool = True
        ) -> tuple[list[float], list[float]]:
    """Constants x = [1 / compute_efficiency, fetch_overhead_s, 1 / comm_efficiency, host_per_passage_s,
    multi_rank_step_s] minimising the squared relative error of predicted = x . terms + optimizer, with x >= 0 and
    compute_efficiency <= 1 (the best subset of free constants: a small bounded least squares). `compute_efficiency`
    given: that one held fixed; host=False: the two host constants held at 0. Returns (x, predicted seconds per
    row)."""
    import numpy as np

    T = np.array([terms(r, hw, precision) for r in rows])
    y = np.array([r["step_s"] for r in rows])
    A, b = T[:, :5] / y[:, None], 1.0 - T[:, 5] / y
    low = np.array([1.0 / compute_efficiency if compute_efficiency else 1.0, 0.0, 0.0, 0.0, 0.0])  # x >= low
    b = b - A @ low  # solve for z = x - low >= 0
    free = [i for i in range(5) if not (i == 0 and compute_efficiency) and (host or i < 3)]
    best, best_err = np.zeros(5), float((b ** 2).sum())
    for k in range(1, len(free) + 1):
        for subset in itertools.combinations(free, k):
            z = np.zeros(5)
            z[list(subset)] = np.linalg.lstsq(A[:, subset], b, rcond=None)[0]
            err = float(((A @ z - b) ** 2).sum())
            if (z >= 0).all() and err < best_err:
                best, best_err = z, err
    x = best + low
    return x.tolist(), (T[:, :5] @ x + T[:, 5]).tolist()


def report(rows: list[dict], hw, precision: str, compute_efficiency: float | None = None, host: bool = True) -> None:
    x, predicted = fit(rows, hw, precision, compute_efficiency, host)
    loo = []
    for i in range(len(rows)):
        xi, _ = fit(rows[:i] + rows[i + 1:], hw, precision, compute_efficiency, host)
        t = terms(rows[i], hw, precision)
        loo.append(sum(a * b for a, b in zip(xi, t[:5])) + t[5])
    held = " (held)" if compute_efficiency else ""
    comm = f"{1 / x[2]:.4g}" if x[2] else "inf (the fit needs no communication term)"
    host_line = (f", host_per_passage_s={x[3]:.3g}, multi_rank_step_s={x[4]:.3g}" if host
                 else " (host terms held at 0)")
    print(f"fitted on {len(rows)} rows ({hw.name}): compute_efficiency={1 / x[0]:.4g}{held}, "
          f"fetch_overhead_s={x[1]:.3g}, comm_efficiency={comm}{host_line}\n")
    print("| row | measured step (s) | predicted (s) | error | left out of the fit: predicted (s) | error |")
    print("|---|---|---|---|---|---|")
    for r, p, q in zip(rows, predicted, loo):
        m = r["step_s"]
        print(f"| {r['label']} | {m:.4f} | {p:.4f} | {(p - m) / m:+.1%} | {q:.4f} | {(q - m) / m:+.1%} |")
    errors = [abs(p - r["step_s"]) / r["step_s"] for r, p in zip(rows, predicted)]
    held_out = [abs(q - r["step_s"]) / r["step_s"] for r, q in zip(rows, loo)]
    print(f"\nmedian |error| {statistics.median(errors):.1%}, max {max(errors):.1%}; left out of the fit: median "
          f"{statistics.median(held_out):.1%}, max {max(held_out):.1%}")


def gpu_check_rows(path: Path) -> list[dict]:
    """The measured H200 steps of bench/gpu_check.py (one rank, ZeRO-3 bf16, straight-through: one answer pass with its
    backward), with the shapes its cases ran at: the same records, tokenizers and budgets, rebuilt at tiny width."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from gpu_check import FULL, records

    from gr_train import cost
    from gr_train.architectures import arch_from_config
    from gr_train.batching import collate
    from gr_train.config import load_config
    from gr_train.models import build_reader
    from gr_train.plan import _reader_config
    from gr_train.reranker import _family, _scratch_config, build_reranker

    data = json.loads(path.read_text())
    rows = []
    for case in data["cases"]:
        spec = FULL[case["reader"]]
        base = [f"reader.kind={spec['kind']}", f"reader.passage_max_tokens={case['L']}", "reader.answer_max_tokens=8",
                "gumbel.k=2", "gumbel.estimator=straight_through", f"data.n_candidates={case['n']}",
                "reranker.max_tokens=64", "reranker.model_config={hidden_size: 64, num_hidden_layers: 2, "
                "num_attention_heads: 2, intermediate_size: 128}",
                f"runtime.reader_checkpointing={str(case['reader_checkpointing'] == 'on').lower()}"]
        cfg = load_config(None, [*base, f"reader.model_config={json.dumps(spec['model_config'])}"])
        reader_arch = arch_from_config(_reader_config(cfg))
        tiny_cfg = load_config(None, base)
        torch.manual_seed(0)
        reader = build_reader(tiny_cfg.reader)  # the byte-level tokenizer gpu_check's readers saved
        reranker = build_reranker(tiny_cfg.reranker, reader.tokenizer)
        reranker_arch = arch_from_config(_scratch_config(cfg.reranker, _family(cfg.reranker), reader.tokenizer)
                                         .to_dict())
        batch = collate(records(case["B"], case["n"]), case["n"], reranker, reader)
        shape = dataclasses.replace(cost.shape_of(batch, cfg), fused_attention=case["attn"] != "eager")
        rows.append({"step_s": case["step_s"], "shape": dataclasses.asdict(shape),
                     "reader": dataclasses.asdict(reader_arch), "reranker": dataclasses.asdict(reranker_arch),
                     "world": 1,
                     "label": f"{case['reader']} {case['attn']}, checkpointing {case['reader_checkpointing']}"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 steps each (checks that it runs)")
    p.add_argument("--steps", type=int, default=6, help="training steps per row (the first is not timed)")
    p.add_argument("--port", type=int, default=29850)
    p.add_argument("--gpu-check", type=Path, help="fit the H200 entry to this bench/gpu_check.py result instead")
    p.add_argument("--compute-efficiency", type=float, help="hold compute_efficiency at this value (fit the others), "
                   "for rows where compute is too small a share of the step to identify it")
    p.add_argument("--rows-json", type=Path, help="write the measured rows here (to refit without rerunning)")
    p.add_argument("--from-json", type=Path, help="fit rows measured before (--rows-json) instead of measuring")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from gr_train.hardware import HARDWARE

    if args.gpu_check:
        # one rank (no multi-rank step) and one shape of host work: the host terms are not identified, held at 0
        report(gpu_check_rows(args.gpu_check), HARDWARE["h200"], "bf16", args.compute_efficiency, host=False)
        return
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
    else:
        rows = measure(QUICK if args.quick else ROWS, 3 if args.quick else args.steps, args.port)
    if args.rows_json:
        args.rows_json.write_text(json.dumps(rows, indent=1) + "\n")
    report(rows, HARDWARE["cpu"], "fp32", args.compute_efficiency)


if __name__ == "__main__":
    main()
