"""Test driver for multi-process runs (tests/test_distributed.py): the real recipe under a launcher, plus probes.

    torchrun --nproc_per_node 2 tests/dist_driver.py --out DIR [--kill-after-step S] [--kill-in-save NAME]
        -- --config configs/demo.yaml section.key=value ...

Writes DIR/losses.jsonl (rank 0, one line per step, flushed, so a killed run keeps what it did) and
DIR/report-rank<r>.json at the end: the reader's parameter elements held by this rank, whether any reader
parameter got a .grad, whether the reader's / reranker's gathered weights changed during training (no reranker
when the reader trains: objective.name=reader).
--kill-after-step S: rank 0 SIGKILLs itself when step S (0-based) is done, i.e. after the checkpoint of step S.
--kill-in-save NAME: rank 0 SIGKILLs itself while writing checkpoint NAME, after model.safetensors is written.
--nan-at STEP:RANK: on rank RANK only, the reader's answer loss is NaN during optimizer step STEP (repeatable).
--comms-step S: DeepSpeed's comms log (the config's comms_logger) of optimizer step S alone, and this rank's ZeRO-3
model-state bytes, into DIR/comms-rank<r>.json (tests/test_cost.py).
Every losses.jsonl row also holds the reranker's parameter checksum after the step (runtime.param_abs_sum).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import torch

from gr_train import checkpoint, train
from gr_train.config import load_config
from helpers import nan_loss_on_steps


def gathered_copy(runtime, module) -> dict[str, torch.Tensor]:
    with runtime.gathered(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def model_state_bytes(rt, module) -> dict[str, int]:
    """Bytes this rank holds for `module` under ZeRO-3 (DeepSpeed internals, 0.19): its parameter slices, and for the
    trained module the optimizer's fp32 master slices, AdamW moments and gradient partitions (each storage once)."""
    storages: dict[int, int] = {}

    def add(t):
        if t is not None and t.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for p in module.parameters():
        add(p.ds_tensor)
    params = sum(storages.values())
    zero = rt.optimizer
    for flat in zero.fp32_partitioned_groups_flat:
        add(flat)
        for moment in zero.optimizer.state.get(flat, {}).values():
            add(moment if torch.is_tensor(moment) and moment.dim() else None)
    add(zero.grad_partitions_flat_buffer)
    return {"params": params, "total": sum(storages.values())}


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--kill-after-step", type=int, default=-1)
    p.add_argument("--kill-in-save", default="")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--nan-at", action="append", default=[])
    p.add_argument("--comms-step", type=int, default=-1)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, args.overrides)

    recipe = train.setup(cfg, resume=not args.no_resume)
    rt = recipe.runtime
    if args.kill_in_save and rt.is_main:
        real_save = checkpoint.torch.save

        def save_then_die(obj, path, *a, **kw):
            if args.kill_in_save in str(path):
                os.kill(os.getpid(), signal.SIGKILL)  # model.safetensors is written, engine.pt is not
            return real_save(obj, path, *a, **kw)

        checkpoint.torch.save = save_then_die

    nan_steps = {int(s) for s, r in (x.split(":") for x in args.nan_at) if int(r) == rt.rank}
    if nan_steps:
        train.step_noise, recipe.reader.answer_loss = nan_loss_on_steps(recipe, nan_steps)

    reranker = recipe.reranker  # None when the reader itself trains (objective.name=reader)
    reader0 = gathered_copy(rt, recipe.reader)
    reranker0 = gathered_copy(rt, reranker) if reranker is not None else {}
    losses = open(out / "losses.jsonl", "a") if rt.is_main else None

    def on_step(step, scalars):
        checksum = rt.param_abs_sum(reranker) if reranker is not None else 0.0  # collective
        if losses is not None:
            losses.write(json.dumps({"step": step, "loss": scalars["train/loss"], "world_size": rt.world_size,
                                     "reranker_abs_sum": checksum}) + "\n")
            losses.flush()
        if step == args.kill_after_step and rt.is_main:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.comms_step - 1:  # the log holds step comms_step alone
            rt.ds.comm.reset_log()
        if step == args.comms_step:
            summary = rt.ds.comm.log_summary(return_dict=True)["summary"]
            (out / f"comms-rank{rt.rank}.json").write_text(json.dumps({
                "summary": {op: {str(size): row["count"] for size, row in sizes.items()}
                            for op, sizes in summary.items()},
                "model_states": model_state_bytes(rt, reranker), "world_size": rt.world_size}))

    if recipe.start_step < cfg.train.max_steps:
        train.train(recipe, on_step)
    final = train.save_checkpoint(recipe)
    held, total = rt.param_elements(recipe.reader)
    reader1 = gathered_copy(rt, recipe.reader)
    reranker1 = gathered_copy(rt, reranker) if reranker is not None else {}
    report = {
        "rank": rt.rank, "world_size": rt.world_size, "engine": rt.name, "start_step": recipe.start_step,
        "reader_elements_held": held, "reader_elements": total,
        "reader_grads": sum(p.grad is not None for p in recipe.reader.parameters()),
        "reader_requires_grad": sum(p.requires_grad for p in recipe.reader.parameters()),
        "reader_changed": [k for k in reader0 if not torch.equal(reader0[k], reader1[k])],
        "reranker_changed": [k for k in reranker0 if not torch.equal(reranker0[k], reranker1[k])],
        "reranker_params": [n for n, p in reranker.named_parameters() if p.requires_grad] if reranker else [],
        "final": str(final) if final else None,
        "skipped_steps": getattr(getattr(rt, "engine", None), "skipped_steps", None),
    }
    if recipe.start_step:  # resumed: the weights it started from are the checkpoint's, exactly
        from safetensors.torch import load_file

        saved = load_file(Path(cfg.run.run_dir) / f"step-{recipe.start_step:06d}" / "model.safetensors")
        report["reranker_matches_checkpoint"] = all(torch.equal(reranker0[k], v) for k, v in saved.items())
    if cfg.reader.kind == "demo_fid" and cfg.reader.name_or_path:  # loaded from its folder under zero.Init
        from safetensors.torch import load_file

        source = load_file(Path(cfg.reader.name_or_path) / "model.safetensors")
        report["reader_matches_source"] = all(torch.equal(reader0[f"model.{k}"], v) for k, v in source.items())
    (out / f"report-rank{rt.rank}.json").write_text(json.dumps(report, indent=1))
    train.cleanup(recipe)


if __name__ == "__main__":
    sys.exit(main())
