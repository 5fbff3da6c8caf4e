"""Question files → retrieved candidates: read the raw records one by one, parse each or reject it with the reason
(duplicate ids included), and label each retrieved candidate (has_answer; is_gold when the input had gold passages).

Shared by ray_jobs/preprocess.py (Ray Data → Parquet). No Ray, no torch: pure Python over data.py's parsers.
"""

from __future__ import annotations

import json
from pathlib import Path

from gr_train.checks import candidate_quality
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
)


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
