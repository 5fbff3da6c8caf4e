"""`gr-train plan`: a config's G-Rerank step on N GPUs, predicted by the cost model (cost.py) before any GPU is booked:
FLOPs, ZeRO-3 bytes and seconds per part, memory per rank, the bottleneck, time per epoch and the largest micro-batch
that fits. Models are sized without loading them (architectures.resolve).
Run: `gr-train plan --config configs/bge_llama.yaml --gpus 16 --nodes 2 [--hardware h100] [--questions 90447]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gr_train import cost
from gr_train.architectures import Arch, modules, param_count, resolve
from gr_train.config import ConfigError, RunConfig
from gr_train.hardware import Hardware

# Prompt tokens assumed when reader.prompt_max_tokens is 0 (no cut): "question: q\nanswer:" around a HotpotQA question
# of ~20-25 tokens (Llama 3 tokenizer). `--prompt-tokens` sets it.
DEFAULT_PROMPT_TOKENS = 32


def models_of(cfg: RunConfig) -> cost.Models:
    """The two models of `cfg`, sized: reader.name_or_path / reranker.name_or_path from architectures.KNOWN or a local
    folder's config.json, else the config each would be built from (model_config, as models.build_models does).
    Raises ConfigError naming the key when a model's size is unknown or its kind is not modelled."""
    from gr_train.objectives import OBJECTIVES

    if cfg.objective.name != "gumbel":
        raise ConfigError(f"objective.name={cfg.objective.name}: the cost model is of the G-Rerank step "
                          "(objective.name=gumbel)")
    if cfg.reader.kind not in ("causal_lm", "fid_t5"):
        raise ConfigError(f"reader.kind={cfg.reader.kind}: the cost model sizes causal_lm and fid_t5 readers")
    if cfg.reranker.conditional:
        raise ConfigError("reranker.conditional=true: the cost model is of a pointwise reranker (one score per pair)")
    try:
        reader = resolve(cfg.reader.name_or_path, lambda: _reader_config(cfg), "reader.name_or_path")
        reranker = resolve(cfg.reranker.name_or_path, lambda: _reranker_config(cfg), "reranker.name_or_path")
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from None
    families = {"causal_lm": "llama", "fid_t5": "t5"}
    if reader.family != families[cfg.reader.kind]:
        raise ConfigError(f"reader.kind={cfg.reader.kind} with a {reader.family}-family model ({reader.source})")
    return cost.Models(reader, reranker, cfg.reranker.kind, OBJECTIVES["gumbel"].is_shift_invariant(cfg))


def _reader_config(cfg: RunConfig) -> dict:
    """The HF config a reader without name_or_path is built from (reader.model_config over the tiny defaults)."""
    from gr_train.models import READERS, _demo_tokenizer
    from gr_train.reader import TINY_FID_T5, _load_tokenizer

    tokenizer = _load_tokenizer(cfg.reader, _demo_tokenizer(cfg))
    if cfg.reader.kind == "causal_lm":
        return READERS["causal_lm"].scratch_config(cfg.reader, tokenizer).to_dict()
    return {"model_type": "t5", **TINY_FID_T5, "vocab_size": len(tokenizer), **cfg.reader.model_config}


def _reranker_config(cfg: RunConfig) -> dict:
    """The HF config a reranker without name_or_path is built from (reranker.model_config over the tiny defaults)."""
    from gr_train.models import _demo_tokenizer
    from gr_train.reranker import _family, _scratch_config, _tokenizer

    cls = _family(cfg.reranker)
    return _scratch_config(cfg.reranker, cls, _tokenizer(cfg.reranker, cls, _demo_tokenizer(cfg))).to_dict()


def shape_of_config(cfg: RunConfig, micro_batch: int | None = None, prompt_tokens: int | None = None
                    ) -> cost.StepShape:
    """The StepShape a config's micro-batch runs at, from its budgets: every passage padded to
    reader.passage_max_tokens, targets and reranker inputs at their budgets (the batch's longest, an upper bound), the
    prompt at reader.prompt_max_tokens or `prompt_tokens` (default DEFAULT_PROMPT_TOKENS); FiD has no prompt."""
    B = micro_batch or cfg.train.micro_batch_size
    P = 0
    if cfg.reader.kind == "causal_lm":
        P = prompt_tokens or cfg.reader.prompt_max_tokens or DEFAULT_PROMPT_TOKENS
    R, rd = cfg.reranker.max_tokens, cfg.reader
    return cost.step_shape(cfg, B, cfg.data.n_candidates, rd.passage_max_tokens, P, rd.answer_max_tokens, R,
                           R if cfg.reranker.kind == "bi_encoder" else 0)


