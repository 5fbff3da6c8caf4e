"""Question records (FiD format): schema, validating readers, writers, and converters from HotpotQA, 2Wiki, MuSiQue.

`load_records` reads FiD JSON / JSONL; `from_hotpotqa`, `from_2wiki`, `from_musique` read the published formats;
`load_any` picks one. Every malformed input raises `DataError` naming the file, the record, its id and the field.
Pure Python: no torch, so preprocessing workers import it cheaply.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------------


# A passage as the models read it: (title, text). Rerankers and readers take [B][n] lists of these.
PassageText = tuple[str, str]


def passage_string(title: str, text: str) -> str:
    """A passage as one string, read by the rerankers and both index kinds: "title text", or just the text when
    there is no title."""
    return f"{title} {text}" if title else text


@dataclass
class Passage:
    """One candidate passage.

    is_gold: the passage is needed to answer (supporting fact); None = unlabelled.
    has_answer: an answer string occurs in title + text (normalized match); `load_records` fills it when missing.
        None when the record's answers are not spans (yes/no): whether a passage "contains" them is undefined.
    """

    title: str
    text: str
    is_gold: bool | None = None
    has_answer: bool | None = None

    @property
    def direct(self) -> bool:
        """Gold and contains the answer (the last hop). False when unlabelled."""
        return self.is_gold is True and self.has_answer is True

    @property
    def indirect(self) -> bool:
        """Gold but without the answer (a bridge passage); rerankers trained on answer presence miss these."""
        return self.is_gold is True and self.has_answer is False


@dataclass
class Record:
    """One question with its candidate passages.

    answers: every accepted answer string (EM/F1 take the max over them); at least one.
    target: the training target for the reader's LM loss; None = answers[0].
    intermediate: the bridge entity of a two-hop question (embedded demo data), the two bridge entities of a
        three-hop one in hop order, space-separated; None elsewhere.
    where: its location in the file it was read from, for errors about it ("line 7"); None when built in code.

    A yes/no record (every answer normalizes to "yes" or "no", e.g. HotpotQA comparison questions: 34 of the 352
    sample records) has no answer span: its passages' has_answer is set to None whatever the input said, and it
    has no direct or indirect passages (its gold passages count only as gold).
    """

    id: str
    question: str
    answers: list[str]
    ctxs: list[Passage]
    target: str | None = None
    intermediate: str | None = None
    # where the record was read: "line N" / "record [i]" of its file, "<shard>.parquet row i"; None when built in
    # code. Not part of equality, never saved.
    where: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.yes_no:
            for p in self.ctxs:
                p.has_answer = None

    @property
    def yes_no(self) -> bool:
        """Every answer is yes or no: none can be a span of a passage."""
        return is_yes_no(self.answers)

    @property
    def target_text(self) -> str:
        return self.target if self.target is not None else self.answers[0]

    def relevance(self, kind: str = "gold") -> list[bool]:
        """Per-passage relevance labels for ranking metrics, one per ctxs entry.

        kind: gold | direct (gold and contains an answer) | indirect (gold, no answer). A yes/no record has no
        direct or indirect passages (all False): answer presence is undefined for it.
        Raises ValueError when a passage has no gold label: evaluating unlabelled data must not yield zeros.
        """
        if kind not in ("gold", "direct", "indirect"):
            raise ValueError(f"unknown relevance kind '{kind}' (gold | direct | indirect)")
        unlabelled = [i for i, p in enumerate(self.ctxs) if p.is_gold is None]
        if unlabelled:
            raise ValueError(f"record {self.id}: ctxs[{unlabelled[0]}] has no is_gold label")
        labels = []
        for p in self.ctxs:
            # has_answer may be None on records built in code rather than loaded; compute it then.
            contains = p.has_answer if p.has_answer is not None else has_answer(f"{p.title} {p.text}", self.answers)
            if kind == "gold":
                labels.append(bool(p.is_gold))
            elif contains is None:  # yes/no: neither direct nor indirect
                labels.append(False)
            elif kind == "direct":
                labels.append(bool(p.is_gold) and contains)
            else:
                labels.append(bool(p.is_gold) and not contains)
        return labels


def fact_ids(record: Record) -> list[int]:
    """Per passage of record.ctxs: the id of the gold fact it states (gold passages with the same normalized title
    and text are copies of one fact and share an id), -1 for a passage that is not gold. For fact coverage@k."""
    ids: dict[tuple[str, str], int] = {}
    out = []
    for p in record.ctxs:
        if not p.is_gold:
            out.append(-1)
            continue
        key = (normalize_answer(p.title), normalize_answer(p.text))
        out.append(ids.setdefault(key, len(ids)))
    return out


class DataError(ValueError):
    """A data file is malformed. The message names file, record (list index or 1-based line), id and field:

    `data/dev.jsonl line 7 (id q12): field 'ctxs[3].text': expected a string, got int`
    """

    def __init__(
        self,
        path: str | os.PathLike,
        problem: str,
        where: str | None = None,
        record_id: str | None = None,
        field: str | None = None,
    ):
        self.path, self.problem, self.where, self.record_id, self.field = str(path), problem, where, record_id, field
        location = self.path + (f" {where}" if where else "") + (f" (id {record_id})" if record_id is not None else "")
        super().__init__(f"{location}: " + (f"field '{field}': " if field else "") + problem)

    def __reduce__(self):
        # Keeps the exception picklable (Ray ships worker exceptions to the driver).
        return (type(self), (self.path, self.problem, self.where, self.record_id, self.field))


# ---------------------------------------------------------------------------------------------------------------
# Answer matching as DPR and FiD do it (SQuAD v1.1 normalization, token-run match), typographic forms folded
# ---------------------------------------------------------------------------------------------------------------

# A regex character class: ~5x faster than str.translate on non-ASCII text (16 us for a 450-character passage, measured).
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# How answers and passages are normalized before they are compared (eval.answer_normalization):
# typographic (default): Unicode NFKD, typographic variants folded to their ASCII form (_TYPOGRAPHIC), then SQuAD's
#   steps. It departs from SQuAD v1.1 where SQuAD compares code points: "O’Neill" = "O'Neill", "1914–1918" =
#   "1914-1918", "Beyoncé" composed = decomposed, a non-breaking space = a space, "…" = "...", "ﬁ" = "fi",
#   full-width "１９" = "19", "²" = "2" (NFKD's compatibility forms); zero-width and soft-hyphen characters dropped.
# squad: SQuAD v1.1's official normalize_answer exactly (lowercase, drop ASCII punctuation and a/an/the, collapse
#   whitespace), to reproduce figures reported with it.
NORMALIZATIONS = ("typographic", "squad")


def _typographic_table() -> dict[int, str | None]:
    """str.translate table: every dash (Unicode Pd), minus and hyphen variant → "-"; every quote (Pi, Pf), prime,
    acute/grave and modifier apostrophe → "'" or '"'; zero-width characters and the soft hyphen → removed. NFKD
    already maps the other compatibility forms (spaces, ellipsis, ligatures, full-width forms)."""
    table: dict[int, str | None] = {}
    for code in range(128, 0x10000):  # the dashes and quotes of Unicode 15 outside it are historic scripts
        cat = unicodedata.category(chr(code))
        if cat == "Pd":
            table[code] = "-"
        elif cat in ("Pi", "Pf"):
            table[code] = '"' if unicodedata.name(chr(code), "").find("DOUBLE") >= 0 else "'"
    table.update({ord(c): "-" for c in "\u2212\u2043\ufe63\uff0d"})  # minus, hyphen bullet, small/full-width
    table.update({ord(c): "'" for c in "\u2032\u2035\u00b4\u0060\u02b9\u02bb\u02bc\u02bd\u02c8\uff07"})
    table.update({ord(c): '"' for c in "\u2033\u2036\u02ba\u3003\uff02"})  # double primes, ditto marks
    table.update({ord(c): None for c in "\u00ad\u200b\u200c\u200d\u2060\ufeff"})
    return table


_TYPOGRAPHIC = _typographic_table()


# Answers that are not spans of any passage: a comparison question's "no" is not found by reading the word "no".
NON_SPAN_ANSWERS = frozenset({"yes", "no"})


def normalize_answer(s: str, mode: str = "typographic") -> str:
    """The text as answers and passages are compared (see NORMALIZATIONS): typographic = NFKD and typographic
    variants folded, then SQuAD's steps; squad = SQuAD v1.1's normalize_answer (lowercase, drop ASCII punctuation
    and the articles a/an/the, collapse whitespace)."""
    if mode == "typographic":
        s = unicodedata.normalize("NFKD", s)
        if not s.isascii():
            s = s.translate(_TYPOGRAPHIC)
    elif mode != "squad":
        raise ValueError(f"answer normalization: expected one of {NORMALIZATIONS}, got {mode!r}")
    s = _PUNCTUATION.sub("", s.lower())
    return " ".join(_ARTICLES.sub(" ", s).split())


def is_yes_no(answers: Iterable[str]) -> bool:
    """Every answer normalizes to "yes" or "no" (at least one answer)."""
    norms = [normalize_answer(a) for a in answers]
    return bool(norms) and all(n in NON_SPAN_ANSWERS for n in norms)


def has_answer(text: str, answers: Iterable[str], mode: str = "typographic") -> bool | None:
    """True when some answer's normalized tokens occur as a contiguous token run in the normalized text (DPR's
    and FiD's has_answer, on tokens normalized by normalize_answer(mode)).

    Token-level, not substring: "art" does not match "party". Yes/no answers and answers that normalize to nothing
    ("the") are never matched; None when every answer is yes/no (a yes/no question: presence is undefined).
    """
    answers = list(answers)
    if is_yes_no(answers):
        return None
    needles = [n for n in (normalize_answer(a, mode) for a in answers) if n and n not in NON_SPAN_ANSWERS]
    # Tokens are joined by single spaces, so a space-padded substring test is exactly a token-run test.
    haystack = f" {normalize_answer(text, mode)} "
    return any(f" {needle} " in haystack for needle in needles)


# ---------------------------------------------------------------------------------------------------------------
# Gold identity: the paragraph (title and text), never the title alone
# ---------------------------------------------------------------------------------------------------------------


def paragraph_key(title: str, text: str) -> tuple[str, str]:
    """A paragraph's identity for gold labels: (title, text), whitespace runs collapsed (a corpus may re-join a
    paragraph's sentences differently). Paragraphs that share a title are different paragraphs: in the MuSiQue dev
    sample, 60 of 200 records hold a supporting and a non-supporting paragraph of the same title."""
    return " ".join(title.split()), " ".join(text.split())


def gold_paragraphs(ctxs: Iterable[Passage]) -> list[list[str]] | None:
    """[[title, text], ...] of the gold passages (their paragraph keys, in order, without repeats); None when no
    passage carries a gold label (unlabelled input), [] when all are labelled non-gold."""
    labelled = [p for p in ctxs if p.is_gold is not None]
    if not labelled:
        return None
    keys = dict.fromkeys(paragraph_key(p.title, p.text) for p in labelled if p.is_gold)
    return [list(k) for k in keys]


def is_gold_passage(title: str, text: str, gold: Iterable[Sequence[str]]) -> bool:
    """True when the passage (title, text) is one of the gold paragraphs [[title, text], ...]: the same title and
    the same text, or, for a corpus that cuts paragraphs into chunks (DPR's 100-word passages), the same title and
    a non-empty text that is a whole-token part of the gold text or contains it whole. A passage that only shares
    a gold paragraph's title is not gold."""
    t, x = paragraph_key(title, text)
    if not x:
        return False
    for g_title, g_text in gold:
        gt, gx = paragraph_key(g_title, g_text)
        if gt == t and gx and (gx == x or f" {x} " in f" {gx} " or f" {gx} " in f" {x} "):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Reading JSON / JSON lines
# ---------------------------------------------------------------------------------------------------------------

Item = tuple[str, Any]  # (location in the file: "record [i]" or "line N", parsed JSON value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _read_items(path: Path) -> list[Item]:
    """Parse a JSON list or a JSON-lines file (chosen by content: first non-blank char '[' = list).

    Blank JSONL lines are skipped but counted, so a location "line N" is the line an editor shows.
    """
    text = read_text(path)
    head = text.lstrip()
    if not head:
        raise DataError(path, "empty file: no records")

    if head[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON: {e.msg}", where=f"line {e.lineno} col {e.colno}") from None
        if not data:
            raise DataError(path, "empty list: no records")
        return [(f"record [{i}]", obj) for i, obj in enumerate(data)]

    items = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which JSON allows raw inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            if lineno == 1 and head[0] == "{" and _parses_as_one_document(text):
                raise DataError(
                    path, "expected a JSON list of records or one JSON object per line, got one multi-line object"
                ) from None
            raise DataError(path, f"invalid JSON: {e.msg}", where=f"line {lineno} col {e.colno}") from None
    return items


def read_text(path: str | os.PathLike) -> str:
    """A data file's text, UTF-8 (a leading byte-order mark, which some Windows tools write, is dropped).

    Raises:
        DataError naming the file, the 1-based line of the first byte that is not UTF-8, the record id when that
            line parses as a JSON object with an `id` / `_id` once the bad bytes are replaced, and the byte offset;
            or that the file cannot be read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read file: {e.strerror or e}") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        start = raw.rfind(b"\n", 0, e.start) + 1
        end = raw.find(b"\n", e.start)
        line = raw[start : end if end >= 0 else len(raw)].decode("utf-8", errors="replace")
        record_id = None
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and isinstance(obj.get("id", obj.get("_id")), (str, int)):
                record_id = str(obj.get("id", obj.get("_id")))
        except json.JSONDecodeError:
            pass
        bad = raw[e.start : e.end].hex(" ")
        raise DataError(path, f"not UTF-8 text: byte(s) {bad} at column {e.start - start + 1} (byte offset "
                        f"{e.start} of the file): {e.reason}; save the file as UTF-8", where=f"line {lineno}",
                        record_id=record_id) from None


def _parses_as_one_document(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


class _Where:
    """Builds the DataErrors of one record: knows the file, the record's location and, once parsed, its id."""

    def __init__(self, path: Path, where: str):
        self.path, self.where, self.id = path, where, None

    def __call__(self, field: str | None, problem: str) -> DataError:
        return DataError(self.path, problem, self.where, self.id, field)


def _object(value: Any, err: _Where, field: str | None) -> dict:
    if not isinstance(value, dict):
        raise err(field, f"expected a JSON object, got {_type_name(value)}")
    return value


def _string(
    obj: dict, key: str, err: _Where, field: str, *, required: bool = True, nonempty: bool = False
) -> str | None:
    """obj[key] as a str; None when absent (or null) and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            raise err(field, "missing")
        return None
    if not isinstance(value, str):
        raise err(field, f"expected a string, got {_type_name(value)}")
    if nonempty and not value.strip():
        raise err(field, "must not be empty")
    return value


def _bool(obj: dict, key: str, err: _Where, field: str, *, required: bool = False) -> bool | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise err(field, "missing")
        return None
    if not isinstance(value, bool):  # 0/1 and "true" are rejected: a typo'd label must not become a label
        raise err(field, f"expected true or false, got {_type_name(value)}")
    return value


def _list(obj: dict, key: str, err: _Where, field: str, *, nonempty: bool = True) -> list:
    value = obj.get(key)
    if value is None:
        raise err(field, "missing")
    if not isinstance(value, list):
        raise err(field, f"expected a list, got {_type_name(value)}")
    if nonempty and not value:
        raise err(field, "must not be empty")
    return value


def _passage(title: str, text: str, err: _Where, field: str) -> None:
    """A passage needs something to read: text that is not only whitespace, or else a title (a title-only
    passage, e.g. an entity page with no body, is read as its title: passage_string). DataError otherwise."""
    if not text.strip() and not title.strip():
        raise err(field, f"empty passage: the text is {json.dumps(text)} and there is no title; give the passage "
                  "its text, or remove the candidate")


def _record_id(obj: dict, key: str, err: _Where) -> str:
    value = obj.get(key)
    if value is None:
        raise err(key, "missing")
    # bool is an int subclass; an id of `true` is a bug upstream, not an id.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise err(key, f"expected a string or integer, got {_type_name(value)}")
    if isinstance(value, str) and not value.strip():
        raise err(key, "must not be empty")
    return str(value)


def _parse_items(path: Path, items: list[Item], parse: Callable[[dict, _Where], Record]) -> list[Record]:
    """Apply `parse` to every item (it sets `err.id` as soon as it has read the id); ids must be unique."""
    records: list[Record] = []
    first_seen: dict[str, str] = {}
    for where, value in items:
        err = _Where(path, where)
        record = parse(_object(value, err, None), err)
        if record.id in first_seen:
            raise err("id", f"duplicate id, first seen at {first_seen[record.id]}")
        first_seen[record.id] = where
        record.where = where
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------------
# FiD format
# ---------------------------------------------------------------------------------------------------------------


def load_records(path: str | os.PathLike) -> list[Record]:
    """Read FiD-format records from a JSON list or JSON lines (detected by content, not extension).

    Each record: `id` (str or int), `question`, `answers` (list of str; a `target` string alone becomes
    answers=[target]), optional `target`, optional `intermediate`, and a non-empty `ctxs` list of
    {title (default ""), text, is_gold?, has_answer?}; other keys are ignored. Missing has_answer is computed
    by normalized answer match on title + text. A passage whose text is empty or whitespace is refused unless it
    has a title (then it is read as its title). Raises DataError on any malformed record; none is dropped.
    """
    path = Path(path)
    return _parse_items(path, _read_items(path), _fid_record)


def _fid_record(obj: dict, err: _Where) -> Record:
    record_id = _record_id(obj, "id", err)
    err.id = record_id
    question = _string(obj, "question", err, "question", nonempty=True)
    target = _string(obj, "target", err, "target", required=False)
    intermediate = _string(obj, "intermediate", err, "intermediate", required=False)

    if obj.get("answers") is None and target is not None:
        answers = [target]
    else:
        answers = _list(obj, "answers", err, "answers")
        for i, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise err(f"answers[{i}]", f"expected a string, got {_type_name(answer)}")
            if not answer.strip():
                raise err(f"answers[{i}]", "must not be empty")

    ctxs = []
    for i, raw in enumerate(_list(obj, "ctxs", err, "ctxs")):
        ctx = _object(raw, err, f"ctxs[{i}]")
        title = _string(ctx, "title", err, f"ctxs[{i}].title", required=False) or ""
        text = _string(ctx, "text", err, f"ctxs[{i}].text")
        _passage(title, text, err, f"ctxs[{i}].text")
        is_gold = _bool(ctx, "is_gold", err, f"ctxs[{i}].is_gold")
        contains = _bool(ctx, "has_answer", err, f"ctxs[{i}].has_answer")
        if contains is None:
            contains = has_answer(f"{title} {text}", answers)
        ctxs.append(Passage(title, text, is_gold, contains))
    return Record(record_id, question, answers, ctxs, target, intermediate)


def save_records(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Write records as JSON lines (`.jsonl`) or one JSON list (`.json`); None fields are omitted.

    `load_records(path)` gives back equal records (a passage saved with has_answer None comes back computed).
    The file is written to a temporary name and renamed, so readers never see half a file.
    """
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unknown extension '{path.suffix}' (use .jsonl or .json)")
    rows = [_record_to_dict(r) for r in records]
    if path.suffix == ".json":
        _write_atomic(path, json.dumps(rows, ensure_ascii=False) + "\n")
    else:
        write_jsonl(rows, path)


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """JSON objects as JSON lines, one a line, UTF-8 with non-ASCII text kept, written atomically (a temporary name,
    then renamed: a reader never sees half a file)."""
    _write_atomic(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _write_atomic(path: Path, text: str) -> None:
    # Escape the two JSON-legal line separators so that any line-based JSONL reader sees one record per line.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _record_to_dict(record: Record) -> dict:
    row: dict[str, Any] = {"id": record.id, "question": record.question, "answers": list(record.answers)}
    if record.target is not None:
        row["target"] = record.target
    if record.intermediate is not None:
        row["intermediate"] = record.intermediate
    row["ctxs"] = []
    for p in record.ctxs:
        ctx: dict[str, Any] = {"title": p.title, "text": p.text}
        if p.is_gold is not None:
            ctx["is_gold"] = p.is_gold
        if p.has_answer is not None:
            ctx["has_answer"] = p.has_answer
        row["ctxs"].append(ctx)
    return row


# ---------------------------------------------------------------------------------------------------------------
# HotpotQA and 2WikiMultihopQA (distractor layout: context = [[title, [sentence, ...]], ...])
# ---------------------------------------------------------------------------------------------------------------


def from_hotpotqa(path: str | os.PathLike) -> list[Record]:
    """HotpotQA distractor-setting JSON list → Records. One passage per `context` entry, text = "".join(sentences)
    (sentences after the first carry their leading space); is_gold = title occurs in `supporting_facts`.
    """
    path = Path(path)
    return _convert_context(path, _read_items(path), sep="", dataset="hotpotqa")


def from_2wiki(path: str | os.PathLike) -> list[Record]:
    """2WikiMultihopQA JSON list → Records, as `from_hotpotqa` but sentences joined with " " (no leading spaces).

    Some records list a distractor title twice with identical text (6 of 164 dev, 23 of 500 train in our samples):
    the repeat is dropped, and the count is logged as a warning whose LogRecord carries `duplicates_removed`
    ({record id: passages dropped}). A duplicated gold title is a DataError.
    """
    path = Path(path)
    return _convert_context(path, _read_items(path), sep=" ", dataset="2wiki")


def _convert_context(path: Path, items: list[Item], sep: str, dataset: str) -> list[Record]:
    removed: dict[str, int] = {}

    def parse(obj: dict, err: _Where) -> Record:
        record, n_removed = _context_record(obj, err, sep, dataset)
        if n_removed:
            removed[record.id] = n_removed
        return record

    records = _parse_items(path, items, parse)
    if removed:
        ids = ", ".join(list(removed)[:5]) + (", ..." if len(removed) > 5 else "")
        log.warning(
            "%s: dropped %d repeated distractor passages (same title and text) in %d records: %s",
            path,
            sum(removed.values()),
            len(removed),
            ids,
            extra={"duplicates_removed": removed},
        )
    return records


def _context_record(obj: dict, err: _Where, sep: str, dataset: str) -> tuple[Record, int]:
    record_id = _record_id(obj, "_id", err)
    err.id = record_id
    if dataset == "hotpotqa" and "evidences" in obj:
        # Same layout, but 2Wiki sentences carry no leading space: "".join would glue them together silently.
        raise err("evidences", "this is a 2WikiMultihopQA record; read it with from_2wiki")
    question = _string(obj, "question", err, "question", nonempty=True)
    answer = _string(obj, "answer", err, "answer", nonempty=True)

    gold_titles = set()
    for i, fact in enumerate(_list(obj, "supporting_facts", err, "supporting_facts")):
        # Only the title is used: 2Wiki train has sent_ids one past the paragraph end (README), titles are sound.
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)):
            raise err(f"supporting_facts[{i}]", f"expected [title, sentence index], got {json.dumps(fact)[:80]}")
        gold_titles.add(fact[0])

    ctxs, n_removed = [], 0
    first_at: dict[str, int] = {}  # title -> context index of its first occurrence
    kept: set[tuple[str, str]] = set()
    for i, entry in enumerate(_list(obj, "context", err, "context")):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise err(f"context[{i}]", f"expected [title, [sentence, ...]], got {json.dumps(entry)[:80]}")
        title, sentences = entry
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise err(f"context[{i}][1]", f"expected a list of sentence strings, got {json.dumps(sentences)[:80]}")
        text = sep.join(sentences)
        _passage(title, text, err, f"context[{i}][1]")
        if title in first_at and title in gold_titles:
            raise err(f"context[{i}]", f"gold title '{title}' repeats context[{first_at[title]}]: gold is ambiguous")
        if (title, text) in kept:
            n_removed += 1
            continue
        first_at.setdefault(title, i)
        kept.add((title, text))
        contains = has_answer(f"{title} {text}", [answer])
        ctxs.append(Passage(title, text, is_gold=title in gold_titles, has_answer=contains))

    missing = sorted(gold_titles - first_at.keys())
    if missing:
        raise err("supporting_facts", f"title '{missing[0]}' is not among the context titles")
    return Record(record_id, question, [answer], ctxs), n_removed


# ---------------------------------------------------------------------------------------------------------------
# MuSiQue
# ---------------------------------------------------------------------------------------------------------------


def from_musique(path: str | os.PathLike) -> list[Record]:
    """MuSiQue-Ans JSONL → Records. One passage per `paragraphs` entry (title, paragraph_text),
    is_gold = is_supporting; answers = [answer] + answer_aliases (duplicates removed, order kept).
    Unanswerable records (MuSiQue-Full, answerable=false) are a DataError: they have no training target.
    """
    path = Path(path)
    return _parse_items(path, _read_items(path), _musique_record)


def _musique_record(obj: dict, err: _Where) -> Record:
    record_id = _record_id(obj, "id", err)
    err.id = record_id
    question = _string(obj, "question", err, "question", nonempty=True)
    if _bool(obj, "answerable", err, "answerable") is False:
        raise err("answerable", "false: unanswerable questions have no answer to train on")
    answers = [_string(obj, "answer", err, "answer", nonempty=True)]
    aliases = obj.get("answer_aliases") or []
    if not isinstance(aliases, list):
        raise err("answer_aliases", f"expected a list, got {_type_name(aliases)}")
    for i, alias in enumerate(aliases):
        if not isinstance(alias, str) or not alias.strip():
            raise err(f"answer_aliases[{i}]", f"expected a non-empty string, got {json.dumps(alias)[:80]}")
        if alias not in answers:
            answers.append(alias)

    ctxs = []
    for i, raw in enumerate(_list(obj, "paragraphs", err, "paragraphs")):
        para = _object(raw, err, f"paragraphs[{i}]")
        title = _string(para, "title", err, f"paragraphs[{i}].title")
        text = _string(para, "paragraph_text", err, f"paragraphs[{i}].paragraph_text")
        _passage(title, text, err, f"paragraphs[{i}].paragraph_text")
        is_gold = _bool(para, "is_supporting", err, f"paragraphs[{i}].is_supporting", required=True)
        ctxs.append(Passage(title, text, is_gold, has_answer(f"{title} {text}", answers)))
    return Record(record_id, question, answers, ctxs)


# ---------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------

FORMATS = ("auto", "fid", "hotpotqa", "2wiki", "musique")


def load_split(path: str | os.PathLike | None, n: int, what: str) -> list[Record] | None:
    """The records of one split (`what`: train | dev) in any format load_any reads; None when path is None.
    Logs a warning counting the questions with more than n candidates (the models see the first n)."""
    if path is None:
        return None
    records = load_any(path)
    cut = sum(len(r.ctxs) > n for r in records)
    if cut:
        log.warning("%s %s: %d of %d questions have more than n_candidates=%d candidates; the first %d are used",
                    what, path, cut, len(records), n, n)
    return records


def load_any(path: str | os.PathLike, fmt: str = "auto") -> list[Record]:
    """Read records in any supported format. fmt: auto | fid | hotpotqa | 2wiki | musique.

    auto looks at the first record's keys: `ctxs` → fid, `paragraphs` → musique, `context` with `evidences`
    → 2wiki, `context` → hotpotqa. Later records must match it (they are validated as that format).
    A folder or a `.parquet` file is read as preprocessed Parquet shards (`load_parquet`), whatever fmt says.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format '{fmt}' ({' | '.join(FORMATS)})")
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":  # preprocessed shards (ray_jobs/preprocess.py)
        return load_parquet(path)
    items = _read_items(path)
    if fmt == "auto":
        fmt = _detect(path, items)
    if fmt == "fid":
        return _parse_items(path, items, _fid_record)
    if fmt == "musique":
        return _parse_items(path, items, _musique_record)
    return _convert_context(path, items, sep=" " if fmt == "2wiki" else "", dataset=fmt)


def detect_format(path: str | os.PathLike) -> str:
    """The format load_any(path, "auto") reads the file as: parquet | fid | musique | 2wiki | hotpotqa.
    Raises DataError when the file cannot be read or its first record fits no format."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return "parquet"
    return _detect(path, _read_items(path))


def _detect(path: Path, items: list[Item]) -> str:
    """The format of the first record (detect_item_format)."""
    where, first = items[0]
    return detect_item_format(first, path, where)


def detect_item_format(obj: Any, path: str | os.PathLike, where: str, *, questions: bool = False) -> str:
    """The format of one raw record (a parsed JSON value), by its keys: `ctxs` → fid, `paragraphs` → musique,
    `context` with `evidences` → 2wiki, `context` → hotpotqa.

    Args:
        obj: the record as json.loads gives it.
        path, where: the file and the record's location in it ("line N", "record [i]"), for the error.
        questions: a question file (ray_jobs/preprocess.py): a record with a `question` and none of the keys above
            is a FiD question without candidates (parse_item accepts it) → fid.
    Returns:
        "fid" | "musique" | "2wiki" | "hotpotqa".
    Raises:
        DataError naming path and where: obj is not a JSON object, or it has none of the keys above.
    """
    path = Path(path)
    keys = _object(obj, _Where(path, where), None).keys()
    if "ctxs" in keys:
        return "fid"
    if "paragraphs" in keys:
        return "musique"
    if "context" in keys:
        return "2wiki" if "evidences" in keys else "hotpotqa"
    if questions and "question" in keys:
        return "fid"
    if "question" in keys:
        raise DataError(
            path, f"a question without candidates (keys {sorted(keys)[:10]}): training and evaluation read each "
            "question with its candidate passages, as FiD records with 'ctxs' (README, \"Data format\"); retrieve them "
            "from your corpus (gr-train index, then gr-train retrieve --questions FILE --out OUT.jsonl; on a Ray "
            "cluster ray_jobs.build_index, then ray_jobs.preprocess: README, \"Data preprocessing with Ray\"), or "
            "convert HotpotQA / 2Wiki / MuSiQue files with their paragraphs (gr-train convert)",
            where=where)
    raise DataError(
        path,
        "cannot detect the format: expected a key 'ctxs' (fid), 'paragraphs' (musique) or 'context' "
        f"(hotpotqa / 2wiki); got {sorted(keys)[:10]}; pass fmt explicitly",
        where=where,
    )


def parse_item(obj: Any, fmt: str, path: str | os.PathLike, where: str) -> Record:
    """One raw record (a parsed JSON value) of format fmt (fid | hotpotqa | 2wiki | musique) → Record, or DataError.

    For callers that validate record by record (preprocessing sends bad records to a rejects file instead of
    failing the file). A FiD record may omit `ctxs` (a question to retrieve candidates for): it gets ctxs = [].
    """
    err = _Where(Path(path), where)
    obj = _object(obj, err, None)
    if fmt == "fid":
        if obj.get("ctxs") is None:
            record = _fid_record({**obj, "ctxs": [{"text": "-"}]}, err)  # a placeholder, removed below
            record.ctxs = []
            return record
        return _fid_record(obj, err)
    if fmt == "musique":
        return _musique_record(obj, err)
    if fmt in ("hotpotqa", "2wiki"):
        return _context_record(obj, err, sep=" " if fmt == "2wiki" else "", dataset=fmt)[0]
    raise ValueError(f"unknown data format '{fmt}' (fid | hotpotqa | 2wiki | musique)")


# ---------------------------------------------------------------------------------------------------------------
# Preprocessed Parquet shards (written by ray_jobs/preprocess.py)
# ---------------------------------------------------------------------------------------------------------------

# Version of the columns below; ray_jobs/preprocess.py writes it into every row and manifest.json.
PARQUET_SCHEMA_VERSION = 2  # 2: input_index
# Columns a training Record needs; token-id columns (reranker_*, reader_*) and provenance are not read here.
PARQUET_COLUMNS = ("id", "question", "answers", "target", "ctxs", "schema_version", "input_index")


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """A `.parquet` file, or every `*.parquet` file in a folder (sorted by name)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(path, "no Parquet files (expected a .parquet file or a folder of them)")
    return files


# Bytes (in memory, from the file's metadata) of one batch read from a Parquet row group: Arrow converts a nested
# column of at most 2 GiB into one array, so reading a large row group whole can fail; batches of this size cannot
PARQUET_BATCH_BYTES = 256 * 2**20


def parquet_batches(pf, row_group: int | None = None, columns: list[str] | None = None):
    """Record batches of a pyarrow ParquetFile (one row group, or all), so that a row group of any size reads back
    (read whole, a group of over 2 GiB of nested text does not). A batch starts at about PARQUET_BATCH_BYTES by the
    file's metadata; the metadata counts encoded bytes (repeated text dictionary-encoded is small there), so a batch
    that still overflows Arrow's nested conversion is read again in halves, down to one row."""
    import pyarrow as pa

    groups = range(pf.num_row_groups) if row_group is None else [row_group]
    for g in groups:
        meta = pf.metadata.row_group(g)
        size = max(1, int(PARQUET_BATCH_BYTES * max(meta.num_rows, 1) // max(meta.total_byte_size, 1)))
        done = 0  # rows of this group already yielded
        while done < meta.num_rows:
            seen = 0
            try:
                for batch in pf.iter_batches(batch_size=size, row_groups=[g], columns=columns):
                    if seen + batch.num_rows > done:
                        part = batch.slice(max(0, done - seen))
                        done += part.num_rows
                        yield part
                    seen += batch.num_rows
                break
            except pa.ArrowNotImplementedError:
                if size == 1:
                    raise
                size = max(1, size // 2)


def iter_parquet_records(path: str | os.PathLike, rank: int = 0, world_size: int = 1):
    """Stream Records from preprocessed Parquet shards, one batch of a row group in memory at a time (parquet_batches),
    in the shards' order
    (load_parquet restores the input file's order).

    The row groups of all files, in file order, are dealt round-robin: rank r reads groups r, r + W, r + 2W, ...,
    so W ranks read disjoint parts that together are the whole set. Raises DataError on a file of another
    schema version or with a malformed row (named by file and row).
    """
    for _, record in _iter_parquet_rows(path, rank, world_size):
        yield record


def _iter_parquet_rows(path: str | os.PathLike, rank: int = 0, world_size: int = 1):
    """(input_index, Record) for iter_parquet_records."""
    import pyarrow.parquet as pq

    group = 0
    for file in parquet_files(path):
        pf = pq.ParquetFile(file)
        missing = set(PARQUET_COLUMNS) - set(pf.schema_arrow.names)
        if missing:
            raise DataError(file, f"not a preprocessed shard: missing columns {sorted(missing)}")
        offset = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if group % world_size == rank:
                i = 0
                for batch in parquet_batches(pf, g, list(PARQUET_COLUMNS)):
                    for row in batch.to_pylist():
                        yield row["input_index"], _parquet_record(row, _Where(file, f"row {offset + i}"))
                        i += 1
            group += 1
            offset += rows


def _parquet_record(row: dict, err: _Where) -> Record:
    if row["schema_version"] != PARQUET_SCHEMA_VERSION:
        raise err("schema_version", f"{row['schema_version']}, this reader reads {PARQUET_SCHEMA_VERSION}: re-run "
                                    "ray_jobs.preprocess")
    err.id = row["id"]
    if not row["answers"]:
        raise err("answers", "must not be empty")
    ctxs = [Passage(c["title"], c["text"], c["is_gold"], c["has_answer"]) for c in row["ctxs"]]
    if not ctxs:
        raise err("ctxs", "must not be empty")
    for i, p in enumerate(ctxs):
        _passage(p.title, p.text, err, f"ctxs[{i}].text")
    return Record(row["id"], row["question"], list(row["answers"]), ctxs, row["target"],
                  where=f"{Path(err.path).name} {err.where}")


def load_parquet(path: str | os.PathLike) -> list[Record]:
    """Every record of preprocessed Parquet shards (see iter_parquet_records) in the order of the input file they
    were made from (their input_index: the shards' own row order can differ); ids must be unique."""
    rows, seen = [], set()
    for index, record in _iter_parquet_rows(path):
        if record.id in seen:
            raise DataError(path, "duplicate id across the Parquet shards", record_id=record.id, field="id")
        seen.add(record.id)
        rows.append((index, record))
    rows.sort(key=lambda row: row[0])
    return [record for _, record in rows]
