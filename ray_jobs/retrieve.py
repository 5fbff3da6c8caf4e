r"""Shard actors and the fan-out: every shard of an index in its own Ray actor, query batches sent to all of them,
their top-k lists merged exactly (retrieval.merge_hits), with a bound on the batches in flight. As a job, a question
file's candidates → FiD JSONL (`run`; `gr-train retrieve --ray` runs the same on a local Ray):

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.retrieve \
        --config configs/x.yaml --questions /data/train.jsonl --out /data/train-ctxs.jsonl \
        retrieval.index_dir=/data/index

A killed actor is restarted by Ray (`retrieval.max_restarts`) and reloads its shard from disk in __init__; a
search call it was running is retried (`max_task_retries`, then resubmitted here), and every batch's result is
taken exactly once, so every query gets exactly one answer. How long a shard may take to come back is not a fixed
window: it is each shard's reload budget (`reload_budget_s`), from `retrieval.shard_reload_s` or the shard's
measured load time, whichever is longer.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gr_train.retrieval import Hits, QueryEncoder, load_index_meta, load_shard, merge_hits, shard_dir

log = logging.getLogger("ray_jobs.retrieve")


# A restart costs a new worker process before the shard load: 2.3 s measured on a loaded 2-core machine (a shard
# whose __init__ sleeps 8 s answered 10.3 s after its kill); 10 s leaves 4x that for a busy node.
ACTOR_START_S = 10.0
# A reload may run slower than the first load (other shards loading, a colder page cache): twice the measured time.
RELOAD_FACTOR = 2.0


def reload_budget_s(configured_s: float, measured_load_s: float) -> float:
    """Seconds a failed shard may take to restart and answer again: the configured reload time
    (retrieval.shard_reload_s), or RELOAD_FACTOR x the shard's measured load time + ACTOR_START_S if longer."""
    return max(configured_s, RELOAD_FACTOR * measured_load_s + ACTOR_START_S)


class ShardServer:
    """One index shard (retrieval.Shard), served by a Ray actor (ShardActor). __init__ runs again after every
    restart; `load_s` is how long its shard load took, in seconds."""

    def __init__(self, folder: str):
        t0 = time.perf_counter()
        self.shard = self._load(folder)
        self.load_s = time.perf_counter() - t0
        self.started = time.time()

    def _load(self, folder: str):
        return load_shard(folder)

    def search(self, queries: Any, k: int) -> Hits:
        return self.shard.search(queries, k)

    def info(self) -> dict:
        """pid, Ray node id, slice, start time, shard load time (s) and resident memory (MiB) of this actor
        process."""
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "start": self.shard.start,
                "end": self.shard.end, "started": self.started, "load_s": round(self.load_s, 3),
                "rss_mb": round(rss, 1)}


ShardActor = ray.remote(ShardServer)


class ShardPool:
    """S ShardActors in one placement group (one bundle per shard: `retrieval.shard_num_cpus`, `shard_memory_gb`,
    `shard_resources`, placed by `placement_strategy`), plus the query encoder shared by all shards.

    Creating the pool waits until every shard is loaded, and measures each load: `retry_budget_s[s]` is shard s's
    reload budget (reload_budget_s). actor_class: a Ray actor class serving ShardServer's methods (default
    ShardActor)."""

    def __init__(self, rcfg, index_dir: str | None = None, actor_class=None):
        self.cfg = rcfg
        self.index_dir = index_dir or rcfg.index_dir
        self.meta = load_index_meta(self.index_dir)
        n = len(self.meta["bounds"])
        bundle = {"CPU": rcfg.shard_num_cpus, **rcfg.shard_resources}
        if rcfg.shard_memory_gb > 0:
            bundle["memory"] = int(rcfg.shard_memory_gb * 2**30)
        self.pg = placement_group([dict(bundle) for _ in range(n)], strategy=rcfg.placement_strategy)
        ray.get(self.pg.ready(), timeout=600)
        options = dict(num_cpus=rcfg.shard_num_cpus, resources=dict(rcfg.shard_resources),
                       max_restarts=rcfg.max_restarts, max_task_retries=rcfg.max_task_retries)
        if rcfg.shard_memory_gb > 0:
            options["memory"] = bundle["memory"]
        cls = actor_class or ShardActor
        self.actors = [
            cls.options(**options, scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, s)).remote(
                str(shard_dir(self.index_dir, s)))
            for s in range(n)
        ]
        self._encoder: QueryEncoder | None = None
        self.load_s = [i["load_s"] for i in self.info()]
        self.retry_budget_s = [reload_budget_s(rcfg.shard_reload_s, t) for t in self.load_s]

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:  # dense: loads the encoder model; only where queries are encoded
            self._encoder = QueryEncoder(self.meta)
        return self._encoder

    def info(self) -> list[dict]:
        return ray.get([a.info.remote() for a in self.actors])

    def search(self, questions: list[str], k: int) -> Hits:
        """One batch, synchronously: encode, fan out, merge."""
        return next(self.stream([(None, questions)], k))[1]

    def stream(self, batches: Iterable[tuple[Any, list[str]]], k: int) -> Iterator[tuple[Any, Hits]]:
        """(key, questions) batches → (key, merged Hits), in input order, with at most `max_in_flight` batches
        submitted and unfinished: the next batch is encoded and sent only when the oldest one is merged."""
        in_flight: collections.deque = collections.deque()
        for key, questions in batches:
            if len(in_flight) >= self.cfg.max_in_flight:
                yield self._finish(*in_flight.popleft(), k)
            queries = ray.put(self.encoder.encode(questions))  # stored once, read by every shard
            in_flight.append((key, queries, [a.search.remote(queries, k) for a in self.actors]))
        while in_flight:
            yield self._finish(*in_flight.popleft(), k)

    def search_batches(self, batches: Iterable[list[str]], k: int) -> Iterator[Hits]:
        """One merged Hits per batch of questions, in order, through `stream` (retrieval.ShardedIndex.search_batches'
        signature)."""
        for _, hits in self.stream(((None, questions) for questions in batches), k):
            yield hits

    def _finish(self, key, queries, refs: list, k: int) -> tuple[Any, Hits]:
        return key, search_all(self.actors, queries, k, self.retry_budget_s, refs)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)


