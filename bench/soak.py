"""Soak with faults: the demo's G-Rerank training on 2 DeepSpeed ZeRO-3 CPU ranks for many steps, uninterrupted and
again with a rank SIGKILLed at random steps, each kill followed by a resume through the same launcher command.

    python bench/soak.py --steps 3000 --kills 5 --out runs/soak          # ~2 x the run time of 3,000 demo steps

Reports (JSON, and a line for BENCHMARKS.md): the kills survived, the largest |difference| between the two runs'
final weights (final/model.safetensors; expected 0 up to 1e-6: data order, noise and every rank's RNG resume
exactly), whether tb/scalars.jsonl of the interrupted run holds each step's train/loss once, and rank 0's resident
memory growth after warm-up (perf/peak_rss_mb at 10% of the steps against the end, uninterrupted run; caches off).
A kill is an outside SIGKILL of rank 1 once rank 0 has logged the chosen step; the run then resumes from its last
step-NNNNNN/ checkpoint (train.save_every_steps).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path) -> list[dict]:
    path = run_dir / "tb" / "scalars.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def last_step(run_dir: Path) -> int:
    rows = [r["step"] for r in scalars(run_dir) if "train/loss" in r]
    return max(rows, default=0)


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes (their environment's RANK), read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            if int(stat[3]) != launcher and os.getpgid(int(entry.name)) != os.getpgid(launcher):
                continue
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in item)
        except (OSError, ValueError, ProcessLookupError):
            continue
        if "RANK" in env and "LOCAL_RANK" in env and "gr_train.cli" in (entry / "cmdline").read_bytes().decode(
                errors="replace"):
            found[int(env["RANK"])] = int(entry.name)
    return found


def launch(config: Path, log: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(29500 + random.randrange(1000)), "-m", "gr_train.cli", "train", "--config",
           str(config)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run(config: Path, run_dir: Path, kill_at: list[int], env: dict) -> int:
    """Train to the end, SIGKILLing rank 1 once each step of kill_at is logged; returns the kills made."""
    kills = 0
    pending = sorted(kill_at)
    while True:
        proc = launch(config, run_dir.parent / f"{run_dir.name}.log", env)
        target = pending[0] if pending else None
        while proc.poll() is None:
            time.sleep(0.5)
            if target is not None and last_step(run_dir) >= target:
                pids = rank_pids(proc.pid)
                if 1 in pids:
                    os.kill(pids[1], signal.SIGKILL)
                    kills += 1
                    pending.pop(0)
                    target = None
        if proc.returncode == 0 and not pending:
            return kills
        if proc.returncode == 0:  # finished before the next kill step: nothing left to kill
            return kills
        if target is not None:  # failed without a kill of ours
            raise RuntimeError(f"soak: {run_dir} failed on its own (exit {proc.returncode}); see its log")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="picks the kill steps")
    p.add_argument("--out", default="runs/soak")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from gr_train.config import load_config, save_config

    data = out / "data"
    if not (data / "train.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "gr_train.cli", "generate", "--config", "configs/demo.yaml",
                        "--out-dir", str(data)], cwd=REPO, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}
    rng = random.Random(args.seed)
    kill_at = sorted(rng.sample(range(args.save_every + 1, args.steps - 1), args.kills))
    result = {"steps": args.steps, "kill_steps": kill_at}
    for name, kills in (("whole", []), ("killed", kill_at)):
        run_dir = out / name
        cfg = load_config(REPO / "configs" / "demo.yaml", [
            f"run.run_dir={run_dir}", "run.num_threads=1", "run.progress=false", "runtime.engine=deepspeed",
            f"data.train_path={data / 'train.jsonl'}", f"data.dev_path={data / 'dev.jsonl'}",
            f"train.max_steps={args.steps}", f"train.save_every_steps={args.save_every}", "train.eval_every_steps=0",
            "train.micro_batch_size=16", "objective.cache_passage_states=false",
            "objective.cache_reader_targets=false"])
        config = out / f"{name}.yaml"
        save_config(cfg, config)
        t0 = time.time()
        result[f"{name}_kills"] = run(config, run_dir, kills, env)
        result[f"{name}_s"] = round(time.time() - t0, 1)
    from safetensors.torch import load_file

    a = load_file(out / "whole" / "final" / "model.safetensors")
    b = load_file(out / "killed" / "final" / "model.safetensors")
    result["max_weight_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    steps = [r["step"] for r in scalars(out / "killed") if "train/loss" in r]
    whole = [r["step"] for r in scalars(out / "whole") if "train/loss" in r]
    result["each_step_once"] = steps == whole and len(set(steps)) == len(steps)  # every logged step, once, in order
    rss = [(r["step"], r["perf/peak_rss_mb"]) for r in scalars(out / "whole") if "perf/peak_rss_mb" in r]
    warm = next(v for s, v in rss if s >= args.steps // 10)
    result["rss_mb_after_warmup"], result["rss_mb_end"] = warm, rss[-1][1]
    result["rss_growth"] = rss[-1][1] / warm - 1
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
