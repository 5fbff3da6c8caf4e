import json
from pathlib import Path

import pytest
import torch

from gr_train import cli
from gr_train.config import RerankerSection
from gr_train.data import Passage, Record, from_hotpotqa, save_records
from gr_train.evaluate import format_table, ranking_metrics, score_spread
from gr_train.reranker import build_reranker, build_word_tokenizer

HOTPOT = Path(__file__).resolve().parents[1] / "data" / "hotpotqa" / "dev_distractor_head53_rakin061.json"  # vendored


def record(rid, labels):
    """labels: per passage 'd' direct gold, 'i' indirect gold, '-' distractor."""
    ctxs = [Passage("", f"p{j}", is_gold=l != "-", has_answer=l == "d") for j, l in enumerate(labels)]
    return Record(rid, "q", ["a"], ctxs)


def test_ranking_metrics_split_direct_and_indirect():
    recs = [record("a", "di--"), record("b", "-d--"), record("c", "--i-")]
    scores = [torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 3.0])]
    t = ranking_metrics(recs, scores, [1, 2])
    # a: ranking 0,2,3,1 → direct (0) at 1, indirect (1) at 4.  b: 2,3,0,1 → direct at 4.  c: 2 first (3 candidates)
    assert t["direct"]["recall@1"] == pytest.approx(1 / 2) and t["direct"]["questions"] == 2
    assert t["indirect"]["recall@1"] == pytest.approx(1 / 2) and t["indirect"]["questions"] == 2
    assert t["all"]["recall@2"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert t["all"]["mrr"] == pytest.approx((1 + 1 / 4 + 1) / 3)
    assert "R@1 indirect" in format_table({"x": {"ranking": t, "scores": score_spread(scores, 0.05)}}, [1, 2])


def test_score_spread_flags_inseparable_scores():
    assert not score_spread([torch.full((5,), 0.3), torch.tensor([0.1, 0.1001])], 0.05)["separated"]
    assert score_spread([torch.tensor([0.0, 1.0, 2.0])] * 3, 0.05)["separated"]


def test_unlabelled_data_is_refused():
    rec = Record("x", "q", ["a"], [Passage("", "p")])
    with pytest.raises(ValueError, match="no is_gold label"):
        ranking_metrics([rec], [torch.tensor([1.0])], [1])


def test_evaluate_cli_on_a_real_fid_file(tmp_path):
    """`gr-train evaluate` on a FiD file that is not the demo's: converted HotpotQA, a saved tiny cross-encoder,
    a tiny FiD-T5 reader built from config."""
    records = from_hotpotqa(HOTPOT)[:12]
    save_records(records, tmp_path / "dev.jsonl")
    tok = build_word_tokenizer([r.question for r in records] + [c.text for r in records for c in r.ctxs])
    cfg = RerankerSection(model_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 64, "max_position_embeddings": 128})
    build_reranker(cfg, tok).save(tmp_path / "rr")
    out = tmp_path / "eval.json"
    rc = cli.main(["evaluate", f"data.dev_path={tmp_path / 'dev.jsonl'}", f"reranker.name_or_path={tmp_path / 'rr'}",
                   "reader.kind=fid_t5", "reader.random_init=true", "reader.passage_max_tokens=48", "reranker.max_tokens=64",
                   "run.progress=false", f"run.run_dir={tmp_path}", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["questions"] == 12
    assert result["ranking"]["all"]["questions"] == 12
    assert 0 <= result["ranking"]["indirect"]["recall@5"] <= 1
    assert 0 <= result["reader"]["em"] <= 1 and "gap" in result["loss"]


def test_evaluate_cli_names_the_bad_record(tmp_path, capsys):
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"id": "q1", "question": "x", "answers": ["a"], "ctxs": [{"title": "t", "text": 3}]}\n')
    assert cli.main(["evaluate", f"data.dev_path={bad}", "--no-reader"]) == 2
    err = capsys.readouterr().err
    assert "dev.jsonl line 1 (id q1)" in err and "ctxs[0].text" in err


def test_label_free_evaluation_on_unlabelled_data_through_the_cli(tmp_path, capsys):
    """`gr-train evaluate` on a file without is_gold: answer recall@k, EM/F1 and the hard top-k loss with
    intervals, no gold table; answer recall@k agrees with has_answer in the top k of the scores."""
    import json

    from gr_train import cli, synthetic
    from gr_train.config import load_config
    from gr_train.data import load_records

    REPO = Path(__file__).resolve().parents[1]
    cfg = load_config(REPO / "configs" / "demo.yaml", ["synthetic.n_train=8", "synthetic.n_dev=12"])
    _, dev = synthetic.write_demo_data(cfg.synthetic, tmp_path / "data", 0)
    rows = [json.loads(line) for line in dev.read_text().splitlines()]
    for row in rows:
        for ctx in row["ctxs"]:
            del ctx["is_gold"]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval.json"
    cli.main(["evaluate", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(out),
              f"data.dev_path={unlabelled}", f"run.run_dir={tmp_path / 'run'}", "run.progress=false"])
    printed = capsys.readouterr().out
    assert "no is_gold labels" in printed and "answer R@2" in printed and "R@2 all" not in printed
    result = json.loads(out.read_text())
    assert result["labelled"] is False and "ranking" not in result
    free = result["label_free"]
    for key in ("answer_recall@2", "answer_recall@5", "em", "f1", "loss_hard"):
        assert free[key]["lo"] <= free[key]["mean"] <= free[key]["hi"], key
    assert free["loss_hard"]["mean"] == pytest.approx(result["loss"]["loss_hard"], abs=1e-6)
    assert free["em"]["mean"] == pytest.approx(result["reader"]["em"], abs=1e-9)
    # answer recall@5 from the scores of the same reranker, by hand
    import torch

    from gr_train.evaluate import score_records
    from gr_train.models import build_models

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"data.dev_path={unlabelled}"])
    torch.manual_seed(cfg.run.seed)
    _, reranker = build_models(cfg)
    records = load_records(unlabelled)
    scores = score_records(reranker, records, cfg.data.n_candidates)
    hits = [float(any(r.ctxs[i].has_answer for i in torch.argsort(s, descending=True, stable=True)[:5].tolist()))
            for r, s in zip(records, scores)]
    assert free["answer_recall@5"]["mean"] == pytest.approx(sum(hits) / len(hits), abs=1e-9)


def test_partly_labelled_data_is_refused_naming_the_gap(tmp_path):
    import json

    from gr_train import checks, synthetic
    from gr_train.checks import DataError
    from gr_train.config import load_config
    from gr_train.data import load_records

    REPO = Path(__file__).resolve().parents[1]
    cfg = load_config(REPO / "configs" / "demo.yaml", ["synthetic.n_train=4", "synthetic.n_dev=4"])
    _, dev = synthetic.write_demo_data(cfg.synthetic, tmp_path / "data", 0)
    rows = [json.loads(line) for line in dev.read_text().splitlines()]
    del rows[1]["ctxs"][3]["is_gold"]
    path = tmp_path / "partly.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ctxs\[3\]\.is_gold"):
        checks.check_data(cfg, {"dev": (str(path), load_records(path))}, labelled=("dev",), labels_required=False)
