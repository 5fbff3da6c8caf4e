"""The step cost model (gr_train/cost.py), its model sizes (architectures.py) and `gr-train plan` (plan.py), held to
the real code: FLOPs counted by FlopCounterMode on the real G-Rerank step, ZeRO-3 bytes in DeepSpeed's comms log on 2
CPU ranks, memory against DeepSpeed's estimator and measured tensor bytes."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from gr_train import cli, cost, objectives, plan, train
from gr_train.architectures import KNOWN, Arch, arch_from_config, modules, param_count, resolve
from gr_train.batching import collate
from gr_train.config import ConfigError, load_config
from gr_train.data import Passage, Record, save_records
from gr_train.hardware import HARDWARE
from gr_train.models import build_reader
from gr_train.reranker import build_reranker, build_word_tokenizer
from helpers import bench_script

REPO = Path(__file__).resolve().parents[1]
WORDS = "a b c d e f g h yes no".split()
RERANKERS = {
    "cross_encoder": "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
                     "intermediate_size: 64, max_position_embeddings: 64}",
    "bi_encoder": "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
                  "intermediate_size: 64, max_position_embeddings: 64}",
    "rankt5": "{d_model: 32, num_layers: 2, num_decoder_layers: 2, num_heads: 2, d_ff: 64, d_kv: 16}",
    "causal_lm": "{num_hidden_layers: 2}",
}
READERS = {  # a tiny Llama with GQA and a tied output layer (as Llama-3.2-1B), and a tiny FiD-T5
    "causal_lm": ["reader.kind=causal_lm",
                  "reader.model_config={model_type: llama, tie_word_embeddings: true}"],
    "fid_t5": ["reader.kind=fid_t5"],
}


def records(B: int, n: int) -> list[Record]:
    """B questions of equal length (so the prompt P is the same whatever B), n candidates each, passages and answers
    longer than any budget here (so every passage has exactly L reader tokens, every target T, every pair R)."""
    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS[:8]) for _ in range(k))  # noqa: E731
    return [Record(f"q{b}", text(5), [text(30)], [Passage(text(2), text(80)) for _ in range(n)]) for b in range(B)]


def tiny(reader_kind="causal_lm", reranker_kind="cross_encoder", estimator="max_softmax", B=2, n=3, L=16, T=4,
         checkpointing=False, reranker_tokens=24):
    """(cfg, reader, reranker, batch, noise) of a tiny G-Rerank step on the local engine (fp32, eager attention)."""
    torch.manual_seed(0)
    L = L + 28 if reader_kind == "fid_t5" else L  # FiD's input template takes 28 tokens before the passage text
    R = 64 if reranker_kind == "causal_lm" else reranker_tokens  # Qwen3-Reranker-style prompt (~50 tokens)
    cfg = load_config(None, [*READERS[reader_kind], f"reader.passage_max_tokens={L}", f"reader.answer_max_tokens={T}",
                             "reader.attn_implementation=eager", "gumbel.k=2", f"data.n_candidates={n}",
                             f"gumbel.estimator={estimator}", f"reranker.kind={reranker_kind}",
                             f"reranker.model_config={RERANKERS[reranker_kind]}", f"reranker.max_tokens={R}",
                             f"runtime.reader_checkpointing={str(checkpointing).lower()}",
                             f"reranker.gradient_checkpointing={str(checkpointing).lower()}"])
    reader = build_reader(cfg.reader)
    tokenizer = build_word_tokenizer(WORDS, "t5" if reranker_kind == "rankt5" else "bert", extra_ids=20)
    reranker = build_reranker(cfg.reranker, tokenizer)
    reranker.train()
    if checkpointing:
        from gr_train.runtime import checkpoint_answer_pass

        checkpoint_answer_pass(reader)
    batch = collate(records(B, n), n, reranker, reader)
    return cfg, reader, reranker, batch, train.step_noise(cfg, 0, B)


def counted(cfg, reader, reranker, batch, noise) -> dict[str, int]:
    step = lambda: objectives.gumbel_rerank(batch, reranker, reader, cfg, 0, noise).loss  # noqa: E731
    return cost.count_step_flops(step, reader, reranker)


def models_of(cfg, reader, reranker) -> cost.Models:
    sizes = [arch_from_config(model.model.config.to_dict()) for model in (reader, reranker)]
    return cost.Models(*sizes, cfg.reranker.kind)


# -- FLOPs -------------------------------------------------------------------------------------------------------------

CASES = {  # reader, reranker, estimator, checkpointing (reader answer pass and reranker)
    "llama, cross-encoder": ("causal_lm", "cross_encoder", "max_softmax", False),
    "llama, bi-encoder": ("causal_lm", "bi_encoder", "max_softmax", False),
    "llama, LLM reranker": ("causal_lm", "causal_lm", "straight_through", False),
    "llama, RankT5": ("causal_lm", "rankt5", "max_softmax", False),
    "llama, score function": ("causal_lm", "cross_encoder", "score_function", False),
    "llama, checkpointing": ("causal_lm", "cross_encoder", "max_softmax", True),
    "llama, LLM reranker, checkpointing": ("causal_lm", "causal_lm", "max_softmax", True),
    "FiD, cross-encoder": ("fid_t5", "cross_encoder", "max_softmax", False),
    "FiD, RankT5, checkpointing": ("fid_t5", "rankt5", "subset", True),
}


@pytest.mark.parametrize("case", CASES)
def test_counted_flops_of_the_real_step_equal_the_closed_forms(case):
    reader_kind, reranker_kind, estimator, checkpointing = CASES[case]
    cfg, reader, reranker, batch, noise = tiny(reader_kind, reranker_kind, estimator, checkpointing=checkpointing)
    got = counted(cfg, reader, reranker, batch, noise)
    shape = cost.shape_of(batch, cfg)
    want = cost.step_flops(models_of(cfg, reader, reranker), shape)
    for part in cost.PARTS:
        assert want[part] == pytest.approx(got[part], rel=0.05), (part, got, want)
    assert got["prefill"] > 0 and got["answer_fwd"] > 0 and got["reranker_fwd"] > 0 and got["reranker_bwd"] > 0
    assert (got["answer_bwd"] > 0) == (estimator != "score_function")
    assert shape.samples == (4 if estimator == "score_function" else 1)


@pytest.mark.parametrize("B, n, L, T", [(1, 2, 8, 2), (2, 3, 16, 4), (3, 5, 24, 6)])
def test_counted_flops_equal_the_closed_forms_at_several_sizes(B, n, L, T):
    cfg, reader, reranker, batch, noise = tiny(B=B, n=n, L=L, T=T)
    got = counted(cfg, reader, reranker, batch, noise)
    shape = cost.shape_of(batch, cfg)
    assert (shape.B, shape.n, shape.L, shape.T) == (B, n, L, T)
    want = cost.step_flops(models_of(cfg, reader, reranker), shape)
    for part in cost.PARTS:
        assert want[part] == pytest.approx(got[part], rel=0.05), part


def test_doubling_n_L_T_and_B_scales_the_parts_that_depend_on_them():
    """Counted on the real step: n doubles the prefill and the reranker exactly and the answer pass's attention only;
    B doubles every part; L does not touch the reranker, at least doubles the prefill (its attention is quadratic);
    T touches only the answer pass."""
    base = dict(B=2, n=3, L=16, T=4)
    flops = {key: counted(*tiny(**{**base, key: 2 * value})) for key, value in base.items()}
    flops["base"] = counted(*tiny(**base))
    ratio = {key: {p: flops[key][p] / flops["base"][p] for p in cost.PARTS} for key in base}
    assert ratio["n"]["prefill"] == ratio["n"]["reranker_fwd"] == ratio["n"]["reranker_bwd"] == 2
    assert 1 < ratio["n"]["answer_fwd"] < 2 and 1 < ratio["n"]["answer_bwd"] < 2
    assert all(r == 2 for r in ratio["B"].values()), ratio["B"]
    assert 2 < ratio["L"]["prefill"] < 4 and ratio["L"]["reranker_fwd"] == ratio["L"]["reranker_bwd"] == 1
    assert 1 < ratio["L"]["answer_fwd"] < 2
    assert ratio["T"]["prefill"] == ratio["T"]["reranker_fwd"] == ratio["T"]["reranker_bwd"] == 1
    assert 1 < ratio["T"]["answer_fwd"] < 2 and 1 < ratio["T"]["answer_bwd"] < 2
    # the closed forms scale the same way
    m = models_of(*tiny(**base)[:3])
    shape = cost.StepShape(2, 3, 16, 29, 4, 24)
    doubled = cost.step_flops(m, cost.StepShape(2, 6, 16, 29, 4, 24))
    assert doubled["prefill"] == 2 * cost.step_flops(m, shape)["prefill"]


# -- ZeRO-3 traffic and memory, against DeepSpeed on 2 CPU ranks ----------------------------------------------------


def tiny_run_overrides(folder: Path, estimator: str, checkpointing: bool) -> list[str]:
    """A tiny causal_lm reader (built under zero.Init) and BERT cross-encoder, fp32, 2 questions per rank."""
    rng = random.Random(0)
    text = lambda k: " ".join(rng.choice(WORDS[:8]) for _ in range(k))  # noqa: E731
    save_records([Record(f"q{i}", text(6), [text(2)], [Passage(text(2), text(30)) for _ in range(4)])
                  for i in range(32)], folder / "train.jsonl")
    build_word_tokenizer(WORDS).save_pretrained(folder / "tokenizer")
    return ["run.progress=false", f"run.run_dir={folder / 'run'}", f"data.train_path={folder / 'train.jsonl'}",
            "data.n_candidates=4", f"reranker.tokenizer_path={folder / 'tokenizer'}", "reranker.kind=cross_encoder",
            "reranker.max_tokens=32", f"reranker.model_config={RERANKERS['cross_encoder']}", "reader.kind=causal_lm",
            "reader.random_init=true", "reader.passage_max_tokens=24", "reader.answer_max_tokens=8",
            "reader.attn_implementation=eager", "reader.model_config={model_type: llama}",
            f"gumbel.estimator={estimator}", "gumbel.k=2", "train.max_steps=2", "train.micro_batch_size=2",
            "train.log_every_steps=100",
            f"runtime.reader_checkpointing={str(checkpointing).lower()}",
            f"reranker.gradient_checkpointing={str(checkpointing).lower()}", "runtime.engine=deepspeed",
            # prof_ops, not prof_all: deepspeed 0.19.8's logger exits the process (calc_bw_log: "wrong comm_op
            # specified") on an all_gather_object, which the recipe's logging calls
            "runtime.ds_overrides={comms_logger: {enabled: true, verbose: false, prof_all: false, prof_ops: "
            "[all_gather_into_tensor, all_gather, reduce_scatter_tensor, reduce_scatter, all_reduce]}}"]


@pytest.mark.distributed
@pytest.mark.parametrize("estimator, checkpointing", [("max_softmax", True), ("score_function", False)])
def test_zero3_bytes_and_model_states_match_deepspeed_on_two_ranks(tmp_path, estimator, checkpointing):
    """2 ZeRO-3 CPU ranks (gloo) run the recipe; DeepSpeed's comms log of step 1 holds what zero3_traffic predicts
    (every submodule gathered at each use: prefill, answer passes, their backward and recompute, reranker forward and
    backward; the reranker's gradients reduce-scattered) within 10%, and DeepSpeed's own estimate of the reranker's
    model states (what plan prints) is at least what each rank holds."""
    from test_distributed import DRIVER, free_ports, launch, reports, torchrun

    (tmp_path / "empty.yaml").write_text("{}\n")
    overrides = tiny_run_overrides(tmp_path, estimator, checkpointing)
    out = tmp_path / "out"
    launch(torchrun(2, int(free_ports(1)[0]), str(DRIVER), "--out", str(out), "--no-resume", "--comms-step", "1",
                    "--config", str(tmp_path / "empty.yaml"), *overrides), tmp_path / "log.txt", timeout=400)
    logs = [json.loads((out / f"comms-rank{r}.json").read_text()) for r in range(2)]
    cfg = load_config(None, overrides)
    models = plan.models_of(cfg)
    shape = cost.step_shape(cfg, 2, 4, 24, 20, 8, 32)  # byte counts do not depend on the token counts
    want = cost.zero3_traffic(models, shape, "fp32")
    for log in logs:
        summary = {op: {int(size): count for size, count in sizes.items()} for op, sizes in log["summary"].items()}
        # all_gather_into_tensor logs each rank's input shard; the gathered tensor is world_size times that
        gathered = sum(size * count for size, count in summary["all_gather_into_tensor"].items()) * 2
        gather_calls = sum(summary["all_gather_into_tensor"].values())
        reduced = sum(size * count for size, count in summary["reduce_scatter_tensor"].items())  # the full input
        assert gathered == pytest.approx(sum(c.bytes for c in want if c.op == "all_gather"), rel=0.1)
        assert gather_calls == pytest.approx(sum(c.calls for c in want if c.op == "all_gather"), rel=0.1)
        assert reduced == pytest.approx(sum(c.bytes for c in want if c.op == "reduce_scatter"), rel=0.1)
        measured_states = log["model_states"]["total"]
        estimate = cost.memory_per_rank(models, shape, HARDWARE["cpu"], 2, 1, "fp32")["reranker_states"]
        assert measured_states <= estimate <= 2 * measured_states
    predicted = cost.memory_per_rank(models, shape, HARDWARE["cpu"], 2, 1, "fp32", reranker_states=0)
    reader_total = param_count(models.reader_modules())
    for rep in reports(out, 2):
        assert rep["reader_elements"] == reader_total
        largest = max(x.numel for ms in models.reader_modules().values() for x in ms)
        assert rep["reader_elements_held"] * 4 == pytest.approx(predicted["reader_params"] - largest * 4, rel=0.01)


def test_bytes_per_rank_follow_world_size_and_hpz_keeps_backward_gathers_inside_a_node():
    """What each rank receives is (r - 1) / r of each gathered tensor; across nodes a ring runs at
    min(NVLink, the node's IB); with hpZ the backward gathers read the node's secondary partition (8 ranks, NVLink),
    for one more copy of the parameters / 8 per rank."""
    m = plan.models_of(load_config(REPO / "configs" / "bge_llama.yaml"))
    s = cost.StepShape(8, 20, 256, 32, 32, 256, samples=1)  # an estimator with an answer backward
    h100 = HARDWARE["h100"]
    flat = cost.zero3_traffic(m, s, "bf16", 100_000)
    prefill = next(c for c in flat if c.part == "prefill")
    assert cost.wire_bytes(prefill, 16, 2) == prefill.bytes * 15 / 16 and cost.wire_bytes(prefill, 1, 1) == 0
    assert cost.bus_bandwidth(h100, 16, 2) == 400e9 * 0.7 and cost.bus_bandwidth(h100, 8, 1) == 450e9 * 0.7
    hpz = cost.zero3_traffic(m, s, "bf16", 100_000, hpz=True)
    scopes = {(c.part, c.op): c.scope for c in hpz}
    assert scopes[("answer_bwd", "all_gather")] == scopes[("reranker_bwd", "all_gather")] == "node"
    assert scopes[("prefill", "all_gather")] == scopes[("answer_fwd", "all_gather")] == "world"
    assert [(c.part, c.bytes, c.calls) for c in hpz] == [(c.part, c.bytes, c.calls) for c in flat]
    seconds = [sum(cost.comm_seconds(c, h100, 16, 2) for c in cs if c.part == "answer_bwd") for cs in (flat, hpz)]
    assert seconds[1] < seconds[0]
    mem = [cost.memory_per_rank(m, s, h100, 16, 2, "bf16", 100_000, hpz=h, reranker_states=0) for h in (False, True)]
    reader = param_count(m.reader_modules()) - 33 * 2048  # its 33 norms persist whole under the threshold
    assert mem[1]["hpz_secondary"] == (reader + param_count(m.reranker_modules())) * 2 // 8
    assert mem[1]["peak"] - mem[0]["peak"] == mem[1]["hpz_secondary"]


def test_the_memory_estimate_calls_deepspeeds_estimator(monkeypatch):
    """The trained reranker's model states are DeepSpeed's own figure (estimate_zero3_model_states_mem_needs, no
    offload): for bge-reranker-base on 2 nodes x 8 GPUs, 4 * 192,001,536 (its word embeddings, the largest
    submodule) + 18 * 278,044,417 / 16 bytes."""
    import deepspeed.runtime.zero.stage3 as stage3

    calls = []
    real = stage3.estimate_zero3_model_states_mem_needs

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(stage3, "estimate_zero3_model_states_mem_needs", spy)
    cfg = load_config(REPO / "configs" / "bge_llama.yaml")
    p = plan.plan(cfg, 16, 2, HARDWARE["h100"])
    assert calls and calls[0][0] == (278_044_417, 192_001_536)
    assert calls[0][1] == dict(num_gpus_per_node=8, num_nodes=2, cpu_offload=False, cpu_offload_params=False,
                               zero_init=True)
    assert p.prediction.memory["reranker_states"] == 4 * 192_001_536 + int(18 * 278_044_417 / 16) == 1_080_806_113


@pytest.mark.parametrize("B, n, L, T, estimator", [(4, 6, 32, 8, "max_softmax"), (2, 8, 64, 8, "max_softmax"),
                                                   (4, 6, 32, 8, "score_function")])
def test_activation_memory_matches_the_measured_peak_of_a_real_step(B, n, L, T, estimator):
    """memory_per_rank's activation side (passage K/V, prefill transients, the answer passes' and the reranker's saved
    tensors) against the peak tensor bytes of the real step's forward and backward on CPU, within 15%."""
    torch.manual_seed(0)
    cfg = load_config(None, ["reader.kind=causal_lm", f"reader.passage_max_tokens={L}", f"reader.answer_max_tokens={T}",
                             "reader.attn_implementation=eager", "gumbel.k=2", f"data.n_candidates={n}",
                             "reranker.max_tokens=48", f"gumbel.estimator={estimator}",
                             "reader.model_config={model_type: llama, hidden_size: 64, intermediate_size: 128}",
                             "reranker.model_config={model_type: bert, hidden_size: 64, num_hidden_layers: 2, "
                             "num_attention_heads: 2, intermediate_size: 128, max_position_embeddings: 64}"])
    reader = build_reader(cfg.reader)
    reranker = build_reranker(cfg.reranker, build_word_tokenizer(WORDS))
    reranker.train()
    batch = collate(records(B, n), n, reranker, reader)
    noise = train.step_noise(cfg, 0, B)
    with cost.TensorBytes() as measured:
        objectives.gumbel_rerank(batch, reranker, reader, cfg, 0, noise).loss.backward()
    mem = cost.memory_per_rank(models_of(cfg, reader, reranker), cost.shape_of(batch, cfg), HARDWARE["cpu"], 1, 1,
                               "fp32", reranker_states=0)
    activation_side = mem["peak"] - mem["reader_params"]
    assert activation_side == pytest.approx(measured.peak, rel=0.15)
    assert mem["reranker_activations"] > mem["passage_states"] > 0


# -- model sizes ----------------------------------------------------------------------------------------------------


def hf_config(a: Arch):
    """The transformers config of an Arch (the inverse of arch_from_config)."""
    from transformers import AutoConfig

    if a.family == "llama":
        return AutoConfig.for_model("qwen3" if a.qk_norm else "llama", hidden_size=a.hidden, num_hidden_layers=a.layers,
                                    num_attention_heads=a.heads, num_key_value_heads=a.kv, head_dim=a.hd,
                                    intermediate_size=a.intermediate, vocab_size=a.vocab, tie_word_embeddings=a.tied)
    if a.family == "bert":
        return AutoConfig.for_model("xlm-roberta", hidden_size=a.hidden, num_hidden_layers=a.layers,
                                    num_attention_heads=a.heads, intermediate_size=a.intermediate, vocab_size=a.vocab,
                                    max_position_embeddings=a.positions, type_vocab_size=a.token_types, num_labels=1)
    return AutoConfig.for_model("t5", d_model=a.hidden, num_layers=a.layers, num_decoder_layers=a.decoder_layers,
                                num_heads=a.heads, d_kv=a.hd, d_ff=a.intermediate, vocab_size=a.vocab,
                                tie_word_embeddings=a.tied, feed_forward_proj="gated-gelu" if a.gated else "relu")


@pytest.mark.parametrize("name, params", [("meta-llama/Llama-3.2-1B", 1_235_814_400),
                                          ("meta-llama/Llama-3.1-8B", 8_030_261_248),
                                          ("Qwen/Qwen3-Reranker-0.6B", 596_049_920),
                                          ("BAAI/bge-reranker-base", 278_044_417),
                                          ("HuggingFaceTB/SmolLM2-135M", 134_515_008),
                                          ("Soyoung97/RankT5-base", 222_903_552)])
def test_known_architectures_have_the_parameters_of_the_built_model(name, params):
    """Each table entry's parameter tensors (architectures.modules) add up to the transformers model of that shape,
    built on the meta device (no weights), tensor for tensor."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    a = KNOWN[name]
    auto = {"llama": AutoModelForCausalLM, "bert": AutoModelForSequenceClassification, "t5": AutoModelForSeq2SeqLM}
    with torch.device("meta"):
        model = auto[a.family].from_config(hf_config(a))
    head = "classifier" if a.family == "bert" else "lm"
    ours = modules(a, head)
    assert param_count(ours) == sum(p.numel() for p in model.parameters()) == params
    called = [m for name, m in model.named_modules() if name != "shared"]  # T5's `shared` is never called itself
    assert sorted(x.numel for ms in ours.values() for x in ms) == sorted(
        sum(p.numel() for p in m.parameters(recurse=False)) for m in called if any(True for _ in m.parameters(False)))
    assert arch_from_config(hf_config(a).to_dict()) == Arch(**{**a.__dict__, "source": ""})


def test_sizes_come_from_a_local_config_json_and_an_unknown_model_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config(KNOWN["meta-llama/Llama-3.2-1B"]).to_dict()))
    assert resolve(str(tmp_path)).hidden == 2048 and resolve(str(tmp_path)).tied
    with pytest.raises(ValueError, match=r"reader.name_or_path=acme/reader-7b: model size unknown"):
        resolve("acme/reader-7b", what="reader.name_or_path")
    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not sized"):
        arch_from_config({"model_type": "gpt_neox"})


# -- gr-train plan --------------------------------------------------------------------------------------------------


def test_plan_of_bge_llama_on_two_nodes_prints_the_table_and_names_the_bottleneck(capsys):
    rc = cli.main(["plan", "--config", "configs/bge_llama.yaml", "--gpus", "16", "--nodes", "2",
                   "--questions", "90447"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for part in cost.PARTS:
        assert f"| {part} |" in out
    assert "| optimizer |" in out and "| step |" in out
    # the prefill: 8 questions x 20 passages x 256 tokens through Llama-3.2-1B's 16 layers, 2 FLOPs per weight and
    # token plus the L x L attention
    a = KNOWN["meta-llama/Llama-3.2-1B"]
    weights = 2048 * (2048 + 2 * 512) + 2048 * 2048 + 3 * 2048 * 8192
    prefill = 16 * (2 * 160 * 256 * weights + 4 * 160 * 256 * 256 * a.inner)
    p = plan.plan(load_config(REPO / "configs" / "bge_llama.yaml"), 16, 2, HARDWARE["h100"], 90447)
    assert p.prediction.flops["prefill"] == prefill == 81_088_982_548_480
    assert p.prediction.flops["answer_bwd"] == 0  # score_function: no backward through the reader
    # the 4 score-function answer passes each gather the reader submodule by submodule (114 gathers at 0.85 ms,
    # hardware.py): more time than the prefill's 81 TFLOP at 40% of 989 TFLOP/s
    assert p.prediction.bottleneck() == "answer_fwd all-gathers" and "bottleneck: answer_fwd all-gathers" in out
    assert p.prediction.compute_s["prefill"] == pytest.approx(prefill / (989.4e12 * 0.4))
    assert "reranker states 1.01" in out and "fits" in out and "time per epoch (90,447 questions, 706 steps)" in out
    assert p.largest_micro_batch >= 8
    # ZeRO-3 gathers the reader in bf16 for the prefill (all but the 33 norms of 2,048 elements, which persist under
    # param_persistence_threshold 100000) and for each of the 4 answer passes (the tied embedding twice: as the
    # input embedding and as the output layer)
    gathered = {c.part: c.bytes for c in p.prediction.collectives if c.op == "all_gather"}
    assert gathered["prefill"] == (1_235_814_400 - 33 * 2048) * 2
    assert gathered["answer_fwd"] == 4 * (1_235_814_400 - 33 * 2048 + 128256 * 2048) * 2


def test_plan_errors_name_the_shortfall_and_the_unknown_model(capsys):
    rc = cli.main(["plan", "--config", "configs/bge_llama.yaml", "--gpus", "16", "--nodes", "2",
                   "train.micro_batch_size=2048"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.micro_batch_size=2048 does not fit" in err and "GiB short" in err, err
    assert "fits" in err  # and the largest micro-batch that does
    rc = cli.main(["plan", "--config", "configs/bge_llama.yaml", "--gpus", "16", "--nodes", "2",
                   "reader.name_or_path=acme/reader-7b"])
    err = capsys.readouterr().err
    assert rc == 2 and "reader.name_or_path=acme/reader-7b: model size unknown" in err
    rc = cli.main(["plan", "--config", "configs/bge_llama.yaml", "--gpus", "15", "--nodes", "2"])
    assert rc == 2 and "split evenly" in capsys.readouterr().err


def test_plan_of_a_tiny_config_gives_the_flops_the_real_step_counts(tmp_path):
    """plan sizes a model built from model_config as models.build_models builds it: its closed forms at the real
    batch's shape equal the FLOPs counted on the models built from the same config."""
    cfg, reader, reranker, batch, noise = tiny()
    got = counted(cfg, reader, reranker, batch, noise)
    cfg.reranker.tokenizer_path = None
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        plan.models_of(cfg)  # the tiny reranker's vocabulary comes from its tokenizer
    build_word_tokenizer(WORDS).save_pretrained(tmp_path / "tokenizer")
    cfg.reranker.tokenizer_path = str(tmp_path / "tokenizer")
    assert cost.step_flops(plan.models_of(cfg), cost.shape_of(batch, cfg)) == got



# -- docs/scaling.md (bench/scaling_table.py) --------------------------------------------------------------------------


def scaling_table():
    return bench_script("scaling_table")


def test_the_scaling_grids_replicated_8b_reader_fits_an_h100_as_plans_memory_check_says():
    """docs/scaling.md's 8B reader is Llama-3.1-8B at its published 8.03B parameters; replicated whole (bf16) on each
    of 8 H100s at the config's micro-batch 8 it fits at 30.6 GiB of 74.5, as plan's own check says, up to micro-batch
    32; its time is plan's less exactly the reader's all-gathers."""
    a = KNOWN["meta-llama/Llama-3.1-8B"]
    params = param_count(modules(a, "lm"))
    assert params == pytest.approx(8.03e9, rel=0.01)
    st, h100 = scaling_table(), HARDWARE["h100"]
    [row] = st.grid(h100, readers=["Llama-3.1-8B"], clusters=[(8, 1)], modes=["replicated"])
    mem, p = row.prediction.memory, row.plan
    assert not p.cfg.runtime.partition_reader and p.shape.B == 8
    assert mem["reader_params"] == params * 2  # whole on every rank, no gathered submodule on top
    assert row.fits and round(mem["peak"] / 2**30, 1) == 30.6 and mem["peak"] == p.prediction.memory["peak"]
    plan.check_fits(p)  # plan's own check: no ConfigError
    assert p.largest_micro_batch == 32
    too_big = load_config(st.CONFIG, [*st.READERS["Llama-3.1-8B"], "runtime.partition_reader=false",
                                      "train.micro_batch_size=33"])
    with pytest.raises(ConfigError, match="train.micro_batch_size=33 does not fit"):
        plan.check_fits(plan.plan(too_big, 8, 1, h100))
    line = st.table([row]).splitlines()[-1]
    assert "does not fit" not in line and line.endswith("| 30.6 | 32 |"), line
    reader_parts = ("prefill", "answer_fwd", "answer_bwd")
    dropped = [s for c, s in zip(p.prediction.collectives, p.prediction.collective_s) if c.part in reader_parts]
    assert len(dropped) == 2 and not any(c.part in reader_parts for c in row.prediction.collectives)
    assert row.prediction.step_s == pytest.approx(p.prediction.step_s - sum(dropped))


# -- the host terms and bench/bench_cost.py's fit ----------------------------------------------------------------------


def test_the_host_term_adds_per_candidate_passage_and_per_multi_rank_step():
    """cost.predict's host term: host_per_passage_s for each candidate passage of every micro-batch (B * n * accum),
    plus multi_rank_step_s once a step when more than one rank trains; it adds to the step and is a term of its own,
    in the plan's table too."""
    cfg = load_config(REPO / "configs" / "bge_llama.yaml")
    models, shape = plan.models_of(cfg), cost.step_shape(cfg, 3, 5, 32, 0, 8, 64)
    hw = dataclasses.replace(HARDWARE["h100"], host_per_passage_s=0.01, multi_rank_step_s=0.5)
    bare = dataclasses.replace(hw, host_per_passage_s=0.0, multi_rank_step_s=0.0)
    for world, nodes, host in [(1, 1, 0.01 * 3 * 5 * 2), (16, 2, 0.01 * 3 * 5 * 2 + 0.5)]:
        pred = cost.predict(models, shape, hw, world, nodes, "bf16", accum=2)
        without = cost.predict(models, shape, bare, world, nodes, "bf16", accum=2)
        assert without.host_s == 0.0 and pred.host_s == pytest.approx(host)
        assert pred.step_s == pytest.approx(without.step_s + host)
        assert pred.terms()["host"] == pred.part_seconds()["host"] == pred.host_s
    p = plan.plan(cfg, 16, 2, hw)
    assert f"| host | – | – | – | – | – | {p.prediction.host_s:.4f} |" in plan.format_plan(p)


def test_bench_cost_fit_recovers_the_constants_that_made_the_steps():
    """bench/bench_cost.py's fit, on its own 23 measured shapes with step times made by cost.predict at known
    constants, gives those constants back and every step exactly; holding the host terms at 0 refits the rest."""
    bench_cost = bench_script("bench_cost")
    truth = dataclasses.replace(HARDWARE["cpu"], compute_efficiency=0.5, fetch_overhead_s=1e-3, comm_efficiency=0.2,
                                host_per_passage_s=2e-3, multi_rank_step_s=0.1)
    rows = json.loads((REPO / "bench" / "results" / "cost_rows.json").read_text())
    assert len(rows) == 23 and {r["world"] for r in rows} == {1, 2}
    for r in rows:
        m = cost.Models(Arch(**r["reader"]), Arch(**r["reranker"]), "cross_encoder")
        r["step_s"] = cost.predict(m, cost.StepShape(**r["shape"]), truth, r["world"], 1, "fp32",
                                   reranker_states=0).step_s
    x, predicted = bench_cost.fit(rows, HARDWARE["cpu"], "fp32")
    assert x == pytest.approx([1 / 0.5, 1e-3, 1 / 0.2, 2e-3, 0.1], rel=1e-6)
    assert predicted == pytest.approx([r["step_s"] for r in rows], rel=1e-9)
    one_rank = [r for r in rows if r["world"] == 1]
    for r in one_rank:
        r["step_s"] -= 2e-3 * r["shape"]["B"] * r["shape"]["n"]
    x, _ = bench_cost.fit(one_rank, HARDWARE["cpu"], "fp32", compute_efficiency=0.5, host=False)
    assert x[0] == 2.0 and x[3:] == [0.0, 0.0] and x[1] == pytest.approx(1e-3, rel=1e-6)
