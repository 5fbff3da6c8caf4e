r"""Build a sharded retrieval index on a Ray cluster: one Ray actor (BM25) or task (dense) per shard.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.build_index --config configs/x.yaml retrieval.corpus_path=/data/psgs_w100.parquet

Reads `cfg.retrieval`. BM25 runs in two rounds: every shard tokenizes its slice and reports its statistics, the
driver sums them, and every shard builds its impact matrix with the corpus-wide sums (so the merged results equal
one index's). Dense: every shard embeds its slice and writes a faiss index. index.json is written last.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import ray

from gr_train.config import RunConfig
from gr_train.retrieval import (
    BM25Builder,
    CorpusStats,
    build_dense_shard,
    corpus_size,
    index_meta,
    index_summary,
    read_corpus_slice,
    shard_dir,
    write_index_meta,
)
from ray_jobs import run_job, start_job

log = logging.getLogger("ray_jobs.build_index")


@ray.remote
class BM25BuildActor:
    """Holds one slice's tokens between the statistics round and the build round (no second tokenization)."""

    def __init__(self, corpus_path: str, start: int, end: int, stopwords: str):
        self.builder = BM25Builder(read_corpus_slice(corpus_path, start, end), start, stopwords)

    def stats(self) -> CorpusStats:
        return self.builder.stats()

    def build(self, stats: CorpusStats, k1: float, b: float, folder: str) -> int:
        self.builder.build(stats, k1, b).save(folder)
        return len(self.builder.tokens)


@ray.remote
def build_dense(rcfg, start: int, end: int, folder: str) -> int:
    build_dense_shard(rcfg, start, end).save(folder)
    return end - start


def run(cfg: RunConfig) -> dict:
    """Every shard of cfg.retrieval built on the connected Ray cluster, then index.json; returns
    retrieval.index_summary. Raises ValueError without retrieval.corpus_path."""
    r = cfg.retrieval
    if not r.corpus_path:
        raise ValueError("retrieval.corpus_path is required")
    t0 = time.perf_counter()
    meta = index_meta(r, corpus_size(r.corpus_path))
    opts = {"num_cpus": r.shard_num_cpus, "resources": dict(r.shard_resources)}
    if r.shard_memory_gb > 0:
        opts["memory"] = int(r.shard_memory_gb * 2**30)
    folders = [str(shard_dir(r.index_dir, s)) for s in range(r.n_shards)]
    if r.kind == "bm25":
        actors = [BM25BuildActor.options(**opts).remote(r.corpus_path, a, b, r.bm25_stopwords)
                  for a, b in meta["bounds"]]
        stats = ray.put(CorpusStats.merge(ray.get([a.stats.remote() for a in actors])))
        done = ray.get([a.build.remote(stats, r.bm25_k1, r.bm25_b, f) for a, f in zip(actors, folders)])
        for a in actors:
            ray.kill(a)
    else:
        done = ray.get([build_dense.options(**opts).remote(r, a, b, f) for (a, b), f in zip(meta["bounds"], folders)])
    assert done == [b - a for a, b in meta["bounds"]], (done, meta["bounds"])
    write_index_meta(r.index_dir, meta)
    return index_summary(meta, r.index_dir, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    _, cfg = start_job("build_index", __doc__, argv)
    summary = run(cfg)
    print("build_index summary: " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(run_job("python -m ray_jobs.build_index", main))
