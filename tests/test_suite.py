"""`gr-train suite`: one comparison per dataset, read from the published formats, in one command."""

import json
from pathlib import Path

import pytest

from gr_train import cli
from gr_train.config import ConfigError, load_config
from gr_train.data import DataError
from gr_train.suite import dataset_config, heatmap_metrics, run_suite

DATA = Path(__file__).resolve().parents[1] / "data"  # the vendored samples, data/README.md
HOTPOT_TRAIN = DATA / "hotpotqa" / "train_sample_hipporag.json"
HOTPOT_DEV = DATA / "hotpotqa" / "dev_distractor_head53_rakin061.json"
WIKI_TRAIN = DATA / "2wikimultihopqa" / "train_sample_migres.json"
WIKI_DEV = DATA / "2wikimultihopqa" / "dev_sample_migres.json"

TINY = [
    "run.progress=false", "reader.random_init=true", "reader.kind=fid_t5", "reader.passage_max_tokens=48", "reader.answer_max_tokens=8",
    "reader.model_config={d_model: 32, d_kv: 8, d_ff: 64, num_layers: 1, num_decoder_layers: 1, num_heads: 2}",
    "reranker.kind=cross_encoder", "reranker.max_tokens=48",
    "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
    "intermediate_size: 64, max_position_embeddings: 64}",
    "gumbel.k=2", "data.n_candidates=6", "eval.ks=[2, 5]", "train.max_steps=2", "train.micro_batch_size=4",
    "suite.max_train=8", "suite.max_dev=6", "suite.objectives=[gumbel, pdist]", "suite.seeds=[0]",
]


def suite_cfg(tmp_path, *overrides):
    datasets = {"hotpotqa": {"train": str(HOTPOT_TRAIN), "dev": str(HOTPOT_DEV)},
                "2wiki": {"train": str(WIKI_TRAIN), "dev": str(WIKI_DEV), "format": "2wiki",
                          "overrides": ["data.n_candidates=4", "eval.ks=[2, 4]"]}}
    return load_config(None, [*TINY, f"run.run_dir={tmp_path / 'out'}", f"suite.datasets={json.dumps(datasets)}",
                              *overrides])


def test_suite_compares_every_dataset_from_its_published_format(tmp_path):
    cfg = suite_cfg(tmp_path, "suite.only=[2wiki]")
    cfg.suite.datasets["hotpotqa"]["dev"] = str(tmp_path / "missing.json")  # left out by suite.only: not read
    assert list(run_suite(cfg, tmp_path / "out")["datasets"]) == ["2wiki"]
    assert not (tmp_path / "out" / "hotpotqa").exists()
    cfg = suite_cfg(tmp_path)
    results = run_suite(cfg, tmp_path / "out")  # the 2wiki runs are found finished and kept
    assert list(results["datasets"]) == ["hotpotqa", "2wiki"]
    for name, n in (("hotpotqa", 6), ("2wiki", 4)):
        d = results["datasets"][name]
        assert (d["train_questions"], d["dev_questions"]) == (8, 6)
        rows = d["compare"]["rows"]
        assert {"untrained", "gumbel", "pdist", "reader: all passages"} <= set(rows)
        assert 0 <= rows["gumbel"]["mean"]["recall@2"] <= 1
        run_cfg = load_config(tmp_path / "out" / name / "gumbel" / "seed-0" / "config.yaml")
        assert run_cfg.data.n_candidates == n  # the dataset's own override
        dev = (tmp_path / "out" / name / "data" / "dev.jsonl").read_text().splitlines()
        assert len(dev) == 6 and all(len(json.loads(line)["ctxs"]) == 10 for line in dev)  # cut at training time
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## hotpotqa" in md and "## 2wiki" in md and "| gumbel |" in md
    assert md.count("Dev: 6 questions:") == 2  # the question counts under each dataset's table
    assert md.count("Reader report on the dev set") == 2  # one per dataset
    assert json.loads((tmp_path / "out" / "suite.json").read_text())["wall_s"] > 0


