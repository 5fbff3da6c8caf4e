"""The engine boundary in one process: the generated DeepSpeed config, the runtime config section, the portable
optimizer state, and activation checkpointing of the reader's answer pass."""

from __future__ import annotations

import math

import pytest
import torch

from gr_train import batching, objectives, runtime, train
from gr_train.attention import NEG_BIAS
from gr_train.config import ConfigError, ReaderSection, load_config
from gr_train.models import build_reader

from test_train import tiny_cfg


def test_ds_config_is_generated_from_the_typed_config():
    cfg = load_config(overrides=["train.micro_batch_size=8", "train.grad_accum_steps=3", "optim.grad_clip=0.5",
                                 "runtime.engine=deepspeed", "runtime.precision=bf16",
                                 "runtime.param_persistence_threshold=100",
                                 "runtime.ds_overrides={zero_optimization: {overlap_comm: true}, flops_profiler: {}}"])
    ds = runtime.ds_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 8 * 3 * 4
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 100
    assert zero["overlap_comm"] is True  # merged into the section, the generated keys stay
    assert ds["flops_profiler"] == {}
    assert "optimizer" not in ds and "scheduler" not in ds  # client torch AdamW + LambdaLR (no JIT builds)


@pytest.mark.parametrize("override, key", [
    ("runtime.engine=horovod", "runtime.engine"),
    ("runtime.precision=fp8", "runtime.precision"),
    ("runtime.precision=bf16", "runtime.precision"),  # bf16 needs the DeepSpeed engine
    ("runtime.num_workers=two", "runtime.num_workers"),
])
def test_bad_runtime_settings_fail_with_the_key_named(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])


def test_optimizer_state_is_saved_by_parameter_name_and_restored_exactly(tmp_path):
    """engine.pt holds full AdamW moments by parameter name (the format the ZeRO-3 engine writes too), so it loads
    on any engine and world size; restored into a fresh engine, the next update is identical."""
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    rt = recipe.runtime

    def one_step():
        batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, recipe.reranker, recipe.reader)
        torch.manual_seed(1)  # same dropout
        out = objectives.gumbel_rerank(batch, recipe.reranker, recipe.reader, cfg, 0, train.step_noise(cfg, 0, 4))
        rt.backward(out.loss)
        rt.step()

    one_step()
    one_step()
    state, weights = rt.state_dict(), rt.module_state_dict()
    assert state["optimizer"]["step"] == 2
    names = {n for n, p in recipe.reranker.named_parameters() if p.requires_grad}
    assert set(state["optimizer"]["exp_avg"]) == names == set(state["optimizer"]["exp_avg_sq"])
    one_step()
    expected = {k: v.clone() for k, v in recipe.reranker.state_dict().items()}

    fresh = train.setup(cfg, resume=False)
    recipe.reranker, recipe.runtime, rt = fresh.reranker, fresh.runtime, fresh.runtime
    rt.load_module_state_dict(weights)
    rt.load_state_dict(state)
    one_step()
    for k, v in recipe.reranker.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_reader_checkpointing_gives_the_same_loss_and_mask_gradient(tmp_path):
    """Recomputing the answer-pass layers in backward changes memory and time, not the numbers."""
    cfg = tiny_cfg(tmp_path)
    recipe = train.setup(cfg, resume=False)
    batch = batching.collate(recipe.train_records[:4], cfg.data.n_candidates, None, recipe.reader)
    states = recipe.reader.encode_passages(batch.reader_inputs)

    def loss_and_grad():
        log_M = torch.linspace(-3, 0, batch.valid.numel()).view_as(batch.valid.float()).requires_grad_(True)
        loss = recipe.reader.answer_loss(states, batch.reader_inputs, log_M).mean()
        loss.backward()
        return loss.detach(), log_M.grad

    plain = loss_and_grad()
    layers = recipe.reader.answer_pass_layers()
    calls = []
    # A submodule's hook fires in the forward and again in the recompute (the layer's own hook only once).
    layers[0].self_attn.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    runtime.checkpoint_answer_pass(recipe.reader)
    checkpointed = loss_and_grad()
    assert torch.equal(plain[0], checkpointed[0])
    assert torch.allclose(plain[1], checkpointed[1], atol=1e-7)
    n_iter = recipe.reader.model.config.n_iterations
    assert len(calls) == 2 * n_iter  # each tied-decoder application ran twice: forward, then recompute


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2", "fid_t5"])
def test_reader_checkpointing_of_hf_readers_gives_the_same_loss_and_mask_gradient(model_type):
    """Decoder-only readers too: each answer-pass layer reads the passage K/V as a read-only input, so its recompute
    in backward sees the keys its forward saw (a cache it appended to would hold the answer's keys twice)."""
    kind = "fid_t5" if model_type == "fid_t5" else "causal_lm"
    model_config = {} if kind == "fid_t5" else {"model_type": model_type, "initializer_range": 0.3}
    torch.manual_seed(0)
    reader = build_reader(ReaderSection(kind=kind, model_config=model_config, passage_max_tokens=48))
    passages = [[("Book", "the book was written by bob"), ("Sky", "the sky is blue"), ("", "")],
                [("Ann", "ann lives in paris"), ("Red", "roses are red"), ("Cat", "the cat sleeps")]]
    inputs = reader.tokenize(["who wrote it?", "where is ann?"], passages, ["bob", "paris"])
    states = reader.encode_passages(inputs)
    valid = torch.tensor([[True, True, False], [True, True, True]])

    def loss_and_grad():
        log_M = torch.tensor([[-0.1, -2.0, 0.0], [-0.7, 0.0, -5.0]]).masked_fill(~valid, NEG_BIAS).requires_grad_(True)
        loss = reader.answer_loss(states, inputs, log_M).mean()
        loss.backward()
        return loss.detach(), log_M.grad

    plain = loss_and_grad()
    assert plain[1][valid].abs().min() > 1e-6  # every valid passage gets a gradient: the comparison can fail
    layers = reader.answer_pass_layers()
    assert len(layers) == 2  # the tiny models' two decoder layers
    calls = []
    # A submodule's hook fires in the forward and again in the recompute (the layer's own hook only once).
    first = next(m for m in layers[0].modules() if list(m.parameters(recurse=False)))  # a projection or a norm
    first.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    runtime.checkpoint_answer_pass(reader)
    checkpointed = loss_and_grad()
    assert torch.allclose(plain[0], checkpointed[0], rtol=0, atol=1e-5)
    assert torch.allclose(plain[1], checkpointed[1], rtol=0, atol=1e-5)
    assert len(calls) == 2  # forward, then recompute
    again = loss_and_grad()  # the same states serve another checkpointed pass
    assert torch.allclose(plain[1], again[1], rtol=0, atol=1e-5)


