"""The command line a new user meets (one test per kind of mistake): every mistake ends in one `gr-train: error:`
line naming the key, file or value and the fix, with exit code 2 and no traceback, before any model is built;
config mistakes before torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gr_train import checks, cli, compare, models, synthetic
from gr_train.config import load_config, save_config
from gr_train.data import from_hotpotqa, load_records, save_records
from gr_train.reranker import Reranker

REPO = Path(__file__).resolve().parents[1]
HOTPOT = REPO / "data" / "hotpotqa" / "dev_distractor_head53_rakin061.json"
DEMO = str(REPO / "configs" / "demo.yaml")
TINY_RERANKER = ("reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
                 "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 32}")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("demo_data")
    cfg = load_config(DEMO, ["synthetic.n_train=16", "synthetic.n_dev=12"])
    synthetic.write_demo_data(cfg.synthetic, d, 0)
    return d


@pytest.fixture
def no_models(monkeypatch):
    """Building a model fails the test: the mistake must be reported before."""
    def refuse(*a, **k):
        raise AssertionError("a model was built before the mistake was reported")
    monkeypatch.setattr(models, "build_models", refuse)


def error_line(capsys) -> str:
    """The one `gr-train: error:` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gr-train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# 1. a frozen reader with no weights ----------------------------------------------------------------------------


def test_a_frozen_reader_without_weights_is_refused_unless_asked_for(demo_data, capsys, no_models):
    for argv in (["train", f"data.train_path={demo_data / 'train.jsonl'}"],
                 ["evaluate", f"data.dev_path={demo_data / 'dev.jsonl'}"],
                 ["evaluate", "--config", DEMO, f"data.dev_path={demo_data / 'dev.jsonl'}", "reader.name_or_path=null"]):
        assert cli.main(argv) == 2
        line = error_line(capsys)
        assert "reader.name_or_path: not set" in line and "reader.random_init=true" in line
    # asked for: the config passes (the reader pre-training objective needs no opt-in either)
    checks.check_config(load_config(None, ["reader.random_init=true", "data.train_path=README.md"]), "train")
    checks.check_config(load_config(None, ["objective.name=reader"]), "train")


def test_the_demo_config_names_the_shipped_reader():
    cfg = load_config(DEMO)
    assert cfg.reader.name_or_path == "gr_train/assets/demo_reader_topical"
    assert (REPO / cfg.reader.name_or_path / "model.safetensors").is_file()


# 2. data the models cannot read ------------------------------------------------------------------------------


def test_real_text_on_the_demo_config_is_refused_naming_the_config_that_fits(capsys, monkeypatch, no_models):
    monkeypatch.chdir(REPO)
    assert cli.main(["evaluate", "--config", DEMO, f"data.dev_path={HOTPOT}", "--no-reader"]) == 2
    line = error_line(capsys)
    assert str(HOTPOT) in line and "tokens are unknown ([UNK])" in line and "configs/real.yaml" in line


def test_a_question_longer_than_the_demo_readers_decoder_is_refused(demo_data, tmp_path, capsys, monkeypatch,
                                                                      no_models):
    monkeypatch.chdir(REPO)
    records = load_records(demo_data / "dev.jsonl")
    records[0].question = " ".join([records[0].question] * 10)  # known words, 10x as long
    save_records(records, tmp_path / "dev.jsonl")
    assert cli.main(["evaluate", "--config", DEMO, f"data.dev_path={tmp_path / 'dev.jsonl'}"]) == 2
    line = error_line(capsys)
    assert f"(id {records[0].id})" in line and "max_decoder_tokens" in line and "configs/real.yaml" in line


# 3. errors that name the fix ---------------------------------------------------------------------------------


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A finished run's layout: config.yaml, final/reranker (an HF folder), best/reranker."""
    run = tmp_path / "run"
    for sub in ("final/reranker", "best/reranker"):
        (run / sub).mkdir(parents=True)
        (run / sub / "config.json").write_text("{}")
    save_config(load_config(None), run / "config.yaml")
    return run