def test_a_dataset_without_dev_labels_gets_the_label_free_columns_and_the_same_label_free_values(tmp_path):
    """The same HotpotQA questions twice, once with the dev file's is_gold removed: that dataset's table and heat
    map column have the label-free metrics only, with the very values of the labelled dataset (labels change no
    run); the heat map adds answer recall next to the gold metrics."""
    from helpers import strip_labels

    from gr_train.data import from_hotpotqa, save_records

    save_records(from_hotpotqa(HOTPOT_DEV), tmp_path / "dev.jsonl")
    unlabelled = strip_labels(tmp_path / "dev.jsonl", tmp_path / "dev_unlabelled.jsonl")
    datasets = {"labelled": {"train": str(HOTPOT_TRAIN), "dev": str(HOTPOT_DEV)},
                "unlabelled": {"train": str(HOTPOT_TRAIN), "dev": str(unlabelled)}}
    cfg = load_config(None, [*TINY, f"run.run_dir={tmp_path / 'out'}", f"suite.datasets={json.dumps(datasets)}",
                             "suite.objectives=[gumbel]"])
    results = run_suite(cfg, tmp_path / "out")
    gold, free = (results["datasets"][name]["compare"] for name in ("labelled", "unlabelled"))
    assert gold["labelled"] is True and free["labelled"] is False
    for row in ("untrained", "gumbel"):
        for key, value in free["rows"][row]["mean"].items():
            if key != "s_per_query":
                assert value == pytest.approx(gold["rows"][row]["mean"][key], abs=1e-6), (row, key)
        assert "answer_recall@2" in free["rows"][row]["mean"] and "recall@2" not in free["rows"][row]["mean"]
    assert heatmap_metrics(results) == ["recall@2_indirect", "coverage@2", "answer_recall@2", "em"]
    md = (tmp_path / "out" / "results.md").read_text()
    labelled_md, unlabelled_md = md.split("## labelled")[1].split("## unlabelled")
    assert "R@2 all" in labelled_md and "answer R@2" in labelled_md and "Reader report on the dev set" in labelled_md
    assert "the label-free columns only" in unlabelled_md and "answer R@2" in unlabelled_md
    assert "R@2 all" not in unlabelled_md and "Reader report" not in unlabelled_md
    assert "| unlabelled | – | – | gumbel | gumbel |" in md  # no gold metric to rank by
    assert (tmp_path / "out" / "suite.png").stat().st_size > 10_000


def test_a_bad_dataset_fails_before_any_training(tmp_path):
    cfg = suite_cfg(tmp_path)
    cfg.suite.datasets["2wiki"]["dev"] = str(tmp_path / "missing.json")
    with pytest.raises(DataError, match="missing.json"):
        run_suite(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "hotpotqa" / "gumbel").exists()
    cfg.suite.datasets["2wiki"] = {"train": str(WIKI_TRAIN)}
    with pytest.raises(ConfigError, match="suite.datasets.2wiki"):
        run_suite(cfg, tmp_path / "out")
    cfg.suite.only = ["hotpotqa", "musique"]
    with pytest.raises(ConfigError, match=r"suite.only: \['musique'\] not in suite.datasets"):
        run_suite(cfg, tmp_path / "out")


def test_cli_suite_exits_2_on_a_config_error(tmp_path, capsys):
    assert cli.main(["suite", *TINY, f"run.run_dir={tmp_path}"]) == 2
    assert "suite.datasets" in capsys.readouterr().err


def test_real_recipe_finds_its_samples_from_the_repository_root(tmp_path, monkeypatch):
    """configs/real.yaml names its datasets relative to the working directory, as the README runs it: from the
    repository root, every file is the vendored sample, cut to the suite's 16 + 16 questions."""
    monkeypatch.chdir(DATA.parent)
    cfg = load_config("configs/real.yaml")
    assert list(cfg.suite.datasets) == ["hotpotqa", "2wiki", "musique"]
    for name, spec in cfg.suite.datasets.items():
        assert all(Path(spec[split]).resolve().parent.parent == DATA for split in ("train", "dev")), spec
        dcfg, n_train, n_dev = dataset_config(cfg, name, spec, tmp_path)
        assert (n_train, n_dev) == (16, 16)
        dev = [json.loads(line) for line in Path(dcfg.data.dev_path).read_text().splitlines()]
        assert len(dev) == 16 and all(sum(c["is_gold"] for c in r["ctxs"]) >= 2 for r in dev), name