@dataclass
class Plan:
    """A config's predicted step (cost.Prediction) on a machine, with what the report prints around it."""

    cfg: RunConfig
    models: cost.Models
    shape: cost.StepShape
    hardware: Hardware
    gpus: int
    nodes: int
    hpz: bool
    prediction: cost.Prediction
    largest_micro_batch: int  # the largest train.micro_batch_size whose peak memory fits the device (0: none)
    questions: int | None


def plan(cfg: RunConfig, gpus: int, nodes: int, hardware: Hardware, questions: int | None = None,
         prompt_tokens: int | None = None, hpz: bool = False) -> Plan:
    """Predict `cfg`'s step on `gpus` devices over `nodes` nodes of `hardware` under DeepSpeed ZeRO-3 (whatever
    runtime.engine says: the prediction is of the cluster run). Raises ConfigError for a GPU count that does not
    split evenly into the nodes."""
    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise ConfigError(f"--gpus {gpus} --nodes {nodes}: the GPUs must split evenly over the nodes")
    models = models_of(cfg)
    shape = shape_of_config(cfg, prompt_tokens=prompt_tokens)
    states = cost.reranker_states_bytes(models, gpus, nodes, cfg.runtime.precision)
    r = cfg.runtime
    kwargs = dict(world=gpus, nodes=nodes, precision=r.precision, threshold=r.param_persistence_threshold, hpz=hpz,
                  partition_reader=r.partition_reader, reranker_states=states)
    pred = cost.predict(models, shape, hardware, accum=cfg.train.grad_accum_steps, **kwargs)

    def fits(B: int) -> bool:
        mem = cost.memory_per_rank(models, dataclasses.replace(shape, B=B), hardware, gpus, nodes, r.precision,
                                   r.param_persistence_threshold, hpz, r.partition_reader, states)
        return mem["peak"] <= hardware.memory_bytes

    largest = 0
    if fits(1):
        hi = 1
        while hi < 1 << 16 and fits(hi * 2):
            hi *= 2
        lo, hi = hi, hi * 2  # fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        largest = lo
    return Plan(cfg, models, shape, hardware, gpus, nodes, hpz, pred, largest, questions)


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def _arch_line(a: Arch, name: str | None, kind: str) -> str:
    params = param_count(modules(a, cost.RERANKER_HEAD.get(kind, "lm")))
    return f"{name or 'built from model_config'} ({kind}, {a.family}, {_si(params)} parameters; {a.source})"


