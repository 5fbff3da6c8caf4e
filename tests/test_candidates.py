"""`gr-train index` and `gr-train retrieve` (gr_train/candidates.py): a question file's candidates from your own
corpus as FiD JSONL that training reads; rejects with their line and id; the candidate-quality counts against a
hand count; the same index and the same file, byte for byte, in this process and on Ray (one actor per shard)."""

import json

import pytest

from gr_train import cli
from gr_train.data import has_answer, load_split, passage_string

# 20 people, each in one passage that holds their birthplace, and 40 passages about rivers: 60, 3 shards of 24, 24, 12
PEOPLE = [{"id": f"p{i}", "title": f"Name{i}", "text": f"Name{i} was born in town{i}."} for i in range(20)]
RIVERS = [{"id": f"r{j}", "title": f"River{j}", "text": f"River{j} flows past castle{j} and mill{j}."}
          for j in range(40)]
CORPUS = PEOPLE + RIVERS
TOP_K = ["retrieval.top_k=5", "data.n_candidates=5"]


def questions() -> list[dict]:
    """16 good questions: q0-q9 answered by their person's passage (the only one with NameI: rank 1); q10-q12 with
    an answer no passage holds (the hand count of questions without an answer-bearing candidate: 3); q13 yes/no;
    q14 and q15 labelled, q14's gold paragraph in the corpus, q15's only sharing a title with p15 (no gold)."""
    qs = [{"id": f"q{i}", "question": f"Where was Name{i} born?", "answers": [f"town{i}"]} for i in range(10)]
    qs += [{"id": f"q{i}", "question": f"Where was Name{i} born?", "answers": ["Atlantis"]} for i in (10, 11, 12)]
    qs.append({"id": "q13", "question": "Is River3 longer than River4?", "answers": ["yes"]})
    qs.append({"id": "q14", "question": "Where was Name14 born?", "answers": ["town14"],
               "ctxs": [{"title": "Name14", "text": "Name14 was born in town14.", "is_gold": True},
                        {"title": "Elsewhere", "text": "A distractor paragraph.", "is_gold": False}]})
    qs.append({"id": "q15", "question": "Where was Name15 born?", "answers": ["town15"],
               "ctxs": [{"title": "Name15", "text": "A paragraph the corpus does not hold.", "is_gold": True}]})
    return qs


def write_data(folder):
    """corpus.jsonl and questions.jsonl: the 16 questions and 3 bad records (lines 4, 7 and 19)."""
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CORPUS))
    lines = [json.dumps(q) for q in questions()]
    lines.insert(3, "{not json")  # line 4
    lines.insert(6, json.dumps({"id": "no-answers", "question": "who?"}))  # line 7
    lines.append(lines[0])  # line 19: q0 again
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "corpus.jsonl", folder / "questions.jsonl"


def last_json(text: str, prefix: str = "") -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith(prefix + "{")][-1][len(prefix):])


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory):
    """(index overrides, questions file): a 3-shard BM25 index of CORPUS built by `gr-train index`."""
    folder = tmp_path_factory.mktemp("data")
    corpus, qfile = write_data(folder)
    index = [f"retrieval.corpus_path={corpus}", f"retrieval.index_dir={folder / 'index'}", "retrieval.n_shards=3",
             "retrieval.block_size=8"]
    assert cli.main(["index", *index]) == 0
    return index, qfile


