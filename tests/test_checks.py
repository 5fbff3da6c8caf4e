"""The checks run before any model is built (gr_train/checks.py), called directly: where a model path is looked
for, and the question counts reported against data.n_candidates. Their one-line errors through the command line:
tests/test_user_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gr_train import checks
from gr_train.data import Passage, Record

REPO = Path(__file__).resolve().parents[1]


def test_model_paths_that_are_local_never_go_to_the_hub(tmp_path, monkeypatch):
    """models/... and runs/... are local even online (the hub's message would point to the wrong fix); a config path
    that exists from the repository root names it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # a name that no `gr-train prepare-models` writes: a clone where it ran (models/ at the repository root) gets the
    # "run from the repository root" hint for its own folders instead
    with pytest.raises(checks.ConfigError, match="models/smollm2-1b: no such folder .*gr-train prepare-models"):
        checks.check_model_path("reader.name_or_path", "models/smollm2-1b", "reader")
    with pytest.raises(checks.ConfigError, match=f"demo_reader: no such folder .*run from {REPO}"):
        checks.check_model_path("reader.name_or_path", "gr_train/assets/demo_reader", "reader")
    checks.check_model_path("reranker.name_or_path", "BAAI/bge-reranker-base", "reranker")  # a hub id, online


def test_questions_that_lose_every_gold_passage_to_the_cut_are_counted():
    def record(i, gold_at):
        ctxs = [Passage(f"t{j}", f"x{j}", is_gold=j in gold_at, has_answer=j == max(gold_at)) for j in range(20)]
        return Record(f"q{i}", "q", ["a"], ctxs)
    records = [record(0, {1, 3}), record(1, {12, 15}), record(2, {4, 14}), record(3, {18})]
    counts = checks.question_counts(records, 10)
    assert counts == {"questions": 4, "direct": 1, "indirect": 2, "yes_no": 0, "with_gold": 2, "no_gold": 0,
                      "lost_gold": 2, "all_gold": 0}
    assert "2 lost every gold passage to the cut at data.n_candidates=10 (recall is over the 2 that keep one)" in \
        checks.format_counts(counts, 10)


def write_candidates(path: Path) -> Path:
    """4 questions, 2 candidates read (data.n_candidates=2): q1 answer and gold among them; q2 its answer and gold
    only third; q3 yes/no, labelled, no gold; q4 unlabelled, has_answer unset and absent from its passages."""
    import json

    rows = [
        {"id": "q1", "question": "who wrote it?", "answers": ["Ann"],
         "ctxs": [{"title": "A", "text": "Ann wrote it", "is_gold": True}, {"text": "Bob", "is_gold": False}]},
        {"id": "q2", "question": "who sang?", "answers": ["Cid"],
         "ctxs": [{"text": "Bob", "is_gold": False}, {"text": "Dan", "is_gold": False},
                  {"text": "Cid sang", "is_gold": True}]},
        {"id": "q3", "question": "is it?", "answers": ["yes"],
         "ctxs": [{"text": "x", "is_gold": False}, {"text": "y", "is_gold": False}]},
        {"id": "q4", "question": "who ran?", "answers": ["Eve"], "ctxs": [{"text": "Bob"}, {"text": "Dan ran"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_questions_without_an_answer_bearing_or_gold_candidate_are_counted_and_warned_about(tmp_path, caplog,
                                                                                             monkeypatch):
    from gr_train.config import load_config
    from gr_train.data import load_records

    path = write_candidates(tmp_path / "train.jsonl")
    records = load_records(path)
    assert checks.candidate_quality(records, 2) == {"questions": 4, "yes_no": 1, "no_answer": 2, "labelled": 3,
                                                    "no_gold": 2}
    assert checks.candidate_quality(records, 3) == {"questions": 4, "yes_no": 1, "no_answer": 1, "labelled": 3,
                                                    "no_gold": 1}
    monkeypatch.setattr(checks, "check_tokenizers", lambda *a, **k: None)
    cfg = load_config(None, ["data.n_candidates=2", "gumbel.k=1", "eval.ks=[1]"])
    with caplog.at_level("INFO", logger="gr_train.checks"):
        checks.check_data(cfg, {"train": (str(path), records)})
    text = caplog.text
    assert ("2 of 3 questions (yes/no aside) have no answer-bearing candidate among their first 2; 2 of 3 labelled "
            "questions have no gold passage among them") in text
    assert "kept (data.drop_no_answer=false)" in text
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "67%" in r.getMessage())
    assert "above data.max_no_answer_fraction=0.2" in warning and "data.n_candidates" in warning
    assert "retrieval.top_k" in warning and "another retriever" in warning
    caplog.clear()
    cfg = load_config(None, ["data.n_candidates=2", "gumbel.k=1", "eval.ks=[1]", "data.max_no_answer_fraction=0.7"])
    with caplog.at_level("INFO", logger="gr_train.checks"):
        checks.check_data(cfg, {"train": (str(path), records)})
    assert "2 of 3 questions" in caplog.text and "max_no_answer_fraction" not in caplog.text


def test_drop_no_answer_removes_exactly_the_questions_without_an_answer_bearing_candidate(tmp_path, caplog):
    from gr_train.config import ConfigError, load_config
    from gr_train.data import load_records

    path = write_candidates(tmp_path / "train.jsonl")
    records = load_records(path)
    keep = load_config(None, ["data.n_candidates=2"])
    assert checks.drop_no_answer(keep, str(path), records) is records  # data.drop_no_answer=false: all kept
    cfg = load_config(None, ["data.n_candidates=2", "data.drop_no_answer=true"])
    with caplog.at_level("WARNING", logger="gr_train.checks"):
        kept = checks.drop_no_answer(cfg, str(path), records)
    assert [r.id for r in kept] == ["q1", "q3"]  # the yes/no question stays
    assert f"train {path}: dropped 2 of 4 questions" in caplog.text and "q2, q4" in caplog.text
    cfg3 = load_config(None, ["data.n_candidates=3", "data.drop_no_answer=true"])
    assert [r.id for r in checks.drop_no_answer(cfg3, str(path), records)] == ["q1", "q2", "q3"]
    none = [r for r in records if r.id in ("q2", "q4")]
    with pytest.raises(ConfigError, match="data.drop_no_answer=true: every question of .* has no answer-bearing"):
        checks.drop_no_answer(cfg, str(path), none)
    with pytest.raises(ConfigError, match="data.drop_no_answer=true: every question"):
        checks.check_answer_candidates(cfg, str(path), none)



def test_dev_questions_whose_candidates_are_all_gold_are_counted_under_the_table():
    def record(i, gold):
        return Record(f"q{i}", "q", ["a"], [Passage(f"t{j}", f"x{j} a" if j == 0 else f"x{j}", is_gold=g,
                                                    has_answer=j == 0) for j, g in enumerate(gold)])
    records = [record(0, [True, False, False]), record(1, [True, True]), record(2, [True, True, True, False])]
    counts = checks.question_counts(records, 3)
    assert counts["all_gold"] == 2 and counts["questions"] == 3
    assert checks.question_counts(records, 4)["all_gold"] == 1
    line = checks.format_counts(counts, 3)
    assert line.startswith("3 questions: ") and "; 2 have only gold candidates (any ranking scores the same" in line
    assert "only gold" not in checks.format_counts(checks.question_counts(records[:1], 3), 3)


def test_passages_longer_than_the_rerankers_max_tokens_are_one_counted_note(tmp_path, caplog, capfd):
    """Our own line counts the distinct passages the reranker's truncation cuts; transformers' "Token indices
    sequence length is longer than the specified maximum" warning is not shown."""
    from gr_train import synthetic
    from gr_train.config import load_config
    from gr_train.data import load_records

    cfg = load_config(REPO / "configs" / "demo.yaml", ["synthetic.n_train=8", "synthetic.n_dev=4"])
    synthetic.write_demo_data(cfg.synthetic, tmp_path, 0)
    records = load_records(tmp_path / "train.jsonl")
    long_text = " ".join([records[0].ctxs[1].text] * 400)
    records[0].ctxs[1].text = records[2].ctxs[4].text = long_text  # one distinct passage, twice
    tokenizer = checks._tokenizers(cfg)["reranker"]
    tokenizer.model_max_length = 32  # as a real reranker's tokenizer has one
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(checks, "_tokenizers", lambda cfg: {"reader": tokenizer, "reranker": tokenizer})
    try:
        with caplog.at_level("INFO", logger="gr_train.checks"):
            checks.check_data(cfg, {"train": (str(tmp_path / "train.jsonl"), records)})
    finally:
        monkeypatch.undo()
    distinct = len({f"{p.title} {p.text}" if p.title else p.text for r in records for p in r.ctxs[:10]})
    notes = [r.getMessage() for r in caplog.records if "reranker.max_tokens" in r.getMessage()]
    assert notes == [f"train {tmp_path / 'train.jsonl'}: 1 of {distinct} distinct passages are longer than "
                     "reranker.max_tokens=16 tokens; the reranker reads the first 16 (the rest is cut, counted once "
                     "per run)"]
    assert "Token indices sequence length" not in capfd.readouterr().err + caplog.text
    assert checks.count_truncated(tokenizer, [long_text, "a", long_text], 16) == 1
