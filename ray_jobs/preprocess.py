r"""Preprocessing with Ray Data: questions → top-k candidates from the shard actors → has_answer → token ids →
Parquet shards with a schema version and provenance; bad records go to rejects.jsonl with the reason.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m ray_jobs.preprocess --config configs/x.yaml preprocess.questions_path=/data/nq-train.jsonl

Reads `cfg.preprocess` and `cfg.retrieval` (with preprocess.candidates=retrieve the index must exist:
ray_jobs.build_index; with preprocess.candidates=input each question keeps the candidates it came with, as the
demo's data). Workers tokenize with the models' tokenizers only (models.build_inputs): no worker builds a model,
reads weights or imports modeling code. Writes to preprocess.output_dir: part-<first input position>.parquet (about
4 per worker, each at most preprocess.rows_per_file questions, written by its worker atomically;
data.PARQUET_SCHEMA_VERSION; `gr-train train data.train_path=DIR` reads it), rejects.jsonl, config.yaml,
manifest.json (counts, the questions without an answer-bearing or gold candidate among the first
data.n_candidates, config hash, index version). Every input record is either written or rejected: the job
fails if the counts do not add up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from gr_train.candidates import label_candidates, parse_row, question_rejects, read_question_items, row_quality
from gr_train.checks import format_quality
from gr_train.config import ConfigError, RunConfig, save_config, to_dict
from gr_train.data import PARQUET_SCHEMA_VERSION
from gr_train.retrieval import QueryEncoder, load_index_meta
from ray_jobs import run_job, start_job
from ray_jobs.retrieve import ShardPool, search_all

log = logging.getLogger("ray_jobs.preprocess")

CTX_TYPE = pa.struct([("pid", pa.int64()), ("docid", pa.string()), ("title", pa.string()), ("text", pa.string()),
                      ("score", pa.float32()), ("is_gold", pa.bool_()), ("has_answer", pa.bool_())])
BASE_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("answers", pa.list_(pa.string())),
                         ("target", pa.string()), ("ctxs", pa.list_(CTX_TYPE)), ("schema_version", pa.int32()),
                         ("config_hash", pa.string()), ("index_version", pa.string()), ("input_index", pa.int64())])
# The workers' report, one row per file: its rows and their candidate_quality counts (checks.candidate_quality)
QUALITY = ("questions", "yes_no", "no_answer", "labelled", "no_gold")
SHARDS_SCHEMA = pa.schema([("file", pa.string()), ("rows", pa.int64()), ("node", pa.string()),
                           *((k, pa.int64()) for k in QUALITY)])
PARSED_SCHEMA = pa.schema([("index", pa.int64()), ("where", pa.string()), ("id", pa.string()),
                           ("record", pa.string()), ("reason", pa.string()), ("kind", pa.string())])


# ---------------------------------------------------------------------------------------------------------------
# Plain steps (no Ray): attaching candidates, tokenizing (reading and parsing: gr_train/candidates.py)
# ---------------------------------------------------------------------------------------------------------------


def attach_candidates(records: list[dict], hits, provenance: dict, indices: list[int]) -> list[dict]:
    """Output rows (BASE_SCHEMA) from parsed question fields and their merged Hits (row q = records[q]); indices:
    each record's position in the input file (input_index)."""
    rows = []
    for q, (rec, index) in enumerate(zip(records, indices, strict=True)):
        ctxs = label_candidates(hits.rows(q), rec["answers"], rec["gold"])
        rows.append({"id": rec["id"], "question": rec["question"], "answers": rec["answers"], "target": rec["target"],
                     "ctxs": ctxs, "schema_version": PARQUET_SCHEMA_VERSION, **provenance, "input_index": index})
    return rows


