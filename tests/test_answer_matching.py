"""Answer matching as DPR and FiD do it (NFD + SQuAD normalization, token runs), and yes/no answers kept out of
has_answer and of the direct/indirect metrics, reported on their own."""

import json
import unicodedata

import pytest
import torch

from gr_train import data
from gr_train.data import Passage, Record, has_answer
from gr_train.evaluate import ranking_metrics

# A HotpotQA comparison question whose answer is "no": two gold paragraphs, neither "contains" the answer, and a
# distractor that happens to contain the word "no".
HOTPOT = {
    "_id": "cmp-oakvale-pellham", "type": "comparison", "level": "medium",
    "question": "Are Oakvale and Pellham in the same county?", "answer": "no",
    "supporting_facts": [["Oakvale", 0], ["Pellham", 0]],
    "context": [
        ["Brindle", ["Brindle is a hamlet with no railway station.", " It lies on the river Wend."]],
        ["Oakvale", ["Oakvale is a market town in Wendshire."]],
        ["Pellham", ["Pellham is a village in Marlow County."]],
        ["Ashcombe", ["Ashcombe is a parish in Wendshire."]],
    ],
}


@pytest.fixture
def comparison(tmp_path):
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([HOTPOT]))
    (record,) = data.from_hotpotqa(path)
    return record


def test_yes_no_answers_are_not_matched_in_passages(comparison):
    assert comparison.yes_no
    assert [p.is_gold for p in comparison.ctxs] == [False, True, True, False]
    # Not True for the distractor containing "no", not False (indirect) for the gold ones: undefined.
    assert [p.has_answer for p in comparison.ctxs] == [None, None, None, None]
    assert comparison.relevance("gold") == [False, True, True, False]
    assert comparison.relevance("direct") == [False] * 4
    assert comparison.relevance("indirect") == [False] * 4
    assert not any(p.direct or p.indirect for p in comparison.ctxs)
    assert has_answer("There is no railway station.", ["no"]) is None
    assert has_answer("Yes, it is.", ["Yes", "yes."]) is None
    # A mixed answer list matches its span answers only.
    assert has_answer("There is no railway station.", ["no", "railway station"]) is True
    assert has_answer("There is no station.", ["no", "railway station"]) is False


def test_a_file_label_on_a_yes_no_record_is_cleared():
    rec = Record("q", "Is it?", ["No"], [Passage("", "no way", True, True), Passage("", "x", False, True)])
    assert [p.has_answer for p in rec.ctxs] == [None, None]


