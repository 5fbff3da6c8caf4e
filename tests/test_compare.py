"""`gr-train compare` on tiny models: one init per seed, mean ± std over seeds, table and plot, skipping finished
runs, the label-free columns (beside the gold ones, or alone on unlabelled dev data), and the CLI on a hand-written
FiD file."""

import copy
import json
import math
import random
import statistics
from pathlib import Path

import pytest
import torch

from gr_train import cli, compare, models, objectives, synthetic, train
from gr_train.config import ConfigError, load_config
from gr_train.data import load_split
from gr_train.evaluate import answer_recall, evaluate, hard_topk_loss, score_records
from gr_train.ranking import nanmean
from helpers import POINTWISE_STRAIGHT_THROUGH

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ["gumbel", "supervised"]
SEEDS = [0, 1]
MAX_STEPS = 3


def tiny_cfg(root: Path, *overrides):
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        "run.progress=false", "reranker.kind=cross_encoder", "gumbel.k=2", "gumbel.tau_end=null", "eval.ks=[2, 5]",
        "synthetic.n_train=24", "synthetic.n_dev=12",
        "reader.name_or_path=null", "reader.random_init=true",  # a tiny random reader, on purpose
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32}",
        f"train.max_steps={MAX_STEPS}", "train.micro_batch_size=4", "train.log_every_steps=1", "optim.lr=1e-3",
        "optim.warmup_steps=0", "train.eval_every_steps=0",
        # pointwise: a conditional reranker's loss_soft and gap are NaN (no training mask reads its scores), and the
        # first test compares compare.json with the summary by equality
        *POINTWISE_STRAIGHT_THROUGH, *overrides,
    ])
    data = root / "data"
    if not data.exists():
        synthetic.write_demo_data(cfg.synthetic, data, seed=0)
    cfg.data.train_path, cfg.data.dev_path = str(data / "train.jsonl"), str(data / "dev.jsonl")
    return cfg


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = tiny_cfg(root)
    summary = compare.run_compare(cfg, OBJECTIVES, SEEDS, root / "out")
    return cfg, root / "out", summary


def test_json_has_every_row_and_metric_with_mean_and_std_of_the_seeds(done):
    cfg, out, summary = done
    assert json.loads((out / "compare.json").read_text()) == summary
    rows = summary["rows"]
    assert list(rows) == ["untrained", *OBJECTIVES, *compare.REFERENCES]
    table_keys = [key for _, key in compare.table_columns(cfg.eval.ks)]
    for name in ["untrained", *OBJECTIVES]:
        expected = table_keys if name != "untrained" else [k for k in table_keys if k != "s_per_query"]
        for key in expected:
            values = [rows[name]["per_seed"][str(s)][key] for s in SEEDS]
            assert rows[name]["mean"][key] == pytest.approx(statistics.fmean(values)), (name, key)
            assert rows[name]["std"][key] == pytest.approx(statistics.stdev(values)), (name, key)
    for name in compare.REFERENCES:
        assert set(rows[name]["mean"]) == {"em", "f1"}
        assert all(0.0 <= rows[name]["per_seed"][str(s)]["em"] <= 1.0 for s in SEEDS)
    for obj in OBJECTIVES:
        for s in SEEDS:
            m = rows[obj]["per_seed"][str(s)]
            assert 0.0 <= m["recall@2_indirect"] <= 1.0 and 0.0 <= m["ndcg@5_direct"] <= 1.0
            assert m["gap"] == pytest.approx(m["loss_hard"] - m["loss_soft"])
            run = json.loads((out / obj / f"seed-{s}" / compare.RESULT_FILE).read_text())
            assert run["steps"] == MAX_STEPS
            assert m["s_per_query"] == pytest.approx(run["train_s"] / (MAX_STEPS * cfg.train.micro_batch_size))
            assert m["s_per_query"] > 0
    # Seeds give different initial rerankers, so the spread over seeds is not trivially zero.
    assert rows["untrained"]["std"]["w_std"] > 0