def input_candidate_rows(records: list[dict], provenance: dict, indices: list[int]) -> list[dict]:
    """Output rows (BASE_SCHEMA) from parsed question fields that carry their own candidates (parse_row with
    keep_ctxs): candidate i keeps its title, text and labels, pid = i, no docid or score; indices: each record's
    position in the input file (input_index)."""
    return [{"id": rec["id"], "question": rec["question"], "answers": rec["answers"], "target": rec["target"],
             "ctxs": [{"pid": i, "docid": None, "title": c["title"], "text": c["text"], "score": None,
                       "is_gold": c["is_gold"], "has_answer": c["has_answer"]} for i, c in enumerate(rec["ctxs"])],
             "schema_version": PARQUET_SCHEMA_VERSION, **provenance, "input_index": index}
            for rec, index in zip(records, indices, strict=True)]


def _unpadded(values: np.ndarray, mask: np.ndarray) -> list:
    """A padded [..., L] int array as nested lists, each innermost list cut to its mask's True positions."""
    if values.ndim == 1:
        return values[mask].tolist()
    return [_unpadded(v, m) for v, m in zip(values, mask)]


def _mask_key(key: str, inputs: dict) -> str | None:
    """input_ids / token_type_ids → attention_mask, passage_ids → passage_mask (q_/p_ prefixes kept)."""
    for suffix, mask in (("input_ids", "attention_mask"), ("token_type_ids", "attention_mask"), ("_ids", "_mask")):
        if key.endswith(suffix):
            candidate = key[: -len(suffix)] + mask
            return candidate if candidate in inputs else None
    return None


def token_columns(prefix: str, inputs: dict) -> dict[str, list]:
    """Model inputs (dict of [B, ...] tensors) → {prefix_key: per-question nested lists without padding}.
    Masks are not stored (a list's length is its mask); labels lose their -100 padding."""
    cols = {}
    for key, value in inputs.items():
        if key.endswith("mask") or not hasattr(value, "dim"):
            continue
        mask_key = _mask_key(key, inputs)
        mask = inputs[mask_key] if mask_key else (value != -100 if key == "labels" else None)
        cols[f"{prefix}_{key}"] = (_unpadded(value.numpy(), mask.numpy().astype(bool)) if mask is not None
                                   else value.tolist())
    return cols


class Tokenizer:
    """The configured reranker's and reader's token ids for output rows, from their tokenizers alone.

    models.build_inputs gives the input builders of the very models training builds (same tokenizers, templates,
    length budgets and checks), so the ids are exactly those training computes; but no model is built, no weights
    are read and no modeling code is imported, so a worker starts in the time of its tokenizers.
    """

    def __init__(self, cfg: RunConfig):
        from gr_train.models import build_inputs

        self.cfg = cfg
        self.reader, self.reranker = build_inputs(cfg)

    def __call__(self, rows: list[dict]) -> dict[str, list]:
        questions = [r["question"] for r in rows]
        n = max(len(r["ctxs"]) for r in rows)
        passages = [[(c["title"], c["text"]) for c in r["ctxs"]] + [("", "")] * (n - len(r["ctxs"])) for r in rows]
        targets = [r["target"] if r["target"] is not None else r["answers"][0] for r in rows]
        cols = token_columns("reader", self.reader.tokenize(questions, passages, targets))
        if self.reranker is not None:
            cols.update(token_columns("reranker", self.reranker.tokenize(questions, passages)))
        return cols


def list_depth(values: list) -> int:
    """Nesting depth of a token column, the row level counted ([[1, 2], [3]] → 2). At each level the first non-empty
    list is read, so an empty first row or passage does not hide a level; a level of empty lists only (no ids under
    it anywhere) counts as the int lists it stands for."""
    depth, level = 0, values
    while isinstance(level, list):
        depth += 1
        inner = next((v for v in level if not isinstance(v, list) or v), None)
        if inner is None:
            return depth + (1 if level else 0)  # only empty lists (int lists without ids), or no rows at all
        level = inner
    return depth


def to_table(rows: list[dict], tokens: dict[str, list] | None) -> pa.Table:
    """The output rows (BASE_SCHEMA) with one int32 list column per token column, nested as deep as its values."""
    table = pa.Table.from_pylist(rows, schema=BASE_SCHEMA)
    for name, values in (tokens or {}).items():
        typ = pa.int32()
        for _ in range(list_depth(values) - 1):  # the depth counts the row level too
            typ = pa.list_(typ)
        table = table.append_column(name, pa.array(values, type=typ))
    return table


