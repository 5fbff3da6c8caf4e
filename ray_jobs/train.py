"""G-Rerank training on a Ray cluster: Ray Train's TorchTrainer starts one DeepSpeed ZeRO-3 rank per worker.

    python ray_jobs/train.py --config configs/demo.yaml [section.key=value ...]          # local Ray, or RAY_ADDRESS
    ray job submit --address http://HEAD:8265 --working-dir . -- python ray_jobs/train.py --config ... [...]

Workers come from cfg.runtime (num_workers, use_gpu, cpus_per_worker); each runs the ordinary recipe
(gr_train.train.main) with runtime.engine=deepspeed, which joins the process group Ray Train made (gloo on CPU,
nccl on GPU). Checkpoints, TensorBoard logs and final/ go to run.run_dir as with any launcher, so run.run_dir
must be on storage every worker node sees; data paths are read by every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import ray
import yaml
from ray.train import RunConfig as RayRunConfig
from ray.train import ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from gr_train import checks
from gr_train.config import load_config, to_dict


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker = one rank: rebuild the driver's resolved config and run the recipe."""
    from gr_train import train

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(loop_config["config_yaml"])
        f.flush()
        cfg = load_config(f.name)
    train.main(cfg, resume=loop_config["resume"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in run.run_dir")
    p.add_argument("--address", default=None, help="Ray cluster address; default: RAY_ADDRESS, else a local Ray")
    args = p.parse_args(argv)

    cfg = load_config(args.config, [*args.overrides, "runtime.engine=deepspeed"])  # bad configs fail here
    checks.check_config(cfg, "train")  # and missing data or weights, before Ray and DeepSpeed start
    cfg.run.run_dir = str(Path(cfg.run.run_dir).resolve())
    r = cfg.runtime
    env = {} if r.use_gpu else {"DS_ACCELERATOR": "cpu"}  # skip DeepSpeed's accelerator probing on CPU workers
    from ray_jobs import token_auth

    token_auth()  # a local Ray started here listens with authentication
    ray.init(address=args.address, runtime_env={"env_vars": env})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config_yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False), "resume": not args.no_resume},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,  # use_gpu: one GPU per worker
                                     resources_per_worker={"CPU": r.cpus_per_worker}),
        torch_config=TorchConfig(backend=r.dist_backend or ("nccl" if r.use_gpu else "gloo")),
        # Ray Train's own storage holds only its run metadata; the recipe writes checkpoints to run.run_dir.
        run_config=RayRunConfig(name="gr-train", storage_path=str(Path(cfg.run.run_dir) / "ray")),
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
