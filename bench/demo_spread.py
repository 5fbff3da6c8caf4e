"""How far the demo's table reproduces: `gr-train demo` run once per seed (and once with --single-process, whose
reductions run in another order, as on another machine), each run's headline figures collected, and their spread.

    python bench/demo_spread.py --seeds 0,1,2 --single-process-seed 0 --out runs/demo-spread   # 4 demos, ~25 min

Resumable: a run whose results.json exists is not run again. Writes <out>/spread.json and prints a Markdown table
(one row per run, then min, max and max - min of each column) for docs/results.md; the JSON is small enough to
commit (bench/results/demo_spread.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (column, path into results.json): the figures the README quotes
COLUMNS = [
    ("R@5 untrained", ("untrained", "ranking", "all", "recall@5")),
    ("R@5 trained", ("trained", "ranking", "all", "recall@5")),
    ("R@5 indirect trained", ("trained", "ranking", "indirect", "recall@5")),
    ("R@2 trained", ("trained", "ranking", "all", "recall@2")),
    ("EM@5 untrained", ("untrained", "reader", "em")),
    ("EM@5 trained", ("trained", "reader", "em")),
    ("EM@5 two-hop trained", ("trained_two_hop", "reader", "em")),
]


def figure(results: dict, path: tuple[str, ...]) -> float:
    for key in path:
        results = results[key]
    return float(results)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--single-process-seed", type=int, default=0, help="-1: no single-process run")
    p.add_argument("--out", default="runs/demo-spread")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = [(f"seed {s}, 2 ranks", out / f"seed-{s}", s, False) for s in map(int, args.seeds.split(","))]
    if args.single_process_seed >= 0:
        s = args.single_process_seed
        runs.append((f"seed {s}, 1 process", out / f"seed-{s}-single", s, True))
    rows = {}
    for name, run_dir, seed, single in runs:
        results = run_demo(run_dir, seed, single)
        rows[name] = {col: figure(results, path) for col, path in COLUMNS}
    spread = {col: {"min": min(r[col] for r in rows.values()), "max": max(r[col] for r in rows.values())}
              for col, _ in COLUMNS}
    for s in spread.values():
        s["range"] = s["max"] - s["min"]
    (out / "spread.json").write_text(json.dumps({"runs": rows, "spread": spread}, indent=2) + "\n")
    cols = [c for c, _ in COLUMNS]
    lines = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for name, r in rows.items()]
    lines.append("| max - min | " + " | ".join(f"{spread[c]['range']:.3f}" for c in cols) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
