"""GPU readiness check: bf16 G-Rerank steps with a ~1B-parameter decoder-only reader and a FiD-T5 reader, eager and
sdpa, under ZeRO-3 on one GPU; the mask gradient checked against fp32; tokens/s and peak memory as JSON.

    python bench/gpu_check.py --out runs/gpu_check.json          # CUDA: the full sizes (see BENCHMARKS.md)
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.json   # anywhere: the same code at tiny sizes (a test)
    python bench/gpu_check.py --checkpointing off on             # also with the answer pass checkpointed
    python bench/gpu_check.py --throughput --out runs/gpu_throughput.json   # realistic batches, time and MFU per part

Readers (random weights, built from configs with the byte-level tokenizer, so no download):
  llama   Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192): 0.97B parameters with the
          259-token vocabulary (Llama-3.2-1B itself is 1.24B, the difference being its 128k-token embedding);
  fid_t5  T5-large's shape (d_model 1024, 24 + 24 layers, 16 heads, d_ff 4096), as Intel/fid_t5_large_nq: 0.7B.
Per reader, the fp32-initialised model is saved once as an HF folder in bf16 (the reload must come back in the
configured dtype, fp32 or bf16, whatever the folder holds); then per attention implementation (eager, sdpa):
  1. fp32 reference: the folder loaded with reader.dtype=fp32 and eager attention (the same math; on CUDA the
     memory-efficient SDPA kernel's fp32 backward with a mask that needs a gradient fails: "LSE is not correctly
     aligned"); d(answer loss)/d(log M) for a fixed batch and mask;
  2. the engine: ZeRO-3 (runtime.engine=deepspeed, precision bf16, reader built under zero.Init) when CUDA is there
     and deepspeed imports, else the local engine with reader.dtype=bf16 (the JSON says which, and why); the same
     gradient in bf16, which must be finite with a relative L2 error to fp32 <= TOL; then `--steps` timed G-Rerank
     steps (objectives.gumbel_rerank: reranker, Gumbel mask, passage encoding, answer pass, backward, step);
     with --checkpointing on, runtime.reader_checkpointing=true (every answer-pass layer recomputed in backward).
Output, one JSON object per case: reader parameters, engine, dtype, mask-gradient error and tolerance, reader tokens
per second (passage + prompt + target tokens of a step / median step time), peak memory (CUDA: max allocated; CPU:
peak RSS of the process so far), then a hard top-k evaluation (evaluate.evaluate) on the same device: its recall,
hard top-k loss, or the error it raised; ok. A case that raises is one JSON object with its error, not ok, and
the next case runs. Exit status 1 when any case is not ok.

--throughput (issue: the GPU step near the hardware limit): the 1B reader at realistic batches, 8 questions x 20
passages x 256 tokens and 16 x 10 x 256 (THROUGHPUT), bf16, ZeRO-3 on one GPU, no fp32 reference. Per case, the
median over the timed steps of each part's seconds (CUDA events on a GPU, read after the step's synchronize; the
clock on CPU), the parts told apart as cost.count_step_flops tells them (cost.marked_parts): prefill, answer_fwd,
reranker_fwd, answer_bwd, reranker_bwd, optimizer (runtime.step) and other (the rest of the step: the Gumbel mask,
selection); each part's MFU = its matmul FLOPs (cost.step_flops, equal to FlopCounterMode's count of the real step)
over its seconds x the device's dense bf16 peak (gr_train/hardware.py, by the device's name); the whole step's MFU;
reader tokens/s; peak memory; the cost model's predicted step and parts on that hardware, and the error.
--partition-reader on off: also with the frozen reader whole on the GPU (runtime.partition_reader=false), which the
cost model says removes the reader's ZeRO-3 gathers, ~60% of the partitioned step at these batches on one GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

# bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.004); through 16-48 layers of random weights the mask gradient
# picks up more. Tolerance on ||g_bf16 - g_fp32|| / ||g_fp32||:
TOL = 0.1
FULL = {
    "llama": {"kind": "causal_lm", "model_config": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 8192,
        "tie_word_embeddings": True}},
    "fid_t5": {"kind": "fid_t5", "model_config": {
        "d_model": 1024, "d_kv": 64, "d_ff": 4096, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 16}},
}
TINY = {
    "llama": {"kind": "causal_lm", "model_config": {"model_type": "llama"}},  # reader.TINY_CAUSAL sizes
    "fid_t5": {"kind": "fid_t5", "model_config": {}},  # reader.TINY_FID_T5
}
# questions per step, passages per question, passage tokens, training steps timed
SIZES = {"full": dict(B=2, n=10, L=256, steps=3), "tiny": dict(B=2, n=3, L=128, steps=2)}
THROUGHPUT = {"full": [dict(B=8, n=20, L=256, steps=3), dict(B=16, n=10, L=256, steps=3)],
              "tiny": [dict(B=2, n=4, L=32, steps=2), dict(B=4, n=2, L=32, steps=2)]}
STEP_PARTS = ("prefill", "answer_fwd", "reranker_fwd", "answer_bwd", "reranker_bwd", "optimizer", "other")
WORDS = "the of river town born church record album band film village station founded king county player".split()


def records(B: int, n: int, seed: int = 0):
    from gr_train.data import Passage, Record

    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [Record(f"q{b}", text(4), [text(1)], [Passage(text(2), text(60), is_gold=i == 0) for i in range(n)])
            for b in range(B)]


def mask_gradient(reader, batch) -> tuple[float, torch.Tensor]:
    """(mean answer loss, d loss / d log M [B, n] fp32) for a fixed mask: M_i = 1, 0.5, 0.25, ..."""
    from gr_train import gumbel

    B, n = batch.valid.shape
    M = (0.5 ** torch.arange(n, dtype=torch.float32, device=batch.valid.device)).expand(B, n)
    log_M = gumbel.log_mask(M, 1e-9, batch.valid).requires_grad_(True)
    loss = reader.answer_loss(reader.encode_passages(batch.reader_inputs), batch.reader_inputs, log_M).mean()
    loss.backward()
    return loss.item(), log_M.grad.detach().float()


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, spec: dict, folder: Path, attn: str, engine: str, size: dict, device, work: Path,
             checkpointing: str = "off") -> dict:
    from gr_train import batching, objectives, train
    from gr_train.config import load_config
    from gr_train.models import build_models
    from gr_train.runtime import build_runtime

    overrides = [f"reader.kind={spec['kind']}", f"reader.name_or_path={folder}", f"reader.attn_implementation={attn}",
                 f"reader.passage_max_tokens={size['L']}", "reader.answer_max_tokens=8", "gumbel.k=2",
                 # the check is of training through the mask (the DMA gradient): an estimator that backpropagates
                 # through the reader, not the default score-function one
                 "gumbel.estimator=straight_through",
                 f"data.n_candidates={size['n']}", f"train.micro_batch_size={size['B']}", "reranker.max_tokens=64",
                 "reranker.model_config={hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
                 "intermediate_size: 128}", f"run.run_dir={work / 'run'}", f"run.device={device.type}",
                 "run.progress=false", f"train.max_steps={size['steps'] + 1}",
                 f"runtime.reader_checkpointing={str(checkpointing == 'on').lower()}"]
    recs = records(size["B"], size["n"])

    torch.manual_seed(0)
    ref_cfg = load_config(None, [*overrides, "reader.dtype=fp32", "reader.attn_implementation=eager"])
    ref_reader, ref_reranker = build_models(ref_cfg)
    ref_reader.to(device)
    ref_loss, ref_grad = mask_gradient(ref_reader, batching.collate(recs, size["n"], ref_reranker, ref_reader,
                                                                      device=device))
    del ref_reader, ref_reranker
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    run_overrides = (["runtime.engine=deepspeed", "runtime.precision=bf16"] if engine == "deepspeed"
                     else ["runtime.engine=local", "reader.dtype=bf16"])
    cfg = load_config(None, [*overrides, *run_overrides])
    torch.manual_seed(0)
    runtime = build_runtime(cfg)
    reader, reranker = build_models(cfg, runtime)
    reranker.train()
    runtime.prepare(reranker, frozen=reader)  # places both on the runtime's device
    batch = batching.collate(recs, size["n"], reranker, reader, device=device)
    loss, grad = mask_gradient(reader, batch)
    reranker.zero_grad(set_to_none=True)
    err = float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30))
    finite = bool(torch.isfinite(grad).all())

    times = []
    for step in range(size["steps"] + 1):  # the first step warms up (allocator, kernels) and is not timed
        noise = train.step_noise(cfg, step, size["B"])
        t0 = time.perf_counter()
        out = objectives.OBJECTIVES["gumbel"].compute(batch, reranker, reader, cfg, step, noise.to(device))
        runtime.backward(out.loss)
        runtime.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]
    # hard top-k evaluation on the same device (scores, greedy answers, soft/hard and label-free losses)
    from gr_train.evaluate import evaluate

    try:
        ev = evaluate(cfg, reranker, reader, recs)
        evaluated = {"eval_recall": ev["ranking"]["all"][f"recall@{cfg.eval.ks[0]}"], "eval_loss_hard":
                     ev["loss"]["loss_hard"], "eval_error": None}
    except Exception as e:  # recorded in the JSON: a failing evaluation makes the case not ok
        evaluated = {"eval_recall": None, "eval_loss_hard": None, "eval_error": f"{type(e).__name__}: {e}"[:500]}
    inputs = batch.reader_inputs
    tokens = sum(int(inputs[k].sum()) for k in ("passage_mask", "prompt_mask", "target_mask") if k in inputs)
    if "target_mask" not in inputs:
        tokens += int((inputs["labels"] != -100).sum())
    return {"reader": name, "attn": attn, "engine": engine, "device": str(device),
            "reader_checkpointing": checkpointing,
            "reader_params": sum(getattr(p, "ds_numel", p.numel()) for p in reader.parameters()),
            "reader_dtype": str(next(reader.parameters()).dtype).replace("torch.", ""),
            "loss_fp32": ref_loss, "loss": loss, "mask_grad_rel_err": err, "tol": TOL, "mask_grad_finite": finite,
            "step_s": step_s, "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
            "peak_memory_mb": peak_memory_mb(device), **evaluated,
            "ok": finite and err <= TOL and bool(torch.isfinite(out.loss)) and evaluated["eval_error"] is None}


class StepClock:
    """Named instants of one step: CUDA events on a GPU (read after torch.cuda.synchronize), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, label: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((label, event))
        else:
            self.marks.append((label, time.perf_counter()))

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def parts(self) -> dict[str, float]:
        """Seconds of STEP_PARTS and the whole step ("step"): forward parts from their start/end marks, answer_bwd
        from "backward" to "w_grad" (to "backward_end" when w has no gradient), reranker_bwd from "w_grad" to
        "backward_end", optimizer from "backward_end" to "end", other = step - the rest."""
        at = {}
        out = dict.fromkeys(STEP_PARTS, 0.0)
        opened: list[object] = []
        for label, t in self.marks:
            if label.endswith(":start"):
                opened.append(t)
            elif label.endswith(":end"):
                out[label[:-4]] += self.seconds(opened.pop(), t)
            else:
                at.setdefault(label, t)
        w_grad = at.get("w_grad", at["backward_end"])
        out["answer_bwd"] = self.seconds(at["backward"], w_grad)
        out["reranker_bwd"] = self.seconds(w_grad, at["backward_end"])
        out["optimizer"] = self.seconds(at["backward_end"], at["end"])
        out["step"] = self.seconds(at["start"], at["end"])
        out["other"] = out["step"] - sum(out[p] for p in STEP_PARTS if p != "other")
        return out


