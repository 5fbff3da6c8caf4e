"""Export (gr_train/export.py): a fresh Python process that imports only transformers / sentence-transformers
scores the exported folder exactly like the in-memory reranker, following the model card's own code; the card
lists the training settings and the evaluation table; missing inputs fail with the path named.

Tiny models with locally built tokenizers, and one tiny real training run (`gr-train train` → `gr-train export`).
All exports are scored by one subprocess (imports dominate its ~15 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gr_train import cli, synthetic, train
from gr_train.config import RerankerSection, load_config
from gr_train.data import load_records, passage_string
from gr_train.evaluate import format_label_free_table, format_table
from gr_train.export import export_reranker, export_run
from gr_train.reranker import Reranker, build_reranker, build_word_tokenizer
from helpers import POINTWISE_STRAIGHT_THROUGH, strip_labels
from test_reranker import CORPUS, QUESTIONS

REPO = Path(__file__).resolve().parents[1]
LONG = " ".join(["alice moreau was born in lyon"] * 5)  # 30 words: cut at MAX_TOKENS
PASSAGES = [
    [("silent harbour", "the silent harbour was written by alice moreau"), ("", "alice moreau was born in lyon"),
     ("bob stone", LONG)],
    [("long road", "the long road was written by bob stone"), ("bob stone", "bob stone was born in leeds"),
     ("", "alice moreau was born in lyon")],
]
MAX_TOKENS = 16
KINDS = ["cross_encoder", "rankt5", "bi_encoder"]
# The card's training settings for the tiny in-memory exports.
SETTINGS = ["objective.name=gumbel", "gumbel.k=3", "gumbel.kappa=2", "gumbel.kappa_end=8", "gumbel.tau=0.7",
            "gumbel.tau_end=0.2", "gumbel.schedule=cosine", "optim.lr=0.002", "train.max_steps=40",
            "train.micro_batch_size=4", "train.grad_accum_steps=2", "run.seed=7"]

# Runs in a fresh interpreter: for each export, execute every ```python block of its README.md (the model card's
# scoring recipes) and call the `score(pairs)` it defines. Prints {name: [[scores of block 0], ...]} as JSON.
SCORER = r"""
import contextlib, io, json, re, sys
import torch
torch.set_num_threads(1)
jobs = json.loads(sys.argv[1])
out = {}
for name, job in jobs.items():
    card = open(job["folder"] + "/README.md").read()
    out[name] = []
    for code in re.findall(r"```python\n(.*?)```", card, re.S):
        namespace = {}
        with contextlib.redirect_stdout(io.StringIO()):  # the snippets print an example
            exec(code, namespace)
            out[name].append([float(x) for x in namespace["score"]([tuple(p) for p in job["pairs"]])])
print(json.dumps({"scores": out, "gr_train_imported": any(m.startswith("gr_train") for m in sys.modules)}))
"""


def flat_pairs(questions, passages) -> list[list[str]]:
    """(question, passage text) pairs in [B, n] row-major order, as the card's `score(pairs)` takes them."""
    return [[q, passage_string(title, text)] for q, row in zip(questions, passages) for title, text in row]


def tiny_reranker(kind: str) -> Reranker:
    """A tiny reranker moved away from its initialisation (so that scores spread, as after training)."""
    tok = build_word_tokenizer(CORPUS, "t5" if kind == "rankt5" else "bert")
    torch.manual_seed(0)
    reranker = build_reranker(RerankerSection(kind=kind, max_tokens=MAX_TOKENS, score_scale=7.5), tok)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reranker.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return reranker


