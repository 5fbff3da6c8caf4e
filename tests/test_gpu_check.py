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
