"""bench/gpu_check.py runs on CPU at tiny sizes, the same code a GPU runs at full size: bf16 readers (reloaded in the
configured dtype from a bf16 folder) whose mask gradient matches fp32 within the script's tolerance, under the local
engine and under ZeRO-3 on one rank, the latter also with the answer pass checkpointed (runtime.reader_checkpointing).
~1 min on 2 busy cores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import bench_script

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; on a GPU run the script itself")
@pytest.mark.parametrize("engine,attns,checkpointing", [("auto", ["eager", "sdpa"], ["off"]),
                                                       ("deepspeed", ["sdpa"], ["off", "on"])])
def test_gpu_check_runs_on_cpu_at_tiny_sizes(engine, attns, checkpointing, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--engine", engine,
                           "--attn", *attns, "--checkpointing", *checkpointing, "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert [(r["reader"], r["attn"], r["reader_checkpointing"]) for r in rows] == [
        (reader, attn, ckpt) for reader in ("llama", "fid_t5") for attn in attns for ckpt in checkpointing]
    for r in rows:
        assert r["engine"] == ("local" if engine == "auto" else "deepspeed")
        assert r["engine_reason"] == ("no CUDA" if engine == "auto" else "requested")
        assert r["reader_dtype"] == "bfloat16" and r["sizes"] == "tiny"  # saved in bf16, configured bf16
        assert r["mask_grad_finite"] and 0 < r["mask_grad_rel_err"] <= r["tol"] == 0.1
        assert abs(r["loss"] - r["loss_fp32"]) < 0.05 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["eval_error"] is None and 0 <= r["eval_recall"] <= 1 and r["eval_loss_hard"] > 0
        assert r["ok"]


def _gpu_check():
    return bench_script("gpu_check")


def test_the_step_clock_splits_a_step_into_its_parts():
    """StepClock.parts from marks at known instants: forward parts from their start/end pairs (summed when a part runs
    twice), backward split at w's gradient, the optimizer after backward, other = the step less the parts."""
    gpu_check = _gpu_check()
    clock = gpu_check.StepClock(torch.device("cpu"))
    clock.marks = [("start", 0.0), ("reranker_fwd:start", 1.0), ("reranker_fwd:end", 3.0), ("prefill:start", 3.0),
                   ("prefill:end", 4.0), ("answer_fwd:start", 4.0), ("answer_fwd:end", 5.0),
                   ("answer_fwd:start", 5.5), ("answer_fwd:end", 6.5), ("backward", 7.0), ("w_grad", 9.0),
                   ("backward_end", 10.0), ("end", 12.0)]
    assert clock.parts() == {"prefill": 1.0, "answer_fwd": 2.0, "reranker_fwd": 2.0, "answer_bwd": 2.0,
                             "reranker_bwd": 1.0, "optimizer": 2.0, "other": 2.0, "step": 12.0}
    clock.marks = [m for m in clock.marks if m[0] != "w_grad"]  # no gradient reached w: backward is all answer_bwd
    parts = clock.parts()
    assert parts["answer_bwd"] == 3.0 and parts["reranker_bwd"] == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; on a GPU run the script itself")
def test_gpu_check_throughput_mode_runs_on_cpu_at_tiny_sizes(tmp_path):
    """--throughput: both tiny batches under ZeRO-3 on one rank, the reader partitioned and whole; each part's seconds
    add up to the step, its MFU is its closed-form FLOPs over its seconds at the device's peak, the tokens/s is the
    step's reader tokens over its time, and the cost model's prediction comes with it (without the reader's
    all-gathers when the reader is whole)."""
    from gr_train import hardware

    gpu_check = _gpu_check()
    out = tmp_path / "throughput.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--throughput",
                           "--engine", "deepspeed", "--readers", "llama", "--attn", "sdpa",
                           "--partition-reader", "on", "off", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    sizes = [(s["B"], s["n"], s["L"]) for s in gpu_check.THROUGHPUT["tiny"]]
    assert [(r["partition_reader"], r["B"], r["n"], r["L"]) for r in rows] == [(p, *s) for p in ("on", "off")
                                                                               for s in sizes]
    whole, partitioned = rows[2]["predicted_part_s"], rows[0]["predicted_part_s"]
    assert whole["prefill"] < partitioned["prefill"] and whole["reranker_fwd"] == partitioned["reranker_fwd"]
    peak = hardware.HARDWARE["cpu"].peak("bf16")  # one thread
    for r in rows:
        assert r["ok"] and r["engine"] == "deepspeed" and r["mode"] == "throughput" and r["hardware"].startswith("cpu")
        s = r["part_s"]
        assert set(s) == {*gpu_check.STEP_PARTS, "step"} and r["step_s"] == s["step"]
        assert sum(s[p] for p in gpu_check.STEP_PARTS) == pytest.approx(s["step"])
        assert all(s[p] > 0 for p in ("prefill", "answer_fwd", "reranker_fwd", "answer_bwd", "reranker_bwd"))
        for part, flops in r["flops"].items():
            assert flops > 0 and r["mfu"][part] == pytest.approx(flops / (s[part] * peak))
        assert r["mfu"]["step"] == pytest.approx(sum(r["flops"].values()) / (s["step"] * peak))
        shape = r["shape"]  # the step's token counts (cost.shape_of)
        assert (shape["B"], shape["n"], shape["L"], shape["samples"]) == (r["B"], r["n"], r["L"], 1)
        tokens = r["B"] * (r["n"] * r["L"] + shape["P"] + shape["T"])  # passages + one answer pass per question
        assert shape["T"] == 8 and r["reader_tokens_per_s"] * s["step"] == pytest.approx(tokens)
        assert r["passage_padding"] == 0.0 and r["peak_memory_mb"] > 0
        assert r["prediction_error"] == pytest.approx((r["predicted_step_s"] - s["step"]) / s["step"])