def tiny_run(tmp_path: Path, unlabelled: bool = False):
    """A 3-step G-Rerank run of a tiny cross-encoder (tests/test_train.py's tiny config), then `gr-train evaluate`
    (ranking only) into <run_dir>/final/eval.json, next to the evaluated reranker. unlabelled: train and dev files
    without is_gold, evaluated with the reader (the label-free metrics only)."""
    data = tmp_path / "data"
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"run.run_dir={tmp_path / 'run'}", "run.progress=false", "reranker.kind=cross_encoder", "gumbel.k=2",
        "synthetic.n_train=24", "synthetic.n_dev=8", "reader.name_or_path=null", "reader.random_init=true",
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32, initializer_range: 0.5}",  # scores spread at once
        "train.max_steps=3", "train.micro_batch_size=4", "optim.lr=1e-2", "optim.warmup_steps=0", "eval.ks=[2, 5]",
        *POINTWISE_STRAIGHT_THROUGH,
    ])
    synthetic.write_demo_data(cfg.synthetic, data, seed=0)
    cfg.data.train_path, cfg.data.dev_path = str(data / "train.jsonl"), str(data / "dev.jsonl")
    if unlabelled:
        cfg.data.train_path = str(strip_labels(data / "train.jsonl", data / "train_unlabelled.jsonl"))
        cfg.data.dev_path = str(strip_labels(data / "dev.jsonl", data / "dev_unlabelled.jsonl"))
    out = train.main(cfg, resume=False)
    out["recipe"].reranker.eval()  # the recipe leaves it in train mode (dropout)
    run_dir = Path(cfg.run.run_dir)
    assert cli.main(["evaluate", "--config", str(run_dir / "config.yaml"), *([] if unlabelled else ["--no-reader"]),
                     f"reranker.name_or_path={run_dir / 'final' / 'reranker'}"]) == 0
    return out["recipe"].reranker, run_dir


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{name: (in-memory scores w [B*n], pairs, export folder)} for the three tiny kinds and the tiny run's
    `gr-train export`, plus the fresh process's scores of every export."""
    root = tmp_path_factory.mktemp("export")
    cfg = load_config(None, SETTINGS)
    entries = {}
    for kind in KINDS:
        reranker = tiny_reranker(kind)
        with torch.no_grad():
            w = reranker.score(QUESTIONS, PASSAGES).flatten()
        entries[kind] = (w, flat_pairs(QUESTIONS, PASSAGES), export_reranker(reranker, root / kind, cfg))
    reranker, run_dir = tiny_run(root)
    assert cli.main(["export", "--run-dir", str(run_dir), "--output", str(root / "run_export")]) == 0
    dev = load_records(run_dir.parent / "data" / "dev.jsonl")[:3]
    passages = [[(c.title, c.text) for c in r.ctxs[:4]] for r in dev]
    with torch.no_grad():
        w = reranker.score([r.question for r in dev], passages).flatten()
    entries["run"] = (w, flat_pairs([r.question for r in dev], passages), root / "run_export")

    jobs = {name: {"folder": str(folder), "pairs": pairs} for name, (_, pairs, folder) in entries.items()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCORER, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"entries": entries, "fresh": fresh["scores"], "gr_train_imported": fresh["gr_train_imported"],
            "run_dir": run_dir, "cfg": cfg}


def test_the_long_passage_is_truncated():
    """Precondition of the score tests: truncation at max_tokens matters for one pair (the card must say it)."""
    tok = build_word_tokenizer(CORPUS, "bert")
    assert len(tok(QUESTIONS[0], LONG)["input_ids"]) > MAX_TOKENS


@pytest.mark.parametrize("name", [*KINDS, "run"])
def test_fresh_process_with_plain_transformers_scores_like_the_reranker(exports, name):
    w, pairs, _ = exports["entries"][name]
    fresh = exports["fresh"][name]
    assert not exports["gr_train_imported"]  # the export alone, not gr-train's code
    assert len(fresh) == (2 if name in ("cross_encoder", "run", "bi_encoder") else 1)
    # Scores that differ across pairs (a card recipe that ignored the passage would fail below).
    assert w.std() > 1e-2
    torch.testing.assert_close(torch.tensor(fresh[0]), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["cross_encoder", "run"])
def test_sentence_transformers_cross_encoder_gives_the_raw_scores(exports, name):
    """CrossEncoder(folder).predict == w, not sigmoid(w) (its default for one label): config.json names Identity."""
    w, _, folder = exports["entries"][name]
    config = json.loads((folder / "config.json").read_text())
    assert config["sentence_transformers"] == {"activation_fn": "torch.nn.modules.linear.Identity"}
    ce = torch.tensor(exports["fresh"][name][1])
    torch.testing.assert_close(ce, w, rtol=0, atol=1e-5)
    assert (torch.sigmoid(w) - w).abs().max() > 0.1


