"""The decoder-only LLM reranker (reranker.kind=causal_lm, gr_train/reranker.py): the yes/no log-odds score, padding,
token checks; LoRA adapters (reranker.lora_rank): gradients, merged save, exact resume; the export as a
sentence-transformers CrossEncoder and as a plain causal LM.

Tiny random Llama models from configs and word-level tokenizers built in memory (one with a Qwen-style chat
template, one without): CPU, offline, seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gr_train.config import RerankerSection
from gr_train.data import passage_string
from gr_train.inputs import RERANK_SYSTEM, RERANK_USER
from gr_train.reranker import CausalLMReranker, build_reranker, build_word_tokenizer

# Qwen's chat template, reduced to what the reranker prompt uses (system, user, the assistant turn's opening).
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [
    RERANK_SYSTEM, RERANK_USER, "yes no answer", "im_start im_end system user assistant",
    "who wrote the silent harbour the silent harbour was written by alice moreau",
    "where was the author of the long road born bob stone was born in leeds and wrote the long road",
]
QUESTIONS = ["who wrote the silent harbour", "where was the author of the long road born"]
PASSAGES = [
    [("silent harbour", "the silent harbour was written by alice moreau"), ("", "alice moreau was born in lyon")],
    [("long road", "the long road was written by bob stone and is long"), ("bob stone", "born in leeds")],
]


def tokenizer(chat: bool = True):
    tok = build_word_tokenizer(CORPUS)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny(chat: bool = True, seed: int = 0, **overrides) -> CausalLMReranker:
    torch.manual_seed(seed)
    cfg = RerankerSection(kind="causal_lm", **{"max_tokens": 96, **overrides})
    return build_reranker(cfg, tokenizer(chat))


@pytest.mark.parametrize("chat", [True, False], ids=["chat_template", "plain"])
def test_score_is_the_yes_no_log_odds_of_the_prompts_last_token(chat):
    reranker = tiny(chat)
    tok = reranker.tokenizer
    q, (title, text) = QUESTIONS[0], PASSAGES[0][0]
    user = RERANK_USER.format(instruction=reranker.cfg.instruction, query=q, document=passage_string(title, text))
    if chat:
        prompt = tok.apply_chat_template([{"role": "system", "content": RERANK_SYSTEM},
                                          {"role": "user", "content": user}], add_generation_prompt=True,
                                         tokenize=False)
        assert prompt.endswith("<|im_start|>assistant\n")
    else:
        prompt = f"{RERANK_SYSTEM}\n\n{user}\n\nAnswer:"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = reranker.model(input_ids=ids).logits[0, -1]
        w = reranker.score([q], [[(title, text)]])
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert w.dtype == torch.float32 and w.shape == (1, 1)
    assert torch.allclose(w[0, 0], logits[yes] - logits[no], atol=1e-6)


def test_settings_hold_the_prompt_keys_and_no_shift_parameters():
    reranker = tiny(instruction="find the passage", yes_token="answer", no_token="no")
    settings = reranker.settings()
    assert (settings["kind"], settings["instruction"], settings["yes_token"], settings["no_token"]) == (
        "causal_lm", "find the passage", "answer", "no")
    assert reranker.shift_parameters() == []
    assert "find the passage" in reranker.inputs.prompt("q", "d")


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_batch_scores_as_one_pair_at_a_time_with_padding_on_either_side(side):
    reranker = tiny()
    inputs = reranker.tokenize(QUESTIONS, PASSAGES)
    assert inputs["attention_mask"][..., -1].all()  # tokenize pads left: every prompt ends at L-1
    lengths = inputs["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max()  # the batch has padding
    if side == "right":  # move every row's tokens to the front
        ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
        L = ids.shape[-1]
        for b in range(2):
            for i in range(2):
                n = int(lengths[b, i])
                ids[b, i] = torch.cat([inputs["input_ids"][b, i, L - n:], inputs["input_ids"][b, i, : L - n]])
                mask[b, i] = torch.cat([inputs["attention_mask"][b, i, L - n:], inputs["attention_mask"][b, i, : L - n]])
        inputs = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        batch = reranker(inputs)
        single = torch.tensor([[reranker.score([q], [[p]])[0, 0].item() for p in row]
                               for q, row in zip(QUESTIONS, PASSAGES)])
    assert torch.allclose(batch, single, atol=1e-5), (batch, single)


def test_a_long_document_is_cut_and_the_prompt_still_ends_with_the_template():
    reranker = tiny(max_tokens=70)
    long = ("alice moreau " * 60).strip()
    inputs = reranker.tokenize([QUESTIONS[0]], [[("", long), ("", "short")]])
    assert inputs["input_ids"].shape[-1] == 70
    suffix = reranker.tokenizer(reranker.inputs.parts[2], add_special_tokens=False)["input_ids"]
    assert inputs["input_ids"][0, 0, -len(suffix):].tolist() == suffix
    with pytest.raises(ValueError, match=r"reranker\.max_tokens \(20\)"):
        tiny(max_tokens=20)


@pytest.mark.parametrize("key", ["yes_token", "no_token"])
def test_a_token_that_is_not_one_token_is_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=rf"reranker\.{key}: 'yes please' is 2 tokens"):
        tiny(**{key: "yes please"})
    with pytest.raises(ValueError, match=r"reranker\.yes_token / reranker\.no_token"):
        tiny(yes_token="no")


def test_conditional_causal_lm_reranker_scores_conditioned_questions():
    reranker = tiny(conditional=True)
    picks = reranker.select(QUESTIONS, PASSAGES, k=2)
    assert [sorted(p) for p in picks] == [[0, 1], [0, 1]]


def test_save_and_load_score_the_same(tmp_path):
    from gr_train.reranker import Reranker

    reranker = tiny(yes_token="answer")
    reranker.save(tmp_path / "r")
    loaded = Reranker.load(tmp_path / "r")
    with torch.no_grad():
        assert torch.allclose(loaded.score(QUESTIONS, PASSAGES), reranker.score(QUESTIONS, PASSAGES), atol=1e-6)
    assert dataclasses.asdict(loaded.cfg)["yes_token"] == "answer"


# -- LoRA (reranker.lora_rank) through the training recipe ---------------------------------------------------------


def recipe_cfg(tmp_path, *overrides):
    """tests/test_train.py's tiny recipe with a tiny Llama causal_lm reranker and LoRA of rank 4 on q_proj/v_proj; the
    reranker's tokenizer (with "yes" and "no") is saved under tmp_path."""
    from test_train import tiny_cfg

    tok_dir = tmp_path / "reranker_tokenizer"
    if not tok_dir.exists():
        tokenizer().save_pretrained(tok_dir)
    return tiny_cfg(tmp_path, "reranker.kind=causal_lm", f"reranker.tokenizer_path={tok_dir}",
                    "reranker.max_tokens=160", "reranker.model_config={num_hidden_layers: 1}",
                    "reranker.lora_rank=4", "reranker.lora_targets=[q_proj, v_proj]", *overrides)


