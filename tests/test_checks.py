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
                      "lost_gold": 2}
    assert "2 lost every gold passage to the cut at data.n_candidates=10 (recall is over the 2 that keep one)" in \
        checks.format_counts(counts, 10)