def search_all(actors: list, queries, k: int, budgets_s: Sequence[float], refs: list | None = None) -> Hits:
    """Every shard's top-k for one batch of encoded queries (an ObjectRef), merged. `refs`: calls already sent.

    A call whose actor died or is restarting (after Ray's own `max_task_retries`) is re-sent, with back-off, until
    the shard answers or `budgets_s[s]` seconds (ShardPool.retry_budget_s) have passed since its first failure;
    then TimeoutError names the shard and the budget. The restarted actor answers from the same shard files, so the
    answer is the one the dead actor owed, and each shard's answer is taken exactly once.
    """
    refs = refs or [a.search.remote(queries, k) for a in actors]
    parts = []
    for s, ref in enumerate(refs):
        deadline, pause = None, 0.5
        while True:
            try:
                parts.append(ray.get(ref))
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + budgets_s[s]
                if now >= deadline:
                    raise TimeoutError(
                        f"shard {s}: no answer within its reload budget of {budgets_s[s]:.1f} s after it failed "
                        f"({type(e).__name__}); a shard that takes longer to reload needs a larger "
                        f"retrieval.shard_reload_s") from e
                log.warning("shard %d failed (%s); resending its search (%.0f s of its %.0f s budget left)", s,
                            type(e).__name__, deadline - now, budgets_s[s])
                time.sleep(min(pause, deadline - now))  # back-off: 0.5, 1, 2, 4, 5, 5, ... s
                pause = min(2 * pause, 5.0)
                ref = actors[s].search.remote(queries, k)
    return merge_hits(parts, k)


def run(cfg, questions: str, out: str, fmt: str = "auto") -> dict:
    """`gr-train retrieve` on the connected Ray cluster: candidates.retrieve with the index's shards in a ShardPool
    (retrieval.index_dir: a path every node reads); the pool is shut down at the end, error included. Returns
    candidates.retrieve's summary."""
    from gr_train.candidates import retrieve

    pool = ShardPool(cfg.retrieval)
    try:
        return retrieve(cfg, questions, out, pool.search_batches, fmt)
    finally:
        pool.shutdown()


def main(argv: list[str] | None = None) -> dict:
    """`python -m ray_jobs.retrieve`: the checks before Ray starts (checks.check_retrieve), then `run` on the cluster
    (inside `ray job submit`) or a local Ray; prints candidates.format_summary and returns the summary."""
    from gr_train import checks
    from gr_train.candidates import format_summary
    from ray_jobs import start_job

    def flags(parser):
        parser.add_argument("--questions", required=True, help="question file: FiD JSON/JSONL, HotpotQA / 2Wiki / "
                            "MuSiQue JSON(L) or Parquet")
        parser.add_argument("--out", required=True, help="output FiD JSONL (rejects: OUT.rejects.jsonl beside it)")
        parser.add_argument("--format", default="auto", help="question file format (default auto: detected)",
                            choices=("auto", "fid", "hotpotqa", "2wiki", "musique", "parquet"))

    args, cfg = start_job("retrieve", __doc__, argv, flags,
                          check=lambda args, cfg: checks.check_retrieve(cfg, args.questions, args.out))
    summary = run(cfg, args.questions, args.out, args.format)
    print(format_summary(summary, cfg.data.max_no_answer_fraction))
    return summary


if __name__ == "__main__":
    import sys

    from ray_jobs import run_job

    sys.exit(run_job("python -m ray_jobs.retrieve", main))
