"""The engine boundary: optimizer, LR schedule, gradient accumulation and clipping, rank helpers.

`LocalRuntime` is the single-process engine. The recipe talks to the engine only through `backward`, `step`,
`state_dict`/`load_state_dict` and the rank helpers, so the DeepSpeed ZeRO-3 engine slots in behind the same seam.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_lambda(cfg):
    """Multiplier of cfg.optim.lr at optimizer step s: linear warm-up, then constant | linear | cosine to 0."""
    warmup, total, kind = cfg.optim.warmup_steps, cfg.train.max_steps, cfg.optim.lr_schedule

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if kind == "constant" or total <= warmup:
            return 1.0
        t = min(1.0, (s - warmup) / max(1, total - warmup))
        return 1.0 - t if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

    return f


class LocalRuntime:
    """One process, one device. `module` holds the trainable parameters (requires_grad True); frozen ones are
    never given to the optimizer."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, module: nn.Module, cfg):
        self.cfg = cfg
        self.device = torch.device(cfg.run.device)
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("runtime: the trainable module has no parameter with requires_grad=True")
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of one micro-batch; the loss is the micro-batch mean, scaled by 1/accum so that
        the step's gradient is the mean over all questions of the step."""
        (loss / self.cfg.train.grad_accum_steps).backward()

    def step(self) -> dict[str, float]:
        """Clip, update, advance the schedule, zero grads. Returns {grad_norm, lr} (pre-clip global norm)."""
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": float(norm), "train/lr": lr}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def barrier(self) -> None:
        pass

    def mean_across_ranks(self, value: float) -> float:
        return value


def build_runtime(module: nn.Module, cfg) -> LocalRuntime:
    return LocalRuntime(module, cfg)