def test_retrieve_writes_fid_jsonl_that_training_reads(tmp_path, bm25_index, capsys):
    index, qfile = bm25_index
    out = tmp_path / "train.jsonl"
    assert cli.main(["retrieve", "--questions", str(qfile), "--out", str(out), *index, *TOP_K]) == 0
    summary = last_json(capsys.readouterr().out, "retrieve summary: ")
    assert (summary["input"], summary["written"], summary["rejected"]) == (19, 16, 3)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [q["id"] for q in questions()]  # input order
    by_id = {r["id"]: r for r in lines}
    assert list(by_id["q0"]) == ["id", "question", "answers", "ctxs"]
    assert list(by_id["q0"]["ctxs"][0]) == ["id", "title", "text", "score", "has_answer"]  # unlabelled: no is_gold
    assert by_id["q3"]["ctxs"][0]["id"] == "p3" and by_id["q3"]["ctxs"][0]["has_answer"] is True
    assert all("has_answer" not in c for c in by_id["q13"]["ctxs"])  # yes/no: answer presence is undefined
    passages = {c["id"]: c for c in CORPUS}
    for r in lines:
        assert len(r["ctxs"]) == 5
        scores = [c["score"] for c in r["ctxs"]]
        assert scores == sorted(scores, reverse=True)
        for c in r["ctxs"]:
            assert (c["title"], c["text"]) == (passages[c["id"]]["title"], passages[c["id"]]["text"])

    records = {r.id: r for r in load_split(out, 5, "train")}  # what `gr-train train data.train_path=OUT` reads
    assert list(records) == [q["id"] for q in questions()]
    for r in records.values():
        for p in r.ctxs:
            assert p.has_answer == has_answer(passage_string(p.title, p.text), r.answers)
            # is_gold only where the input had gold labels (q14, q15)
            assert (p.is_gold is not None) == (r.id in ("q14", "q15"))
    assert [p.is_gold for p in records["q14"].ctxs] == [True, False, False, False, False]
    assert records["q14"].ctxs[0].title == "Name14"
    # q15's gold paragraph is not in the corpus: p15 shares its title only, and is not gold
    assert records["q15"].ctxs[0].title == "Name15" and not any(p.is_gold for p in records["q15"].ctxs)


def test_bad_records_go_to_the_rejects_file_with_their_line_and_id(tmp_path, bm25_index, capsys):
    index, qfile = bm25_index
    out = tmp_path / "train.jsonl"
    (tmp_path / "train.rejects.jsonl").write_text("a previous run's rejects\n")
    assert cli.main(["retrieve", "--questions", str(qfile), "--out", str(out), *index, *TOP_K]) == 0
    text = capsys.readouterr().out
    rejects = [json.loads(line) for line in (tmp_path / "train.rejects.jsonl").read_text().splitlines()]
    assert [(r["where"], r["id"], r["kind"]) for r in rejects] == [
        ("line 4", "", "invalid JSON"), ("line 7", "no-answers", "field 'answers': missing"),
        ("line 19", "q0", "duplicate id")]
    assert rejects[2]["reason"] == f"{qfile} line 19 (id q0): duplicate id, first seen at line 1"
    summary = last_json(text, "retrieve summary: ")
    assert summary["rejects_by_reason"] == {"invalid JSON": 1, "field 'answers': missing": 1, "duplicate id": 1}
    assert summary["written"] + summary["rejected"] == summary["input"] == 19
    assert len(out.read_text().splitlines()) == 16
    assert f"written: {out} (16 questions), {tmp_path / 'train.rejects.jsonl'} (3 rejected of 19)" in text
    assert not list(tmp_path.glob("*.tmp"))  # written through temporary names, renamed