def test_markdown_and_png(done):
    cfg, out, summary = done
    md = (out / "compare.md").read_text()
    for name in summary["rows"]:
        assert f"| {name} |" in md
    assert "R@2 indirect" in md and "NDCG@5 direct" in md and "MRR all" in md and "s/query" in md
    # the label-free columns beside the gold ones, named in the note above the table
    assert "| answer R@2 | answer R@5 | EM | F1 | hard top-k loss |" in md and "Gold columns" in md
    assert summary["labelled"] is True and summary["dev_questions"] == 12
    m = summary["rows"][OBJECTIVES[0]]
    assert f"{m['mean']['recall@2']:.3f} ± {m['std']['recall@2']:.3f}" in md
    # The frozen reader's report on the dev set (first seed's reader), with its table in compare.md.
    report = summary["reader_report"]
    assert report["questions"] == 12 and "per_question" not in report
    assert "Reader report on the dev set" in md and f"{report['nll']['all']['mean']:.3f}" in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out / "compare.png").shape
    assert width > 500 and height > 200
    # The curve has a point per eval_every_steps (default max_steps // 10, here 1) in every run's scalars.
    curve = compare.eval_curve(out / OBJECTIVES[0] / "seed-0", "eval/recall@2_indirect")
    assert sorted(curve) == list(range(1, MAX_STEPS + 1))


def untrained_by_hand(cfg, seed: int, dev: list) -> dict[str, float]:
    """Answer recall@k (eval.ks) and the hard top-k loss of the seed's untrained reranker, built and scored here:
    evaluate.answer_recall (mean over the non-yes/no questions) and evaluate.hard_topk_loss."""
    c = copy.deepcopy(cfg)
    c.run.seed = seed
    reader, reranker = compare.build_initial(c)
    scores = score_records(reranker, dev, c.data.n_candidates, c.eval.batch_size, depth=c.selection_depth())
    out = {key: nanmean(values)[0] for key, values in answer_recall(dev, scores, c.eval.ks).items()}
    return {**out, "loss_hard": hard_topk_loss(scores, reader, dev, c, c.eval.batch_size)}


def test_labelled_compare_gives_answer_recall_beside_the_gold_metrics(done):
    """The untrained row's answer recall@k is evaluate.answer_recall of the seed's reranker, computed by hand; the
    intervals cover the gold and the label-free metrics at the reader's k."""
    cfg, out, summary = done
    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    for s in SEEDS:
        got = summary["rows"]["untrained"]["per_seed"][str(s)]
        for key, value in untrained_by_hand(cfg, s, dev).items():
            assert got[key] == pytest.approx(value, abs=1e-6), (s, key)
        assert {"recall@2", "ndcg@5_indirect", "mrr"} <= set(got)
    assert set(summary["intervals"]["rows"]["untrained"]) == {
        "recall@2", "recall@2_direct", "recall@2_indirect", "coverage@2", "answer_recall@2", "em", "f1", "loss_hard"}


def test_untrained_row_is_a_fresh_seeded_reranker_and_every_objective_starts_from_it(done):
    cfg, out, summary = done
    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    checksums = set()
    for s in SEEDS:
        c = copy.deepcopy(cfg)
        c.run.seed = s
        torch.manual_seed(s)  # an independent build, seeded by hand as train.setup seeds it
        random.seed(s)
        reader, reranker = models.build_models(c)
        expected = compare.flatten(evaluate(c, reranker, reader, dev))
        got = summary["rows"]["untrained"]["per_seed"][str(s)]
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (s, key)
        init = compare.param_checksum(reranker)
        checksums.add(init)
        for obj in OBJECTIVES:
            run_dir = out / obj / f"seed-{s}"
            assert json.loads((run_dir / compare.INIT_FILE).read_text())["init_checksum"] == init
            assert json.loads((run_dir / compare.RESULT_FILE).read_text())["init_checksum"] == init
    assert len(checksums) == len(SEEDS)


