"""G-Rerank training on a Ray cluster: Ray Train's TorchTrainer starts one DeepSpeed ZeRO-3 rank per worker.

    python ray_jobs/train.py --config configs/demo.yaml [section.key=value ...]          # local Ray, or RAY_ADDRESS
    ray job submit --address http://HEAD:8265 --working-dir . -- python ray_jobs/train.py --config ... [...]

Workers come from cfg.runtime (num_workers, use_gpu, cpus_per_worker, placement_strategy); each runs the ordinary
recipe (gr_train.train.main) with runtime.engine=deepspeed, which joins the process group Ray Train made (gloo on
CPU, nccl on GPU), and logs its rank and node. Checkpoints, TensorBoard logs and final/ go to run.run_dir as with
any launcher, so run.run_dir must be on storage every worker node sees; data paths are read by every worker.

A worker or node lost mid-run: with runtime.max_failures > 0 Ray Train restarts the worker group (on the nodes
left, where they have the resources) and the restarted ranks resume from this job's last checkpoint in run.run_dir
(--no-resume applies to the job's first attempt only); with 0 the job fails with Ray's error and the same command
run again resumes. A run.run_dir that holds another run with nothing to resume (or --no-resume) is refused before
Ray starts, as `gr-train train` refuses it; --overwrite deletes that run first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

import ray
import yaml
from ray.train import FailureConfig, ScalingConfig
from ray.train import RunConfig as RayRunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from gr_train import checks
from gr_train.config import load_config, to_dict

log = logging.getLogger("ray_jobs.train")


def resume_after_restart(run_dir: Path, job_id: str, resume: bool) -> bool:
    """Whether this worker group resumes from run_dir's last checkpoint: `resume` (the command line's) on the job's
    first attempt; on a restart of the same job (a worker or its node died), from the checkpoints this job wrote.

    A restart is known by the marker `<run_dir>/ray/started-<job_id>`, which rank 0 writes once every rank has
    looked for it (a barrier of the process group Ray Train made), so all ranks of an attempt agree. Returns the
    `resume` argument of gr_train.train.main."""
    import torch.distributed as dist

    from gr_train.checkpoint import latest_checkpoint

    marker = run_dir / "ray" / f"started-{job_id}"
    restarted = marker.exists()
    dist.barrier()  # every rank has looked before rank 0 marks the job started
    if not restarted:
        if dist.get_rank() == 0:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        return resume
    last = latest_checkpoint(run_dir)
    # --no-resume on the first attempt: only a checkpoint this job wrote (after its marker) is resumed from
    ours = last is not None and (resume or last.stat().st_mtime >= marker.stat().st_mtime)
    log.warning("restart of this Ray Train job: %s", f"resuming from {last}" if ours else
                "no checkpoint of this job yet, starting it again")
    return ours


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker = one rank: rebuild the driver's resolved config and run the recipe."""
    from gr_train import train

    # the recipe's log lines (resume, best/, the restart above) as the CLI prints them; Ray sends them to the driver
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(loop_config["config_yaml"])
        f.flush()
        cfg = load_config(f.name)
    context = ray.train.get_context()
    log.info("Ray Train worker: rank %d of %d on node %s", context.get_world_rank(), context.get_world_size(),
             ray.get_runtime_context().get_node_id())
    train.main(cfg, resume=resume_after_restart(Path(cfg.run.run_dir), loop_config["job_id"], loop_config["resume"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in run.run_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run already in run.run_dir (checkpoints, best/, final/, tb/) and start afresh")
    p.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local Ray")
    args = p.parse_intermixed_args(argv)  # overrides anywhere among the flags, as gr-train takes them

    cfg = load_config(args.config, [*args.overrides, "runtime.engine=deepspeed"])  # bad configs fail here
    checks.check_config(cfg, "train")  # and missing data or weights, before Ray and DeepSpeed start
    cfg.run.run_dir = str(Path(cfg.run.run_dir).resolve())
    # a folder holding another run is refused, as `gr-train train` refuses it: its tb/ would get a second set of curves
    checks.check_run_dir(cfg.run.run_dir, resume=not args.no_resume, overwrite=args.overwrite)
    r = cfg.runtime
    env = {} if r.use_gpu else {"DS_ACCELERATOR": "cpu"}  # skip DeepSpeed's accelerator probing on CPU workers
    from ray_jobs import token_auth

    token_auth()  # a local Ray started here listens with authentication
    ray.init(address=args.address, runtime_env={"env_vars": env})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config_yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
                           "resume": not (args.no_resume or args.overwrite),
                           "job_id": uuid.uuid4().hex},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,  # use_gpu: one GPU per worker
                                     resources_per_worker={"CPU": r.cpus_per_worker},
                                     placement_strategy=r.placement_strategy),
        torch_config=TorchConfig(backend=r.dist_backend or ("nccl" if r.use_gpu else "gloo")),
        # Ray Train's own storage holds only its run metadata; the recipe writes checkpoints to run.run_dir.
        run_config=RayRunConfig(name="gr-train", storage_path=str(Path(cfg.run.run_dir) / "ray"),
                                failure_config=FailureConfig(max_failures=r.max_failures)),
    )
    trainer.fit()  # raises TrainingFailedError when a worker fails
    final = Path(cfg.run.run_dir) / "final"
    print(json.dumps({"final": str(final), "complete": (final / "model.safetensors").is_file(),
                      "workers": r.num_workers}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray_jobs import run_job

    sys.exit(run_job("python ray_jobs/train.py", main))
