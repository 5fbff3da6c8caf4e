"""The demo's G-Rerank step time with 1 and 2 torch threads and the automatic policy (run.num_threads=0), alone and
beside one busy single-threaded process, in one run (BENCHMARKS.md, "Thread policy").

    python bench/bench_threads.py [--steps 40] [--out runs/bench_threads]

Each row is a fresh `gr-train train` process on the demo config (configs/demo.yaml, the shipped demo reader, the
demo's generated data; dev evaluation off) for --steps steps; step time = median of `time/step` over the steps
after the first 5. "busy" rows run beside `python -c 'while True: pass'` (started --warm-s seconds before, so the
1-minute load average sees it, as it would a browser tab that has been spinning). No OMP_NUM_THREADS is passed to
the rows: the automatic rows choose from the machine. Ratios are to 1 thread alone, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step_time(out: Path, name: str, num_threads: int, steps: int, data: Path) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "gr_train.cli", "train", "--config", str(REPO / "configs" / "demo.yaml"),
           f"run.run_dir={run_dir}", f"data.train_path={data / 'train.jsonl'}", f"data.dev_path={data / 'dev.jsonl'}",
           f"reader.name_or_path={REPO / 'gr_train' / 'assets' / 'demo_reader'}", f"run.num_threads={num_threads}",
           f"train.max_steps={steps}", "train.eval_every_steps=0", "train.log_every_steps=1", "run.progress=false",
           "--no-resume"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, check=True, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run_dir / "tb" / "scalars.jsonl").read_text().splitlines()]
    times = [r["time/step"] for r in rows if "time/step" in r and r["step"] > 5]
    found = re.search(r"torch threads per process: (\d+)", proc.stderr)  # threads.apply's log line
    threads = int(found.group(1)) if found else None
    return {"step_s": round(statistics.median(times), 4), "wall_s": round(wall, 1), "load_1min": round(load, 2),
            "threads": threads}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warm-s", type=float, default=60.0, help="seconds the busy process runs before its rows")
    p.add_argument("--out", default="runs/bench_threads")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    subprocess.run([sys.executable, "-m", "gr_train.cli", "generate", "--out-dir", str(data)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    rows = {}
    for label, n in (("1 thread", 1), ("2 threads", 2), ("auto (0)", 0)):
        rows[f"alone, {label}"] = step_time(out, f"alone-{n}", n, args.steps, data)
        print(f"alone, {label}", rows[f"alone, {label}"], flush=True)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(args.warm_s)
        for label, n in (("1 thread", 1), ("2 threads", 2), ("auto (0)", 0)):
            rows[f"busy, {label}"] = step_time(out, f"busy-{n}", n, args.steps, data)
            print(f"busy, {label}", rows[f"busy, {label}"], flush=True)
    finally:
        busy.kill()
        busy.wait()
    base = rows["alone, 1 thread"]["step_s"]
    for r in rows.values():
        r["ratio_to_1_thread_alone"] = round(r["step_s"] / base, 2)
    result = {"cpus": len(os.sched_getaffinity(0)), "steps": args.steps, "rows": rows}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
