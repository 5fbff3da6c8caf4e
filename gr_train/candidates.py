"""Question files → retrieved candidates: read the raw records one by one, parse each or reject it with the reason
(duplicate ids included), label each retrieved candidate (has_answer; is_gold when the input had gold passages).

`retrieve` writes a question file's candidates as FiD JSONL (`gr-train retrieve`, with the index in this process
or, --ray, one Ray actor per shard); ray_jobs/preprocess.py shares the parsing and labelling (Ray Data → Parquet).
No Ray, no torch.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from gr_train.checks import candidate_quality, format_quality, no_answer_warning
from gr_train.data import (
    DataError,
    Passage,
    Record,
    detect_item_format,
    gold_paragraphs,
    has_answer,
    is_gold_passage,
    parquet_batches,
    parse_item,
    passage_string,
    read_text,
    write_jsonl,
)
from gr_train.retrieval import Hits, load_index_meta


def read_question_items(path: str, fmt: str) -> list[dict]:
    """The raw records of a question file as {index, where, raw JSON text}; nothing is parsed or dropped yet.

    JSONL is split by line so that one malformed line is one reject, not a failed file; a JSON list must parse as
    a whole (DataError otherwise); Parquet rows become JSON objects.
    """
    p = Path(path)
    if fmt == "parquet" or p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = (r for batch in parquet_batches(pq.ParquetFile(p)) for r in batch.to_pylist())
        return [{"index": i, "where": f"row {i}", "raw": json.dumps(r, default=str)} for i, r in enumerate(rows)]
    text = read_text(p)  # DataError naming the line and record of a byte that is not UTF-8
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(p, f"invalid JSON: {e.msg}", where=f"line {e.lineno} col {e.colno}") from None
        return [{"index": i, "where": f"record [{i}]", "raw": json.dumps(obj)} for i, obj in enumerate(data)]
    items = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            items.append({"index": len(items), "where": f"line {lineno}", "raw": line})
    if not items:
        raise DataError(p, "empty file: no records")
    return items


def parse_row(item: dict, fmt: str, path: str, keep_ctxs: bool = False) -> dict:
    """{index, where, raw} → {index, where, id, record (JSON of the question fields, "" if rejected), reason (the
    full message, "" if accepted), kind (the reason without its location, for counting)}.

    keep_ctxs (preprocess.candidates=input): the record also carries its own candidates as `ctxs` ({title, text,
    is_gold, has_answer} each), and a question without any is rejected."""
    out = {"index": item["index"], "where": item["where"], "id": "", "record": "", "reason": "", "kind": ""}
    try:
        obj = json.loads(item["raw"])
    except json.JSONDecodeError as e:
        out["reason"], out["kind"] = f"{path} {item['where']}: invalid JSON: {e.msg}", "invalid JSON"
        return out
    if isinstance(obj, dict):
        out["id"] = str(obj.get("id", obj.get("_id", "")))
    try:
        if fmt in ("auto", "parquet"):
            fmt = detect_item_format(obj, path, item["where"], questions=True)
        record = parse_item(obj, fmt, path, item["where"])
    except DataError as e:
        out["reason"], out["kind"] = str(e), (f"field '{e.field}': " if e.field else "") + e.problem
        return out
    out["id"] = record.id
    fields = {"id": record.id, "question": record.question, "answers": record.answers, "target": record.target,
              # the gold paragraphs [[title, text], ...] label retrieved passages (by paragraph, never by title
              # alone: titles repeat); None = unlabelled input
              "gold": gold_paragraphs(record.ctxs)}
    if keep_ctxs:
        if not record.ctxs:
            out["reason"] = (f"{path} {item['where']} (id {record.id}): field 'ctxs': no candidates "
                             "(preprocess.candidates=input keeps each question's own; use retrieve to fetch them)")
            out["kind"] = "field 'ctxs': no candidates"
            return out
        fields["ctxs"] = [{"title": c.title, "text": c.text, "is_gold": c.is_gold, "has_answer": c.has_answer}
                          for c in record.ctxs]
    out["record"] = json.dumps(fields)
    return out


def question_rejects(parsed: list[dict], path: str) -> tuple[list[dict], set[int]]:
    """The rejected records of a question file and the input positions of the duplicates among the accepted ones.

    Args:
        parsed: parse_row's rows (index, where, id, reason, kind at least), sorted by index.
        path: the question file, named in a duplicate's reason.
    Returns:
        (rejects, duplicates): rejects are {where, id, reason, kind} in input order, parse_row's rejects and every
        accepted record whose id was seen before ("duplicate id, first seen at ..."); duplicates: the index of each
        such record (the first one with an id is kept).
    """
    rejects, first_seen, duplicates = [], {}, set()
    for r in parsed:
        if r["reason"]:
            rejects.append({"where": r["where"], "id": r["id"], "reason": r["reason"], "kind": r["kind"]})
        elif r["id"] in first_seen:
            duplicates.add(r["index"])
            rejects.append({"where": r["where"], "id": r["id"],
                            "reason": f"{path} {r['where']} (id {r['id']}): duplicate id, first seen at "
                                      f"{first_seen[r['id']]}", "kind": "duplicate id"})
        else:
            first_seen[r["id"]] = r["where"]
    return rejects, duplicates


def label_candidates(hits: list[dict], answers: list[str], gold: list[list[str]] | None) -> list[dict]:
    """One question's retrieved candidates with their labels.

    Args:
        hits: retrieval.Hits.rows(q): {pid, docid, title, text, score} each, best first.
        answers: the question's answer strings.
        gold: its gold paragraphs [[title, text], ...] (parse_row's `gold`), None for unlabelled input.
    Returns:
        The hits, in order, each with has_answer (data.has_answer on "title text"; None for a yes/no question) and
        is_gold (data.is_gold_passage against `gold`; None when gold is None) added.
    """
    return [{**h, "is_gold": is_gold_passage(h["title"], h["text"], gold) if gold is not None else None,
             "has_answer": has_answer(passage_string(h["title"], h["text"]), answers)} for h in hits]


def row_quality(rows: list[dict], n: int) -> dict[str, int]:
    """checks.candidate_quality of rows {id, question, answers, ctxs: [{title, text, is_gold, has_answer}]} with
    their first n candidates."""
    records = [Record(r["id"], r["question"], r["answers"], [Passage(c["title"], c["text"], c["is_gold"],
                                                                      c["has_answer"]) for c in r["ctxs"]])
               for r in rows]
    return candidate_quality(records, n)


# ---------------------------------------------------------------------------------------------------------------
# `gr-train retrieve`: a question file → FiD JSONL with the top-k candidates of an index
# ---------------------------------------------------------------------------------------------------------------

# Questions per search call: the query encoder's own batch (QueryEncoder encodes 64 texts per forward), so a call is
# one encoder forward. Both search paths get the file cut the same way, so their query embeddings are the same.
QUERY_BATCH = 64

# search_batches(batches of questions, k) → one merged Hits per batch, in order: ShardedIndex.search_batches (this
# process) or ray_jobs.retrieve.ShardPool.search_batches (one Ray actor per shard).
SearchBatches = Callable[[Iterable[list[str]], int], Iterable[Hits]]


def rejects_path(out: str | os.PathLike) -> Path:
    """Where `retrieve` writes the rejected records of its output OUT.jsonl: OUT.rejects.jsonl beside it."""
    out = Path(out)
    return out.with_name(out.stem + ".rejects.jsonl")


def fid_candidate(c: dict) -> dict:
    """A labelled candidate (label_candidates) as a FiD ctx: {id (the corpus docid), title, text, score, has_answer,
    is_gold}; has_answer and is_gold only where set (no has_answer for a yes/no question, no is_gold for unlabelled
    input), as data.save_records leaves out unset labels."""
    ctx = {"id": c["docid"], "title": c["title"], "text": c["text"], "score": c["score"]}
    for key in ("has_answer", "is_gold"):
        if c[key] is not None:
            ctx[key] = c[key]
    return ctx


def retrieve(cfg, questions_path: str, out_path: str, search_batches: SearchBatches, fmt: str = "auto") -> dict:
    """The top retrieval.top_k candidates of every question of a question file, written as FiD JSONL.

    Args:
        cfg: the RunConfig (retrieval.index_dir, retrieval.top_k; data.n_candidates for the quality counts).
        questions_path: FiD JSON/JSONL (candidates optional: their is_gold labels mark the gold paragraphs),
            HotpotQA / 2Wiki / MuSiQue JSON(L) or Parquet; fmt: auto | fid | hotpotqa | 2wiki | musique | parquet.
        out_path: the output, .jsonl: one line per accepted question, in input order: {id, question, answers,
            target (if the input had one), ctxs: [fid_candidate, ...] best first}; `gr-train train
            data.train_path=OUT` reads it. Rejected records go to rejects_path(out_path), one {where, id, reason,
            kind} a line (an empty file when none). Both are written atomically.
        search_batches: the index's search (SearchBatches); the only part that differs between this process and Ray.
    Returns:
        The summary: {questions_path, out, rejects, index_dir, index_version, kind, top_k, input, written,
        rejected, rejects_by_reason, candidate_quality: {n_candidates, checks.candidate_quality's counts of the
        output with its first data.n_candidates}, wall_s}.
    Raises:
        DataError: the file cannot be read at all (not UTF-8, a JSON list that does not parse, no records);
        FileNotFoundError: no index in retrieval.index_dir; RuntimeError if written + rejected != input.
    """
    t0 = time.perf_counter()
    meta = load_index_meta(cfg.retrieval.index_dir)
    items = read_question_items(questions_path, fmt)
    parsed = [parse_row(item, fmt, questions_path) for item in items]
    rejects, duplicates = question_rejects(parsed, questions_path)
    records = [json.loads(r["record"]) for r in parsed if not r["reason"] and r["index"] not in duplicates]
    batches = [records[i : i + QUERY_BATCH] for i in range(0, len(records), QUERY_BATCH)]
    k = cfg.retrieval.top_k
    rows = []
    for batch, hits in zip(batches, search_batches(([r["question"] for r in b] for b in batches), k), strict=True):
        for q, rec in enumerate(batch):
            row = {"id": rec["id"], "question": rec["question"], "answers": rec["answers"]}
            if rec["target"] is not None:
                row["target"] = rec["target"]
            rows.append({**row, "ctxs": label_candidates(hits.rows(q), rec["answers"], rec["gold"])})
    n = cfg.data.n_candidates
    quality = row_quality(rows, n)
    write_jsonl(({**r, "ctxs": [fid_candidate(c) for c in r["ctxs"]]} for r in rows), out_path)
    write_jsonl(rejects, rejects_path(out_path))
    if len(rows) + len(rejects) != len(items):
        raise RuntimeError(f"retrieve: {len(items)} input records but {len(rows)} written + {len(rejects)} rejected")
    return {"questions_path": str(questions_path), "out": str(out_path), "rejects": str(rejects_path(out_path)),
            "index_dir": str(cfg.retrieval.index_dir), "index_version": meta["index_version"], "kind": meta["kind"],
            "top_k": k, "input": len(items), "written": len(rows), "rejected": len(rejects),
            "rejects_by_reason": dict(Counter(r["kind"] for r in rejects).most_common(20)),
            "candidate_quality": {"n_candidates": n, **quality}, "wall_s": round(time.perf_counter() - t0, 2)}


def format_summary(summary: dict, max_no_answer_fraction: float) -> str:
    """retrieve's summary for a reader: one JSON line, then the candidate quality, the warning `gr-train train`
    logs for it (checks.no_answer_warning, with its fix), a note when retrieval.top_k is below data.n_candidates,
    and the files written."""
    q = summary["candidate_quality"]
    n = q["n_candidates"]
    lines = ["retrieve summary: " + json.dumps(summary),
             f"candidates: {format_quality(q, n)} (data.n_candidates={n}, retrieval.top_k={summary['top_k']})"]
    warning = no_answer_warning(q, n, max_no_answer_fraction)
    if warning:
        lines.append(f"warning: {summary['out']}: {warning}")
    if summary["top_k"] < n:
        lines.append(f"note: retrieval.top_k={summary['top_k']} is below data.n_candidates={n}: train on this file "
                     f"with data.n_candidates={summary['top_k']} or less, or retrieve more")
    lines.append(f"written: {summary['out']} ({summary['written']} questions), {summary['rejects']} "
                 f"({summary['rejected']} rejected of {summary['input']})")
    return "\n".join(lines)
