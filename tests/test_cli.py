"""The README's `gr-train` commands that other tests do not already run (demo, train, evaluate are covered in
test_demo.py, test_train.py, test_evaluate.py)."""

from pathlib import Path

import pytest

from gr_train import cli
from gr_train.data import load_records

HOTPOT = Path(__file__).resolve().parents[1] / "data" / "hotpotqa" / "dev_distractor_head53_rakin061.json"  # vendored


def test_convert_hotpotqa_to_fid_jsonl(tmp_path, capsys):
    out = tmp_path / "hotpot.jsonl"
    assert cli.main(["convert", str(HOTPOT), str(out)]) == 0
    records = load_records(out)
    assert len(records) == 53 and all(sum(bool(c.is_gold) for c in r.ctxs) == 2 for r in records)
    assert "53 records" in capsys.readouterr().out


def test_generate_writes_train_and_dev(tmp_path):
    assert cli.main(["generate", "--out-dir", str(tmp_path), "synthetic.n_train=10", "synthetic.n_dev=5"]) == 0
    assert len(load_records(tmp_path / "train.jsonl")) == 10 and len(load_records(tmp_path / "dev.jsonl")) == 5


def test_convert_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('[{"_id": "a", "question": "q", "answer": "x", "supporting_facts": [], "context": 3}]')
    assert cli.main(["convert", str(bad), str(tmp_path / "o.jsonl"), "--format", "hotpotqa"]) == 2
    assert "x.json" in capsys.readouterr().err