def test_rerun_skips_finished_runs_and_retrains_only_the_missing_one(done, monkeypatch):
    cfg, out, summary = done
    results = sorted(out.glob(f"*/seed-*/{compare.RESULT_FILE}"))
    assert len(results) == len(SEEDS) * (len(OBJECTIVES) + 1)
    mtimes = {p: p.stat().st_mtime_ns for p in results}
    setups = []
    real_setup = train.setup
    monkeypatch.setattr(train, "setup", lambda c, resume=True: setups.append(c.run.run_dir) or real_setup(c, resume))
    again = compare.run_compare(cfg, OBJECTIVES, SEEDS, out)
    assert setups == [] and again["rows"] == summary["rows"]
    assert {p: p.stat().st_mtime_ns for p in results} == mtimes

    lost = out / OBJECTIVES[0] / "seed-1" / compare.RESULT_FILE  # as if the process died during its evaluation
    lost.unlink()
    again = compare.run_compare(cfg, OBJECTIVES, SEEDS, out)
    assert setups == [str(lost.parent)]
    before, after = summary["rows"][OBJECTIVES[0]]["per_seed"]["1"], again["rows"][OBJECTIVES[0]]["per_seed"]["1"]
    for key in before:
        if key != "s_per_query":  # retraining from the same seed reproduces the run
            assert after[key] == pytest.approx(before[key], abs=1e-5, nan_ok=True), key


def test_a_finished_run_with_another_config_is_refused(done):
    cfg, out, _ = done
    changed = tiny_cfg(out.parent, "train.max_steps=5")
    with pytest.raises(ConfigError, match=compare.RESULT_FILE):
        compare.run_compare(changed, OBJECTIVES, SEEDS, out)


def test_the_reader_report_is_the_first_seeds_reader_on_the_dev_questions(done):
    from gr_train.reader_report import reader_report

    cfg, out, summary = done
    cfg0 = copy.deepcopy(cfg)
    cfg0.run.seed = 0
    reader, _ = compare.build_initial(cfg0)
    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    expected = reader_report(reader, dev, cfg0)
    for c in ("all", "gold", "none"):
        assert summary["reader_report"]["nll"][c]["mean"] == pytest.approx(expected["nll"][c]["mean"], abs=1e-6)
    assert summary["reader_report"]["signal"] == expected["signal"]


def test_a_run_recorded_before_a_config_key_existed_still_counts_as_finished(done, monkeypatch):
    """A key added later keeps the old behaviour at its default: a result file without it is not stale."""
    cfg, out, _ = done
    base = compare.base_config(cfg, {o: o for o in OBJECTIVES}, {})
    cfg = compare.objective_config(base, OBJECTIVES[0], 0, out, [])  # the run's own config
    path = out / OBJECTIVES[0] / "seed-0" / compare.RESULT_FILE
    result = json.loads(path.read_text())
    del result["config"]["eval"]["reader_report"], result["config"]["reader"]["prompt"]
    path.write_text(json.dumps(result))
    monkeypatch.setattr(compare.train, "setup", None)  # any retraining would fail
    assert compare.load_result(path.parent, cfg)["metrics"] == result["metrics"]
    result["config"]["reader"]["answer_eos"] = False  # a recorded value that differs still does
    path.write_text(json.dumps(result))
    with pytest.raises(ConfigError, match=compare.RESULT_FILE):
        compare.load_result(path.parent, cfg)
    result["config"]["reader"]["answer_eos"] = True
    path.write_text(json.dumps(result))


def test_where_the_reader_outputs_are_cached_does_not_make_a_run_different(done, monkeypatch):
    """A finished run is reused when only its caches differ (memory, disk, another folder), and not when a key that
    changes what it computes does."""
    cfg, out, _ = done
    base = compare.base_config(cfg, {o: o for o in OBJECTIVES}, {})
    cfg = compare.objective_config(base, OBJECTIVES[0], 0, out, [])
    path = out / OBJECTIVES[0] / "seed-0" / compare.RESULT_FILE
    monkeypatch.setattr(compare.train, "setup", None)  # any retraining would fail
    metrics = json.loads(path.read_text())["metrics"]
    cfg.objective.cache_passage_states, cfg.objective.passage_state_dir = True, "elsewhere/states"
    cfg.objective.cache_reader_targets = not cfg.objective.cache_reader_targets
    assert compare.load_result(path.parent, cfg)["metrics"] == metrics
    cfg.objective.theta += 1.0
    with pytest.raises(ConfigError, match=compare.RESULT_FILE):
        compare.load_result(path.parent, cfg)


