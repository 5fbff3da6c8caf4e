"""The cost of one G-Rerank step, part by part (docs/design.md#cost-structure): matmul FLOPs, the bytes ZeRO-3 moves,
memory per rank and the predicted time on a hardware.Hardware, in closed form from the models' sizes
(architectures.Arch), so it scales to readers and rerankers that are never built here. `count_step_flops` counts the
real step's FLOPs with torch's FlopCounterMode; tests/test_cost.py holds the closed forms to it and to DeepSpeed's comms
log. `gr-train plan` (plan.py) prints it for a config.

Parts: prefill (the reader's n*L passage tokens per question, no grad), answer_fwd / answer_bwd (the T answer tokens
over the masked passage states, gumbel.sample_count() passes; backward only reaches the mask), reranker_fwd /
reranker_bwd (its n inputs per question), optimizer. FLOPs count matrix multiplies only (2 per multiply-add), as
FlopCounterMode does: norms, softmax, activations and the optimizer's elementwise work are not in them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gr_train.architectures import Arch, Module, modules, param_count
from gr_train.hardware import Hardware

PARTS = ("prefill", "answer_fwd", "answer_bwd", "reranker_fwd", "reranker_bwd")
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
RERANKER_HEAD = {"cross_encoder": "classifier", "bi_encoder": "pooler", "rankt5": "lm", "causal_lm": "lm"}


@dataclass(frozen=True)
class Models:
    """What the cost model needs to know of the two models: sizes and kinds. The reader's kind follows its family
    (llama: causal_lm, passages encoded in parallel; t5: fid_t5)."""

    reader: Arch
    reranker: Arch
    reranker_kind: str  # cross_encoder | bi_encoder | rankt5 | causal_lm (reranker.kind)
    shift_invariant: bool = True  # the objective freezes the reranker's score bias (objectives.Objective)

    def reader_modules(self) -> dict[str, list[Module]]:
        return modules(self.reader, "lm")

    def reranker_modules(self) -> dict[str, list[Module]]:
        return modules(self.reranker, RERANKER_HEAD[self.reranker_kind])


@dataclass(frozen=True)
class StepShape:
    """One micro-batch on one rank, as the models run it (padded lengths)."""

    B: int  # questions
    n: int  # candidates per question
    L: int  # reader tokens per passage (passages are padded to reader.passage_max_tokens)
    P: int  # causal_lm reader: prompt tokens (the batch's longest, left-padded); FiD: 0
    T: int  # reader target tokens (the batch's longest)
    R: int  # reranker tokens per input: the pair (cross_encoder, rankt5, causal_lm) or the passage (bi_encoder)
    Q: int = 0  # bi_encoder: tokens of the question input
    samples: int = 1  # answer passes per question: gumbel.sample_count()
    answer_backward: bool = True  # false for gumbel.estimator=score_function (answer passes under no_grad)
    reader_checkpointing: bool = False  # runtime.reader_checkpointing: answer-pass layers recomputed in backward
    reranker_checkpointing: bool = False  # reranker.gradient_checkpointing
    # reader.attn_implementation is not eager: passes without a mask gradient (the prefill, score-function answer
    # passes) run a fused kernel that never holds the [Q, K] scores; with one, the math kernel does (bias_grad_kernels)
    fused_attention: bool = False

    @property
    def Tq(self) -> int:
        """Tokens of one answer pass per question: causal_lm prompt + target; FiD the decoder's target tokens."""
        return self.P + self.T

    def reader_tokens(self) -> int:
        """Reader tokens of the micro-batch: passages + every answer pass (gpu_check's reader tokens/s counts these)."""
        return self.B * (self.n * self.L + self.samples * self.Tq)


# -- FLOPs: counted on the real step -----------------------------------------------------------------------------------


@contextmanager
def marked_parts(reader, reranker, start: Callable[[str], None], end: Callable[[str], None],
                 scores_grad: Callable[[], None]) -> Iterator[None]:
    """While open, the step's parts announce themselves: start(part) and end(part) around reader.encode_passages
    (prefill), reader.answer_loss (answer_fwd) and reranker.forward (reranker_fwd) on these instances, and
    scores_grad() when backward reaches the scores w the reranker returned: autograd reaches w only after every
    answer-pass node is done (w feeds them all), so backward before it is answer_bwd and after it reranker_bwd. The
    instances' methods are wrapped for the duration and restored after (an instance's own override too)."""

    def wrap(fn, part):
        def wrapped(*args, **kwargs):
            start(part)
            out = fn(*args, **kwargs)
            end(part)
            if part == "reranker_fwd" and out.requires_grad:
                out.register_hook(lambda grad: scores_grad())
            return out
        return wrapped

    patched = [(reader, "encode_passages", "prefill"), (reader, "answer_loss", "answer_fwd"),
               (reranker, "forward", "reranker_fwd")]
    before = [obj.__dict__.get(name) for obj, name, _ in patched]  # an instance's own override, if it had one
    for obj, name, part in patched:
        setattr(obj, name, wrap(getattr(obj, name), part))
    try:
        yield
    finally:
        for (obj, name, _), old in zip(patched, before):
            if old is None:
                delattr(obj, name)  # the class's method shows through again
            else:
                setattr(obj, name, old)


