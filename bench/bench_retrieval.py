"""Sharded retrieval and Ray Data preprocessing throughput, 1 versus 2 Ray actors, side by side in one run.

    python bench/bench_retrieval.py                                # 200k passages, ~4 min on 2 CPU cores
    python bench/bench_retrieval.py --passages 20000 --queries 500 --questions 300   # a quick look

On one generated corpus (Zipf-distributed words, 40-80 per passage, written as Parquet) it builds BM25 indexes of
1 and 2 shards with ray_jobs.build_index, then measures (a) retrieval queries/s through ShardPool with 1 and 2
shard actors (same queries, top-20, batches of 64, at most 4 batches in flight) and (b) ray_jobs.preprocess rows/s
with 1 and 2 Ray Data workers (parse → candidates → has_answer → reranker and reader tokens → Parquet), plus
dense-encoder passages/s on a sample. Prints a Markdown table and writes bench/results/retrieval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gr_train import retrieval as R  # noqa: E402
from gr_train.config import load_config  # noqa: E402
from gr_train.data import passage_string  # noqa: E402

TINY = ["reader.name_or_path=null", "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 64}"]


def make_corpus(path: Path, n: int, vocab: int, seed: int) -> list[str]:
    """n passages of Zipf(1.1)-distributed words over `vocab` pseudo-words; returns the word list."""
    rng = np.random.default_rng(seed)
    words = [f"w{i:05d}" for i in range(vocab)]
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    p /= p.sum()
    lengths = rng.integers(40, 81, size=n)
    flat = rng.choice(vocab, size=int(lengths.sum()), p=p)
    texts, pos = [], 0
    for length in lengths:
        texts.append(" ".join(words[i] for i in flat[pos : pos + length]))
        pos += length
    titles = [words[i].upper() for i in rng.choice(vocab, size=n, p=p)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "title": titles, "text": texts}), path,
                   row_group_size=16384)
    return words


def make_questions(path: Path, n: int, words: list[str], seed: int) -> list[str]:
    """FiD JSONL questions of 3-6 mid-frequency words (rank 50-5000, like content words), answer = one of them."""
    rng = random.Random(seed)
    lines, texts = [], []
    for i in range(n):
        q = rng.sample(words[50:5000], rng.randint(3, 6))
        texts.append(" ".join(q))
        lines.append(json.dumps({"id": f"q{i}", "question": " ".join(q), "answers": [q[-1]]}))
    path.write_text("\n".join(lines) + "\n")
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=2000, help="retrieval benchmark queries")
    parser.add_argument("--questions", type=int, default=1000, help="preprocessing benchmark questions")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "retrieval.json"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray

    from ray_jobs import build_index, preprocess
    from ray_jobs.retrieve import ShardPool

    work = Path(tempfile.mkdtemp(prefix="grbench"))
    results: dict = {"passages": args.passages, "vocab": args.vocab, "cpus": os.cpu_count(),
                     "load_avg_start": os.getloadavg()[0]}
    t = time.perf_counter()
    words = make_corpus(work / "corpus.parquet", args.passages, args.vocab, seed=0)
    queries = make_questions(work / "retrieval_q.jsonl", args.queries, words, seed=1)
    make_questions(work / "questions.jsonl", args.questions, words, seed=2)
    results["corpus_s"] = round(time.perf_counter() - t, 1)
    print(f"corpus: {args.passages} passages in {results['corpus_s']} s ({work})", flush=True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}})
    ray.data.DataContext.get_current().enable_progress_bars = False

    def cfg(shards: int, workers: int = 1):
        return load_config(REPO / "configs" / "demo.yaml", [
            *TINY, f"retrieval.corpus_path={work / 'corpus.parquet'}", f"retrieval.index_dir={work / f'index{shards}'}",
            f"retrieval.n_shards={shards}", "retrieval.shard_num_cpus=0.5", f"retrieval.top_k={args.top_k}",
            "retrieval.max_in_flight=4",
            f"preprocess.questions_path={work / 'questions.jsonl'}", f"preprocess.output_dir={work / f'out{workers}'}",
            f"preprocess.num_workers={workers}", "preprocess.worker_num_cpus=0.5", "preprocess.batch_size=64",
            f"data.n_candidates={args.top_k}"])

    for shards in (1, 2):
        summary = build_index.run(cfg(shards))
        sizes = sum(f.stat().st_size for f in (work / f"index{shards}").rglob("*") if f.is_file())
        results[f"build_{shards}_shards_s"] = summary["wall_s"]
        results[f"index_{shards}_shards_mb"] = round(sizes / 2**20, 1)
        print(f"build, {shards} shard actor(s): {summary['wall_s']} s, {sizes / 2**20:.0f} MiB on disk", flush=True)

    batches = [(i, queries[i : i + 64]) for i in range(0, len(queries), 64)]
    answers = {}
    for shards in (1, 2):
        pool = ShardPool(cfg(shards).retrieval)
        list(pool.stream(batches[:2], args.top_k))  # warm-up: actors loaded, first calls done
        t = time.perf_counter()
        answers[shards] = [h.ids for _, h in pool.stream(batches, args.top_k)]
        wall = time.perf_counter() - t
        info = pool.info()
        pool.shutdown()
        results[f"retrieval_{shards}_actors_qps"] = round(len(queries) / wall, 1)
        results[f"retrieval_{shards}_actors_rss_mb"] = [i["rss_mb"] for i in info]
        print(f"retrieval, {shards} shard actor(s): {len(queries) / wall:.1f} queries/s, actor RSS "
              f"{[i['rss_mb'] for i in info]} MiB", flush=True)
    results["retrieval_same_answers"] = all(np.array_equal(a, b) for a, b in zip(answers[1], answers[2]))

    for workers in (1, 2):
        summary = preprocess.run(cfg(2, workers))
        results[f"preprocess_{workers}_workers_rows_per_s"] = round(summary["written"] / summary["wall_s"], 1)
        results[f"preprocess_{workers}_workers_s"] = summary["wall_s"]
        print(f"preprocess, {workers} Ray worker(s): {summary['written']} rows in {summary['wall_s']} s = "
              f"{summary['written'] / summary['wall_s']:.1f} rows/s", flush=True)
    ray.shutdown()

    # Dense: encoder throughput on a sample (the 200k-passage dense build is ~10 min of MiniLM on 2 cores).
    sample = R.read_corpus_slice(work / "corpus.parquet", 0, 1024)
    encoder = R.TextEncoder(None, max_tokens=128, batch_size=64)
    t = time.perf_counter()
    encoder.encode([passage_string(a, b) for a, b in zip(sample["title"].to_pylist(), sample["text"].to_pylist())])
    results["dense_encode_passages_per_s"] = round(1024 / (time.perf_counter() - t), 1)
    results["load_avg_end"] = os.getloadavg()[0]

    print("\n| measure | 1 | 2 |\n|---|---|---|")
    print(f"| BM25 build wall, s (shard actors) | {results['build_1_shards_s']} | {results['build_2_shards_s']} |")
    print(f"| retrieval queries/s (shard actors) | {results['retrieval_1_actors_qps']} | "
          f"{results['retrieval_2_actors_qps']} |")
    print(f"| preprocess rows/s (Ray Data workers) | {results['preprocess_1_workers_rows_per_s']} | "
          f"{results['preprocess_2_workers_rows_per_s']} |")
    print(f"\ndense encode (MiniLM, 1 process): {results['dense_encode_passages_per_s']} passages/s; "
          f"same answers 1 vs 2 shards: {results['retrieval_same_answers']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