def device_hardware(device):
    """The gr_train/hardware.py entry of this device: by the CUDA device's name (H100, H200, A100), "cpu" on CPU
    (peak per core times torch's threads); None for a GPU the table does not list."""
    import dataclasses

    from gr_train.hardware import HARDWARE

    if device.type != "cuda":
        cpu = HARDWARE["cpu"]
        threads = torch.get_num_threads()
        return dataclasses.replace(cpu, peak_flops={k: v * threads for k, v in cpu.peak_flops.items()})
    name = torch.cuda.get_device_name(device)
    return next((HARDWARE[k] for k in ("h200", "h100", "a100") if k.upper() in name.upper()), None)


def run_throughput(name: str, spec: dict, folder: Path, attn: str, engine: str, size: dict, device, work: Path,
                   partition_reader: str = "on") -> dict:
    """Timed G-Rerank steps at a realistic batch, time and MFU per part (see the module docstring)."""
    import dataclasses
    import statistics

    from gr_train import batching, cost, objectives, train
    from gr_train.architectures import arch_from_config
    from gr_train.config import load_config
    from gr_train.models import build_models
    from gr_train.plan import _reader_config
    from gr_train.reranker import _family, _scratch_config
    from gr_train.runtime import build_runtime

    overrides = [f"reader.kind={spec['kind']}", f"reader.name_or_path={folder}", f"reader.attn_implementation={attn}",
                 f"reader.passage_max_tokens={size['L']}", "reader.answer_max_tokens=8", "gumbel.k=2",
                 "gumbel.estimator=straight_through", f"data.n_candidates={size['n']}",
                 f"train.micro_batch_size={size['B']}", "reranker.max_tokens=64",
                 "reranker.model_config={hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
                 "intermediate_size: 128}", f"run.run_dir={work / 'run'}", f"run.device={device.type}",
                 "run.progress=false", f"train.max_steps={size['steps'] + 1}",
                 f"runtime.partition_reader={str(partition_reader == 'on').lower()}"]
    overrides += (["runtime.engine=deepspeed", "runtime.precision=bf16"] if engine == "deepspeed"
                  else ["runtime.engine=local", "reader.dtype=bf16"])
    cfg = load_config(None, overrides)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    runtime = build_runtime(cfg)
    reader, reranker = build_models(cfg, runtime)
    reranker.train()
    runtime.prepare(reranker, frozen=reader)
    batch = batching.collate(records(size["B"], size["n"]), size["n"], reranker, reader, device=device)
    parts = []
    for step in range(size["steps"] + 1):  # the first step warms up (allocator, kernels) and is not timed
        noise = train.step_noise(cfg, step, size["B"]).to(device)
        clock = StepClock(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock.mark("start")
        with cost.marked_parts(reader, reranker, lambda p: clock.mark(f"{p}:start"), lambda p: clock.mark(f"{p}:end"),
                               lambda: clock.mark("w_grad")):
            out = objectives.OBJECTIVES["gumbel"].compute(batch, reranker, reader, cfg, step, noise)
            clock.mark("backward")
            runtime.backward(out.loss)
            clock.mark("backward_end")
        runtime.step()
        clock.mark("end")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        parts.append(clock.parts())
    seconds = {p: statistics.median(x[p] for x in parts[1:]) for p in (*STEP_PARTS, "step")}
    shape = cost.shape_of(batch, cfg)
    models = cost.Models(arch_from_config(_reader_config(cfg)),
                         arch_from_config(_scratch_config(cfg.reranker, _family(cfg.reranker), reader.tokenizer)
                                          .to_dict()), cfg.reranker.kind)
    flops = cost.step_flops(models, shape)
    hw = device_hardware(device)
    peak = hw.peak(cfg.runtime.precision) if hw else None
    mfu = {p: flops[p] / (seconds[p] * peak) if peak and seconds[p] > 0 else None for p in flops}
    mfu["step"] = sum(flops.values()) / (seconds["step"] * peak) if peak else None
    predicted = cost.predict(models, shape, hw, 1, 1, cfg.runtime.precision) if hw else None
    if predicted and partition_reader == "off":  # the whole reader on the rank: no reader all-gathers
        sys.path.insert(0, str(Path(__file__).parent))
        from scaling_table import without_reader_gathers

        predicted = without_reader_gathers(predicted, 1, hw.peak(cfg.runtime.precision))
    passages = batch.reader_inputs["passage_mask"] if "passage_mask" in batch.reader_inputs else None
    return {"reader": name, "attn": attn, "engine": engine, "partition_reader": partition_reader,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "hardware": hw.name if hw else None, **{k: size[k] for k in ("B", "n", "L", "steps")},
            "reader_params": sum(getattr(p, "ds_numel", p.numel()) for p in reader.parameters()),
            "shape": dataclasses.asdict(shape), "step_s": seconds["step"], "part_s": seconds, "flops": flops,
            "mfu": mfu,
            "reader_tokens_per_s": shape.reader_tokens() / seconds["step"],
            "passage_padding": None if passages is None else float(1 - passages.float().mean()),
            "peak_memory_mb": peak_memory_mb(device),
            "predicted_step_s": predicted.step_s if predicted else None,
            "predicted_part_s": predicted.part_seconds() if predicted else None,
            "prediction_error": (predicted.step_s - seconds["step"]) / seconds["step"] if predicted else None,
            "loss": float(out.loss), "ok": bool(torch.isfinite(out.loss))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models and batch (CPU test); default on CPU")
    p.add_argument("--out", help="also write the JSON list here")
    p.add_argument("--readers", nargs="+", default=list(FULL), choices=list(FULL))
    p.add_argument("--attn", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    p.add_argument("--checkpointing", nargs="+", default=["off"], choices=["off", "on"],
                   help="runtime.reader_checkpointing values to run (the answer pass recomputed in backward)")
    p.add_argument("--throughput", action="store_true", help="realistic batches (THROUGHPUT), time and MFU per part; "
                   "no fp32 reference")
    p.add_argument("--partition-reader", nargs="+", default=["on"], choices=["on", "off"],
                   help="--throughput: runtime.partition_reader values (off: the frozen reader whole on the GPU, no "
                   "ZeRO-3 gathers of it)")
    p.add_argument("--engine", default="auto", choices=["auto", "deepspeed", "local"],
                   help="auto: ZeRO-3 when CUDA is there and deepspeed imports, else the local engine")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    tiny = args.tiny or not cuda
    engine, why = args.engine, "requested"
    if engine == "auto":
        try:
            import deepspeed  # noqa: F401

            engine, why = ("deepspeed", "CUDA and deepspeed") if cuda else ("local", "no CUDA")
        except ImportError:
            engine, why = "local", "deepspeed does not import"
    if engine == "deepspeed":  # one rank: the process group the DeepSpeed engine joins
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": str(port)}.items():
            os.environ.setdefault(k, v)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
        torch.backends.cudnn.allow_tf32 = False
    from gr_train.config import ReaderSection
    from gr_train.models import build_reader

    specs, size = (TINY, SIZES["tiny"]) if tiny else (FULL, SIZES["full"])
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for name in args.readers:
            spec = specs[name]
            folder = Path(tmp) / name
            torch.manual_seed(0)
            reader = build_reader(ReaderSection(kind=spec["kind"], model_config=spec["model_config"],
                                                passage_max_tokens=size["L"], dtype="fp32"))
            reader.model.to(torch.bfloat16).save_pretrained(folder)  # saved in bf16; loads in the configured dtype
            reader.tokenizer.save_pretrained(folder)
            del reader
            if args.throughput:
                cases = itertools.product(args.attn, args.partition_reader,
                                          enumerate(THROUGHPUT["tiny" if tiny else "full"]))
                for attn, partition, (i, tsize) in cases:
                    try:
                        row = run_throughput(name, spec, folder, attn, engine, tsize, device,
                                             Path(tmp) / f"{name}-{attn}-{partition}-{i}", partition)
                    except Exception as e:  # recorded; the other cases still run
                        row = {"reader": name, "attn": attn, "engine": engine, "partition_reader": partition,
                               **tsize, "error": f"{type(e).__name__}: {e}"[:500], "ok": False}
                        if cuda:
                            torch.cuda.empty_cache()
                    row.update(engine_reason=why, sizes="tiny" if tiny else "full", mode="throughput")
                    results.append(row)
                    print(json.dumps(row), flush=True)
                continue
            for attn in args.attn:
                for ckpt in args.checkpointing:
                    try:
                        row = run_case(name, spec, folder, attn, engine, size, device,
                                       Path(tmp) / f"{name}-{attn}-{ckpt}", ckpt)
                    except Exception as e:  # recorded; the other cases still run
                        row = {"reader": name, "attn": attn, "engine": engine, "reader_checkpointing": ckpt,
                               "error": f"{type(e).__name__}: {e}"[:500], "ok": False}
                        if cuda:
                            torch.cuda.empty_cache()
                    row.update(engine_reason=why, sizes="tiny" if tiny else "full", **size)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