def test_every_lora_parameter_gets_a_finite_gradient_through_g_rerank_and_nothing_else_trains(tmp_path):
    from gr_train import batching, objectives, train

    cfg = recipe_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    reranker = recipe.reranker
    lora = {n: p for n, p in reranker.named_parameters() if "lora_" in n}
    assert lora and {n for n, p in reranker.named_parameters() if p.requires_grad} == set(lora)
    assert any(".q_proj.lora_A" in n for n in lora) and any(".v_proj.lora_B" in n for n in lora)
    # lora_B starts at 0, so lora_A's gradient is 0 at step 0: give B a value first (as after one update).
    with torch.no_grad():
        for n, p in lora.items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch = batching.collate(recipe.train_records[:8], cfg.data.n_candidates, reranker, recipe.reader)
    out = objectives.gumbel_rerank(batch, reranker, recipe.reader, cfg, 0, train.step_noise(cfg, 0, 8))
    out.loss.backward()
    for n, p in lora.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert all(p.grad is None for n, p in reranker.named_parameters() if "lora_" not in n)
    assert all(p.grad is None for p in recipe.reader.parameters())


def test_training_moves_only_the_adapters_and_the_saved_folder_is_the_merged_model(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from gr_train import train
    from gr_train.reranker import Reranker

    cfg = recipe_cfg(tmp_path, "train.max_steps=3")
    reranker = train.setup(cfg, resume=False).reranker
    start = {n: v.clone() for n, v in reranker.state_dict().items()}
    train.main(cfg, resume=False)
    trained = load_file(Path(cfg.run.run_dir) / "final" / "model.safetensors")  # the trainable module, adapters too
    assert trained.keys() == start.keys()
    assert all(torch.equal(trained[n], v) for n, v in start.items() if "lora_" not in n)  # no base weight changed
    assert any(not torch.equal(trained[n], v) for n, v in start.items() if "lora_B" in n)
    reranker.load_state_dict(trained)
    folder = Path(cfg.run.run_dir) / "final" / "reranker"
    saved = load_file(folder / "model.safetensors")
    assert not any("lora_" in k or "base_layer" in k for k in saved)
    plain = AutoModelForCausalLM.from_pretrained(folder)  # no peft
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    loaded = Reranker.load(folder)
    assert loaded.cfg.lora_rank == 0
    with torch.no_grad():
        assert torch.allclose(loaded.score(QUESTIONS, PASSAGES), reranker.score(QUESTIONS, PASSAGES), atol=1e-5)


class Interrupt(Exception):
    pass


def test_two_steps_and_a_resume_equal_four_uninterrupted_steps(tmp_path):
    from safetensors.torch import load_file

    from gr_train import checkpoint, train

    ref = {}
    cfg = recipe_cfg(tmp_path / "a", "train.max_steps=4", "train.save_every_steps=2")
    train.main(cfg, resume=False, on_step=lambda s, sc: ref.__setitem__(s, sc["train/loss"]))
    cfg_b = recipe_cfg(tmp_path / "b", "train.max_steps=4", "train.save_every_steps=2")

    def crash(step, scalars):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train.main(cfg_b, resume=False, on_step=crash)
    assert [p.name for p in checkpoint.list_checkpoints(cfg_b.run.run_dir)] == ["step-000002"]
    saved = load_file(Path(cfg_b.run.run_dir) / "step-000002" / "model.safetensors")
    assert any("lora_A" in k for k in saved) and any("lora_B" in k for k in saved)  # the adapters round-trip
    resumed = {}
    train.main(cfg_b, resume=True, on_step=lambda s, sc: resumed.__setitem__(s, sc["train/loss"]))
    assert sorted(resumed) == [2, 3]
    for s in resumed:
        assert resumed[s] == pytest.approx(ref[s], abs=1e-6)
    a = load_file(Path(cfg.run.run_dir) / "final" / "model.safetensors")
    b = load_file(Path(cfg_b.run.run_dir) / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_that_cannot_apply_is_refused_naming_the_key():
    from gr_train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"reranker\.lora_targets=\['nowhere'\]"):
        tiny(lora_rank=4, lora_targets=["nowhere"])
    with pytest.raises(ConfigError, match=r"reranker\.lora_targets=\['norm'\]: module model\.norm"):
        tiny(lora_rank=4, lora_targets=["norm"])
    with pytest.raises(ConfigError, match=r"reranker\.lora_rank: must be >= 0"):
        load_config(None, ["reranker.lora_rank=-1"])
    with pytest.raises(ConfigError, match=r"reranker\.lora_rank: LoRA runs on runtime\.engine=local"):
        load_config(None, ["reranker.lora_rank=4", "runtime.engine=deepspeed"])


# -- export: sentence-transformers CrossEncoder with a LogitScore head, and plain transformers -------------------


def spread(reranker: CausalLMReranker) -> CausalLMReranker:
    """Move every trainable weight away from its initialisation (lora_B included), so that scores differ."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reranker.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return reranker


@pytest.fixture(scope="module")
def llm_exports(tmp_path_factory):
    """{name: (in-memory w [B*n], export folder)} for a chat-template reranker, a plain-prompt one and a LoRA one
    (exported merged), plus the scores of every ```python block of each model card run in a fresh process."""
    import json
    import os
    import subprocess
    import sys

    from test_export import SCORER, flat_pairs

    from gr_train.config import load_config
    from gr_train.export import export_reranker

    root = tmp_path_factory.mktemp("llm_export")
    rerankers = {"chat": spread(tiny(True)), "plain": spread(tiny(False, yes_token="answer")),
                 "lora": spread(tiny(True, lora_rank=4, lora_targets=["q_proj", "v_proj"]))}
    entries = {}
    for name, reranker in rerankers.items():
        assert reranker.tokenize(QUESTIONS, PASSAGES)["input_ids"].shape[-1] < reranker.cfg.max_tokens  # no cut
        with torch.no_grad():
            w = reranker.score(QUESTIONS, PASSAGES).flatten()
        entries[name] = (w, export_reranker(reranker, root / name, load_config(None)))
    jobs = {name: {"folder": str(folder), "pairs": flat_pairs(QUESTIONS, PASSAGES)}
            for name, (_, folder) in entries.items()}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCORER, json.dumps(jobs)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"entries": entries, "fresh": fresh["scores"], "gr_train_imported": fresh["gr_train_imported"]}


@pytest.mark.parametrize("name", ["chat", "plain", "lora"])
def test_the_cards_transformers_and_cross_encoder_code_score_as_training_did(llm_exports, name):
    """Block 0: plain transformers (AutoModelForCausalLM, the folder's chat template); block 1:
    sentence_transformers.CrossEncoder(folder).predict, its LogitScore head, raw w (Identity activation)."""
    w, _ = llm_exports["entries"][name]
    fresh = llm_exports["fresh"][name]
    assert not llm_exports["gr_train_imported"]
    assert len(fresh) == 2 and w.std() > 1e-2
    torch.testing.assert_close(torch.tensor(fresh[0]), w, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fresh[1]), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["chat", "plain", "lora"])
def test_the_export_loads_as_a_plain_causal_lm_and_as_a_gr_train_reranker(llm_exports, name):
    import json

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from gr_train.reranker import Reranker

    w, folder = llm_exports["entries"][name]
    assert not any("lora_" in k for k in load_file(folder / "model.safetensors"))
    AutoModelForCausalLM.from_pretrained(folder)
    assert json.loads((folder / "1_LogitScore" / "config.json").read_text())["true_token_id"] == (
        Reranker.load(folder).yes_id)
    with torch.no_grad():
        torch.testing.assert_close(Reranker.load(folder).score(QUESTIONS, PASSAGES).flatten(), w, rtol=0, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: text-ranking" in card and "logit(`" in card


def test_the_exported_template_keeps_the_models_own_chat_rendering(llm_exports):
    from transformers import AutoTokenizer

    _, folder = llm_exports["entries"]["chat"]
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who wrote hamlet"}]
    exported = AutoTokenizer.from_pretrained(folder).apply_chat_template(chat, add_generation_prompt=True,
                                                                         tokenize=False)
    assert exported == tokenizer().apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def test_the_demos_export_check_scores_a_causal_lm_export_with_cross_encoder(llm_exports):
    from test_export import flat_pairs

    from gr_train.demo import score_exported

    w, folder = llm_exports["entries"]["chat"]
    scores, loader = score_exported(folder, [tuple(p) for p in flat_pairs(QUESTIONS, PASSAGES)])
    assert loader == "sentence_transformers.CrossEncoder"
    torch.testing.assert_close(torch.tensor(scores), w, rtol=0, atol=1e-5)


def test_the_input_builder_alone_tokenizes_as_the_reranker():
    """models.build_inputs (Ray preprocessing) builds the causal_lm inputs without the model: the same ids."""
    from gr_train.reranker import build_reranker_inputs

    reranker = tiny(instruction="find it")
    alone = build_reranker_inputs(reranker.cfg, tokenizer())
    for key, value in reranker.tokenize(QUESTIONS, PASSAGES).items():
        assert torch.equal(alone.tokenize(QUESTIONS, PASSAGES)[key], value)
    with pytest.raises(ValueError, match=r"reranker\.yes_token: 'yes please'"):
        build_reranker_inputs(dataclasses.replace(reranker.cfg, yes_token="yes please"), tokenizer())