def count_step_flops(step: Callable[[], torch.Tensor], reader, reranker) -> dict[str, int]:
    """Matmul FLOPs of one G-Rerank step by part, counted by torch.utils.flop_counter.FlopCounterMode on the real code:
    `step()` runs the objective's forward and returns its loss (e.g. objectives.gumbel_rerank(...).loss); the loss's
    backward runs here too. The parts are told apart by marked_parts. Returns {part: FLOPs} for PARTS (FLOPs = 2 per
    multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    parts = dict.fromkeys(PARTS, 0)
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS)
    opened: list[int] = []  # a stack: a part's call may open inside another's
    mark: list[int] = []

    def start(part: str) -> None:
        opened.append(counter.get_total_flops())

    def end(part: str) -> None:
        parts[part] += counter.get_total_flops() - opened.pop()

    with marked_parts(reader, reranker, start, end, lambda: mark.append(counter.get_total_flops())), counter:
        loss = step()
        begin = counter.get_total_flops()
        loss.backward()
        finish = counter.get_total_flops()
    boundary = mark[0] if mark else finish
    parts["answer_bwd"], parts["reranker_bwd"] = boundary - begin, finish - boundary
    return parts


def _sdpa_flops(query_shape, key_shape, *_, backward: bool = False) -> int:
    """Model FLOPs of dense attention: Q K^T and P V forward (4 * B * H * Sq * Sk * D); dP, dV, dQ, dK backward (twice
    that; a flash kernel's recompute of Q K^T in backward is not counted, as in the closed forms)."""
    b, h, sq, d = query_shape
    return (8 if backward else 4) * b * h * sq * key_shape[2] * d


def _cpu_sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query_shape, key_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, *args, out_shape=None, **kwargs) -> int:
    return _sdpa_flops(query_shape, key_shape, backward=True)


# FlopCounterMode (torch 2.13) has no formula for the CPU flash-attention kernel that sdpa uses on CPU without a mask
# gradient (BERT in eval, Llama's causal self-attention): without these its attention would count 0.
_CPU_SDPA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
                   torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


