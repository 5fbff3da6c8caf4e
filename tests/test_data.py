"""Record schema, FiD readers/writers, validation errors, and the converters on the real multi-hop samples."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

from gr_train.data import (
    DataError,
    Passage,
    Record,
    from_2wiki,
    from_hotpotqa,
    from_musique,
    has_answer,
    load_any,
    load_records,
    normalize_answer,
    save_records,
)

REAL_DATA = Path(__file__).resolve().parents[1] / "data"  # the vendored samples, data/README.md


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fid_row(rid="q1", **overrides) -> dict:
    row = {
        "id": rid,
        "question": "Where was the author of Dune born?",
        "answers": ["Tacoma"],
        "ctxs": [
            {"title": "Dune", "text": "Dune was written by Frank Herbert.", "is_gold": True},
            {"title": "Frank Herbert", "text": "Frank Herbert was born in Tacoma, Washington.", "is_gold": True},
            {"title": "Arrakis", "text": "A desert planet.", "is_gold": False},
        ],
    }
    row.update(overrides)
    return row


# ---------------------------------------------------------------------------------------------------------------
# Answer matching
# ---------------------------------------------------------------------------------------------------------------


def test_normalize_answer_follows_squad():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("the") == ""


def test_has_answer_is_a_token_run_match():
    assert has_answer("He was born in Tacoma, Washington.", ["tacoma washington"])
    assert has_answer("Born in TACOMA.", ["Seattle", "the Tacoma"])
    assert not has_answer("It was a party.", ["art"])  # substring but not a token
    assert not has_answer("Washington, Tacoma", ["Tacoma Washington"])  # tokens present but not contiguous
    assert not has_answer("the end", ["the"])  # answers that normalize to nothing never match
    assert not has_answer("anything", [])


# ---------------------------------------------------------------------------------------------------------------
# Round trip and field handling
# ---------------------------------------------------------------------------------------------------------------


def sample_records() -> list[Record]:
    return [
        Record(
            id="q1",
            question="Where was the author of Dune born?",
            answers=["Tacoma", "Tacoma, Washington"],
            ctxs=[
                Passage("Dune", "Dune was written by Frank Herbert.", is_gold=True, has_answer=False),
                Passage("Frank Herbert", "Born in Tacoma.", is_gold=True, has_answer=True),
                Passage("", "No title, no label.", has_answer=False),
            ],
            target="Tacoma",
            intermediate="Frank Herbert",
        ),
        # Non-ASCII text and the JSON-legal line separator U+2028 must survive one-record-per-line JSONL.
        Record(id="7", question="Qui?", answers=["Zoë"], ctxs=[Passage("Zoë", "line\u2028break", False, True)]),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    records = sample_records()
    path = tmp_path / f"sub/records{suffix}"
    save_records(records, path)
    assert load_records(path) == records
    first = path.read_bytes()
    save_records(load_records(path), path)
    assert path.read_bytes() == first
    if suffix == ".jsonl":
        assert len(path.read_text(encoding="utf-8").splitlines()) == len(records)
    text = path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else json.loads(text)
    assert "target" not in rows[1] and "intermediate" not in rows[1]  # None fields are omitted
    assert "is_gold" not in rows[0]["ctxs"][2]


def test_save_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="unknown extension"):
        save_records(sample_records(), tmp_path / "records.txt")


def test_has_answer_computed_when_missing_and_kept_when_given(tmp_path):
    row = fid_row()
    row["ctxs"][2]["has_answer"] = True  # given labels win, even when the text says otherwise
    row["ctxs"].append({"title": "Tacoma", "text": "A city.", "has_answer": False})
    row["ctxs"].append({"title": "Tacoma", "text": "A city in Washington."})  # answer in the title only
    (record,) = load_records(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert [p.has_answer for p in record.ctxs] == [False, True, True, False, True]
    assert [p.is_gold for p in record.ctxs] == [True, True, False, None, None]


def test_field_defaults_and_coercions(tmp_path):
    row = fid_row(rid=12, target="Tacoma")
    del row["answers"]
    del row["ctxs"][0]["title"]
    row["ctxs"][0]["score"] = 0.3  # unknown keys are ignored
    row["extra"] = {"anything": 1}
    (record,) = load_records(write_jsonl(tmp_path / "d.jsonl", [row]))
    assert record.id == "12" and record.answers == ["Tacoma"] and record.target == "Tacoma"
    assert record.ctxs[0].title == ""
    assert record.target_text == "Tacoma"
    assert Record("a", "q", ["x", "y"], []).target_text == "x"


def test_direct_and_indirect_labels(tmp_path):
    (record,) = load_records(write_jsonl(tmp_path / "d.jsonl", [fid_row()]))
    assert record.relevance("gold") == [True, True, False]
    assert record.relevance("direct") == [False, True, False]
    assert record.relevance("indirect") == [True, False, False]
    assert [p.direct for p in record.ctxs] == [False, True, False]
    assert [p.indirect for p in record.ctxs] == [True, False, False]
    # has_answer None (built in code) is computed from the record's answers.
    built = Record("b", "q", ["Tacoma"], [Passage("T", "born in Tacoma", is_gold=True)])
    assert built.relevance("direct") == [True]
    with pytest.raises(ValueError, match=r"ctxs\[0\] has no is_gold"):
        Record("c", "q", ["x"], [Passage("t", "x")]).relevance("gold")
    with pytest.raises(ValueError, match="unknown relevance kind"):
        record.relevance("bridge")


def test_format_detected_by_content_not_extension(tmp_path):
    rows = [fid_row("a"), fid_row("b")]
    as_list = tmp_path / "list.jsonl"
    as_list.write_text(json.dumps(rows, indent=2))
    as_lines = tmp_path / "lines.json"
    as_lines.write_text("\n" + json.dumps(rows[0]) + "\n\n   \n" + json.dumps(rows[1]) + "\n")  # blank lines allowed
    assert load_records(as_list) == load_records(as_lines)
    assert [r.id for r in load_records(as_list)] == ["a", "b"]


# ---------------------------------------------------------------------------------------------------------------
# Errors: each names the file, the record (line or list index), the id when known, and the field
# ---------------------------------------------------------------------------------------------------------------


def test_error_message_matches_documented_form(tmp_path):
    rows = [fid_row(f"q{i}") for i in range(1, 13)]
    rows[6]["ctxs"] += [{"title": "x", "text": "y"}, {"title": "x", "text": 5}]  # line 7, ctxs[3] has int text
    path = write_jsonl(tmp_path / "dev.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == f"{path} line 7 (id q7): field 'ctxs[4].text': expected a string, got int"
    assert (info.value.where, info.value.record_id, info.value.field) == ("line 7", "q7", "ctxs[4].text")
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # survives Ray's exception transport


def _drop(key):
    def edit(row):
        del row[key]

    return edit


def _set(key, value):
    def edit(row):
        row[key] = value

    return edit


def _set_ctx(i, key, value):
    def edit(row):
        row["ctxs"][i][key] = value

    return edit


def _drop_ctx(i, key):
    def edit(row):
        del row["ctxs"][i][key]

    return edit


# (edit applied to the second record, id in the message or None, field, problem)
FIELD_ERRORS = [
    (_drop("id"), None, "id", "missing"),
    (_set("id", 1.5), None, "id", "expected a string or integer, got float"),
    (_set("id", True), None, "id", "expected a string or integer, got bool"),
    (_set("id", " "), None, "id", "must not be empty"),
    (_drop("question"), "q2", "question", "missing"),
    (_set("question", ""), "q2", "question", "must not be empty"),
    (_set("question", ["why"]), "q2", "question", "expected a string, got list"),
    (_drop("answers"), "q2", "answers", "missing"),
    (_set("answers", []), "q2", "answers", "must not be empty"),
    (_set("answers", "Tacoma"), "q2", "answers", "expected a list, got str"),
    (_set("answers", ["Tacoma", 3]), "q2", "answers[1]", "expected a string, got int"),
    (_set("answers", ["Tacoma", " "]), "q2", "answers[1]", "must not be empty"),
    (_set("target", 3), "q2", "target", "expected a string, got int"),
    (_set("intermediate", {}), "q2", "intermediate", "expected a string, got dict"),
    (_drop("ctxs"), "q2", "ctxs", "missing"),
    (_set("ctxs", []), "q2", "ctxs", "must not be empty"),
    (_set("ctxs", {"title": "t", "text": "x"}), "q2", "ctxs", "expected a list, got dict"),
    (_set("ctxs", [{"title": "t", "text": "x"}, "text"]), "q2", "ctxs[1]", "expected a JSON object, got str"),
    (_drop_ctx(2, "text"), "q2", "ctxs[2].text", "missing"),
    (_set_ctx(2, "text", 5), "q2", "ctxs[2].text", "expected a string, got int"),
    (_set_ctx(0, "title", 5), "q2", "ctxs[0].title", "expected a string, got int"),
    (_set_ctx(1, "is_gold", "yes"), "q2", "ctxs[1].is_gold", "expected true or false, got str"),
    (_set_ctx(1, "has_answer", 1), "q2", "ctxs[1].has_answer", "expected true or false, got int"),
]


@pytest.mark.parametrize("edit, rid, field, problem", FIELD_ERRORS, ids=[f"{e[2]}:{e[3]}" for e in FIELD_ERRORS])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_field_errors_name_file_record_id_field(tmp_path, suffix, edit, rid, field, problem):
    rows = [fid_row("q1"), fid_row("q2"), fid_row("q3")]
    edit(rows[1])
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
        where = "record [1]"
    else:
        path.write_text("\n" + "".join(json.dumps(r) + "\n" for r in rows))  # leading blank line: record 2 = line 3
        where = "line 3"
    with pytest.raises(DataError) as info:
        load_records(path)
    location = f"{path} {where}" + (f" (id {rid})" if rid else "")
    assert str(info.value) == f"{location}: field '{field}': {problem}"


def test_duplicate_id_names_both_places(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [fid_row("a"), fid_row(7), fid_row("7")])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == f"{path} line 3 (id 7): field 'id': duplicate id, first seen at line 2"


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"id": "a"}\n{"id": "b",\n', "line 2 col 12: invalid JSON"),
        ('[\n  {"id": "a"},\n  {"id": }\n]', "line 3 col 10: invalid JSON"),
        ('{\n  "data": []\n}\n', "expected a JSON list of records or one JSON object per line"),
        ("42\n", "line 1: expected a JSON object, got int"),
        ('["a", "b"]', "record [0]: expected a JSON object, got str"),
        ("  \n\n", "empty file: no records"),
        ("[]", "empty list: no records"),
    ],
)
def test_file_level_errors(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: cannot read file"):
        load_records(tmp_path / "missing.jsonl")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(fid_row()).replace("Dune", "D\u00fcne").encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl line 1 \(id q1\): not UTF-8 text"):
        load_records(latin1)


# ---------------------------------------------------------------------------------------------------------------
# Converters on small hand-written files: layout and errors
# ---------------------------------------------------------------------------------------------------------------


def hotpot_row(rid="h1", **overrides) -> dict:
    row = {
        "_id": rid,
        "answer": "Tacoma",
        "question": "Where was the author of Dune born?",
        "supporting_facts": [["Dune", 0], ["Frank Herbert", 1]],
        "context": [
            ["Arrakis", ["A desert planet."]],
            ["Dune", ["Dune is a novel.", " It was written by Frank Herbert."]],
            ["Frank Herbert", ["Frank Herbert was a writer.", " He was born in Tacoma."]],
        ],
        "type": "bridge",
        "level": "hard",
    }
    row.update(overrides)
    return row


def wiki_row(rid="w1", **overrides) -> dict:
    row = hotpot_row(rid, evidences=[["Dune", "author", "Frank Herbert"]], **overrides)
    row["context"] = [[title, [s.strip() for s in sents]] for title, sents in row["context"]]
    return row


def musique_row(rid="2hop__1_2", **overrides) -> dict:
    row = {
        "id": rid,
        "paragraphs": [
            {"idx": 0, "title": "Dune", "paragraph_text": "Written by Frank Herbert.", "is_supporting": True},
            {"idx": 1, "title": "Frank Herbert", "paragraph_text": "Born in Tacoma, WA.", "is_supporting": True},
            {"idx": 2, "title": "Frank Herbert", "paragraph_text": "He died in 1986.", "is_supporting": False},
        ],
        "question": "Where was the author of Dune born?",
        "question_decomposition": [],
        "answer": "Tacoma, Washington",
        "answer_aliases": ["Tacoma", "Tacoma, Washington"],
        "answerable": True,
    }
    row.update(overrides)
    return row


def test_hotpotqa_and_2wiki_join_sentences_and_label_gold(tmp_path):
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([hotpot_row()]))
    (hp,) = from_hotpotqa(path)
    path = tmp_path / "wiki.json"
    path.write_text(json.dumps([wiki_row()]))
    (wk,) = from_2wiki(path)
    for record in (hp, wk):
        assert record.answers == ["Tacoma"] and record.target is None
        assert [p.title for p in record.ctxs] == ["Arrakis", "Dune", "Frank Herbert"]
        assert record.ctxs[1].text == "Dune is a novel. It was written by Frank Herbert."
        assert record.relevance("gold") == [False, True, True]
        assert record.relevance("direct") == [False, False, True]


def test_musique_answers_and_repeated_titles(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [musique_row()])
    (record,) = from_musique(path)
    assert record.answers == ["Tacoma, Washington", "Tacoma"]  # aliases appended, repeats removed
    # Different paragraphs of one article share a title in MuSiQue: all are kept, labelled separately.
    assert [p.title for p in record.ctxs] == ["Dune", "Frank Herbert", "Frank Herbert"]
    assert record.relevance("gold") == [True, True, False]
    assert record.relevance("direct") == [False, True, False]


def test_2wiki_repeated_distractor_dropped_and_counted(tmp_path, caplog):
    rows = [wiki_row("w1"), wiki_row("w2")]
    rows[1]["context"].append(["Arrakis", ["A desert planet."]])  # identical repeat of a distractor
    rows[1]["context"].append(["Arrakis", ["Another text."]])  # same title, other text: a different passage
    path = tmp_path / "wiki.json"
    path.write_text(json.dumps(rows))
    with caplog.at_level(logging.WARNING, logger="gr_train.data"):
        records = from_2wiki(path)
    assert [len(r.ctxs) for r in records] == [3, 4]
    (warning,) = caplog.records
    assert warning.duplicates_removed == {"w2": 1}
    assert str(path) in warning.getMessage() and "1 records" in warning.getMessage()


# (edit applied to the second record, field, problem); the record is "record [1] (id h2)" unless the id is broken.
HOTPOT_ERRORS = [
    (_set("answer", None), "answer", "missing"),
    (_set("question", 3), "question", "expected a string, got int"),
    (_set("context", [["Dune", "not a list"]]), "context[0][1]", "expected a list of sentence strings"),
    (_set("context", [["Dune"]]), "context[0]", "expected [title, [sentence, ...]]"),
    (_set("supporting_facts", [["Dune"]]), "supporting_facts[0]", "expected [title, sentence index]"),
    (_set("supporting_facts", [["Nowhere", 0]]), "supporting_facts", "title 'Nowhere' is not among the context"),
    (lambda r: r["context"].append(["Dune", ["Dune is a novel."]]), "context[3]", "gold title 'Dune' repeats"),
    (_set("evidences", []), "evidences", "this is a 2WikiMultihopQA record; read it with from_2wiki"),
]


@pytest.mark.parametrize("edit, field, problem", HOTPOT_ERRORS, ids=[f"{e[1]}:{e[2]}" for e in HOTPOT_ERRORS])
def test_hotpotqa_errors(tmp_path, edit, field, problem):
    row = hotpot_row("h2")
    edit(row)
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([hotpot_row("h1"), row]))
    with pytest.raises(DataError) as info:
        from_hotpotqa(path)
    assert str(info.value).startswith(f"{path} record [1] (id h2): field '{field}': {problem}")


def test_hotpotqa_missing_id(tmp_path):
    row = hotpot_row()
    del row["_id"]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError) as info:
        from_hotpotqa(path)
    assert str(info.value) == f"{path} record [0]: field '_id': missing"


def test_2wiki_repeated_gold_title_is_an_error(tmp_path):
    row = wiki_row("w9")
    row["context"].append(["Frank Herbert", ["Frank Herbert was a writer.", "He was born in Tacoma."]])
    path = tmp_path / "wiki.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(DataError) as info:
        from_2wiki(path)
    assert str(info.value).startswith(f"{path} record [0] (id w9): field 'context[3]': gold title 'Frank Herbert'")


@pytest.mark.parametrize(
    "edit, field, problem",
    [
        (_set("answerable", False), "answerable", "false: unanswerable"),
        (_set("answer_aliases", "Tacoma"), "answer_aliases", "expected a list, got str"),
        (_set("answer_aliases", ["x", 5]), "answer_aliases[1]", "expected a non-empty string"),
        (_set("paragraphs", []), "paragraphs", "must not be empty"),
        (lambda r: r["paragraphs"][1].pop("is_supporting"), "paragraphs[1].is_supporting", "missing"),
        (lambda r: r["paragraphs"][2].update(paragraph_text=None), "paragraphs[2].paragraph_text", "missing"),
        (lambda r: r["paragraphs"][0].update(title=0), "paragraphs[0].title", "expected a string, got int"),
    ],
)
def test_musique_errors(tmp_path, edit, field, problem):
    row = musique_row("2hop__9_9")
    edit(row)
    path = write_jsonl(tmp_path / "m.jsonl", [musique_row(), row])
    with pytest.raises(DataError) as info:
        from_musique(path)
    assert str(info.value).startswith(f"{path} line 2 (id 2hop__9_9): field '{field}': {problem}")


def test_load_any_dispatch_and_errors(tmp_path):
    fid = write_jsonl(tmp_path / "fid.jsonl", [fid_row()])
    hotpot = tmp_path / "h.json"
    hotpot.write_text(json.dumps([hotpot_row()]))
    wiki = tmp_path / "w.json"
    wiki.write_text(json.dumps([wiki_row()]))
    musique = write_jsonl(tmp_path / "m.jsonl", [musique_row()])
    assert load_any(fid) == load_records(fid)
    assert load_any(hotpot) == from_hotpotqa(hotpot)
    assert load_any(wiki) == from_2wiki(wiki) != from_hotpotqa(hotpot)  # 2wiki is told apart by 'evidences'
    assert load_any(musique) == from_musique(musique) == load_any(musique, "musique")
    with pytest.raises(DataError, match=r"m\.jsonl line 1 \(id 2hop__1_2\): field 'answers': missing"):
        load_any(musique, fmt="fid")
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"query": "q"}])
    with pytest.raises(DataError, match=r"u\.jsonl line 1: cannot detect the format.*\['query'\]"):
        load_any(unknown)
    with pytest.raises(ValueError, match="unknown data format 'squad'"):
        load_any(fid, fmt="squad")


# ---------------------------------------------------------------------------------------------------------------
# The real samples in data/ (data/README.md): counts, gold labels, known quirks
# ---------------------------------------------------------------------------------------------------------------

# (file, converter, records, gold passages per record, passages per record (min, max) after conversion)
REAL_FILES = [
    ("hotpotqa/dev_distractor_head53_rakin061.json", from_hotpotqa, 53, {2}, (2, 10)),
    ("hotpotqa/dev_distractor_sample_migres.json", from_hotpotqa, 199, {2}, (2, 10)),
    ("hotpotqa/train_sample_hipporag.json", from_hotpotqa, 100, {2}, (4, 10)),
    ("2wikimultihopqa/dev_sample_migres.json", from_2wiki, 164, {2, 3, 4}, (9, 10)),
    ("2wikimultihopqa/train_sample_migres.json", from_2wiki, 500, {2, 3, 4}, (8, 10)),
    ("musique/ans_v1.0_sample_migres.jsonl", from_musique, 200, {2, 3, 4}, (20, 20)),
    ("musique/ans_v1.0_train_sample_hipporag.jsonl", from_musique, 100, {2, 3, 4}, (20, 20)),
]

@pytest.mark.parametrize("name, convert, n_records, gold_counts, n_ctxs", REAL_FILES, ids=[f[0] for f in REAL_FILES])
def test_real_samples_convert(tmp_path, name, convert, n_records, gold_counts, n_ctxs):
    path = REAL_DATA / name
    records = convert(path)
    assert len(records) == n_records
    assert len({r.id for r in records}) == n_records
    for r in records:
        assert sum(r.relevance("gold")) in gold_counts, r.id
        assert n_ctxs[0] <= len(r.ctxs) <= n_ctxs[1], r.id
        assert all(p.text.strip() for p in r.ctxs), r.id
        assert all((p.has_answer is None) == r.yes_no for p in r.ctxs), r.id  # yes/no: presence undefined
        assert r.question.strip() and r.answers[0].strip()
    assert load_any(path) == records  # auto-detection picks the same converter
    save_records(records, tmp_path / "converted.jsonl")
    assert load_records(tmp_path / "converted.jsonl") == records


def test_real_hotpotqa_text_and_labels():
    (first,) = from_hotpotqa(REAL_DATA / "hotpotqa/dev_distractor_head53_rakin061.json")[:1]
    assert first.id == "5a8b57f25542995d1e6f1371" and first.answers == ["yes"]
    ed_wood = next(p for p in first.ctxs if p.title == "Ed Wood (film)")
    # Sentences carry their leading space: "".join restores "...Ed Wood. The film..." without gluing or doubling.
    assert "cult filmmaker Ed Wood. The film concerns" in ed_wood.text
    assert {p.title for p in first.ctxs if p.is_gold} == {"Scott Derrickson", "Ed Wood"}
    short = {r.id: len(r.ctxs) for r in from_hotpotqa(REAL_DATA / "hotpotqa/dev_distractor_sample_migres.json")}
    assert short["5ade28b15542997c77aded83"] == 2  # README: a record with only its 2 gold paragraphs


@pytest.mark.parametrize(
    "name, n_records_with_repeats, n_dropped",
    [("2wikimultihopqa/dev_sample_migres.json", 6, 6), ("2wikimultihopqa/train_sample_migres.json", 23, 27)],
)
def test_real_2wiki_repeated_distractors_reported(caplog, name, n_records_with_repeats, n_dropped):
    with caplog.at_level(logging.WARNING, logger="gr_train.data"):
        records = from_2wiki(REAL_DATA / name)
    (warning,) = caplog.records
    assert len(warning.duplicates_removed) == n_records_with_repeats  # README: 6 dev / 23 train records
    assert sum(warning.duplicates_removed.values()) == n_dropped
    by_id = {r.id: r for r in records}
    for rid, dropped in warning.duplicates_removed.items():
        assert len(by_id[rid].ctxs) == 10 - dropped  # every 2Wiki record lists 10 context entries
        titles = [p.title for p in by_id[rid].ctxs]
        assert len(set(titles)) == len(titles)


def test_real_2wiki_sentences_joined_with_a_space():
    first = from_2wiki(REAL_DATA / "2wikimultihopqa/dev_sample_migres.json")[0]
    pal = next(p for p in first.ctxs if p.title == "Pál Gábor")
    assert pal.text.startswith("Pál Gábor (2 November 1932 – 21 October 1987) was a Hungarian film director and "
                               "screenwriter. He directed 20 films between 1962 and 1987.")
    # bridge_comparison question: 4 gold paragraphs, 2 films and their directors.
    assert {p.title for p in first.ctxs if p.is_gold} == {"Forbidden Ground", "Free Guy", "Pál Gábor", "Shawn Levy"}


def test_real_musique_labels():
    records = from_musique(REAL_DATA / "musique/ans_v1.0_train_sample_hipporag.jsonl")
    first = records[0]
    assert first.answers[0] == "G. Stanley Hall" and "Stanley Hall" in first.answers
    hops = [int(r.id[0]) for r in records]  # id prefix "2hop__", "3hop1__", ...: gold count equals hops
    assert [sum(r.relevance("gold")) for r in records] == hops


# ---------------------------------------------------------------------------------------------------------------
# The silent cases: empty passages, bytes that are not UTF-8
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_or_whitespace_passage_without_a_title_names_file_line_id_and_field(tmp_path, text):
    row = fid_row("q2")
    row["ctxs"][2] = {"text": text, "is_gold": False}
    path = write_jsonl(tmp_path / "d.jsonl", [fid_row("q1"), row])
    with pytest.raises(DataError) as e:
        load_records(path)
    assert str(e.value).startswith(f"{path} line 2 (id q2): field 'ctxs[2].text': empty passage")
    row["ctxs"][2] = {"title": "Arrakis", "text": text, "is_gold": False}  # a title-only passage is read as its title
    (record,) = load_records(write_jsonl(tmp_path / "t.jsonl", [row]))
    assert (record.ctxs[2].title, record.ctxs[2].text) == ("Arrakis", text)


def test_an_empty_passage_is_refused_in_every_format(tmp_path):
    mq = {"id": "m1", "question": "q?", "answer": "a", "answerable": True,
          "paragraphs": [{"title": "T", "paragraph_text": "a b", "is_supporting": True},
                         {"title": " ", "paragraph_text": " ", "is_supporting": False}]}
    path = write_jsonl(tmp_path / "m.jsonl", [mq])
    with pytest.raises(DataError, match=r"m\.jsonl line 1 \(id m1\): field 'paragraphs\[1\]\.paragraph_text': empty"):
        from_musique(path)
    hp = {"_id": "h1", "question": "q?", "answer": "a", "supporting_facts": [["A", 0]],
          "context": [["A", ["a b."]], ["", []]]}
    (tmp_path / "h.json").write_text(json.dumps([hp]))
    with pytest.raises(DataError, match=r"h\.json record \[0\] \(id h1\): field 'context\[1\]\[1\]': empty passage"):
        from_hotpotqa(tmp_path / "h.json")


def test_bytes_that_are_not_utf8_name_the_line_and_the_record(tmp_path):
    rows = [json.dumps(fid_row(f"q{i}")) for i in range(1, 4)]
    raw = b"\n".join([rows[0].encode(), rows[1].encode(), b"", rows[2].encode().replace(b"desert", b"d\xe9sert")])
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + raw + b"\n")  # with a byte-order mark, which is allowed
    with pytest.raises(DataError) as e:
        load_records(path)
    message = str(e.value)
    assert message.startswith(f"{path} line 4 (id q3): not UTF-8 text: byte(s) e9 at column ")
    assert "save the file as UTF-8" in message
    path.write_bytes(b'[{"id": "a", "question": "q", "answers": ["x"],\n "ctxs": [{"text": "\xff"}]}]')
    with pytest.raises(DataError, match=r"d\.jsonl line 2: not UTF-8 text: byte\(s\) ff at column 21"):
        load_records(path)


def test_a_question_file_without_candidates_names_what_is_missing_and_how_to_get_it(tmp_path):
    """A raw QA file (question and answers, no candidates) as training data: the error says the records need their
    candidate passages and names the two ways to get them, instead of 'cannot detect the format'."""
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "who?", "answers": ["x"]}) + "\n")
    with pytest.raises(DataError) as raised:
        load_any(path)
    message = str(raised.value)
    assert message.startswith(f"{path} line 1: a question without candidates")
    assert "'ctxs'" in message and "gr-train retrieve" in message and "gr-train convert" in message
    assert "ray_jobs.preprocess" in message