def test_the_suite_section_does_not_make_a_run_different(done, monkeypatch):
    """A suite over more datasets reuses the runs a suite over one made: the suite section is not compared."""
    cfg, out, _ = done
    before = json.loads((out / "compare.json").read_text())["rows"]  # an earlier test may have retrained a run
    widened = copy.deepcopy(cfg)
    widened.suite.datasets = {"another": {"synthetic": {"n_chains": 3}}}
    monkeypatch.setattr(compare.train, "setup", None)  # any retraining would fail
    again = compare.run_compare(widened, OBJECTIVES, SEEDS, out)
    assert json.loads(json.dumps(again["rows"])) == before


def test_an_override_that_changes_the_initial_reranker_is_caught(tmp_path):
    cfg = tiny_cfg(tmp_path)
    other_init = ("reranker.model_config={model_type: bert, hidden_size: 16, num_hidden_layers: 1, "
                  "num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 32}")
    with pytest.raises(RuntimeError, match="did not start from the seed's untrained reranker"):
        compare.run_compare(cfg, ["gumbel"], [0], tmp_path / "out", {"gumbel": [other_init]})


def test_overrides_of_data_budget_or_reader_are_refused(tmp_path):
    cfg = tiny_cfg(tmp_path)
    for bad in ("train.max_steps=10", "data.n_candidates=5", "reader.kind=fid_t5", "eval.ks=[1]"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            compare.objective_config(cfg, "gumbel", 0, tmp_path, [bad])
    assert compare.objective_config(cfg, "gumbel", 3, tmp_path, ["optim.lr=0.5"]).optim.lr == 0.5
    with pytest.raises(ConfigError, match="'pdsit'"):
        compare.run_compare(cfg, ["pdsit"], [0], tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# CLI on a hand-written FiD file
# ---------------------------------------------------------------------------------------------------------------


def fid_rows(n: int, labelled: bool = True) -> list[dict]:
    towns = ["Tacoma", "Oslo", "Lima", "Perth", "Quito", "Hanoi"]
    rows = []
    for i in range(n):
        town = towns[i % len(towns)]
        ctxs = [{"title": f"Book {i}", "text": f"Book {i} was written by Author {i}.", "is_gold": True},
                {"title": f"Author {i}", "text": f"Author {i} was born in {town}.", "is_gold": True},
                {"title": f"Author {i + 50}", "text": f"Author {i + 50} was born in {towns[(i + 1) % 6]}.",
                 "is_gold": False},
                {"title": f"Book {i + 50}", "text": f"Book {i + 50} is a novel.", "is_gold": False}]
        if not labelled:
            for c in ctxs:
                del c["is_gold"]
        rows.append({"id": f"q{i}", "question": f"Where was the author of Book {i} born?", "answers": [town],
                     "ctxs": ctxs})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CLI_OVERRIDES = ["run.progress=false", "reader.random_init=true", "reader.kind=fid_t5", "reader.passage_max_tokens=48",
                 "reader.answer_max_tokens=8", "reranker.kind=cross_encoder", "reranker.max_tokens=64",
                 "reranker.model_config={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                 "intermediate_size: 64, max_position_embeddings: 128}",
                 "data.n_candidates=4", "gumbel.k=2", "eval.ks=[1, 2]", "train.max_steps=2",
                 "train.micro_batch_size=4", "train.log_every_steps=1"]


def test_cli_compare_on_a_fid_jsonl_file(tmp_path, capsys):
    train_file = write_jsonl(tmp_path / "my_train.jsonl", fid_rows(8))
    dev_file = write_jsonl(tmp_path / "my_dev.jsonl", fid_rows(6))
    out = tmp_path / "cmp"
    rc = cli.main(["compare", "--train", str(train_file), "--dev", str(dev_file), "--objectives", "gumbel",
                   "--seeds", "0", "--out", str(out), "--set", "gumbel:optim.lr=0.01", *CLI_OVERRIDES])
    assert rc == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["seeds"] == [0] and summary["overrides"] == {"gumbel": ["optim.lr=0.01"]}
    assert summary["rows"]["gumbel"]["std"]["mrr"] == 0.0  # one seed
    assert math.isfinite(summary["rows"]["gumbel"]["mean"]["mrr"])
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(out / "gumbel" / "seed-0" / "config.yaml").optim.lr == 0.01
    # every dev question has a bridge (indirect) and an answer (direct) gold passage among its 4 candidates
    assert summary["counts"] == {"questions": 6, "direct": 6, "indirect": 6, "yes_no": 0, "with_gold": 6,
                                 "no_gold": 0, "lost_gold": 0, "all_gold": 0}
    printed = capsys.readouterr().out
    assert "| gumbel |" in printed
    assert "Dev: 6 questions: 6 with a direct and 6 with an indirect gold passage, 0 yes/no." in printed


def test_cli_compare_refuses_a_partly_labelled_dev_file(tmp_path, capsys):
    """is_gold on every dev passage (gold and label-free columns) or on none (label-free columns): a file with some
    labels missing is refused before any training, naming the gap."""
    train_file = write_jsonl(tmp_path / "my_train.jsonl", fid_rows(8))
    rows = fid_rows(6)
    del rows[2]["ctxs"][1]["is_gold"]
    dev_file = write_jsonl(tmp_path / "partly_dev.jsonl", rows)
    rc = cli.main(["compare", "--train", str(train_file), "--dev", str(dev_file), "--out", str(tmp_path / "cmp"),
                   *CLI_OVERRIDES])
    assert rc == 2
    err = capsys.readouterr().err
    assert "partly_dev.jsonl" in err and "ctxs[1].is_gold" in err and "no is_gold label" in err
    assert not (tmp_path / "cmp").exists()  # refused before any training


# ---------------------------------------------------------------------------------------------------------------
# Unlabelled dev data: the label-free columns alone
# ---------------------------------------------------------------------------------------------------------------

UNLABELLED_ROWS = ["gumbel"]


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """The tiny comparison with the demo dev file's is_gold removed (train file unchanged)."""
    from helpers import strip_labels

    root = tmp_path_factory.mktemp("compare_unlabelled")
    cfg = tiny_cfg(root)
    cfg.data.dev_path = str(strip_labels(cfg.data.dev_path, root / "data" / "dev_unlabelled.jsonl"))
    summary = compare.run_compare(cfg, UNLABELLED_ROWS, SEEDS, root / "out")
    return cfg, root / "out", summary


def test_unlabelled_dev_gives_the_label_free_columns_with_the_untrained_values_computed_by_hand(unlabelled):
    cfg, out, summary = unlabelled
    assert summary["labelled"] is False and "counts" not in summary and "reader_report" not in summary
    rows = summary["rows"]
    # no reader-only row that needs gold labels
    assert list(rows) == ["untrained", *UNLABELLED_ROWS, "reader: all passages", "reader: no passages"]
    keys = [key for _, key in compare.table_columns(cfg.eval.ks, with_labels=False)]
    assert keys == ["answer_recall@2", "answer_recall@5", "em", "f1", "loss_hard", "gap", "s_per_query"]
    for name in ["untrained", *UNLABELLED_ROWS]:
        metrics = rows[name]["per_seed"]["0"]
        assert set(keys) - {"s_per_query"} <= set(metrics), name
        assert not [k for k in metrics if k.startswith(("recall@", "ndcg@", "mrr", "coverage@"))], name
    dev = load_split(cfg.data.dev_path, cfg.data.n_candidates, "dev")
    for s in SEEDS:
        for key, value in untrained_by_hand(cfg, s, dev).items():
            assert rows["untrained"]["per_seed"][str(s)][key] == pytest.approx(value, abs=1e-6), (s, key)
    md = (out / "compare.md").read_text()
    assert "| row | answer R@2 | answer R@5 | EM | F1 | hard top-k loss | gap (hard-soft loss) | s/query |" in md
    assert "Dev data without is_gold labels (12 questions): the label-free columns only" in md
    assert "R@2 all" not in md and "NDCG" not in md and "MRR" not in md and "coverage@" not in md
    assert "Reader report" not in md and "Dev: 12 questions" not in md
    u = rows["untrained"]
    assert f"| untrained | {u['mean']['answer_recall@2']:.3f} ± {u['std']['answer_recall@2']:.3f} |" in md
    # intervals: the label-free metrics at the reader's k; the untrained mean pools the seeds' questions
    iv = summary["intervals"]
    assert set(iv["rows"]["untrained"]) == {"answer_recall@2", "em", "f1", "loss_hard"}
    assert iv["rows"]["untrained"]["answer_recall@2"]["mean"] == pytest.approx(u["mean"]["answer_recall@2"])
    assert set(iv["differences"]["gumbel - untrained"]) == {"answer_recall@2", "em", "f1", "loss_hard"}
    assert "| answer_recall@2 | em | f1 | loss_hard |" in md


def test_unlabelled_compare_plots_answer_recall_and_the_dev_loss_logged_in_training(unlabelled):
    """compare.png's curves come from each run's eval/answer_recall@k and eval/dev_loss_hard (the best/ metric);
    their last points are the run's final evaluation."""
    cfg, out, summary = unlabelled
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert compare.plot_panels(2, with_labels=False)[0][:2] == ("answer_recall@2", "eval/answer_recall@2")
    for s in SEEDS:
        run_dir = out / "gumbel" / f"seed-{s}"
        final = summary["rows"]["gumbel"]["per_seed"][str(s)]
        recall = compare.eval_curve(run_dir, "eval/answer_recall@2")
        loss = compare.eval_curve(run_dir, "eval/dev_loss_hard")
        assert sorted(recall) == sorted(loss) == list(range(1, MAX_STEPS + 1))
        assert recall[MAX_STEPS] == pytest.approx(final["answer_recall@2"], abs=1e-9)
        assert loss[MAX_STEPS] == pytest.approx(final["loss_hard"], abs=1e-5)
        assert not compare.eval_curve(run_dir, "eval/recall@2")


def test_a_recorded_run_is_read_with_the_defaults_it_ran_with(done, monkeypatch):
    """gumbel.kl_reference's default changed (conditional, then pointwise): a result recorded without the key ran
    with the conditional reference, so it counts as finished for kl_reference=conditional and not for pointwise
    while the KL penalty is on; with the penalty off the reference changes nothing and is not compared."""
    cfg, out, _ = done
    base = compare.base_config(cfg, {o: o for o in OBJECTIVES}, {})
    cfg = compare.objective_config(base, OBJECTIVES[0], 0, out, [])
    path = out / OBJECTIVES[0] / "seed-0" / compare.RESULT_FILE
    original = path.read_text()
    result = json.loads(original)
    del result["config"]["gumbel"]["kl_reference"]
    result["config"]["gumbel"]["kl_coef"] = cfg.gumbel.kl_coef = 0.1
    path.write_text(json.dumps(result))
    monkeypatch.setattr(compare.train, "setup", None)  # any retraining would fail
    try:
        cfg.gumbel.kl_reference = "conditional"
        assert compare.load_result(path.parent, cfg)["metrics"] == result["metrics"]
        cfg.gumbel.kl_reference = "pointwise"
        with pytest.raises(ConfigError, match=compare.RESULT_FILE):
            compare.load_result(path.parent, cfg)
        result["config"]["gumbel"]["kl_coef"] = cfg.gumbel.kl_coef = 0.0
        path.write_text(json.dumps(result))
        for reference in ("conditional", "pointwise"):
            cfg.gumbel.kl_reference = reference
            assert compare.load_result(path.parent, cfg)["metrics"] == result["metrics"]
        cfg.gumbel.kl_coef = 0.1  # the penalty itself still counts
        with pytest.raises(ConfigError, match=compare.RESULT_FILE):
            compare.load_result(path.parent, cfg)
    finally:
        path.write_text(original)