def config_hash(cfg: RunConfig) -> str:
    """16 hex digits of the resolved config's sections that decide the output (retrieval, preprocess, reranker,
    reader, data), so that two outputs with one hash were made the same way."""
    d = to_dict(cfg)
    keep = {k: d[k] for k in ("retrieval", "preprocess", "reranker", "reader", "data")}
    keep["preprocess"] = {k: v for k, v in keep["preprocess"].items() if k not in ("num_workers", "batch_size")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Ray Data stages (thin wrappers)
# ---------------------------------------------------------------------------------------------------------------


def _parse_batch(batch: pa.Table, fmt: str, path: str, keep_ctxs: bool = False) -> pa.Table:
    return pa.Table.from_pylist([parse_row(item, fmt, path, keep_ctxs) for item in batch.to_pylist()],
                                schema=PARSED_SCHEMA)


def shard_name(first_index: int) -> str:
    """The output file of the rows whose first input position is first_index: names sort in input order."""
    return f"part-{first_index:09d}.parquet"


# Bytes (in memory) of one Parquet row group: Arrow reads a nested column of a row group into one array, which holds
# at most 2 GiB of text (ArrowNotImplementedError "Nested data conversions not implemented for chunked array
# outputs" past it: 22 questions x 100 candidates of 1 MB in one group)
ROW_GROUP_BYTES = 256 * 2**20


def write_shard(table: pa.Table, out_dir: str) -> dict:
    """One output file, named by the table's first input_index, written atomically (a hidden temporary name, then
    renamed): a file `*.parquet` in out_dir is always complete, and a retried batch rewrites the same file. Row
    groups hold about ROW_GROUP_BYTES each (at least one row), so long passages never make a group unreadable.
    Returns {file, rows}."""
    name = shard_name(table["input_index"][0].as_py())
    tmp = Path(out_dir) / f".{name}.tmp"
    per_row = table.nbytes / max(table.num_rows, 1)
    pq.write_table(table, tmp, row_group_size=max(1, int(ROW_GROUP_BYTES // max(per_row, 1))))
    os.replace(tmp, Path(out_dir) / name)
    return {"file": name, "rows": table.num_rows}


class ShardStage:
    """A Ray Data actor that turns one block of parsed questions into one Parquet file: output rows in input order,
    in chunks of preprocess.batch_size questions (`rows`, per subclass) → token ids → write_shard. Writing inside
    the actor (rather than a `write_parquet` operator after the map) leaves Ray Data no separate write tasks, which
    its resource budget holds back while the actors own every CPU. Returns one {file, rows, node} row per file
    (SHARDS_SCHEMA; none for a block whose questions were all rejected)."""

    def __init__(self, cfg: RunConfig, provenance: dict, out_dir: str):
        self.cfg, self.provenance, self.out_dir = cfg, provenance, out_dir
        self.tokenizer = Tokenizer(cfg) if cfg.preprocess.tokenize else None

    def rows(self, records: list[dict], indices: list[int]) -> list[dict]:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:  # every question of the block was rejected: no file
            return SHARDS_SCHEMA.empty_table()
        batch = batch.sort_by("index")
        records = [json.loads(r) for r in batch["record"].to_pylist()]
        indices = batch["index"].to_pylist()
        chunk = self.cfg.preprocess.batch_size
        tables, quality = [], Counter()
        for i in range(0, len(records), chunk):
            rows = self.rows(records[i : i + chunk], indices[i : i + chunk])
            quality.update(row_quality(rows, self.cfg.data.n_candidates))
            tables.append(to_table(rows, self.tokenizer(rows) if self.tokenizer else None))
        report = {**write_shard(pa.concat_tables(tables), self.out_dir),
                  "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
                  **{k: quality[k] for k in QUALITY}}
        return pa.Table.from_pylist([report], schema=SHARDS_SCHEMA)


class CandidatesStage(ShardStage):
    """preprocess.candidates=retrieve: encodes each chunk's questions once, fans them out to every shard actor,
    merges, marks has_answer / is_gold. One actor per worker holds the query encoder and the tokenizers."""

    def __init__(self, actors: list, budgets_s: list[float], meta: dict, cfg: RunConfig, provenance: dict,
                 out_dir: str):
        super().__init__(cfg, provenance, out_dir)
        self.actors, self.budgets_s = actors, budgets_s
        self.encoder = QueryEncoder(meta)

    def rows(self, records: list[dict], indices: list[int]) -> list[dict]:
        queries = ray.put(self.encoder.encode([r["question"] for r in records]))
        hits = search_all(self.actors, queries, self.cfg.retrieval.top_k, self.budgets_s)
        return attach_candidates(records, hits, self.provenance, indices)


class InputCandidatesStage(ShardStage):
    """preprocess.candidates=input: each question keeps its own candidates. One actor per worker holds the
    tokenizers (Tokenizer: no model weights)."""

    def rows(self, records: list[dict], indices: list[int]) -> list[dict]:
        return input_candidate_rows(records, self.provenance, indices)


def rows_per_shard(questions: int, pp) -> int:
    """Questions per output file: at most preprocess.rows_per_file, and few enough that each worker gets about 4
    files, so that the last files do not leave a worker idle."""
    return max(1, min(pp.rows_per_file, math.ceil(questions / (4 * pp.num_workers))))


def run(cfg: RunConfig, progress: bool = True) -> dict:
    """The whole job on the connected Ray cluster; returns the summary (also written as manifest.json).
    `progress`: Ray Data's progress bars. Every row carries its question's position in the input file
    (input_index): under load the shards' row order has differed from the input's despite Ray Data's
    preserve_order (blocks of one batch swapped), and data.load_parquet restores the input order from it."""
    t0 = time.perf_counter()
    pp, rcfg = cfg.preprocess, cfg.retrieval
    check_questions(cfg)
    from_input = pp.candidates == "input"
    out = Path(pp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.parquet"), *out.glob(".part-*.tmp"), out / "manifest.json", out / "rejects.jsonl"]:
        old.unlink(missing_ok=True)  # a re-run replaces its output instead of appending to it
    meta = None if from_input else load_index_meta(rcfg.index_dir)
    provenance = {"config_hash": config_hash(cfg), "index_version": "input" if from_input else meta["index_version"]}
    context = ray.data.DataContext.get_current()
    # Rows in input order where Ray Data keeps it; input_index makes the order exact for readers (load_parquet).
    context.execution_options.preserve_order = True
    context.enable_progress_bars = progress

    items = read_question_items(pp.questions_path, pp.questions_format)
    phase_s = {"read": time.perf_counter() - t0}
    # One block per output file, kept from the parse to the write: a stage gives each task whole blocks, so a
    # batch bundled from several blocks would leave fewer blocks than workers (a small job on one worker).
    blocks = max(1, math.ceil(len(items) / rows_per_shard(len(items), pp)))
    parsed = (ray.data.from_items(items, override_num_blocks=blocks)
              .map_batches(_parse_batch, fn_kwargs={"fmt": pp.questions_format, "path": pp.questions_path,
                                                    "keep_ctxs": from_input},
                           batch_format="pyarrow", batch_size=None, num_cpus=pp.worker_num_cpus)
              .materialize())
    phase_s["parse"] = time.perf_counter() - t0 - sum(phase_s.values())

    # Rejects and duplicate ids need the whole set: the (index, where, id, reason) columns are small.
    summary_rows = sorted(parsed.select_columns(["index", "where", "id", "reason", "kind"]).take_all(),
                          key=lambda r: r["index"])
    rejects, duplicates = question_rejects(summary_rows, pp.questions_path)
    with open(out / "rejects.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    phase_s["rejects"] = time.perf_counter() - t0 - sum(phase_s.values())

    good = parsed.map_batches(_keep_good, fn_kwargs={"duplicates": sorted(duplicates)}, batch_format="pyarrow",
                              num_cpus=pp.worker_num_cpus)
    # One batch per actor at a time: with the ShardPool's own fan-out this bounds the query batches in flight at
    # the shard actors to num_workers. Each block is one output file, written by the actor itself.
    actors = ray.data.ActorPoolStrategy(size=pp.num_workers, max_tasks_in_flight_per_actor=1)
    stage_args = {"cfg": cfg, "provenance": provenance, "out_dir": str(out)}
    pool = None
    try:
        if from_input:
            stage = InputCandidatesStage
        else:
            pool = ShardPool(rcfg)
            stage = CandidatesStage
            stage_args.update(actors=pool.actors, budgets_s=pool.retry_budget_s, meta=meta)
        shards = good.map_batches(stage, fn_constructor_kwargs=stage_args, batch_format="pyarrow",
                                  batch_size=None, num_cpus=pp.worker_num_cpus, compute=actors).take_all()
    finally:
        if pool is not None:
            pool.shutdown()
    missing = [s["file"] for s in shards if not (out / s["file"]).is_file()]
    if missing:
        raise RuntimeError(f"preprocess: workers reported files that are not in {out}: {missing[:5]}")

    phase_s["candidates_tokenize_write"] = time.perf_counter() - t0 - sum(phase_s.values())
    files = sorted(out.glob("*.parquet"))
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    reasons = Counter(r["kind"] for r in rejects)
    # among the first data.n_candidates, as `gr-train train` reads them (checks.check_answer_candidates)
    quality = {"n_candidates": cfg.data.n_candidates, **{k: sum(s[k] for s in shards) for k in QUALITY}}
    summary = {"schema_version": PARQUET_SCHEMA_VERSION, **provenance, "candidates": pp.candidates,
               "index_dir": None if from_input else rcfg.index_dir,
               "questions_path": pp.questions_path, "input": len(items), "written": written,
               "rejected": len(rejects), "rejects_by_reason": dict(reasons.most_common(20)),
               "candidate_quality": quality, "top_k": None if from_input else rcfg.top_k,
               "files": [f.name for f in files],
               # the Ray node each file was written on: {node id: files}
               "files_by_node": dict(Counter(s["node"] for s in shards)),
               "num_workers": pp.num_workers, "wall_s": round(time.perf_counter() - t0, 2),
               "phase_s": {k: round(v, 2) for k, v in phase_s.items()}}
    save_config(cfg, out / "config.yaml")
    (out / "manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    if written + len(rejects) != len(items):
        raise RuntimeError(f"preprocess: {len(items)} input records but {written} written + {len(rejects)} rejected")
    return summary


def _keep_good(batch: pa.Table, duplicates: list[int]) -> pa.Table:
    import pyarrow.compute as pc

    keep = pc.and_(pc.equal(batch["reason"], ""), pc.invert(pc.is_in(batch["index"], pa.array(duplicates, pa.int64()))))
    return batch.filter(keep)


def check_questions(cfg: RunConfig) -> None:
    """ConfigError when preprocess.questions_path is not set or is not a file (before Ray starts)."""
    path = cfg.preprocess.questions_path
    if not path:
        raise ConfigError("preprocess.questions_path: not set; add preprocess.questions_path=FILE (FiD JSON/JSONL, "
                          "HotpotQA / 2Wiki / MuSiQue, or Parquet)")
    if not Path(path).is_file():
        raise ConfigError(f"preprocess.questions_path={path}: no such file (relative paths start at the working "
                          f"directory {Path.cwd()})")


def main(argv: list[str] | None = None) -> dict:
    _, cfg = start_job("preprocess", __doc__, argv, check=lambda args, cfg: check_questions(cfg))
    summary = run(cfg)
    print("preprocess summary: " + json.dumps(summary))
    q = summary["candidate_quality"]
    print(f"candidates: {format_quality(q, q['n_candidates'])} (data.n_candidates={q['n_candidates']})")
    return summary


if __name__ == "__main__":
    sys.exit(run_job("python -m ray_jobs.preprocess", main))