def test_a_structure_study_on_generated_settings_with_variant_rows_writes_a_heat_map(tmp_path):
    """suite.datasets entries with `synthetic:` settings are generated; rows may be variants with row_overrides;
    results.md names the best rows per setting and suite.png is written."""
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    settings = {"demo": {"synthetic": {}},
                "dup_gold": {"synthetic": {"gold_copies": 2, "n_chains": 3, "bridge_distractors": 2}}}
    cfg = load_config(demo, [
        "run.progress=false", "reranker.kind=cross_encoder", "gumbel.k=2", "gumbel.tau_end=null", "eval.ks=[2]",
        "synthetic.n_train=16", "synthetic.n_dev=8", "synthetic.n_chains=5", "synthetic.topical_distractors=0",
        "synthetic.shortcut_fraction=0", "reader.name_or_path=null", "reader.random_init=true",
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32}", "train.max_steps=2", "train.micro_batch_size=4",
        "suite.objectives=[gumbel, gumbel_st=gumbel]", "suite.seeds=[0]",
        'suite.row_overrides={gumbel_st: ["gumbel.estimator=straight_through"]}',
        f"suite.datasets={json.dumps(settings)}"])
    results = run_suite(cfg, tmp_path / "out")
    dev = [json.loads(x) for x in (tmp_path / "out" / "dup_gold" / "data" / "dev.jsonl").read_text().splitlines()]
    golds = [sum(c["is_gold"] for c in r["ctxs"]) for r in dev]
    assert len(dev) == 8 and set(golds) <= {2, 4} and 4 in golds  # one gold fact (one-hop) or two, twice each
    assert all(len(r["ctxs"]) == 3 * 2 + g // 2 + 2 for r, g in zip(dev, golds))  # chains + copies + singles
    st = load_config(tmp_path / "out" / "dup_gold" / "gumbel_st" / "seed-0" / "config.yaml")
    # the run's config keeps the setting's generator knobs (its reranker tokenizer is built from them)
    assert st.gumbel.estimator == "straight_through" and st.synthetic.gold_copies == 2
    assert results["datasets"]["dup_gold"]["synthetic"] == {"gold_copies": 2, "n_chains": 3, "bridge_distractors": 2}
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Best rows per dataset" in md and "| dup_gold |" in md and "coverage@2" in md
    assert (tmp_path / "out" / "suite.png").stat().st_size > 10_000


def test_reader_fine_tuning_runs_once_before_the_comparisons_and_every_row_reads_its_reader(tmp_path, monkeypatch):
    """suite.reader_tuning: the report of the configured reader on the dev questions, one reader fine-tuning run on
    the training questions (here with 47 of the 53 dev questions moved to training: dev_for_train), then every row
    reads the fine-tuned reader; a second run trains nothing."""
    datasets = {"hotpotqa": {"train": str(HOTPOT_TRAIN), "dev": str(HOTPOT_DEV), "dev_for_train": 47}}
    cfg = load_config(None, [*TINY, f"suite.datasets={json.dumps(datasets)}", "suite.max_train=0",
                             "suite.reader_tuning=[objective.name=reader, reader.trainable=true, train.max_steps=2]"])
    results = run_suite(cfg, tmp_path / "out")
    tuning, d = results["reader_tuning"], results["datasets"]["hotpotqa"]
    assert (d["train_questions"], d["dev_questions"]) == (100 + 47, 6)
    assert tuning["train_questions"] == 147 and tuning["steps"] == 2
    assert Path(tuning["path"]) == tmp_path / "out" / "reader" / "run" / "final" / "reader"
    assert (Path(tuning["path"]) / "model.safetensors").is_file()
    assert tuning["before"]["hotpotqa"]["questions"] == 6
    run_cfg = load_config(tmp_path / "out" / "hotpotqa" / "gumbel" / "seed-0" / "config.yaml")
    assert run_cfg.reader.name_or_path == tuning["path"] and run_cfg.reader.trainable is False
    after = d["compare"]["reader_report"]
    assert after["reader"]["name_or_path"] == tuning["path"] and after["questions"] == 6
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Reader fine-tuning" in md and "### hotpotqa, before fine-tuning" in md
    import gr_train.train

    monkeypatch.setattr(gr_train.train, "main", None)  # any training would fail
    monkeypatch.setattr(gr_train.train, "setup", None)
    again = run_suite(cfg, tmp_path / "out")
    assert json.dumps(again["reader_tuning"]) == json.dumps(tuning)  # NaN-safe equality


def test_dev_for_train_and_reader_tuning_are_checked(tmp_path):
    datasets = {"hotpotqa": {"train": str(HOTPOT_TRAIN), "dev": str(HOTPOT_DEV), "dev_for_train": 53}}
    cfg = load_config(None, [*TINY, f"suite.datasets={json.dumps(datasets)}"])
    with pytest.raises(ConfigError, match="dev_for_train"):
        run_suite(cfg, tmp_path / "out")
    datasets["hotpotqa"]["dev_for_train"] = 3
    cfg = load_config(None, [*TINY, f"suite.datasets={json.dumps(datasets)}",
                             "suite.reader_tuning=[train.max_steps=2]"])
    with pytest.raises(ConfigError, match="objective.name=reader"):
        run_suite(cfg, tmp_path / "out")


def test_the_real_study_evaluates_at_least_150_dev_questions_per_dataset_never_trained_on(tmp_path, monkeypatch):
    """configs/real_study.yaml: HotpotQA and MuSiQue move their last dev questions to training (100 training
    questions each), 2Wiki keeps its 500; every dataset evaluates >= 150 questions that no run trains on; the reader
    fine-tuning run is a reader run in the study's prompt format."""
    from gr_train.suite import tuning_config

    monkeypatch.chdir(DATA.parent)
    cfg = load_config("configs/real_study.yaml")
    sizes = {}
    for name, spec in cfg.suite.datasets.items():
        dcfg, n_train, n_dev = dataset_config(cfg, name, spec, tmp_path)
        sizes[name] = (n_train, n_dev, dcfg.data.n_candidates)
        ids = lambda path: {json.loads(line)["id"] for line in Path(path).read_text().splitlines()}  # noqa: E731
        assert not ids(dcfg.data.train_path) & ids(dcfg.data.dev_path), name
    assert sizes == {"hotpotqa": (149, 150, 10), "2wiki": (500, 164, 10), "musique": (150, 150, 20)}
    rcfg = tuning_config(cfg, tmp_path / "train.jsonl", tmp_path / "run")
    assert rcfg.objective.name == "reader" and rcfg.reader.trainable and rcfg.reader.prompt == cfg.reader.prompt
    # the rows read the frozen reader's passage states from disk; the reader's own fine-tuning caches nothing
    assert cfg.objective.cache_passage_states and cfg.objective.passage_state_dir
    assert not rcfg.objective.cache_passage_states and rcfg.objective.passage_state_dir is None
    assert cfg.gumbel.k == 5 and cfg.suite.seeds == [0, 1] and cfg.suite.row_overrides["gumbel_st"] == [
        "gumbel.estimator=straight_through", "gumbel.tau_end=null"]


def test_a_suite_run_in_parts_tunes_one_reader_on_every_datasets_training_questions(tmp_path):
    """suite.only runs a part of the datasets, but the fine-tuned reader is the whole suite's: trained on every
    dataset's training questions and reported before tuning on every dev set, once, for all parts."""
    datasets = {"hotpotqa": {"train": str(HOTPOT_TRAIN), "dev": str(HOTPOT_DEV), "dev_for_train": 47},
                "2wiki": {"train": str(WIKI_TRAIN), "dev": str(WIKI_DEV)}}
    tuning = "suite.reader_tuning=[objective.name=reader, reader.trainable=true, train.max_steps=1]"
    cfg = load_config(None, [*TINY, f"suite.datasets={json.dumps(datasets)}", "suite.max_train=0", tuning,
                             "suite.only=[2wiki]", "suite.objectives=[pdist]"])
    results = run_suite(cfg, tmp_path / "out")
    assert list(results["datasets"]) == ["2wiki"]
    assert results["reader_tuning"]["train_questions"] == 147 + 500
    assert set(results["reader_tuning"]["before"]) == {"hotpotqa", "2wiki"}
