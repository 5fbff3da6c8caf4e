"""Shard actors and the fan-out: every shard of an index in its own Ray actor, query batches sent to all of them,
their top-k lists merged exactly (retrieval.merge_hits), with a bound on the batches in flight.

A killed actor is restarted by Ray (`retrieval.max_restarts`) and reloads its shard from disk in __init__; a
search call it was running is retried (`max_task_retries`, then resubmitted here), and every batch's result is
taken exactly once, so every query gets exactly one answer.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gr_train.retrieval import Hits, QueryEncoder, load_index_meta, load_shard, merge_hits, shard_dir

log = logging.getLogger("ray_jobs.retrieve")


@ray.remote
class ShardActor:
    """One index shard (retrieval.Shard) behind a Ray actor. __init__ runs again after every restart."""

    def __init__(self, folder: str):
        self.shard = load_shard(folder)
        self.started = time.time()

    def search(self, queries: Any, k: int) -> Hits:
        return self.shard.search(queries, k)

    def info(self) -> dict:
        """pid, slice, start time and resident memory (MiB) of this actor process."""
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
        return {"pid": os.getpid(), "start": self.shard.start, "end": self.shard.end, "started": self.started,
                "rss_mb": round(rss, 1)}


class ShardPool:
    """S ShardActors in one placement group (one bundle per shard: `retrieval.shard_num_cpus`, `shard_memory_gb`,
    `shard_resources`, placed by `placement_strategy`), plus the query encoder shared by all shards."""

    def __init__(self, rcfg, index_dir: str | None = None):
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
        self.actors = [
            ShardActor.options(**options, scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, s)).remote(
                str(shard_dir(self.index_dir, s)))
            for s in range(n)
        ]
        self._encoder: QueryEncoder | None = None

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

    def _finish(self, key, queries, refs: list, k: int) -> tuple[Any, Hits]:
        return key, search_all(self.actors, queries, k, self.cfg.max_task_retries, refs)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)


def search_all(actors: list, queries, k: int, retries: int, refs: list | None = None) -> Hits:
    """Every shard's top-k for one batch of encoded queries (an ObjectRef), merged. `refs`: calls already sent.

    A call whose actor died is re-sent (after Ray's own `max_task_retries`) up to `retries` more times; the
    restarted actor answers from the same shard files, so the answer is the one the dead actor owed, and each
    shard's answer is taken exactly once.
    """
    refs = refs or [a.search.remote(queries, k) for a in actors]
    parts = []
    for s, ref in enumerate(refs):
        for attempt in range(retries + 1):
            try:
                parts.append(ray.get(ref))
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if attempt == retries:
                    raise
                log.warning("shard %d failed (%s); resending its search", s, type(e).__name__)
                time.sleep(0.5 * (attempt + 1))  # give Ray time to restart the actor
                ref = actors[s].search.remote(queries, k)
    return merge_hits(parts, k)
