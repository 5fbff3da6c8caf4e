"""Preprocessing throughput on the demo's questions: Ray Data with 1 and 2 workers against a single-process loop
over the same file, in one run (BENCHMARKS.md, "Preprocessing the demo's questions").

    python bench/bench_preprocess.py [--questions 20000] [--repeats 3] [--out runs/bench_preprocess]

Every path does the same work per question: parse and validate the JSON line, keep its own candidates
(preprocess.candidates=input), tokenize for the demo reranker and the demo reader with tokenizers only
(ray_jobs.preprocess.Tokenizer: models.build_inputs, no model), build the Arrow rows and write Parquet. rows/s = questions
written / wall seconds of the job: for Ray, `ray_jobs.preprocess.run` on an already started local Ray (its workers'
start-up, imports and tokenizer builds included; Ray's own start is reported apart); for the loop, from reading the
file to the last Parquet file (its one tokenizer build included, the interpreter's imports not). The three paths
run --repeats times, interleaved; result.json has every run, the medians and the ratios within each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=20000, help="generated demo questions (default 20000)")
    p.add_argument("--out", default="runs/bench_preprocess")
    p.add_argument("--batch-size", type=int, default=256, help="questions per tokenizer call (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the three paths, interleaved (default 3)")
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

    result = {"questions": args.questions, "batch_size": args.batch_size, "cpus": len(os.sched_getaffinity(0)),
              "repeats": args.repeats, "load_before": os.getloadavg(), "runs": []}
    from ray_jobs import local_ray

    t0 = time.perf_counter()
    with local_ray(num_cpus=2):
        result["ray_start_s"] = round(time.perf_counter() - t0, 2)
        from ray_jobs import preprocess

        for repeat in range(args.repeats):  # the three paths interleaved, so that the machine's drift hits each
            run = {"single_process": single_process(config("loop", 1), out / "loop")}
            for workers in (1, 2):
                s = preprocess.run(config(f"ray{workers}", workers), progress=False)
                run[f"ray_{workers}_workers"] = {"written": s["written"], "wall_s": s["wall_s"],
                                                 "rows_per_s": round(s["written"] / s["wall_s"], 1),
                                                 "phase_s": s["phase_s"]}
            run["ratio_2_over_1_workers"] = round(run["ray_2_workers"]["rows_per_s"]
                                                  / run["ray_1_workers"]["rows_per_s"], 2)
            run["ratio_1_worker_over_loop"] = round(run["ray_1_workers"]["rows_per_s"]
                                                    / run["single_process"]["rows_per_s"], 2)
            result["runs"].append(run)
            print(f"repeat {repeat}: " + json.dumps(run), flush=True)
    for key in ("ratio_2_over_1_workers", "ratio_1_worker_over_loop"):
        result[f"median_{key}"] = statistics.median(r[key] for r in result["runs"])
    for path in ("single_process", "ray_1_workers", "ray_2_workers"):
        result[f"median_{path}_rows_per_s"] = statistics.median(r[path]["rows_per_s"] for r in result["runs"])
    result["load_after"] = os.getloadavg()
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
