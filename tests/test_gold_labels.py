"""Gold identity follows the paragraph, not its title, in every path: the converters (data.py) and preprocessing
(ray_jobs/preprocess.py: parsed records → gold paragraphs → labels on retrieved passages) give the same labels."""

import json
from pathlib import Path

import numpy as np
import pytest

from gr_train import data
from gr_train.retrieval import Hits

preprocess = pytest.importorskip("ray_jobs.preprocess")  # needs ray and pyarrow
REPO = Path(__file__).resolve().parents[1]
DATASETS = ("hotpotqa", "2wikimultihopqa", "musique")


def sample_files() -> list[Path]:
    """The public dataset samples vendored under <repo>/data/<dataset>/ (*.json, *.jsonl), sorted."""
    root = REPO / "data"
    return sorted(p for d in DATASETS for p in (root / d).glob("*.json*") if p.suffix in (".json", ".jsonl"))


def hits_of(passages: list[tuple[str, str]]) -> Hits:
    """One query whose retrieved passages are `passages` (title, text), best first."""
    n = len(passages)
    col = lambda values: np.array([list(values)], dtype=object).reshape(1, n)  # noqa: E731
    return Hits(scores=np.linspace(1.0, 0.0, n, dtype=np.float32).reshape(1, n),
                ids=np.arange(n, dtype=np.int64).reshape(1, n), docid=col(str(i) for i in range(n)),
                title=col(t for t, _ in passages), text=col(x for _, x in passages))


def preprocess_labels(path: Path, items: list[dict], order=reversed) -> dict[str, list[bool]]:
    """Preprocessing's labels for each record's own paragraphs, as if retrieval returned exactly them (in `order`):
    parse_row → the record JSON the workers carry → attach_candidates. {record id: [is_gold per paragraph]}."""
    out = {}
    for item in items:
        row = preprocess.parse_row(item, "auto", str(path))
        assert row["reason"] == "", row["reason"]
        rec = json.loads(row["record"])
        obj = json.loads(item["raw"])
        record = data.parse_item(obj, data.detect_item_format(obj, path, item["where"], questions=True), path,
                                 item["where"])
        idx = list(order(range(len(record.ctxs))))
        ctxs = preprocess.attach_candidates([rec], hits_of([(record.ctxs[i].title, record.ctxs[i].text)
                                                            for i in idx]), {}, [0])[0]["ctxs"]
        labels = [None] * len(idx)
        for pos, i in enumerate(idx):
            labels[i] = ctxs[pos]["is_gold"]
        out[rec["id"]] = labels
    return out


MUSIQUE = {
    "id": "2hop__orrell", "question": "In which town was Tamsin Orrell born?", "answer": "Oakvale",
    "answer_aliases": [], "answerable": True,
    "paragraphs": [
        {"idx": 0, "title": "Tamsin Orrell", "paragraph_text": "Tamsin Orrell later moved to Pellham, where she died.",
         "is_supporting": False},
        {"idx": 1, "title": "Oakvale", "paragraph_text": "Oakvale is a market town on the river Wend.",
         "is_supporting": False},
        {"idx": 2, "title": "Tamsin Orrell", "paragraph_text": "Tamsin Orrell was born in Oakvale.",
         "is_supporting": True},
    ],
}


def test_two_paragraphs_of_one_title_keep_their_own_labels(tmp_path):
    path = tmp_path / "musique.jsonl"
    path.write_text(json.dumps(MUSIQUE) + "\n")
    (converted,) = data.from_musique(path)
    assert [p.is_gold for p in converted.ctxs] == [False, False, True]
    items = preprocess.read_question_items(str(path), "auto")
    for order in (reversed, list):  # the retrieval order does not matter
        assert preprocess_labels(path, items, order) == {"2hop__orrell": [False, False, True]}


def test_retrieved_chunks_of_a_gold_paragraph_are_gold_and_title_alone_is_not():
    gold = [["Tamsin Orrell", "Tamsin Orrell was born in Oakvale."]]
    assert data.is_gold_passage("Tamsin Orrell", "Tamsin  Orrell was born\nin Oakvale.", gold)  # whitespace re-joined
    assert data.is_gold_passage("Tamsin Orrell", "was born in Oakvale.", gold)  # a chunk of the paragraph
    assert not data.is_gold_passage("Tamsin Orrell", "Tamsin Orrell later moved to Pellham, where she died.", gold)
    assert not data.is_gold_passage("Tamsin Orrell", "", gold)
    assert not data.is_gold_passage("Oakvale", "Tamsin Orrell was born in Oakvale.", gold)  # another title
    assert not data.is_gold_passage("Tamsin Orrell", "born in Oak", gold)  # not at token boundaries


def test_preprocessing_and_converters_give_identical_labels_on_every_sample_file():
    files = sample_files()
    if not files:
        pytest.skip("dataset samples not in the repository: no data/{hotpotqa,2wikimultihopqa,musique}/*.json[l]")
    shared_title_records = 0
    for path in files:
        converted = {r.id: [p.is_gold for p in r.ctxs] for r in data.load_any(path)}
        items = preprocess.read_question_items(str(path), "auto")
        assert preprocess_labels(path, items) == converted, path.name
        for r in data.load_any(path):
            titles = {}
            for p in r.ctxs:
                titles.setdefault(p.title, set()).add(p.is_gold)
            shared_title_records += any(len(v) == 2 for v in titles.values())
    # The samples hold the fault's case: records where a gold and a non-gold paragraph share a title (MuSiQue).
    if any(p.parent.name == "musique" for p in files):
        assert shared_title_records > 0
