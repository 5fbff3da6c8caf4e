"""The real-model recipes (configs/rankt5_*.yaml, configs/bge_*.yaml, configs/qwen3_reranker_llama.yaml): each loads, builds its reader and reranker
as tiny random models of the same architectures, runs one G-Rerank step through the recipe's setup, and names in
its header only launch files, entrypoints, configs and overrides that exist.

No downloads: `name_or_path` is replaced by `model_config` at tiny sizes; every other setting is the recipe's own
(lengths, k, tau, kappa, attention backend, checkpointing), except the engine (local, fp32: this is CPU).
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from gr_train import batching, cli, objectives, train
from gr_train.config import load_config
from gr_train.reranker import build_word_tokenizer

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["rankt5_fid_large.yaml", "bge_fid_large.yaml", "rankt5_llama.yaml", "bge_llama.yaml",
           "qwen3_reranker_llama.yaml"]

# What each model a recipe names is, as (HF class, the same architecture at tiny sizes). A recipe that switches to
# a model not listed here fails until its architecture is added.
ARCHITECTURES = {
    # FiD weights in the plain T5 layout (the tokenizer: reader.tokenizer_path, t5-large's)
    "Intel/fid_t5_large_nq": ("T5ForConditionalGeneration",
                              dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4)),
    "meta-llama/Llama-3.2-1B": ("LlamaForCausalLM",  # grouped-query attention and tied embeddings, as the 1B
                                dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "Soyoung97/RankT5-base": ("T5ForConditionalGeneration",
                              dict(model_type="t5", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=4)),
    # Qwen3-Reranker-0.6B: a Qwen3 causal LM (grouped-query attention, head_dim apart from hidden / heads, tied)
    "Qwen/Qwen3-Reranker-0.6B": ("Qwen3ForCausalLM",
                                 dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      tie_word_embeddings=True, max_position_embeddings=512)),
    # bge-reranker-base: one token type and 514 positions (2 + 512), as XLM-R
    "BAAI/bge-reranker-base": ("XLMRobertaForSequenceClassification",
                               dict(model_type="xlm-roberta", hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
                                    type_vocab_size=1)),
}


def records_file(path: Path, n: int) -> Path:
    """Two questions with n distinct candidates each (the first gold), as FiD JSONL."""
    questions = [("who wrote the book", "bob", "Book", "the book was written by bob"),
                 ("where does ann live", "paris", "Ann", "ann lives in paris")]
    lines = []
    for i, (question, answer, title, text) in enumerate(questions):
        ctxs = [{"title": title, "text": text, "is_gold": True}]
        ctxs += [{"title": f"Topic {j}", "text": f"topic {j} is about item {j + i} and not {answer}", "is_gold": False}
                 for j in range(n - 1)]
        lines.append(json.dumps({"id": f"q{i}", "question": question, "answers": [answer], "ctxs": ctxs}))
    path.write_text("\n".join(lines) + "\n")
    return path


def reranker_tokenizer(kind: str, data: Path, out: Path) -> Path:
    """A word-level tokenizer trained on the records, saved where reranker.tokenizer_path can load it: T5-style
    (with RankT5's <extra_id_10>) for rankt5; for XLM-R, pairs without token type ids (it has one type)."""
    records = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [r["question"] for r in records] + [f"{c['title']} {c['text']}" for r in records for c in r["ctxs"]]
    texts += ["yes no"] if kind == "causal_lm" else []  # the LLM reranker's answer tokens
    tokenizer = build_word_tokenizer(texts, "t5" if kind == "rankt5" else "bert")
    if kind == "cross_encoder":
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(out)
    return out


def tiny_recipe(name: str, tmp_path: Path):
    cfg = load_config(REPO / "configs" / name)
    reader_class, reader_tiny = ARCHITECTURES[cfg.reader.name_or_path]
    reranker_class, reranker_tiny = ARCHITECTURES[cfg.reranker.name_or_path]
    data = records_file(tmp_path / "train.jsonl", cfg.gumbel.k + 2)  # more candidates than k: M selects
    tokenizer = reranker_tokenizer(cfg.reranker.kind, data, tmp_path / "reranker_tokenizer")
    cfg = load_config(REPO / "configs" / name, [
        "reader.name_or_path=null", "reader.tokenizer_path=null", f"reader.model_config={json.dumps(reader_tiny)}",
        "reranker.name_or_path=null", f"reranker.model_config={json.dumps(reranker_tiny)}",
        f"reranker.tokenizer_path={tokenizer}",
        "runtime.engine=local", "runtime.precision=fp32",
        f"data.train_path={data}", "data.dev_path=null", f"run.run_dir={tmp_path / 'run'}",
    ])
    return cfg, reader_class, reranker_class


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_as_a_deepspeed_run_of_real_models(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.runtime.engine == "deepspeed" and cfg.runtime.precision == "bf16" and cfg.runtime.partition_reader
    assert cfg.objective.name == "gumbel"
    assert cfg.reader.name_or_path in ARCHITECTURES and cfg.reranker.name_or_path in ARCHITECTURES
    assert cfg.retrieval.top_k == cfg.data.n_candidates  # preprocessing keeps exactly the candidates trained on
    assert cfg.gumbel.k < cfg.data.n_candidates


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_its_architectures_and_trains_the_reranker_only(name, tmp_path):
    cfg, reader_class, reranker_class = tiny_recipe(name, tmp_path)
    recipe = train.setup(cfg, resume=False)  # build_models, shift-bias freezing, runtime.prepare (checkpointing)
    assert type(recipe.reader.model).__name__ == reader_class
    assert type(recipe.reranker.model).__name__ == reranker_class
    assert recipe.reader.model.config._attn_implementation == cfg.reader.attn_implementation

    batch = batching.collate(recipe.train_records, cfg.data.n_candidates, recipe.reranker, recipe.reader)
    assert batch.valid.shape == (2, cfg.gumbel.k + 2) and batch.valid.all()
    noise = train.step_noise(cfg, 0, 2)[:, :, : batch.valid.shape[1]]
    out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, noise)
    assert torch.isfinite(out.loss)
    recipe.runtime.backward(out.loss)

    trainable = [(n, p) for n, p in recipe.reranker.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"zero gradient for reranker parameter {n}"
    assert all(not p.requires_grad and p.grad is None for p in recipe.reader.parameters())
    recipe.writer.close()


LAUNCHERS = ("torchrun", "HOSTFILE=", "deepspeed", "ray ", "python ", "hf ", "export ")
OVERRIDE = re.compile(r"^[a-z_]+\.[a-z_]+=")


def header_commands(path: Path) -> list[list[str]]:
    """The shell commands in a config's leading comment block, split as a shell would."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if text.startswith(LAUNCHERS):
            commands.append(shlex.split(text, comments=True))
    return commands


@pytest.mark.parametrize("name", RECIPES)
def test_header_launch_commands_name_what_exists(name, capsys):
    commands = header_commands(REPO / "configs" / name)
    joined = [" ".join(c) for c in commands]
    # the three launchers: torchrun, the DeepSpeed launcher from a hostfile, Ray Train
    for launcher in ("torchrun", "deploy/launch_multinode.sh", "ray_jobs/train.py"):
        assert any(launcher in c for c in joined), f"{name}: no {launcher} command in the header"
    for tokens in commands:
        for i, token in enumerate(tokens):
            path = token.split("=", 1)[-1]
            if path.startswith(("configs/", "deploy/", "ray_jobs/", "gr_train/")):
                assert (REPO / path).exists(), f"{name}: {token} does not exist"
            if token in ("-m", "--module"):
                module = tokens[i + 1]
                assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: no module {module}"
                if module == "gr_train.cli":  # the verb after it must be a gr-train command
                    with pytest.raises(SystemExit) as exit_:
                        cli.main([tokens[i + 2], "--help"])
                    assert exit_.value.code == 0, f"{name}: gr-train has no command {tokens[i + 2]}"
        configs = [tokens[i + 1] for i, t in enumerate(tokens) if t == "--config" or t.endswith("launch_multinode.sh")]
        for config in configs:
            assert config == f"configs/{name}", f"{name}: a command runs {config}"
            load_config(REPO / config, [t for t in tokens if OVERRIDE.match(t)])  # overrides name real keys
    capsys.readouterr()