def test_errors_name_the_fix(demo_data, run_folder, tmp_path, capsys, monkeypatch, no_models):
    monkeypatch.chdir(REPO)
    dev = f"data.dev_path={demo_data / 'dev.jsonl'}"
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(json.dumps({"id": "u1", "question": "q", "answers": ["a"], "ctxs": [{"text": "p"}]}) + "\n")
    # labels on some passages only: evaluation takes all or none (none = the label-free metrics)
    partly = tmp_path / "partly.jsonl"
    partly.write_text(json.dumps({"id": "u2", "question": "q", "answers": ["a"],
                                  "ctxs": [{"text": "p", "is_gold": True}, {"text": "r"}]}) + "\n")
    cases = [
        (["evaluate", "--config", DEMO, dev, "reranker.name_or_path=runs/nope/final/reranker"],
         ["reranker.name_or_path=runs/nope/final/reranker: no such folder", "<run_dir>/final/reranker"]),
        (["evaluate", "--config", DEMO, dev, f"reranker.name_or_path={run_folder}"],
         ["is a run folder", f"reranker.name_or_path={run_folder / 'final' / 'reranker'}", "best"]),
        (["evaluate", "--config", DEMO, dev, f"reranker.name_or_path={run_folder / 'final'}"],
         ["is a checkpoint folder", f"reranker.name_or_path={run_folder / 'final' / 'reranker'}"]),
        (["train", "--config", "."], [".: is a folder, not a config file", "--config configs/demo.yaml"]),
        (["train", "--config", DEMO], ["data.train_path: not set", "gr-train generate"]),
        (["convert", "--format", "hotpot", str(HOTPOT), str(tmp_path / "o.jsonl")],
         ["invalid choice: 'hotpot'", "hotpotqa"]),
        (["convert", str(HOTPOT), "out.txt"], ["out.txt: unknown extension '.txt'", ".jsonl or .json"]),
        (["convert", str(HOTPOT), "."], [". is a folder", "out.jsonl"]),
        (["evaluate", "--config", DEMO, f"data.dev_path={partly}", "data.n_candidates=2", "gumbel.k=1",
          "eval.ks=[1]"],
         [f"{partly} (id u2): field 'ctxs[1].is_gold': no is_gold label", "gr-train convert"]),
        (["evaluate", "--config", DEMO, f"data.dev_path={tmp_path / 'missing.jsonl'}"],
         ["data.dev_path=", "missing.jsonl: no such file"]),
        (["generate", "--out-dir", str(unlabelled)], [f"--out-dir {unlabelled} is a file: give a folder"]),
        (["export", "--run-dir", str(run_folder), "--output", str(unlabelled)],
         [f"--output {unlabelled} is a file: give a folder"]),
    ]
    for argv, expected in cases:
        assert cli.main(argv) == 2, argv
        line = error_line(capsys)
        for text in expected:
            assert text in line, (argv, line)
    assert not (tmp_path / "o.jsonl").exists() and not Path("out.txt").exists()


