"""Structure statistics (structure.py) on hand-made records with known answers, and the CLI."""

import json

import pytest

from gr_train import cli, synthetic
from gr_train.config import load_config
from gr_train.data import Passage, Record, save_records
from gr_train.structure import dataset_stats, question_entities


def record(question, answer, ctxs):
    return Record(id="q", question=question, answers=[answer],
                  ctxs=[Passage(t, x, g, None) for t, x, g in ctxs])


def test_question_entities_are_capitalised_runs_after_the_first_word():
    assert question_entities('Which city did Tamsin Orrell move to after "The Long Road"?') == [
        "Tamsin Orrell", "The Long Road"]


def test_counts_on_a_hand_made_record():
    from gr_train.data import has_answer

    r = record("Where was the director of Blue Harbour born?", "Oakvale", [
        ("Blue Harbour", "Blue Harbour is a film directed by Ann Lee.", True),  # bridge, names the entity
        ("Ann Lee", "Ann Lee was born in Oakvale.", True),  # direct, no question entity: no shortcut
        ("Blue Harbour (song)", "Blue Harbour is a song.", False),  # topical distractor
        ("Oakvale", "Oakvale is a town.", False),  # answer-bearing distractor
        ("Ann Lee", "Ann Lee was born in Oakvale!", False),
    ])
    for p in r.ctxs:
        p.has_answer = has_answer(f"{p.title} {p.text}", r.answers)
    s = dataset_stats([r])
    assert s["repeated_gold_fact"] == 0.0  # the repeated text is not gold
    assert s["distractors_naming_question_entity"] == 1
    assert s["answer_bearing_distractors"] == 2
    assert s["two_hop"] == 1.0 and s["one_hop_shortcut"] == 0.0


def test_generator_settings_show_up_in_the_statistics():
    cfg = load_config(None, ["synthetic.gold_copies=2", "synthetic.one_hop_fraction=0"]).synthetic
    s = dataset_stats(synthetic.generate(cfg, 50, seed=0))
    assert s["repeated_gold_fact"] == 1.0 and s["gold"] == 4.0 and s["two_hop"] == 1.0
    assert s["one_hop_shortcut"] == 0.0  # the answer passage never names the question's work


def test_cli_structure_prints_and_writes_json(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    save_records(synthetic.generate(load_config(None).synthetic, 20, seed=1), path)
    assert cli.main(["structure", str(path), "--output", str(tmp_path / "s.json")]) == 0
    assert "| repeated_gold_fact |" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["d.jsonl"]["questions"] == 20