class TensorBytes:
    """Context that measures the peak bytes of tensor storage allocated inside it and alive at once (allocator slack
    and storage that existed before are not counted): the measured side of memory_per_rank's activation terms on any
    device, CPU included. Storages are told apart by identity and counted until torch frees them (weak references);
    read `.peak` (bytes) after the block."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker._add(t.untyped_storage())
                return out

        self._mode, self._refs, self.now, self.peak = _Mode(), {}, 0, 0

    def _add(self, storage) -> None:
        import weakref

        key = storage._cdata
        if key in self._refs:
            return
        size = storage.nbytes()
        self._refs[key] = weakref.ref(storage, lambda _, key=key, size=size: self._free(key, size))
        self.now += size
        self.peak = max(self.peak, self.now)

    def _free(self, key: int, size: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.now -= size

    def __enter__(self) -> "TensorBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def shape_of(batch, cfg) -> StepShape:
    """The StepShape of a collated micro-batch (batching.Batch) under `cfg` (config.RunConfig)."""
    rd, rr = batch.reader_inputs, batch.reranker_inputs
    B, n = batch.valid.shape
    if "passage_ids" in rd and "prompt_ids" in rd:  # causal_lm
        L, P, T = rd["passage_ids"].shape[2], rd["prompt_ids"].shape[1], rd["target_ids"].shape[1]
    else:  # fid_t5
        L, P, T = rd["passage_ids"].shape[2], 0, rd["labels"].shape[1]
    if "q_input_ids" in rr:
        R, Q = rr["p_input_ids"].shape[2], rr["q_input_ids"].shape[1]
    else:
        R, Q = rr["input_ids"].shape[2], 0
    return step_shape(cfg, B, n, L, P, T, R, Q)


def step_shape(cfg, B: int, n: int, L: int, P: int, T: int, R: int, Q: int = 0) -> StepShape:
    """A StepShape with the estimator and checkpointing settings of `cfg` (gumbel.*, runtime.*, reranker.*)."""
    from gr_train import gumbel

    return StepShape(B, n, L, P, T, R, Q, samples=cfg.gumbel.sample_count(),
                     answer_backward=cfg.gumbel.estimator not in gumbel.SEQUENTIAL,
                     reader_checkpointing=cfg.runtime.reader_checkpointing,
                     reranker_checkpointing=cfg.reranker.gradient_checkpointing,
                     fused_attention=cfg.reader.attn_implementation != "eager")


# -- FLOPs: closed forms -----------------------------------------------------------------------------------------------


def _llama_layer_weights(a: Arch) -> int:
    """Matmul weight elements of one decoder layer: q, k, v, o and the gated MLP (biases are not matmuls)."""
    return a.hidden * (a.inner + 2 * a.kv * a.hd) + a.inner * a.hidden + 3 * a.hidden * a.intermediate


def _t5_ffn_weights(a: Arch) -> int:
    return (3 if a.gated else 2) * a.hidden * a.intermediate


def _bert_layer_weights(a: Arch) -> int:
    return 4 * a.hidden * a.hidden + 2 * a.hidden * a.intermediate


def _stack(weights: int, layers: int, inner: int, seqs: int, q: int, k: int) -> int:
    """Forward FLOPs of `layers` transformer layers over `seqs` sequences of q query tokens attending to k keys:
    2 * tokens * weights (the projections) + 4 * q * k * inner per sequence and layer (Q K^T and P V, dense: masked
    positions are computed too, as eager and math attention do)."""
    return layers * (2 * seqs * q * weights + 4 * seqs * q * k * inner)


def reader_flops(m: Models, s: StepShape) -> dict[str, int]:
    """{prefill, answer_fwd, answer_bwd} matmul FLOPs of the frozen reader for one micro-batch.

    causal_lm (llama family), per question: prefill = the n passages of L tokens through the base model (no output
    layer); answer pass = the Tq = P + T query tokens through every layer attending to S = n*L + Tq keys, plus the
    output layer over all Tq positions. Its backward, with frozen weights, computes only input gradients (1x the
    projections; 2x the attention: dP, dV, dQ, dK), except layer 0 whose q, k, v do not depend on the mask: there only
    dP (2 * Tq * S * inner) and the projections after the attention. Recomputed layers
    (runtime.reader_checkpointing) add their forward to the backward, less each layer's last projection (MLP down /
    FFN wo): with frozen weights it saves nothing, and torch's non-reentrant checkpoint stops recomputing once the
    last saved tensor is back (torch.utils.checkpoint early stop).
    fid_t5: prefill = the encoder over the n*L passage tokens; answer pass = the decoder over T tokens with
    cross-attention k, v projected from the n*L encoder states in every layer; in backward the cross-attention needs
    dP and dQ only (k, v come from the no-grad encoder states)."""
    a, B, n, L, T = m.reader, s.B, s.n, s.L, s.T
    head = 2 * B * s.Tq * a.hidden * a.vocab
    if a.family == "llama":
        W, inner, Tq = _llama_layer_weights(a), a.inner, s.Tq
        S = n * L + Tq
        prefill = _stack(W, a.layers, inner, B * n, L, L)
        layers_fwd = _stack(W, a.layers, inner, B, Tq, S)
        first_bwd = 2 * B * Tq * (inner * a.hidden + 3 * a.hidden * a.intermediate) + 2 * B * Tq * S * inner
        rest_bwd = (a.layers - 1) * (2 * B * Tq * W + 8 * B * Tq * S * inner)
        last_projection = a.layers * 2 * B * Tq * a.intermediate * a.hidden
    elif a.family == "t5":
        d, inner, E = a.hidden, a.inner, n * L
        ffn = _t5_ffn_weights(a)
        prefill = _stack(4 * d * inner + ffn, a.layers, inner, B * n, L, L)
        per_layer = (2 * B * T * (4 * d * inner + ffn) + 4 * B * T * T * inner  # self-attention block and FFN
                     + 2 * B * T * 2 * d * inner + 2 * B * E * 2 * d * inner + 4 * B * T * E * inner)  # cross-attention
        layers_fwd = a.decoder_layers * per_layer
        first_bwd = 2 * B * T * (inner * d + ffn) + 2 * B * T * E * inner
        rest_bwd = (a.decoder_layers - 1) * (2 * B * T * (6 * d * inner + ffn) + 8 * B * T * T * inner
                                             + 4 * B * T * E * inner)
        last_projection = a.decoder_layers * 2 * B * T * a.intermediate * d
    else:
        raise ValueError(f"reader: a {a.family} model is not a reader (llama-family causal_lm or t5 fid_t5)")
    answer_fwd = s.samples * (layers_fwd + head)
    answer_bwd = 0
    if s.answer_backward:
        recompute = layers_fwd - last_projection if s.reader_checkpointing else 0
        answer_bwd = s.samples * (head + rest_bwd + first_bwd + recompute)
    return {"prefill": prefill, "answer_fwd": answer_fwd, "answer_bwd": answer_bwd}


def reranker_flops(m: Models, s: StepShape) -> dict[str, int]:
    """{reranker_fwd, reranker_bwd} matmul FLOPs of the trained reranker for one micro-batch: B*n inputs of R tokens
    (bi_encoder: B*n passages of R and B questions of Q tokens). Backward = 2x forward (input and weight gradients),
    less what needs no gradient (the bi-encoder's unused pooler, RankT5's frozen decoder self-attention q and k
    weights), plus the layers' forward again under reranker.gradient_checkpointing (less a decoder layer's last
    projection, as in reader_flops)."""
    a, kind, pairs = m.reranker, m.reranker_kind, s.B * s.n
    d, inner = a.hidden, a.inner
    if a.family == "bert":
        layers = _stack(_bert_layer_weights(a), a.layers, inner, pairs, s.R, s.R)
        if kind == "bi_encoder":
            layers += _stack(_bert_layer_weights(a), a.layers, inner, s.B, s.Q, s.Q)
            head, head_bwd = 2 * (pairs + s.B) * d * d, 0  # the frozen pooler runs, nothing flows back through it
        else:
            head = 2 * pairs * (d * d + d)  # pooler (BERT) / dense (XLM-R) + the one-output layer
            head_bwd = 2 * head
        fwd, bwd = layers + head, 2 * layers + head_bwd
    elif a.family == "llama":
        layers = _stack(_llama_layer_weights(a), a.layers, inner, pairs, s.R, s.R)
        head = 2 * pairs * d * a.vocab  # the output layer at the last position only (logits_to_keep=1)
        fwd, bwd = layers + head, 2 * (layers + head)
    elif a.family == "t5":
        ffn = _t5_ffn_weights(a)
        layers = _stack(4 * d * inner + ffn, a.layers, inner, pairs, s.R, s.R)
        decoder = a.decoder_layers * (2 * pairs * (4 * d * inner + ffn) + 4 * pairs * inner  # one token
                                      + 2 * pairs * 2 * d * inner + 2 * pairs * s.R * 2 * d * inner
                                      + 4 * pairs * s.R * inner)
        head = 2 * pairs * d * a.vocab
        frozen = a.decoder_layers * 2 * pairs * 2 * d * inner  # weight gradients of the frozen self-attention q, k
        layers += decoder
        fwd, bwd = layers + head, 2 * (layers + head) - frozen
    else:
        raise ValueError(f"reranker: family {a.family} not modelled")
    if s.reranker_checkpointing:
        # the layers' forward again; a decoder layer's MLP down projection is not recomputed (nothing after it saves
        # a tensor: torch's non-reentrant checkpoint stops early), BERT's and T5's last projections feed a dropout
        bwd += layers - (a.layers * 2 * pairs * s.R * a.intermediate * d if a.family == "llama" else 0)
    return {"reranker_fwd": fwd, "reranker_bwd": bwd}


def step_flops(m: Models, s: StepShape) -> dict[str, int]:
    """Matmul FLOPs of one micro-batch on one rank, by part (PARTS)."""
    return {**reader_flops(m, s), **reranker_flops(m, s)}


# -- ZeRO-3 traffic ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Collective:
    """The collectives of one part of a micro-batch: `calls` calls moving `bytes` in all (the full size of what is
    gathered or reduced, not a rank's share), over all ranks ("world") or one node's ("node": hpZ's secondary
    partition)."""

    part: str
    op: str  # all_gather | reduce_scatter
    calls: int
    bytes: int
    scope: str = "world"


def _uses(mods: list[Module], threshold: int, copies: int = 1) -> tuple[int, int]:
    """(calls, elements) of gathering each module's partitioned parameters once per use: parameters of at most
    `threshold` elements persist whole on every rank (runtime.param_persistence_threshold) and are not gathered; a
    module with none to gather makes no call."""
    calls = elements = 0
    for m in mods:
        big = sum(numel for _, numel in m.params if numel > threshold)
        calls, elements = calls + (big > 0), elements + big
    return calls * copies, elements * copies


def _reader_gathers(m: Models) -> dict[str, list[Module]]:
    """The reader submodules whose parameters ZeRO-3 gathers in each part of one answer pass / prefill: a forward
    gathers every submodule it calls; a backward only those whose output needs a gradient (none before the mask
    enters: in layer 0 of a causal LM the input norm and q, k, v; in FiD, layer 0's self-attention block and the
    cross-attention's k, v everywhere)."""
    r = m.reader_modules()
    if m.reader.family == "llama":
        layers = r["layers"]
        first = [x for x in layers if x.name.startswith("layers.0.")
                 and x.name.split(".")[2] in ("input_norm", "q", "k", "v", "q_norm", "k_norm")]
        bwd = r["head"] + r["final"] + [x for x in layers if x not in first]
        return {"prefill": r["embed"] + layers + r["final"], "answer_fwd": r["embed"] + layers + r["final"] + r["head"],
                "answer_bwd": bwd, "recompute": _recomputed(layers)}
    dec = r["decoder"]

    def no_grad(x: Module) -> bool:  # decoder.<i>.<block>[.<name>]
        block = x.name.split(".")[2:4]
        if block in (["cross", "k"], ["cross", "v"]):  # projections of the no-grad encoder states
            return True
        return x.name.startswith("decoder.0.") and (block[0] in ("self", "norm1", "norm2") or block == ["cross", "q"])

    return {"prefill": r["embed"] + r["encoder"] + r["encoder_final"],
            "answer_fwd": r["decoder_embed"] + dec + r["decoder_final"] + r["head"],
            "answer_bwd": r["head"] + r["decoder_final"] + [x for x in dec if not no_grad(x)],
            "recompute": _recomputed(dec)}


def _recomputed(layers: list[Module], keep_last: bool = False) -> list[Module]:
    """The submodules a checkpointed layer's recompute gathers: all but each layer's last one, which ZeRO-3's
    pre-backward hook gathered before the recompute started (its backward runs first) and which torch's
    non-reentrant checkpoint does not recompute (nothing after it saves a tensor); keep_last when a dropout follows
    it (a trained T5's FFN output), whose saved mask makes the recompute run it and gather it."""
    last = {}
    for x in layers:
        last[".".join(x.name.split(".")[:2])] = x
    return layers if keep_last else [x for x in layers if x is not last[".".join(x.name.split(".")[:2])]]


def _reranker_layers(m: Models) -> list[Module]:
    r = m.reranker_modules()
    return r.get("layers", []) or r["encoder"] + r["decoder"]


def reranker_trainable(m: Models) -> int:
    """Parameter elements of the reranker the optimizer updates: all but the frozen ones (the score bias under a
    shift-invariant objective, the bi-encoder's pooler, RankT5's decoder self-attention q, k and position bias)."""
    r = m.reranker_modules()
    total, kind = param_count(r), m.reranker_kind
    if kind == "cross_encoder":
        return total - (1 if m.shift_invariant else 0)
    if kind == "bi_encoder":
        return total - param_count(r["head"])
    if kind == "rankt5":
        frozen = [x for x in r["decoder"] if x.name.split(".")[2:4] in (["self", "q"], ["self", "k"])
                  or x.name.endswith("self.relative_bias")]
        return total - param_count(frozen)
    return total


def zero3_traffic(m: Models, s: StepShape, precision: str, threshold: int = 0, hpz: bool = False,
                  reduce_bucket: int = 500_000_000) -> list[Collective]:
    """ZeRO-3's collectives for one micro-batch on every rank, by part.

    The recipe calls the engine's two children directly (runtime.EngineModule), so DeepSpeed's root forward pre-hook,
    which resets its step trace, never fires: the trace never completes, nothing is prefetched, and every submodule's
    parameters are all-gathered at each use and released after it (partitioned_param_coordinator: params_to_release
    is every parameter when the trace is not complete). So each reader pass (prefill, every answer pass, every answer
    backward, a checkpointed layer's recompute) gathers what it uses, and so do the reranker's forward and backward;
    the reranker's gradients are reduce-scattered in buckets of `reduce_bucket` elements at every micro-batch.
    Bytes are in the precision's size (precision: fp32 | bf16 | fp16). hpz (ZeRO++ zero_hpz_partition_size = GPUs per
    node): backward gathers read the secondary partition inside the node (scope "node"); forward ones stay global.
    """
    b = PRECISION_BYTES[precision]
    g = _reader_gathers(m)
    rr = m.reranker_modules()
    rr_all = [x for ms in rr.values() for x in ms]
    copies = 2 if m.reranker_kind == "bi_encoder" else 1  # the question and the passage encodings each gather
    rr_bwd = [x for x in rr_all if not (m.reranker_kind == "bi_encoder" and x in rr["head"])
              and not x.name.startswith("decoder.0.self.relative_bias")]
    back = "node" if hpz else "world"
    passes = s.samples
    out = []

    def gather(part: str, mods: list[Module], times: int, scope: str = "world") -> None:
        calls, elements = _uses(mods, threshold, times)
        if calls:
            out.append(Collective(part, "all_gather", calls, elements * b, scope))

    gather("prefill", g["prefill"], 1)
    gather("answer_fwd", g["answer_fwd"], passes)
    if s.answer_backward:
        if s.reader_checkpointing:
            gather("answer_bwd", g["recompute"], passes, "world")  # the recompute is a forward: primary partition
        gather("answer_bwd", g["answer_bwd"], passes, back)
    gather("reranker_fwd", rr_all, copies)
    if s.reranker_checkpointing:
        gather("reranker_bwd", _recomputed(_reranker_layers(m), keep_last=m.reranker.family == "t5"), copies, "world")
    gather("reranker_bwd", rr_bwd, copies, back)
    trainable = reranker_trainable(m)
    out.append(Collective("reranker_bwd", "reduce_scatter", math.ceil(trainable / reduce_bucket), trainable * b))
    return out


def bus_bandwidth(hw: Hardware, world: int, nodes: int, scope: str = "world") -> float:
    """Bytes/s one rank's share of a ring collective moves at: inside a node the NVLink rate; across nodes the node's
    NICs carry one ring each (rail-aligned rings), so a rank's share crosses at min(NVLink, the node's inter-node
    bandwidth) (nccl-tests' "bus bandwidth"). Times comm_efficiency."""
    bw = hw.intra_node_bandwidth if (nodes <= 1 or scope == "node") else min(hw.intra_node_bandwidth,
                                                                               hw.inter_node_bandwidth)
    return bw * hw.comm_efficiency


def wire_bytes(c: Collective, world: int, nodes: int) -> float:
    """Bytes each rank receives (and sends) for a collective over r ranks: (r - 1) / r of its bytes (ring all-gather
    and reduce-scatter); r = world, or the GPUs of one node for hpZ's node-scoped gathers."""
    ranks = world if c.scope == "world" else max(1, world // max(1, nodes))
    return c.bytes * (ranks - 1) / ranks


def comm_seconds(c: Collective, hw: Hardware, world: int, nodes: int) -> float:
    """A collective's time: its wire_bytes at bus_bandwidth, plus hw.fetch_overhead_s per call."""
    return wire_bytes(c, world, nodes) / bus_bandwidth(hw, world, nodes, c.scope) + c.calls * hw.fetch_overhead_s


# -- memory per rank ---------------------------------------------------------------------------------------------------


def _answer_activations(a: Arch, s: StepShape, b: int) -> int:
    """Bytes autograd keeps for one answer pass's backward (frozen causal_lm reader, eager attention or the math SDPA
    kernel). Frozen weights need no saved inputs, so what stays is, per layer: the RMSNorms' fp32 inputs and inverse
    norms, q and the GQA-expanded k, v (those of layer 0 only v: its q, k carry no gradient), the attention
    probabilities (fp32 softmax output, plus their cast when b < 4), the MLP's gate, SiLU and up outputs; then the final
    norm, the cross-entropy's fp32 log-softmax over the targets and the rotary cos/sin. FiD: its cross-attention k, v
    over the n*L encoder states and probabilities per layer dominate."""
    B, Tq, d = s.B, s.Tq, a.hidden
    t = B * Tq
    probs_b = 4 + (b if b < 4 else 0)
    norm = t * d * 4 + t * 4
    if a.family == "t5":
        E = s.n * s.L
        per = 2 * B * E * a.inner * b + B * a.heads * s.T * E * probs_b + 3 * norm + 4 * t * a.inner * b
        return a.decoder_layers * (per + (2 if a.gated else 1) * t * a.intermediate * b) + B * s.T * a.vocab * 4
    S = s.n * s.L + Tq
    probs = B * a.heads * Tq * S * probs_b
    kv = B * a.heads * S * a.hd * b
    mlp = 3 * t * a.intermediate * b
    rest = a.layers - 1
    per_rest = 2 * norm + t * a.inner * b + 2 * kv + probs + mlp
    first = norm + kv + probs + mlp
    return rest * per_rest + first + norm + B * s.T * a.vocab * 4 + 2 * t * a.hd * b


def _reranker_activations(m: Models, s: StepShape, b: int, mask_b: float) -> int:
    """Bytes autograd keeps for the reranker's backward (train mode, dropout on, eager/math attention).

    BERT family, per layer (t tokens): 8 hidden-size tensors (q, k, v and their input, the attention output, both
    LayerNorm inputs, the intermediate's input), 2 dropout masks of hidden size, the GELU input and the output layer's
    input (2 of intermediate size), softmax output, its dropout mask and the dropped probabilities (per head, R x R),
    LayerNorm statistics; plus the embeddings' LayerNorm input and dropout mask, the last layer's output (the head
    reads a slice of it) and the head. llama family (trained whole): the same per decoder layer with its tensors.
    With reranker.gradient_checkpointing each layer keeps its input only, and one layer is recomputed at a time."""
    a, kind = m.reranker, m.reranker_kind
    d, f, H = a.hidden, a.intermediate, a.heads

    def layer(seqs: int, tokens: int) -> int:
        t = seqs * tokens
        if a.family == "llama":
            return (2 * (t * d * 4 + t * 4) + 2 * t * d * b + 4 * t * a.inner * b + 4 * t * f * b
                    + seqs * H * tokens * tokens * (4 + (b if b < 4 else 0)))
        ffn = 2 * t * f * b if a.family == "bert" else (3 if a.gated else 2) * t * f * b + t * f * mask_b
        return int(8 * t * d * b + 2 * t * d * mask_b + ffn + seqs * H * tokens * tokens * (2 * b + mask_b)
                   + 4 * t * 4)

    def encoder(seqs: int, tokens: int) -> int:
        t = seqs * tokens
        per = layer(seqs, tokens)
        layers = a.layers + (a.decoder_layers if a.family == "t5" else 0)
        if s.reranker_checkpointing:
            kept = layers * t * d * b + per
        else:
            kept = layers * per
        return int(kept + t * d * b + t * d * mask_b + 2 * t * 4 + t * d * b)

    pairs = s.B * s.n
    total = encoder(pairs, s.R) + 4 * pairs * d * b
    if kind == "bi_encoder":
        total += encoder(s.B, s.Q)
    return total


def reranker_states_bytes(m: Models, world: int, nodes: int, precision: str) -> int:
    """Bytes per rank of the trained reranker's ZeRO-3 model states (parameters, gradients, fp32 master weights,
    AdamW moments): DeepSpeed's own estimate (runtime.zero3_model_states_bytes: 4 bytes per element of the largest
    submodule + 18 bytes per parameter over the ranks, i.e. a 16-bit parameter, fp32 gradient, master and two
    moments), plus 2 bytes per parameter over the ranks for fp32 parameters (measured on 2 CPU ranks: 20 bytes,
    tests/test_cost.py). Imports deepspeed."""
    from gr_train.runtime import zero3_model_states_bytes

    rr = m.reranker_modules()
    gpus = max(1, world // max(1, nodes))
    estimate = zero3_model_states_bytes(param_count(rr), _largest(rr), gpus, max(1, nodes))
    return estimate + (PRECISION_BYTES[precision] - 2) * math.ceil(param_count(rr) / world)


def memory_per_rank(m: Models, s: StepShape, hw: Hardware, world: int, nodes: int, precision: str,
                    threshold: int = 0, hpz: bool = False, partition_reader: bool = True,
                    reranker_states: int | None = None) -> dict[str, int]:
    """Peak memory of one rank in bytes, by component, and "peak".

    reranker_states: ZeRO-3 model states of the trained reranker, reranker_states_bytes (DeepSpeed's estimator); pass
    it in to skip importing deepspeed.
    reader_params: the frozen reader's partition (no gradients or optimizer states: params * bytes / world, or whole
    when not partitioned) + its largest submodule gathered whole during a use. hpz_secondary: ZeRO++'s second copy,
    params / GPUs per node. passage_states: the prefill's per-layer K/V, layers * 2 * kv_heads * head_dim * n * L
    bytes per question (FiD: the encoder states, n * L * d); at the end of the prefill the model's cache and the
    reshaped copy coexist (2x). activations: the answer passes' and the reranker's saved tensors (_answer_activations,
    _reranker_activations; a score-function step keeps none for the reader); answer_transient: what one answer
    layer holds besides them (its scores before the softmax, the [passages; answer] K, V, the logits).
    peak = reranker_states + reader_params + hpz_secondary + max(prefill: 2 * passage_states + one layer's transient
    scores and MLP, later: passage_states + reranker and answer activations + answer_transient)."""
    b = PRECISION_BYTES[precision]
    mask_b = hw.dropout_mask_bytes if hw.dropout_mask_bytes is not None else b
    gpus = max(1, world // max(1, nodes))
    rd_mods, rr_mods = m.reader_modules(), m.reranker_modules()
    if reranker_states is None:
        reranker_states = reranker_states_bytes(m, world, nodes, precision)
    reader_total = param_count(rd_mods)
    persistent = sum(dict(p for ms in rd_mods.values() for x in ms for p in x.params if p[1] <= threshold).values())
    partitioned = reader_total - persistent
    reader_params = (math.ceil(partitioned / world) + persistent) * b if partition_reader else reader_total * b
    reader_params += _largest(rd_mods) * b if partition_reader and world > 1 else 0
    hpz_secondary = (partitioned + param_count(rr_mods)) * b // gpus if hpz else 0
    a, B, n, L = m.reader, s.B, s.n, s.L
    probs_b = 4 + (b if b < 4 else 0)  # eager softmax runs in fp32, then is cast to the activation dtype
    if a.family == "llama":
        states = a.layers * 2 * a.kv * a.hd * n * L * b * B
        S = n * L + s.Tq
        kv_cat = 2 * B * a.kv * S * a.hd * b  # one layer's [passages; answer] K, V
    else:
        states = B * n * L * a.hidden * b
        S = n * L
        kv_cat = 2 * B * S * a.inner * b  # one layer's cross-attention K, V
    # one prefill layer: the scores and the softmax output (eager only), the MLP's gate, up, activation and product
    scores = 0 if s.fused_attention else B * n * a.heads * L * L * (4 + probs_b)
    transient = scores + 4 * B * n * L * a.intermediate * b
    # one answer layer beyond what autograd keeps: the scores before the softmax, the [passages; answer] K, V, the
    # logits; without grad (score_function) the probabilities and GQA-expanded K, V too, which nothing keeps (a fused
    # kernel holds neither scores nor probabilities)
    answer_transient = B * a.heads * s.Tq * S * probs_b + kv_cat + B * s.Tq * a.vocab * b
    if not s.answer_backward:
        expanded = 2 * B * a.heads * S * a.hd * b if a.family == "llama" and a.kv < a.heads else 0
        answer_transient += expanded + B * a.heads * s.Tq * S * 4
        if s.fused_attention:
            answer_transient -= B * a.heads * s.Tq * S * (4 + probs_b)
    answer = s.samples * _answer_activations(a, s, b) if s.answer_backward else 0
    reranker_act = _reranker_activations(m, s, b, mask_b)
    out = {"reranker_states": int(reranker_states), "reader_params": int(reader_params),
           "hpz_secondary": int(hpz_secondary), "passage_states": int(states), "prefill_transient": int(transient),
           "answer_activations": int(answer), "answer_transient": int(answer_transient),
           "reranker_activations": int(reranker_act)}
    static = out["reranker_states"] + out["reader_params"] + out["hpz_secondary"]
    out["peak"] = static + max(2 * states + transient, states + reranker_act + answer + answer_transient)
    return out


def _largest(mods: dict[str, list[Module]]) -> int:
    return max(x.numel for ms in mods.values() for x in ms)


# -- time --------------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The predicted step, per rank and per optimizer step (grad_accum micro-batches). Units: FLOPs, bytes, seconds."""

    flops: dict[str, int]  # per part, one step of one rank (all its micro-batches)
    collectives: list[Collective]  # one step of one rank
    collective_s: list[float]  # seconds of each collective
    compute_s: dict[str, float]  # per part
    comm_s: dict[str, float]  # per part
    optimizer_s: float
    host_s: float  # hw.host_per_passage_s per candidate passage, plus hw.multi_rank_step_s when world > 1
    memory: dict[str, int]  # per rank, one micro-batch in flight
    step_s: float
    reader_tokens_per_s: float  # all ranks: passage + answer-pass tokens / step time
    mfu: float  # matmul FLOPs of the step over (step time * ranks * peak)
    world: int
    global_batch: int

    def part_seconds(self) -> dict[str, float]:
        """Predicted seconds of each part (compute + communication), of the optimizer and of the host."""
        out = {p: self.compute_s.get(p, 0.0) + self.comm_s.get(p, 0.0) for p in PARTS}
        out["optimizer"] = self.optimizer_s
        out["host"] = self.host_s
        return out

    def terms(self) -> dict[str, float]:
        """Seconds of each term of the step: '<part> compute', '<part> all-gathers', 'reduce-scatter', 'optimizer',
        'host'."""
        terms = {f"{p} compute": v for p, v in self.compute_s.items()}
        for c, seconds in zip(self.collectives, self.collective_s):
            key = "reduce-scatter" if c.op == "reduce_scatter" else f"{c.part} all-gathers"
            terms[key] = terms.get(key, 0.0) + seconds
        terms["optimizer"] = self.optimizer_s
        terms["host"] = self.host_s
        return terms

    def bottleneck(self) -> str:
        """The largest term of the step (terms())."""
        terms = self.terms()
        return max(terms, key=terms.get)


def predict(m: Models, s: StepShape, hw: Hardware, world: int, nodes: int, precision: str, accum: int = 1,
            threshold: int = 0, hpz: bool = False, partition_reader: bool = True,
            reranker_states: int | None = None) -> Prediction:
    """Predicted step time: compute = FLOPs / (peak * compute_efficiency) per part; communication = ZeRO-3's
    collectives at bus_bandwidth plus a fixed cost per call; optimizer = the bytes AdamW reads and writes for this
    rank's share of the reranker at memory_bandwidth * memory_efficiency; host = host_per_passage_s per candidate
    passage (B * n per micro-batch) plus multi_rank_step_s when world > 1. No overlap: the terms add up (without a
    complete trace ZeRO-3 does not prefetch, zero3_traffic). `accum` micro-batches per optimizer step."""
    per_mb = step_flops(m, s)
    flops = {k: v * accum for k, v in per_mb.items()}
    colls = [Collective(c.part, c.op, c.calls * accum, c.bytes * accum, c.scope)
             for c in zero3_traffic(m, s, precision, threshold, hpz)]
    peak = hw.peak(precision) * hw.compute_efficiency
    compute = {p: flops[p] / peak for p in PARTS}
    coll_s = [comm_seconds(c, hw, world, nodes) for c in colls]
    comm = {p: sum(t for c, t in zip(colls, coll_s) if c.part == p) for p in PARTS}
    b = PRECISION_BYTES[precision]
    # AdamW on this rank's slice: read fp32 master, gradient, two moments; write master, moments and the low-precision
    # parameter copy (docs: torch AdamW, not fused).
    touched = reranker_trainable(m) / world * (4 + b + 8 + 4 + 8 + b)
    optimizer = touched / (hw.memory_bandwidth * hw.memory_efficiency)
    memory = memory_per_rank(m, s, hw, world, nodes, precision, threshold, hpz, partition_reader, reranker_states)
    host = hw.host_per_passage_s * s.B * s.n * accum + (hw.multi_rank_step_s if world > 1 else 0.0)
    step = sum(compute.values()) + sum(comm.values()) + optimizer + host
    tokens = s.reader_tokens() * accum * world
    total_flops = sum(flops.values()) * world
    return Prediction(flops, colls, coll_s, compute, comm, optimizer, host, memory, step, tokens / step,
                      total_flops / (step * world * hw.peak(precision)), world, s.B * accum * world)


def epoch_seconds(pred: Prediction, questions: int) -> float:
    """Time of one pass over `questions` training questions: steps per epoch (train.micro_batches: the tail shorter
    than a global batch is skipped) times the step time."""
    return max(1, questions // pred.global_batch) * pred.step_s