def test_a_config_error_comes_before_torch_is_imported(tmp_path):
    """In a fresh interpreter: each config mistake is reported with torch, transformers and deepspeed never imported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("gumbel:\n  kapa: 1\n")
    cases = [["train", "--config", str(bad)], ["train", "--config", "."],
             ["train", "--config", str(REPO / "configs" / "demo.yaml")],
             ["evaluate", "data.dev_path=README.md", "reranker.name_or_path=runs/nope/final/reranker"],
             ["evaluate", "data.dev_path=README.md", "reader.random_init=true",
              "reranker.name_or_path=runs/nope/final/reranker"]]
    code = ("import json, sys\nfrom gr_train import cli\nout = []\n"
            f"for argv in {cases!r}:\n"
            "    rc = cli.main(argv)\n"
            "    out.append([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'deepspeed'))])\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    assert results == [[2, []]] * len(cases), proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gr-train: error:")]
    assert len(errors) == len(cases) and "gumbel.kapa" in errors[0] and "reader.name_or_path: not set" in errors[3]


# 4. overrides anywhere among the flags -----------------------------------------------------------------------


def test_overrides_are_taken_anywhere_among_the_flags_and_unknown_flags_are_errors(capsys):
    args = cli.parse(["evaluate", "--config", "C", "data.dev_path=X", "--no-reader", "run.num_threads=1",
                      "--output", "o.json", "eval.ks=[1]"])
    assert args.overrides == ["data.dev_path=X", "run.num_threads=1", "eval.ks=[1]"]
    assert args.no_reader and args.output == "o.json" and args.config == "C"
    assert cli.main(["evaluate", "data.dev_path=X", "--no-reader", "--nope", "run.num_threads=1"]) == 2
    assert "unrecognized arguments: --nope" in error_line(capsys)
    assert cli.main(["convert", "a.json", "b.jsonl", "run.num_threads=1"]) == 2
    assert "takes no section.key=value overrides: run.num_threads=1" in error_line(capsys)


# 5. config that contradicts the data -------------------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ("gumbel.k=12", "gumbel.k=12 is above the 10 candidates per question"),
    ("eval.ks=[2, 20]", "eval.ks[1]=20 is above the 10 candidates per question"),
    ("eval.reader_k=20", "eval.reader_k=20 is above the 10 candidates per question"),
    ("gumbel.k_curriculum=[[100, 6], [50, 11]]", "gumbel.k_curriculum[1]=11 is above the 10 candidates per question"),
    ("data.n_candidates=30", "data.n_candidates=30, but"),
])
def test_k_ks_reader_k_and_n_candidates_above_the_candidates_are_refused(override, expected, demo_data, capsys,
                                                                         monkeypatch, no_models):
    monkeypatch.chdir(REPO)
    for argv in (["train", "--config", DEMO, f"data.train_path={demo_data / 'train.jsonl'}"],
                 ["evaluate", "--config", DEMO, f"data.dev_path={demo_data / 'dev.jsonl'}"]):
        assert cli.main([*argv, override, f"run.run_dir={demo_data / 'never'}"]) == 2
        line = error_line(capsys)
        assert expected in line and ("has at most 10" in line or "has up to 10" in line), line
    assert not (demo_data / "never").exists()


@pytest.mark.parametrize("kind", ["causal_lm", "fid_t5"])
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_an_objective_that_reads_attention_with_a_backend_that_forms_none_is_refused(kind, attn, demo_data, tmp_path,
                                                                                      capsys, monkeypatch, no_models):
    """adist reads the reader's attention probabilities; sdpa / flash attention never form them, so the pair is
    refused by the config checks (for train and for a compare row), not at step 0 with a traceback."""
    monkeypatch.setattr(compare, "build_models", models.build_models)  # the refusing stub of no_models
    pair = ["objective.name=adist", f"reader.kind={kind}", f"reader.attn_implementation={attn}"]
    train = ["train", f"data.train_path={demo_data / 'train.jsonl'}", "reader.random_init=true",
             f"run.run_dir={tmp_path / 'run'}", "run.num_threads=1"]
    assert cli.main([*train, *pair]) == 2
    line = error_line(capsys)
    assert f"objective.name=adist with reader.attn_implementation={attn}" in line
    assert "set reader.attn_implementation=eager" in line
    assert cli.main(["compare", "--train", str(demo_data / "train.jsonl"), "--dev", str(demo_data / "dev.jsonl"),
                     "--objectives", "gumbel,adist", "--out", str(tmp_path / "cmp"), "reader.random_init=true",
                     f"reader.kind={kind}", f"reader.attn_implementation={attn}", "run.num_threads=1"]) == 2
    assert f"objective.name=adist with reader.attn_implementation={attn}" in error_line(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cmp").exists()
    # the possible pairs pass: adist on eager, any other objective on sdpa, the demo reader (own attention) on any
    for ok in (["objective.name=adist", f"reader.kind={kind}", "reader.attn_implementation=eager"],
               ["objective.name=pdist", f"reader.kind={kind}", f"reader.attn_implementation={attn}"],
               ["objective.name=adist", "reader.kind=demo_fid", f"reader.attn_implementation={attn}"]):
        assert load_config(None, ok).objective.name in ("adist", "pdist")


# 6. tables and outputs ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_run(demo_data, tmp_path, monkeypatch):
    """A tiny finished training run (2 steps, random tiny reader on purpose) through the command line."""
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    argv = ["train", "--config", DEMO, f"data.train_path={demo_data / 'train.jsonl'}",
            f"data.dev_path={demo_data / 'dev.jsonl'}", f"run.run_dir={run}", "reader.name_or_path=null",
            "reader.random_init=true", "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
            "reranker.kind=cross_encoder", TINY_RERANKER, "train.max_steps=2", "train.micro_batch_size=4",
            "train.log_every_steps=1", "train.eval_every_steps=0", "run.progress=false"]
    assert cli.main(argv) == 0
    return run, argv


def test_evaluate_prints_counts_and_no_nan_and_writes_next_to_the_reranker(tiny_run, demo_data, capsys):
    run, _ = tiny_run
    capsys.readouterr()
    assert cli.main(["evaluate", "--config", str(run / "config.yaml"), "--no-reader",
                     f"reranker.name_or_path={run / 'final' / 'reranker'}"]) == 0
    out = capsys.readouterr().out
    dev = load_records(demo_data / "dev.jsonl")
    two_hop = sum(r.intermediate is not None for r in dev)
    assert f"{len(dev)} questions: {len(dev)} with a direct and {two_hop} with an indirect gold passage, 0 yes/no" \
        in out
    assert "nan" not in out and "| – | – |" in out and "EM, F1: – = not computed" in out
    result = json.loads((run / "final" / "eval.json").read_text())
    assert result["counts"]["questions"] == len(dev) and result["counts"]["indirect"] == two_hop
    assert not (run / "eval.json").exists()  # not the config's run folder


def test_export_never_shows_the_table_of_another_reranker(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert cli.main(["evaluate", "--config", str(run / "config.yaml"), "--no-reader",
                     f"reranker.name_or_path={run / 'final' / 'reranker'}"]) == 0
    evaluated = json.loads((run / "final" / "eval.json").read_text())
    # the same file next to the run's config, for a run whose reranker is another one now
    (run / "eval.json").write_text(json.dumps(evaluated))
    assert cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "a")]) == 0
    assert "R@2 all" in (tmp_path / "a" / "README.md").read_text()
    other = Reranker.load(run / "final" / "reranker")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    other.save(run / "final" / "reranker")
    assert cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "b")]) == 0
    card = (tmp_path / "b" / "README.md").read_text()
    assert "R@2 all" not in card and "Not evaluated" in card
    capsys.readouterr()
    assert cli.main(["export", "--run-dir", str(run), "--output", str(tmp_path / "c"), "--eval",
                     str(run / "final" / "eval.json")]) == 2
    assert "did not evaluate the reranker" in error_line(capsys)


def test_train_into_a_finished_run_is_refused_unless_overwrite(tiny_run, capsys):
    run, argv = tiny_run
    capsys.readouterr()
    assert cli.main(argv) == 2
    line = error_line(capsys)
    assert f"run.run_dir={run} already holds a run" in line and "--overwrite" in line
    steps = [json.loads(x)["step"] for x in (run / "tb" / "scalars.jsonl").read_text().splitlines()]
    assert cli.main([*argv, "--overwrite"]) == 0
    again = [json.loads(x)["step"] for x in (run / "tb" / "scalars.jsonl").read_text().splitlines()]
    assert again == steps  # one set of curves, not two


def test_running_the_demo_again_replaces_its_run(tmp_path):
    from gr_train.config import ReaderSection, SyntheticSection
    from gr_train.models import build_reader

    reader = build_reader(ReaderSection(kind="demo_fid", passage_max_tokens=8, answer_max_tokens=4,
                                        model_config={"d_model": 32, "n_heads": 2, "d_ff": 64}),
                          synthetic.build_tokenizer(SyntheticSection()))
    reader.save(tmp_path / "reader")
    run = tmp_path / "run"
    argv = ["demo", f"run.run_dir={run}", f"demo.reader_path={tmp_path / 'reader'}", "run.progress=false",
            "synthetic.n_train=16", "synthetic.n_dev=8", "train.max_steps=2", "train.micro_batch_size=8",
            "train.eval_every_steps=0", TINY_RERANKER]
    assert cli.main(argv) == 0
    steps = [json.loads(x)["step"] for x in (run / "tb" / "scalars.jsonl").read_text().splitlines()]
    assert cli.main(argv) == 0
    assert [json.loads(x)["step"] for x in (run / "tb" / "scalars.jsonl").read_text().splitlines()] == steps
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1


# 7. --help and convert ---------------------------------------------------------------------------------------


def test_every_subcommand_has_a_description_an_example_and_its_outputs():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "train", "evaluate", "compare", "suite", "generate", "convert", "index",
                                "retrieve", "structure", "reader-report", "prepare-models", "export", "config", "plan"}
    for name, p in sub.choices.items():
        text = p.format_help()
        assert p.description and len(p.description) > 40, name
        assert f"example:\n  gr-train {name}" in text and "\nwrites:\n  " in text, name


def test_convert_prints_the_detected_format_and_the_counts(tmp_path, capsys):
    assert cli.main(["convert", str(HOTPOT), str(tmp_path / "h.jsonl")]) == 0
    out = capsys.readouterr().out
    records = from_hotpotqa(HOTPOT)
    yes_no = sum(r.yes_no for r in records)
    direct = sum(any(p.direct for p in r.ctxs) for r in records)
    indirect = sum(any(p.indirect for p in r.ctxs) for r in records)
    assert "53 records (hotpotqa, detected)" in out and f"{2 * 53} gold passages" in out
    assert f"53 questions: {direct} with a direct and {indirect} with an indirect gold passage, {yes_no} yes/no" in out
    assert 0 < yes_no < 53 and direct > 0 and indirect > 0


def test_a_question_with_fewer_candidates_than_k_is_logged_naming_file_line_and_id_and_dropped_by_g_rerank(
        demo_data, tmp_path, caplog):
    """check_candidates compares data.n_candidates with the most candidates of the file; a question with fewer than
    gumbel.k (or eval.reader_k) of its own is named in a warning, and G-Rerank training drops it (its top-k would
    keep every candidate: no gradient); the baselines keep it."""
    import logging

    records = load_records(demo_data / "train.jsonl")
    records[3].ctxs = records[3].ctxs[:3]
    records[7].ctxs = records[7].ctxs[:4]
    path = tmp_path / "train.jsonl"
    save_records(records, path)
    records = load_records(path)
    cfg = load_config(DEMO, [f"data.train_path={path}", "gumbel.k=5"])
    with caplog.at_level(logging.WARNING, logger="gr_train.checks"):
        checks.check_candidate_counts(cfg, str(path), records)
    assert f"{path} line 4 (id {records[3].id}): 3 candidates, fewer than gumbel.k=5; 2 of 16 questions have " \
           "fewer than 5" in caplog.text and "lower gumbel.k" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gr_train.checks"):
        checks.check_candidate_counts(load_config(DEMO, ["gumbel.k=3", "eval.reader_k=4"]), str(path), records)
    assert f"line 4 (id {records[3].id}): 3 candidates, fewer than eval.reader_k=4" in caplog.text
    kept = checks.drop_short_questions(cfg, str(path), records)
    assert [r.id for r in kept] == [r.id for i, r in enumerate(records) if i not in (3, 7)]
    emdr = load_config(DEMO, [f"data.train_path={path}", "gumbel.k=5", "objective.name=emdr"])
    assert checks.drop_short_questions(emdr, str(path), records) == records