def test_sentence_transformer_loads_a_bi_encoder_export_and_scores_as_training_did(exports):
    """The bi-encoder card's SentenceTransformer(folder) recipe (mean pooling built by sentence-transformers, w =
    score_scale * cos) gives the training scores to 1e-5."""
    w, _, _ = exports["entries"]["bi_encoder"]
    torch.testing.assert_close(torch.tensor(exports["fresh"]["bi_encoder"][1]), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_export_loads_back_as_a_gr_train_reranker(exports, kind):
    w, _, folder = exports["entries"][kind]
    loaded = Reranker.load(folder)
    assert loaded.kind == kind
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == MAX_TOKENS
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(QUESTIONS, PASSAGES).flatten(), w, rtol=0, atol=1e-6)


def card_of(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_model_card_lists_reranker_objective_and_training_settings(exports):
    folder = exports["entries"]["bi_encoder"][2]
    front, body = card_of(folder)
    assert front["library_name"] == "transformers" and "bi-encoder" in front["tags"] and "base_model" not in front
    for line in [
        "| reranker kind | `bi_encoder`: w = 7.5 * cos(mean_pool(question), mean_pool(passage))",
        f"| max tokens | {MAX_TOKENS} per text",
        "| objective | `objective.name=gumbel` |",
        "| k | 3 (`gumbel.k`",
        "| kappa | 2 → 8 (score scale; `gumbel.kappa` → `gumbel.kappa_end`, cosine over training) |",
        "| tau | 0.7 → 0.2 (temperature; `gumbel.tau` → `gumbel.tau_end`, cosine over training) |",
        "| noise | true",
        "| reader (frozen) | `demo_fid`",
        "| training data | none |",
        "| optimizer | AdamW, lr 0.002",
        "| steps | 40 (`train.max_steps`) |",
        "| batch | 8 questions per step (micro_batch_size 4 x grad_accum_steps 2 x 1 ranks) |",
        "| seed | 7 |",
        "Not evaluated",
    ]:
        assert line in body, line
    assert load_config(folder / "gr_train_config.yaml") == exports["cfg"]


def test_model_card_of_the_training_run(exports):
    """From the run dir: data files with question counts, steps from the checkpoint, the eval.json table."""
    folder, run_dir = exports["entries"]["run"][2], exports["run_dir"]
    front, body = card_of(folder)
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "text-ranking"
    assert "gumbel-reranking" in front["tags"]
    data = run_dir.parent / "data"
    assert f"| training data | `{data / 'train.jsonl'}` (24 questions) |" in body
    assert f"| dev data | `{data / 'dev.jsonl'}` (8 questions) |" in body
    assert "| steps | 3 optimizer steps (`train.max_steps=3`) |" in body
    assert "| k | 2 (`gumbel.k`" in body and "| kappa | 10 (score scale; `gumbel.kappa`, constant) |" in body
    assert "| tau | 0.5 (temperature; `gumbel.tau`, constant) |" in body
    assert "| estimator | straight_through (`gumbel.estimator`: the reader read the hard Gumbel top-k sample;" in body
    result = json.loads((run_dir / "final" / "eval.json").read_text())
    # labelled: the gold table, then the label-free one (answer recall@k; EM, F1 and the loss need the reader)
    assert format_table({"eval.json": result}, [2, 5]) in body
    assert format_label_free_table({"eval.json": result}, [2, 5]) in body
    assert "8 dev questions" in body and "no reader EM" in body and "R@k = recall of gold passages" in body


def test_model_card_of_a_run_without_labels_shows_the_label_free_table(tmp_path):
    """A run trained and evaluated on files without is_gold: its eval.json has the label-free metrics only, and the
    card's table is evaluate.format_label_free_table of it (answer recall@k, EM, F1, hard top-k loss)."""
    _, run_dir = tiny_run(tmp_path, unlabelled=True)
    result = json.loads((run_dir / "final" / "eval.json").read_text())
    assert result["labelled"] is False and "ranking" not in result
    assert cli.main(["export", "--run-dir", str(run_dir), "--output", str(tmp_path / "card")]) == 0
    _, body = card_of(tmp_path / "card")
    table = format_label_free_table({"eval.json": result}, [2, 5])
    assert table in body
    assert "| reranker | answer R@2 | answer R@5 | EM | F1 | hard top-k loss (nats/token) |" in body
    free = result["label_free"]
    row = f"| eval.json | {free['answer_recall@2']['mean']:.3f} [{free['answer_recall@2']['lo']:.3f}, "
    assert row in body and f"{free['loss_hard']['mean']:.3f} [" in body
    assert "R@2 all" not in body and "no is_gold labels on the evaluation data: the label-free metrics only" in body
    assert "EM/F1 with the reader given the top-2" in body


@pytest.mark.parametrize("objective,expected,absent", [
    ("pdist", "| theta | 0.3 (`objective.theta`", "| kappa |"),
    ("supervised", "| supervised loss | bce |", "| theta |"),
])
def test_model_card_names_each_objectives_own_settings(objective, expected, absent, tmp_path):
    cfg = load_config(None, [f"objective.name={objective}", "objective.theta=0.3", "objective.supervised_loss=bce",
                             "gumbel.k=4"])
    reranker = tiny_reranker("cross_encoder")
    _, body = card_of(export_reranker(reranker, tmp_path, cfg))
    assert f"`objective.name={objective}`" in body and expected in body and absent not in body
    assert "| k | 4 (passages given to the reader at evaluation" in body


def test_eval_files_given_on_the_command_line_make_the_table(exports, tmp_path, capsys):
    """--eval with the demo's results.json layout (named results among other entries): one row per result, in
    order, replacing the run's own eval.json; a file without results is refused, naming it."""
    run_dir = exports["run_dir"]
    result = json.loads((run_dir / "final" / "eval.json").read_text())
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"reader_em": {"all": 0.5}, "untrained": result, "trained": result}))
    out = tmp_path / "out"
    assert cli.main(["export", "--run-dir", str(run_dir), "--output", str(out), "--eval", str(results)]) == 0
    _, body = card_of(out)
    assert format_table({"untrained": result, "trained": result}, [2, 5]) in body
    assert "| eval.json |" not in body and "| reader_em |" not in body

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"reader_em": {"all": 0.5}}))
    assert cli.main(["export", "--run-dir", str(run_dir), "--output", str(out), "--eval", str(bad)]) == 2
    assert f"{bad}: no evaluation results" in capsys.readouterr().err