def format_plan(p: Plan, source: str = "the config") -> str:
    """The plan as the command prints it: settings (`source` names the config), the per-part table, memory per rank,
    bottleneck, throughput and time per epoch."""
    pr, s, hw, cfg = p.prediction, p.shape, p.hardware, p.cfg
    accum = cfg.train.grad_accum_steps
    est = cfg.gumbel.estimator
    answer = (f"{s.samples} answer pass{'es' if s.samples > 1 else ''} per question"
              + ("" if s.answer_backward else ", no backward through the reader"))
    lines = [
        f"{source} on {p.gpus} x {hw.name} ({p.nodes} node{'s' if p.nodes > 1 else ''} x {p.gpus // p.nodes}), "
        f"{cfg.runtime.precision}, DeepSpeed ZeRO-3{' with hpZ (secondary partition per node)' if p.hpz else ''}",
        f"reader: {_arch_line(p.models.reader, cfg.reader.name_or_path, cfg.reader.kind)}",
        f"reranker: {_arch_line(p.models.reranker, cfg.reranker.name_or_path, cfg.reranker.kind)}",
        f"micro-batch per rank: {s.B} questions x {s.n} candidates; passages {s.L} tokens"
        + (f", prompt {s.P} + target {s.T} tokens" if s.P else f", target {s.T} tokens")
        + f"; reranker inputs {s.R} tokens; gumbel.estimator={est}: {answer}; {accum} micro-batch"
        f"{'es' if accum > 1 else ''} per step, global batch {pr.global_batch} questions",
    ]
    if cfg.runtime.engine != "deepspeed":
        lines.append(f"(the config runs runtime.engine={cfg.runtime.engine}; this is the step under DeepSpeed ZeRO-3)")
    lines += ["", "Per rank and optimizer step (ZeRO-3 bytes in: what the rank receives, (r - 1) / r of each "
              "gathered or reduced tensor):", "",
              "| part | FLOPs | compute (s) | ZeRO-3 bytes in | collectives | communication (s) | total (s) |",
              "|---|---|---|---|---|---|---|"]
    seconds = pr.part_seconds()
    for part in cost.PARTS:
        colls = [c for c in pr.collectives if c.part == part]
        moved = sum(cost.wire_bytes(c, p.gpus, p.nodes) for c in colls)
        calls = sum(c.calls for c in colls)
        kinds = "+".join(sorted({c.op.replace("_", "-") for c in colls}))
        lines.append(f"| {part} | {_si(pr.flops[part])} | {pr.compute_s[part]:.4f} | {_si(moved, 'B')} | "
                     f"{calls} {kinds} | {pr.comm_s[part]:.4f} | {seconds[part]:.4f} |")
    lines.append(f"| optimizer | – | – | – | – | – | {pr.optimizer_s:.4f} |")
    lines.append(f"| host | – | – | – | – | – | {pr.host_s:.4f} |")
    moved = sum(cost.wire_bytes(c, p.gpus, p.nodes) for c in pr.collectives)
    calls = sum(c.calls for c in pr.collectives)
    lines.append(f"| step | {_si(sum(pr.flops.values()))} | {sum(pr.compute_s.values()):.4f} | {_si(moved, 'B')} | "
                 f"{calls} | {sum(pr.comm_s.values()):.4f} | {pr.step_s:.4f} |")
    mem = pr.memory
    fits = mem["peak"] <= hw.memory_bytes
    lines += ["", "Memory per rank (GiB, one micro-batch in flight): "
              + ", ".join(f"{k.replace('_', ' ')} {_gib(v)}" for k, v in mem.items() if k != "peak" and v),
              f"peak {_gib(mem['peak'])} GiB of the device's {_gib(hw.memory_bytes)} GiB: "
              + ("fits" if fits else f"does not fit, {_gib(mem['peak'] - hw.memory_bytes)} GiB short")
              + f"; largest train.micro_batch_size that fits: {p.largest_micro_batch or 'none'}",
              "", f"bottleneck: {pr.bottleneck()} ({max(pr.terms().values()) / pr.step_s:.0%} of the step)",
              f"reader tokens/s (all ranks): {_si(pr.reader_tokens_per_s)}; MFU {pr.mfu:.1%}; "
              f"{pr.global_batch / pr.step_s:.1f} questions/s"]
    if p.questions:
        steps = max(1, p.questions // pr.global_batch)
        lines.append(f"time per epoch ({p.questions:,} questions, {steps:,} steps): "
                     f"{_duration(cost.epoch_seconds(pr, p.questions))}")
    else:
        lines.append(f"time per 10,000 questions: {_duration(cost.epoch_seconds(pr, 10_000))} (--questions for an "
                     "epoch)")
    lines.append(f"efficiency constants ({hw.fitted}): compute {hw.compute_efficiency}, communication "
                 f"{hw.comm_efficiency}, memory {hw.memory_efficiency}, {hw.fetch_overhead_s * 1e3:g} ms per ZeRO-3 "
                 f"fetch; host {hw.host_per_passage_s * 1e3:g} ms per candidate passage, "
                 f"{hw.multi_rank_step_s * 1e3:g} ms per multi-rank step")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def check_fits(p: Plan) -> None:
    """ConfigError naming the shortfall when one micro-batch does not fit the device's memory."""
    mem, hw = p.prediction.memory, p.hardware
    if mem["peak"] > hw.memory_bytes:
        biggest = max((k for k in mem if k != "peak"), key=mem.get)
        raise ConfigError(
            f"train.micro_batch_size={p.shape.B} does not fit: {_gib(mem['peak'])} GiB per rank on a {hw.name} of "
            f"{_gib(hw.memory_bytes)} GiB, {_gib(mem['peak'] - hw.memory_bytes)} GiB short (largest part: "
            f"{biggest.replace('_', ' ')} {_gib(mem[biggest])} GiB); "
            + (f"train.micro_batch_size={p.largest_micro_batch} fits" if p.largest_micro_batch else
               "no micro-batch fits: more GPUs, shorter passages or fewer candidates"))