def test_evaluation_keeps_yes_no_questions_out_of_direct_and_indirect_and_counts_them(comparison):
    span = Record("span", "Where was Tamsin Orrell born?", ["Oakvale"], [
        Passage("Tamsin Orrell", "Tamsin Orrell was born in Ashford.", True),  # bridge: indirect
        Passage("Ashford", "Ashford was renamed Oakvale in 1901.", True),  # contains the answer: direct
        Passage("Pellham", "Pellham has no station.", False),
        Passage("Brindle", "Brindle is a hamlet.", False),
    ])
    assert span.relevance("direct") == [False, True, False, False]
    # Scores in candidate order: the span question's gold rank 1st and 2nd, the yes/no one's 2nd and 3rd.
    scores = [torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([4.0, 3.0, 2.0, 1.0])]
    table = ranking_metrics([span, comparison], scores, ks=[1, 2])
    assert table["all"]["questions"] == 2
    assert table["direct"]["questions"] == 1 and table["indirect"]["questions"] == 1
    assert table["yes_no"]["questions"] == 1
    assert table["direct"]["recall@1"] == 0.0 and table["direct"]["recall@2"] == 1.0  # the span question alone
    assert table["indirect"]["recall@1"] == 1.0
    # yes/no: gold at candidates 1 and 2 → ranks 2 and 3: recall@1 0, recall@2 1/2, MRR 1/2
    assert table["yes_no"]["recall@1"] == 0.0 and table["yes_no"]["recall@2"] == 0.5
    assert table["yes_no"]["mrr"] == pytest.approx(0.5)
    assert table["all"]["recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    only_span = ranking_metrics([span], scores[:1], ks=[1])
    assert only_span["yes_no"] == {"questions": 0}


def test_matching_normalizes_like_dpr_and_fid():
    composed, decomposed = "Beyonc\u00e9", unicodedata.normalize("NFD", "Beyonc\u00e9")
    assert composed != decomposed
    assert has_answer(f"The singer {decomposed} Knowles.", [composed]) is True  # NFD on both sides
    assert has_answer("It was THE Party of the year!", ["party"]) is True  # case, punctuation, articles
    assert has_answer("a party", ["art"]) is False  # token runs, not substrings
    assert has_answer("the U.S. Army", ["US army"]) is True  # punctuation dropped inside tokens
    assert has_answer("Army of the U.S.", ["US army"]) is False  # a run, in order
    assert has_answer("the end", ["the"]) is False  # an answer that normalizes to nothing never matches


# Typographic forms of the same text (issue 30, item 8) ---------------------------------------------------------


def squad_official_normalize_answer(s):
    """SQuAD v1.1's evaluate-v1.1.py normalize_answer, verbatim."""
    import re
    import string

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


# (typographic form, plain form): each pair is the same text
TYPOGRAPHIC_PAIRS = [
    ("O’Neill", "O'Neill"), ("O‘Neill", "O'Neill"), ("Oʼ Neill", "O' Neill"), ("O′Neill", "O'Neill"),
    ("1914–1918", "1914-1918"), ("1914—1918", "1914-1918"), ("1914−1918", "1914-1918"), ("1914‐1918", "1914-1918"),
    ("1914‑1918", "1914-1918"), ("“Hey Jude”", '"Hey Jude"'), ("«Hey Jude»", '"Hey Jude"'),
    ("New\u00a0York", "New York"), ("New\u202fYork", "New York"), ("Wait…", "Wait..."), ("ﬁve", "five"),
    ("１９１４", "1914"), ("Beyonce\u0301", "Beyoncé"), ("co\u00adoperate", "cooperate"), ("Zero\u200bWidth", "ZeroWidth"),
]


@pytest.mark.parametrize("fancy, plain", TYPOGRAPHIC_PAIRS)
def test_typographic_forms_of_an_answer_match_as_answers_and_in_passages(fancy, plain):
    from gr_train.ranking import exact_match, f1_score

    assert data.normalize_answer(fancy) == data.normalize_answer(plain) != ""
    for pred, gold in ((fancy, plain), (plain, fancy)):
        assert exact_match(pred, [gold]) == 1.0
        assert f1_score(pred, [gold]) == 1.0
        assert has_answer(f"The play was written by {pred} in a year.", [gold]) is True
    # the one normalisation labels passages as well: the passage is direct
    rec = Record("q", "Who?", [plain], [Passage("T", f"It was {fancy} indeed.", True), Passage("U", "Other.", False)])
    assert rec.relevance("direct") == [True, False]


def test_the_issue_examples_match_and_squad_mode_keeps_squads_figures():
    from gr_train.evaluate import answer_metrics
    from gr_train.ranking import exact_match, f1_score

    assert has_answer("Eugene O’Neill wrote it.", ["O'Neill"]) is True
    assert exact_match("O’Neill", ["O'Neill"]) == 1.0 and f1_score("1914–1918", ["1914-1918"]) == 1.0
    # squad: SQuAD's figures, where typographic forms never match
    assert exact_match("O’Neill", ["O'Neill"], "squad") == 0.0 and f1_score("1914–1918", ["1914-1918"], "squad") == 0
    assert has_answer("Eugene O’Neill wrote it.", ["O'Neill"], "squad") is False
    recs = [Record("a", "?", ["O'Neill"], []), Record("b", "?", ["1914-1918"], [])]
    preds = ["O’Neill", "1914–1918"]
    assert answer_metrics(recs, preds) == {"em": 1.0, "f1": 1.0, "questions": 2}
    assert answer_metrics(recs, preds, normalization="squad") == {"em": 0.0, "f1": 0.0, "questions": 2}
    with pytest.raises(ValueError, match="typographic"):
        data.normalize_answer("x", "dpr")


@pytest.mark.parametrize("text", [
    "The Beatles", "  an   Apple, a day!  ", "O’Neill", "1914–1918", "“Hey Jude”", "Ça va? L'été.", "ﬁve １９",
    "New\u00a0York", "A-B_C (the) [an]", "théâtre", "Beyonce\u0301", "THE END...", "a", "", "e = mc²",
])
def test_squad_mode_equals_squads_official_normalize_answer(text):
    assert data.normalize_answer(text, "squad") == squad_official_normalize_answer(text)


def test_the_config_key_selects_the_normalization_of_evaluation():
    from gr_train.config import ConfigError, load_config

    assert load_config(None).eval.answer_normalization == "typographic"
    assert load_config(None, ["eval.answer_normalization=squad"]).eval.answer_normalization == "squad"
    with pytest.raises(ConfigError, match="eval.answer_normalization"):
        load_config(None, ["eval.answer_normalization=dpr"])
