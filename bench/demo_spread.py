"""How far the demo's table reproduces: `gr-train demo` run once per seed on 2 ranks, and per seed on 1 process
(--single-process: each rank draws its own dropout masks, so a run on another world size differs from step 1),
each run's headline figures collected, their spread, and conditional − pointwise with 95% paired bootstrap
intervals over questions and seeds (gr_train/stats.py).

    python bench/demo_spread.py --seeds 0,1,2 --single-process-seeds 0,1,2 --out runs/demo-spread \\
        --record bench/results/demo_spread.json            # 6 demos, ~50 min on 2 cores

Resumable: a run whose results.json exists is not run again. After every finished run the record (--record, small
enough to commit) is rewritten with every finished run's row and per-question values, so a change of machine loses
only the run in progress. Prints a Markdown table (one row per run, then max - min of each column) and the
intervals, for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train.stats import paired_bootstrap  # noqa: E402

K = 2  # configs/demo.yaml's gumbel.k
# (column, path into results.json): the figures the README quotes
COLUMNS = [
    (f"EM@{K} untrained", ("untrained", "reader", "em")),
    (f"EM@{K} pointwise", ("pointwise", "reader", "em")),
    (f"EM@{K} conditional", ("trained", "reader", "em")),
    (f"coverage@{K} pointwise", ("pointwise", "ranking", "all", f"coverage@{K}")),
    (f"coverage@{K} conditional", ("trained", "ranking", "all", f"coverage@{K}")),
    (f"EM@{K} binding, pointwise", ("by_kind", "pointwise", "binding", "em")),
    (f"EM@{K} binding, conditional", ("by_kind", "trained", "binding", "em")),
    (f"indirect R@{K} conditional", ("trained", "ranking", "indirect", f"recall@{K}")),
    ("wall s", ("stages_s", "total")),
]
CURVE = f"eval/recall@{K}_indirect"  # the no-collapse check: the last dev value against the best


def figure(results: dict, path: tuple[str, ...]) -> float:
    for key in path:
        results = results[key]
    return float(results)


def best_minus_last(scalars: Path) -> float:
    """max over the dev evaluations of CURVE minus its last value (0: ended at its best)."""
    values = [json.loads(line)[CURVE] for line in scalars.read_text().splitlines() if CURVE in line]
    return max(values) - values[-1]


def run_demo(run_dir: Path, seed: int, single_process: bool) -> dict:
    results = run_dir / "results.json"
    if not results.is_file():
        cmd = [sys.executable, "-m", "gr_train.cli", "demo", f"run.run_dir={run_dir}", f"run.seed={seed}",
               "run.progress=false"] + (["--single-process"] if single_process else [])
        t0 = time.time()
        with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
            subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"{run_dir.name}: {time.time() - t0:.0f} s", flush=True)
    return json.loads(results.read_text())


def row(results: dict, run_dir: Path) -> dict:
    out = {col: figure(results, path) for col, path in COLUMNS}
    out[f"best - last dev indirect R@{K}, conditional"] = best_minus_last(run_dir / "tb" / "scalars.jsonl")
    out[f"best - last dev indirect R@{K}, pointwise"] = best_minus_last(run_dir / "pointwise" / "tb" / "scalars.jsonl")
    return out


def intervals(per_run: dict[str, dict], kinds: dict[str, list[str]]) -> dict:
    """conditional − pointwise over the finished runs of one world size, paired by (seed, question): EM and
    coverage@K over all dev questions and over the binding ones."""
    out = {}
    names = list(per_run)
    for metric in ("em", f"coverage@{K}"):
        for subset in ("all", "binding"):
            a, b = [], []
            for name in names:
                keep = [subset == "all" or kind == "binding" for kind in kinds[name]]
                for rows, label in ((a, "trained"), (b, "pointwise")):
                    rows.append([v for v, ok in zip(per_run[name][label][metric], keep) if ok])
            n = min(len(r) for r in a)  # seeds draw different questions: the same count per seed
            A = torch.tensor([r[:n] for r in a], dtype=torch.float64)
            B = torch.tensor([r[:n] for r in b], dtype=torch.float64)
            out[f"{metric}, {subset}"] = {**paired_bootstrap(A, B), "seeds": len(names)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="seeds run on 2 ranks")
    p.add_argument("--single-process-seeds", default="0", help="seeds run on 1 process; '' for none")
    p.add_argument("--out", default="runs/demo-spread")
    p.add_argument("--record", default=None, help="small JSON rewritten after every finished run (to commit)")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = [(f"seed {s}, 2 ranks", out / f"seed-{s}", s, False) for s in map(int, args.seeds.split(","))]
    runs += [(f"seed {s}, 1 process", out / f"seed-{s}-single", s, True)
             for s in map(int, filter(None, args.single_process_seeds.split(",")))]
    rows, per_question, kinds = {}, {}, {}
    for name, run_dir, seed, single in runs:
        results = run_demo(run_dir, seed, single)
        rows[name] = row(results, run_dir)
        per_question[name], kinds[name] = results["per_question"], results["question_kinds"]
        cols = list(rows[name])
        spread = {c: {"min": min(r[c] for r in rows.values()), "max": max(r[c] for r in rows.values())} for c in cols}
        for s in spread.values():
            s["range"] = s["max"] - s["min"]
        paired = {world: intervals({n: per_question[n] for n in rows if world in n}, kinds)
                  for world in ("2 ranks", "1 process") if any(world in n for n in rows)}
        record = {"runs": rows, "spread": spread, "conditional_minus_pointwise": paired}
        (out / "spread.json").write_text(json.dumps(record, indent=2) + "\n")
        if args.record:
            Path(args.record).write_text(json.dumps(record, indent=2) + "\n")
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for name, r in rows.items()]
    lines.append("| max - min | " + " | ".join(f"{spread[c]['range']:.3f}" for c in cols) + " |")
    print("\n".join(lines))
    for world, diffs in paired.items():
        print(f"\nconditional − pointwise, {world}: " + "; ".join(
            f"{m} {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] ({v['seeds']} seeds)" for m, v in diffs.items()))


if __name__ == "__main__":
    main()