def test_the_summary_counts_the_questions_without_an_answer_bearing_or_gold_candidate(tmp_path, bm25_index, capsys):
    """The no-answer count is the hand count (3: the answers no passage holds), and the warning `gr-train train`
    logs, with its fix, appears only above data.max_no_answer_fraction (3 of 15 = 20%)."""
    index, qfile = bm25_index
    good = questions()
    hand = sum(not any(a in c["text"] for c in CORPUS for a in q["answers"]) for q in good if q["answers"] != ["yes"])
    assert hand == 3
    out = tmp_path / "train.jsonl"
    assert cli.main(["retrieve", "--questions", str(qfile), "--out", str(out), *index, *TOP_K]) == 0
    text = capsys.readouterr().out
    assert last_json(text, "retrieve summary: ")["candidate_quality"] == {
        "n_candidates": 5, "questions": 16, "yes_no": 1, "no_answer": hand, "labelled": 2, "no_gold": 1}
    assert ("candidates: 3 of 15 questions (yes/no aside) have no answer-bearing candidate among their first 5; 1 of "
            "2 labelled questions have no gold passage among them") in text
    assert "warning:" not in text and "note:" not in text  # 20% is not above the default 0.2

    assert cli.main(["retrieve", "--questions", str(qfile), "--out", str(out), *index, *TOP_K,
                     "data.max_no_answer_fraction=0.1"]) == 0
    (warning,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: {out}: 20% of the questions (3 of 15, yes/no aside) have no answer-bearing "
                              "candidate among their first 5, above data.max_no_answer_fraction=0.1")
    assert "Fix: more candidates per question (data.n_candidates, retrieval.top_k when retrieving)" in warning
    assert cli.main(["retrieve", "--questions", str(qfile), "--out", str(out), *index, "retrieval.top_k=3"]) == 0
    assert "note: retrieval.top_k=3 is below data.n_candidates=10" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["index"], "retrieval.corpus_path: not set; add retrieval.corpus_path=FILE"),
    (["index", "retrieval.corpus_path=/nonexistent/c.jsonl"], "retrieval.corpus_path=/nonexistent/c.jsonl: no such"),
    (["retrieve", "--questions", "{q}", "--out", "{tmp}/o.jsonl", "retrieval.index_dir={tmp}/none"],
     "retrieval.index_dir={tmp}/none: no index there (no index.json): build it first (gr-train index"),
    (["retrieve", "--questions", "{tmp}/none.jsonl", "--out", "{tmp}/o.jsonl", "{index}"],
     "--questions {tmp}/none.jsonl: no such file"),
    (["retrieve", "--questions", "{q}", "--out", "{tmp}/o.json", "{index}"], "--out {tmp}/o.json: unknown extension"),
    (["retrieve", "--questions", "{q}", "--out", "{q}", "{index}"], "--out {q} is the --questions file: give another"),
])
def test_a_mistake_is_one_line_naming_the_fix(tmp_path, bm25_index, capsys, args, expected):
    index, qfile = bm25_index
    index_dir = next(o for o in index if o.startswith("retrieval.index_dir="))
    fill = {"q": str(qfile), "tmp": str(tmp_path), "index": index_dir}
    assert cli.main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"gr-train: error: {expected.format(**fill)}"), err[-1]
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["bm25", "dense"])
def test_index_and_retrieve_on_ray_equal_this_process(tmp_path, kind, ray_local, capsys):
    """`gr-train index --ray` builds the index `gr-train index` builds (same index_version, shards) and `gr-train
    retrieve --ray` (one actor per shard) writes the very file `gr-train retrieve` writes: candidate ids, order
    and scores, byte for byte, rejects too. Dense: the packaged all-MiniLM-L6-v2, offline."""
    corpus, qfile = write_data(tmp_path)
    common = [f"retrieval.kind={kind}", f"retrieval.corpus_path={corpus}", "retrieval.n_shards=3",
              "retrieval.block_size=8", "retrieval.encoder_batch_size=8", "retrieval.encoder_max_tokens=32",
              "retrieval.shard_num_cpus=0.5", *TOP_K]  # 3 actors of 0.5 CPU on the fixture's 2-CPU Ray
    summaries = {}
    for name, flag in (("one", []), ("ray", ["--ray"])):
        index_dir = f"retrieval.index_dir={tmp_path / f'index-{name}'}"
        assert cli.main(["index", *flag, *common, index_dir]) == 0
        summaries[name] = last_json(capsys.readouterr().out)
        assert cli.main(["retrieve", *flag, "--questions", str(qfile), "--out", str(tmp_path / f"{name}.jsonl"),
                         *common, index_dir]) == 0
        capsys.readouterr()
    one, on_ray = summaries["one"], summaries["ray"]
    assert one["index_version"] == on_ray["index_version"] and one["kind"] == on_ray["kind"] == kind
    assert one["shards"] == on_ray["shards"] == [24, 24, 12] and one["passages"] == on_ray["passages"] == 60
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "ray.jsonl").read_bytes()
    assert (tmp_path / "one.rejects.jsonl").read_bytes() == (tmp_path / "ray.rejects.jsonl").read_bytes()
    lines = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and all(len(r["ctxs"]) == 5 for r in lines)
    if kind == "bm25":
        assert lines[3]["ctxs"][0]["id"] == "p3"  # Where was Name3 born? → the only passage with Name3 first
        # the job `ray job submit ... python -m ray_jobs.retrieve` runs, on this process's Ray: the same file
        from ray_jobs import retrieve as job

        job.main(["--questions", str(qfile), "--out", str(tmp_path / "job.jsonl"), *common,
                  f"retrieval.index_dir={tmp_path / 'index-ray'}"])
        assert (tmp_path / "job.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
