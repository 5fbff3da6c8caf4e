"""Preprocessing throughput on the demo's questions: Ray Data with 1 and 2 workers against a single-process loop
over the same file, in one run (BENCHMARKS.md, "Preprocessing the demo's questions").

    python bench/bench_preprocess.py [--questions 20000] [--repeats 3] [--out runs/bench_preprocess]
    python bench/bench_preprocess.py --workers 1 2 4 8      # a machine with more cores (Ray gets max(workers, 2) CPUs)

Every path does the same work per question: parse and validate the JSON line, keep its own candidates
(preprocess.candidates=input), tokenize for the demo reranker and the demo reader with tokenizers only
(ray_jobs.preprocess.Tokenizer: models.build_inputs, no model), build the Arrow rows and write Parquet. rows/s =
questions written / wall seconds of the job: for Ray, `ray_jobs.preprocess.run` on an already started local Ray (its
workers' start-up, imports and tokenizer builds included; Ray's own start is reported apart); for the loop, from
reading the file to the last Parquet file (its one tokenizer build included, the interpreter's imports not). The
three paths run --repeats times, interleaved; result.json has every run, the medians and the ratios within each run.
Each run also times a worker's start alone (importing ray_jobs.preprocess and building its Tokenizer in a fresh
interpreter) and, for each Ray job, the CPU seconds every process on the machine spent on it, by kind (CpuMeter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def single_process(cfg, out: Path) -> dict:
    """The Ray job's per-question work in one plain loop: read → parse → rows → tokens → Arrow → Parquet."""
    import pyarrow.parquet as pq

    from ray_jobs import preprocess as P

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pp = cfg.preprocess
    items = P.read_question_items(pp.questions_path, pp.questions_format)
    tokenizer = P.Tokenizer(cfg)
    provenance = {"config_hash": P.config_hash(cfg), "index_version": "input"}
    written, tables = 0, []
    for i in range(0, len(items), pp.batch_size):
        parsed = [P.parse_row(item, pp.questions_format, pp.questions_path, keep_ctxs=True)
                  for item in items[i : i + pp.batch_size]]
        good = [p for p in parsed if not p["reason"]]
        rows = P.input_candidate_rows([json.loads(p["record"]) for p in good], provenance, [p["index"] for p in good])
        tables.append(P.to_table(rows, tokenizer(rows)))
        if sum(t.num_rows for t in tables) >= pp.rows_per_file or i + pp.batch_size >= len(items):
            import pyarrow as pa

            table = pa.concat_tables(tables)
            pq.write_table(table, out / f"part-{written:08d}.parquet")
            written += table.num_rows
            tables = []
    wall = time.perf_counter() - t0
    return {"written": written, "wall_s": round(wall, 2), "rows_per_s": round(written / wall, 1)}


WORKER_START = """
import json, sys, time
t0 = time.perf_counter()
from gr_train.config import load_config
from ray_jobs.preprocess import Tokenizer
t1 = time.perf_counter()
Tokenizer(load_config(sys.argv[1], sys.argv[2:]))
t2 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 2), "tokenizer_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)}))
"""