def test_run_without_a_final_reranker_fails_naming_the_path(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "step-000003").mkdir(parents=True)
    (run_dir / "step-000003" / "trainer_state.json").write_text("{}")
    (run_dir / "config.yaml").write_text("")
    with pytest.raises(FileNotFoundError, match=f"no reranker at {run_dir / 'final' / 'reranker'} .*finished"):
        export_run(run_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="step-000003/reranker .*step checkpoints hold training state"):
        export_run(run_dir, tmp_path / "out", checkpoint="step-000003")
    assert cli.main(["export", "--run-dir", str(run_dir), "--output", str(tmp_path / "out")]) == 2
    assert str(run_dir / "final" / "reranker") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} not found"):
        export_run(tmp_path / "nowhere", tmp_path / "out")


def test_reranker_folder_outside_a_run_needs_its_config(tmp_path):
    tiny_reranker("bi_encoder").save(tmp_path / "reranker")
    with pytest.raises(FileNotFoundError, match="no config.yaml next to .*reranker"):
        export_run(tmp_path / "reranker", tmp_path / "out")


def test_exporting_onto_the_source_folder_is_refused(tmp_path):
    tiny_reranker("bi_encoder").save(tmp_path / "reranker")
    reranker = Reranker.load(tmp_path / "reranker")
    with pytest.raises(ValueError, match="is the reranker's own folder"):
        export_reranker(reranker, tmp_path / "reranker", load_config(None))


def test_the_card_names_the_estimator_that_trained_the_model():
    from gr_train.config import RunConfig
    from gr_train.export import GUMBEL_METHOD, _method

    cfg = RunConfig()
    for estimator, line in GUMBEL_METHOD.items():
        cfg.gumbel.estimator = estimator
        assert line in _method(cfg)
        assert ("max_j softmax" in _method(cfg)) == (estimator == "max_softmax")
    cfg.objective.name = "emdr"
    assert _method(cfg).startswith("EMDR")