def test_both_engines_implement_the_runtime_protocol():
    """Every method of runtime.Runtime exists on both engines with the protocol's parameters; LocalRuntime passes
    the isinstance check (DeepSpeedRuntime needs a process group to construct: tests/test_distributed.py)."""
    import inspect

    members = [n for n, v in vars(runtime.Runtime).items() if callable(v) and not n.startswith("_")]
    assert {"prepare", "backward", "step", "state_dict", "gathered", "close"} <= set(members)
    for engine in (runtime.LocalRuntime, runtime.DeepSpeedRuntime):
        for name in members:
            expected = list(inspect.signature(getattr(runtime.Runtime, name)).parameters)
            assert list(inspect.signature(getattr(engine, name)).parameters) == expected, (engine.__name__, name)
    assert runtime.LocalRuntime.prepare is runtime.DeepSpeedRuntime.prepare  # one prepare
    assert isinstance(runtime.build_runtime(load_config()), runtime.Runtime)
    assert not isinstance(object(), runtime.Runtime)


def test_local_step_skips_a_requested_or_nonfinite_step_and_keeps_the_schedule():
    """step(skip=True), or gradients with a non-finite norm: no update, gradients dropped, the LR schedule stays."""
    cfg = load_config(overrides=["optim.warmup_steps=10"])
    rt = runtime.LocalRuntime(cfg)
    module = torch.nn.Linear(3, 1)
    rt.prepare(module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for skip, grad in ((True, 1.0), (False, float("nan")), (False, float("inf"))):
        module(torch.ones(1, 3)).sum().mul(grad).backward()
        out = rt.step(skip=skip)
        assert out["train/step_skipped"] == 1.0 and out["train/lr"] == pytest.approx(1e-5)  # warm-up step 0 of 10
        assert all(p.grad is None for p in module.parameters())
        assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    module(torch.ones(1, 3)).sum().backward()
    out = rt.step()
    assert out["train/step_skipped"] == 0.0 and math.isfinite(out["train/grad_norm"])
    assert not torch.equal(module.weight, before["weight"]) and rt.scheduler.last_epoch == 1


def test_prepare_places_both_modules_on_the_runtime_device_and_keeps_the_optimizer_parameters(tmp_path):
    """prepare moves the reranker and the frozen reader, buffers included (BERT's position and token-type ids), to
    runtime.device, keeping the Parameter objects the optimizer holds. DeepSpeed moves neither when the reader was
    built under zero.Init; on a GPU the reranker's CPU buffers then failed the first step (bench/gpu_check.py).
    The meta device stands in for a GPU here."""
    from gr_train.models import build_models

    cfg = tiny_cfg(tmp_path)
    reader, reranker = build_models(cfg)
    assert any(True for _ in reranker.buffers()), "the test needs a reranker with buffers"
    rt = runtime.LocalRuntime(cfg)
    rt.device = torch.device("meta")
    rt.prepare(reranker, frozen=reader)
    for module in (reranker, reader):
        assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
    held = {id(p) for group in rt.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in reranker.parameters() if p.requires_grad}


def test_place_leaves_zero3_partitioned_parameters_to_deepspeed():
    """A parameter with a ds_id (partitioned by zero.Init) is not moved; the others and every buffer are."""
    module = torch.nn.BatchNorm1d(3)  # weight, bias; buffers running_mean, running_var, num_batches_tracked
    module.weight.ds_id = 0
    runtime.place(module, torch.device("meta"))
    assert module.weight.device.type == "cpu" and module.bias.device.type == "meta"
    assert {b.device.type for b in module.buffers()} == {"meta"}


def test_checkpointed_layers_recompute_under_the_sdpa_kernels_of_their_forward():
    """A checkpointed answer-pass layer is recomputed in backward, outside the forward's `sdpa_kernel` context
    (attention.bias_grad_kernels allows only the math kernel when the mask needs a gradient on CUDA); the recompute
    must use the same kernels, or the refused kernel runs there."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seen = []

    class Layer(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cuda.mem_efficient_sdp_enabled())
            return x * x  # saves x: backward needs the recompute

    class Reader:
        layers = [Layer()]

        def answer_pass_layers(self):
            return self.layers

    reader = Reader()
    runtime.checkpoint_answer_pass(reader)
    x = torch.ones(3, requires_grad=True)
    with sdpa_kernel([SDPBackend.MATH]):
        y = reader.layers[0](x).sum()
    assert torch.backends.cuda.mem_efficient_sdp_enabled()  # the context is over
    y.backward()
    assert seen == [False, False]  # forward, then the recompute in backward
    assert torch.equal(x.grad, torch.full((3,), 2.0))