def worker_start(overrides: list[str]) -> dict:
    """What a preprocessing worker pays before its first question, in a fresh interpreter: importing
    ray_jobs.preprocess and building its Tokenizer (Ray's own process start not included)."""
    out = subprocess.run([sys.executable, "-c", WORKER_START, str(REPO / "configs" / "demo.yaml"), *overrides],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


class CpuMeter:
    """CPU seconds (user + system) spent by every process on the machine while the block runs, by kind: Ray's
    workers by their task or actor name (ray::MapWorker(...), ray::IDLE), Ray's daemons by name (raylet,
    gcs_server, ...), this process as "driver (Ray Data's executor)" (the sampling itself included). Sampled every
    0.5 s with psutil, so a worker that exits between samples loses at most its last half second."""

    def __init__(self):
        self.cpu: dict = {}  # psutil.Process → cpu s at its last sample
        self.kind: dict = {}  # psutil.Process → its kind when it last used CPU (ray::IDLE becomes ray::MapWorker)
        self.kinds: dict[str, float] = {}

    @staticmethod
    def _kind(proc) -> str:
        if proc.pid == os.getpid():
            return "driver (Ray Data's executor)"
        try:
            words = proc.cmdline()
        except Exception:  # ended, or not ours to read
            words = []
        if words and words[0].startswith("ray::"):
            return words[0]
        for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env"):
            if any(daemon in w for w in words):
                return daemon
        try:
            return proc.name()
        except Exception:
            return "ended"

    def _sample(self) -> None:
        import psutil

        for proc in psutil.process_iter():  # the same Process object per (pid, start time) across calls
            try:
                t = proc.cpu_times()
            except Exception:  # the process ended or is not ours to read
                continue
            if self.cpu.get(proc) != t.user + t.system:  # new or busy: (re)name it while it is alive
                self.kind[proc] = self._kind(proc)
            self.cpu[proc] = t.user + t.system

    def __enter__(self):
        import threading

        self._sample()
        self.before = dict(self.cpu)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        kinds: dict[str, float] = {}
        for proc, last in self.cpu.items():
            kind = self.kind[proc]
            kinds[kind] = kinds.get(kind, 0.0) + last - self.before.get(proc, 0.0)
        self.kinds = {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if v >= 0.3}
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=20000, help="generated demo questions (default 20000)")
    p.add_argument("--out", default="runs/bench_preprocess")
    p.add_argument("--batch-size", type=int, default=256, help="questions per tokenizer call (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the paths, interleaved (default 3)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                   help="Ray Data worker counts to run (default 1 2; 1 is always run, the ratios' reference)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from gr_train import synthetic
    from gr_train.config import load_config
    from gr_train.data import save_records
    from gr_train.demo import SHIPPED_READER

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    questions = out / "questions.jsonl"
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"reader.name_or_path={SHIPPED_READER}"])
    save_records(synthetic.generate(cfg.synthetic, args.questions, seed=11), questions)

    def config(name: str, workers: int):
        return load_config(REPO / "configs" / "demo.yaml", [
            f"reader.name_or_path={SHIPPED_READER}", "preprocess.candidates=input",
            f"preprocess.questions_path={questions}", f"preprocess.output_dir={out / name}",
            f"preprocess.num_workers={workers}", f"preprocess.batch_size={args.batch_size}"])

    counts = sorted({1, *args.workers})
    result = {"questions": args.questions, "batch_size": args.batch_size, "cpus": len(os.sched_getaffinity(0)),
              "workers": counts, "repeats": args.repeats, "load_before": os.getloadavg(), "runs": []}
    from ray_jobs import local_ray

    t0 = time.perf_counter()
    with local_ray(num_cpus=max(2, *counts)):
        result["ray_start_s"] = round(time.perf_counter() - t0, 2)
        from ray_jobs import preprocess

        for repeat in range(args.repeats):  # the three paths interleaved, so that the machine's drift hits each
            run = {"worker_start": worker_start([f"reader.name_or_path={SHIPPED_READER}"]),
                   "single_process": single_process(config("loop", 1), out / "loop")}
            for workers in counts:
                with CpuMeter() as cpu:
                    s = preprocess.run(config(f"ray{workers}", workers), progress=False)
                run[f"ray_{workers}_workers"] = {"written": s["written"], "wall_s": s["wall_s"],
                                                 "rows_per_s": round(s["written"] / s["wall_s"], 1),
                                                 "phase_s": s["phase_s"], "cpu_s": cpu.kinds}
            for workers in counts[1:]:  # speed-up over one worker (the target: >= 0.7 x workers)
                run[f"ratio_{workers}_over_1_workers"] = round(run[f"ray_{workers}_workers"]["rows_per_s"]
                                                               / run["ray_1_workers"]["rows_per_s"], 2)
            run["ratio_1_worker_over_loop"] = round(run["ray_1_workers"]["rows_per_s"]
                                                    / run["single_process"]["rows_per_s"], 2)
            result["runs"].append(run)
            print(f"repeat {repeat}: " + json.dumps(run), flush=True)
    for key in (*(f"ratio_{w}_over_1_workers" for w in counts[1:]), "ratio_1_worker_over_loop"):
        result[f"median_{key}"] = statistics.median(r[key] for r in result["runs"])
    result["median_worker_start_s"] = statistics.median(r["worker_start"]["total_s"] for r in result["runs"])
    for path in ("single_process", *(f"ray_{w}_workers" for w in counts)):
        result[f"median_{path}_rows_per_s"] = statistics.median(r[path]["rows_per_s"] for r in result["runs"])
    result["load_after"] = os.getloadavg()
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
