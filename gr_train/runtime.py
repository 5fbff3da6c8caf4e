"""The engine boundary: optimizer, LR schedule, gradient accumulation and clipping, rank helpers, checkpoint state.

`LocalRuntime` is the single-process engine; `DeepSpeedRuntime` (cfg.runtime.engine=deepspeed) is one ZeRO-3
engine over {trainable reranker, frozen reader}, started by torchrun, the `deepspeed` launcher or Ray Train. The
recipe talks to either only through the methods below, and both write the same world-size independent
checkpoint state, so a run can resume on another number of ranks or under the other engine. This is the only
module that imports deepspeed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.attention import sdpa_kernel

from gr_train.attention import enabled_sdpa_kernels


@runtime_checkable
class Runtime(Protocol):
    """The engine interface the recipe (train.py) and checkpoint.py are written against; LocalRuntime and
    DeepSpeedRuntime implement it. Methods marked collective must be called by every rank."""

    name: str  # "local" | "deepspeed"
    rank: int
    world_size: int
    is_main: bool  # rank 0: writes checkpoints, logs, config.yaml
    device: torch.device

    def partitioned_init(self) -> AbstractContextManager:
        """Context in which the frozen reader is built (ZeRO-3: partitioned as its parameters are created)."""

    def prepare(self, module: nn.Module, frozen: nn.Module | None = None) -> None:
        """Give `module`'s parameters with requires_grad to the optimizer; `frozen` (the reader) is never updated."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's mean loss (scaled by 1/grad_accum_steps)."""

    def step(self, skip: bool = False) -> dict[str, float]:
        """Optimizer step at the accumulation boundary → {"train/grad_norm", "train/lr", "train/step_skipped"}.
        skip (every rank passes the same value): discard the accumulated gradients, no update, the LR schedule
        stays; a non-finite gradient norm skips too. step_skipped: 1.0 when no update was made."""

    def module_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights of the trainable module (on rank 0; collective)."""

    def load_module_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load full weights into the trainable module; ValueError when they do not match."""

    def state_dict(self) -> dict:
        """World-size independent optimizer and schedule state (see MOMENTS; collective)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict()'s output, on any number of ranks."""

    def gathered(self, module: nn.Module) -> AbstractContextManager:
        """Context in which `module`'s parameters are whole on every rank (collective)."""

    def all_gather_object(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (collective)."""

    def barrier(self) -> None:
        """Wait for every rank (collective)."""

    def mean_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Each scalar averaged over ranks (collective)."""

    def param_elements(self, module: nn.Module) -> tuple[int, int]:
        """(parameter elements of `module` held by this rank, elements of the whole module)."""

    def param_abs_sum(self, module: nn.Module) -> float:
        """sum |w| over `module`'s parameters in float64 (collective)."""

    def close(self) -> None:
        """End of the run (collective)."""


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


def _adamw(params: list[nn.Parameter], cfg) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """torch AdamW + LambdaLR. Under DeepSpeed a client torch optimizer avoids the ~50 s JIT build of FusedAdam /
    DeepSpeedCPUAdam on CPU (docs/design.md#cpu-jit-builds); on GPU clusters it is the same optimizer either way."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


def _load_scheduler(scheduler, state: dict) -> None:
    """The schedule's position (last_epoch) from the checkpoint, its peak lr (base_lrs) and shape (lr_lambda) from
    this run's config: LambdaLR.load_state_dict would also bring back the saved base_lrs, so a resume with another
    optim.lr would silently train at the old one. The optimizer's lr is set for the resumed step, as the next
    step() would (the other AdamW settings are never loaded: they come from the config too)."""
    base_lrs = list(scheduler.base_lrs)  # optim.lr of this run
    scheduler.load_state_dict(state)
    scheduler.base_lrs = base_lrs
    lrs = [base * f(scheduler.last_epoch) for base, f in zip(base_lrs, scheduler.lr_lambdas)]
    scheduler._last_lr = lrs
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr


def _check_names(expected: list[str], state: dict, what: str) -> None:
    missing = [n for n in expected if n not in state]
    if missing:
        raise ValueError(f"checkpoint {what} does not match the trainable parameters (missing {missing[:3]})")


# Optimizer state in checkpoints (engine.pt), the same for every engine and world size:
#   {"optimizer": {"step": int, "exp_avg": {param name: full fp32 tensor}, "exp_avg_sq": {...}},
#    "scheduler": LambdaLR.state_dict()}
# Names are those of the trainable module's parameters that require grad.
MOMENTS = ("exp_avg", "exp_avg_sq")


def skip_shm_allreduce_op() -> None:
    """Mark DeepSpeed's CPU shared-memory all-reduce op (ShareMemCommBuilder, "deepspeed_shm_comm") incompatible, so
    `deepspeed.init_distributed` does not compile it. Its one user is `inference_all_reduce` (tensor-parallel
    inference), which falls back to the process group's all_reduce without it; ZeRO-3 training never calls it.
    DeepSpeed keeps its probed `deepspeed.ops.__compatible_ops__` as one module-level dict, read by
    `comm.torch.build_shm_op` at init; this edits that dict."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def place(module: nn.Module, device: torch.device) -> None:
    """Move `module`'s parameters and buffers to `device` as `module.to` does (on a GPU the Parameter objects are
    kept), except parameters partitioned by ZeRO-3 (those with a `ds_id`), whose slices DeepSpeed places itself.

    DeepSpeed moves the model it is given only when none of its parameters was built under zero.Init: with the
    frozen reader partitioned, the reranker (built outside zero.Init) and every non-partitioned buffer (BERT's
    position and token-type ids, rotary frequencies) would stay where they were built, on the CPU.
    """
    module._apply(lambda t: t if hasattr(t, "ds_id") else t.to(device))


class _Engine:
    """What both engines share: `prepare`. Subclasses start their optimizer in `_start`."""

    cfg: Any

    def prepare(self, module: nn.Module, frozen: nn.Module | None = None) -> None:
        """Give `module`'s trainable parameters (requires_grad True) to AdamW and its LR schedule; frozen ones never
        reach the optimizer. `frozen` is the frozen reader (None when the reader itself trains); with
        runtime.reader_checkpointing its answer pass is checkpointed (Reader.answer_pass_layers). Both modules
        are placed on `self.device` first (`place`). Raises ValueError when `module` has no trainable parameter."""
        for m in (module, frozen):
            if m is not None:
                place(m, self.device)
        self.module, self.frozen = module, frozen
        self.named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError("runtime: the trainable module has no parameter with requires_grad=True")
        if self.cfg.runtime.reader_checkpointing and frozen is not None:
            checkpoint_answer_pass(frozen)
        self._start(*_adamw([p for _, p in self.named], self.cfg))

    def _start(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
        raise NotImplementedError


class LocalRuntime(_Engine):
    """One process, one device. `prepare(module)` gives the module's trainable parameters (requires_grad True)
    to AdamW; frozen ones never reach the optimizer."""

    rank = 0
    world_size = 1
    is_main = True
    name = "local"

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = torch.device(cfg.run.device)

    def partitioned_init(self):
        """Context in which the frozen reader is built; here nothing is partitioned."""
        return contextlib.nullcontext()

    def _start(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
        self.params = [p for _, p in self.named]
        self.optimizer, self.scheduler = optimizer, scheduler

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of one micro-batch; the loss is the micro-batch mean, scaled by 1/accum so that
        the step's gradient is the mean over all questions of the step."""
        (loss / self.cfg.train.grad_accum_steps).backward()

    def step(self, skip: bool = False) -> dict[str, float]:
        """Clip, update, advance the schedule, zero grads. Returns {grad_norm, lr, step_skipped} (pre-clip global
        norm). skip, or a non-finite norm: gradients dropped, no update, the schedule stays (as DeepSpeed does on
        an overflow)."""
        lr = self.optimizer.param_groups[0]["lr"]
        norm = float("nan")
        if not skip:
            clip = self.cfg.optim.grad_clip
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf")))
            skip = not math.isfinite(norm)
        if not skip:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": norm, "train/lr": lr, "train/step_skipped": float(skip)}

    # -- checkpoint state ---------------------------------------------------------------------------------

    def module_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights of the trainable module: CPU copies (not views of the live parameters)."""
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_module_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")

    def state_dict(self) -> dict:
        step, moments = 0, {m: {} for m in MOMENTS}
        for name, p in self.named:
            st = self.optimizer.state.get(p, {})
            if st:
                step = int(st["step"])
                for m in MOMENTS:
                    moments[m][name] = st[m].detach().cpu().clone()
        return {"optimizer": {"step": step, **moments}, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        opt = state["optimizer"]
        if opt["step"] > 0:
            names = [n for n, _ in self.named]
            for m in MOMENTS:
                _check_names(names, opt[m], f"optimizer state '{m}'")
            for name, p in self.named:
                # torch AdamW's own layout (non-capturable): a float32 scalar step and the two moments.
                self.optimizer.state[p] = {"step": torch.tensor(float(opt["step"])),
                                           **{m: opt[m][name].to(p.device, p.dtype).clone() for m in MOMENTS}}
        _load_scheduler(self.scheduler, state["scheduler"])

    # -- ranks ----------------------------------------------------------------------------------------------

    def gathered(self, module: nn.Module):
        """Context in which `module`'s parameters are whole on every rank (export); here they always are."""
        return contextlib.nullcontext()

    def all_gather_object(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def mean_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)

    def param_elements(self, module: nn.Module) -> tuple[int, int]:
        """(elements held by this rank, elements of the whole module) over `module`'s parameters."""
        n = sum(p.numel() for p in module.parameters())
        return n, n

    def param_abs_sum(self, module: nn.Module) -> float:
        """sum |w| over `module`'s parameters in float64: a cheap fingerprint (a frozen module's must not move)."""
        return float(sum(p.detach().double().abs().sum() for p in module.parameters()))

    def close(self) -> None:
        pass


def ds_config(cfg, world_size: int) -> dict:
    """The DeepSpeed config, generated from the typed config (cfg.runtime, cfg.train, cfg.optim).

    The optimizer and LR schedule are client objects (see _adamw), so they are not in here. `runtime.ds_overrides`
    is merged last, key by key, for settings this schema does not name.
    """
    r = cfg.runtime
    config = {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "train_batch_size": cfg.global_batch(world_size),
        "gradient_clipping": cfg.optim.grad_clip,  # 0 = off, as optim.grad_clip
        "zero_optimization": {
            "stage": 3,
            # Parameters under this many elements are not partitioned; 0 partitions every reader weight.
            "stage3_param_persistence_threshold": r.param_persistence_threshold,
        },
        "bf16": {"enabled": r.precision == "bf16"},
        "fp16": {"enabled": r.precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # the client torch AdamW
        "steps_per_print": 10**9,  # the recipe logs; DeepSpeed's own step prints would duplicate it
        "wall_clock_breakdown": False,
    }
    return _merge(config, r.ds_overrides)


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class EngineModule(nn.Module):
    """What the ZeRO-3 engine wraps: the trainable module and the frozen reader, so both are partitioned and
    fetched layer by layer. The recipe calls the two children directly (ZeRO-3's fetch/release hooks sit on every
    submodule); `forward` is never used."""

    def __init__(self, trainable: nn.Module, frozen: nn.Module | None):
        super().__init__()
        self.trainable = trainable
        self.frozen = frozen

    def forward(self, *args, **kwargs):
        raise RuntimeError("EngineModule is a container; call its children")


class DeepSpeedRuntime(_Engine):
    """One DeepSpeed ZeRO-3 engine per rank (torchrun, `deepspeed`, Ray Train; gloo on CPU, nccl on GPU).

    The reader is built inside `partitioned_init()` (zero.Init) when cfg.runtime.partition_reader, so each rank
    only ever holds its 1/world_size slice of it; only the trainable module's parameters go to the optimizer. The
    loss of each micro-batch is its question mean; DeepSpeed scales it by 1/grad_accum_steps and averages
    gradients over ranks, so the step's gradient is the mean over the global batch however it is split.
    """

    name = "deepspeed"

    def __init__(self, cfg):
        import torch._dynamo  # noqa: F401  -- before any zero.Init (docs/design.md#lazy-imports-under-zero-init)

        import deepspeed
        import deepspeed.comm as dist

        self.cfg, self.ds, self.dist = cfg, deepspeed, dist
        backend = cfg.runtime.dist_backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if not torch.cuda.is_available() and not cfg.runtime.shm_allreduce_op:
            skip_shm_allreduce_op()
        # Reuses a process group that exists already (Ray Train creates one); else reads the launcher's env.
        deepspeed.init_distributed(dist_backend=backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.config = ds_config(cfg, self.world_size)
        if self.is_main:
            path = Path(cfg.run.run_dir) / "ds_config.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.config, indent=2) + "\n")

    @contextlib.contextmanager
    def partitioned_init(self):
        """Build the frozen reader in here: each parameter is partitioned as soon as it is created.

        Plain torch modules go through deepspeed.zero.Init; HF models find HfDeepSpeedConfig alive and let
        transformers apply zero.Init, loading a gathered module at a time (docs/design.md#hf-models-under-zero-init). A
        `load_state_dict` on a partitioned module (a reader loaded from its folder) is done the same way.
        """
        if not self.cfg.runtime.partition_reader:
            yield
            return
        from transformers.integrations import HfDeepSpeedConfig

        hf_config = HfDeepSpeedConfig(self.config)  # transformers keeps only a weak reference: hold it
        try:
            with self.ds.zero.Init(config_dict_or_path=self.config), _partition_aware_load_state_dict(self.ds):
                yield
        finally:
            del hf_config  # later HF calls (export, evaluation) must not think they are under ZeRO-3

    def _start(self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
        self.engine, self.optimizer, _, self.scheduler = self.ds.initialize(
            model=EngineModule(self.module, self.frozen), optimizer=optimizer, lr_scheduler=scheduler,
            config=self.config)
        self._lr_optimizer = optimizer  # the torch AdamW inside; its param groups carry the current lr
        for module_ in (self.module, self.frozen):
            # ZeRO-3 gathers a parameter for the forward of the module that owns it and releases it right after;
            # a read elsewhere (the demo reader's tied output projection, after its embedding's forward) would
            # find an empty slice. Flagged external, ZeRO-3 leaves it gathered after its owner's forward. Readers
            # declare them (Reader.params_used_outside_forward); a reranker has none.
            for name in getattr(module_, "params_used_outside_forward", ()):
                module_.get_parameter(name).is_external_param = True  # deepspeed 0.19 internal flag

    def backward(self, loss: torch.Tensor) -> None:
        """engine.backward scales by 1/grad_accum_steps. DeepSpeed counts micro-steps in engine.step(), so every
        micro-batch but the last calls it (a no-op there) and `step()` makes the update at the boundary."""
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self, skip: bool = False) -> dict[str, float]:
        """engine.step(). DeepSpeed itself discards a step whose global gradient norm is not finite (zero grads, no
        update, the LR schedule stays; the norm is all-reduced, so every rank agrees): the recipe requests a skip
        by backpropagating a NaN loss on every rank (see train.train), and this checks that it happened."""
        lr = self._lr_optimizer.param_groups[0]["lr"]
        skipped_before = self.engine.skipped_steps
        self.engine.step()  # reduce-scatter, clip (gradient_clipping), AdamW on each rank's slice, schedule
        skipped = self.engine.skipped_steps > skipped_before
        if skip and not skipped:
            raise RuntimeError("runtime: a skipped step was requested but DeepSpeed updated the weights (its "
                               "non-finite gradient check did not fire)")
        norm = self.engine.get_global_grad_norm()
        return {"train/grad_norm": float(norm) if norm is not None else float("nan"), "train/lr": lr,
                "train/step_skipped": float(skipped)}

    # -- checkpoint state: full, world-size independent tensors, gathered collectively, kept on rank 0 ---------

    def module_state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights of the trainable module on rank 0 ({} elsewhere); fp32 master weights for the trained
        parameters, so bf16/fp16 runs resume exactly. Collective: every rank calls it."""
        with self.ds.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()} if self.is_main else {}
        for name, p in self.named:  # collective
            full = self.ds.utils.safe_get_full_fp32_param(p)
            if self.is_main:
                state[name] = full.detach().cpu().view(p.ds_shape).clone()
        return state

    def load_module_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Every rank reads the same full state and keeps its slice (model weights and fp32 masters)."""
        with self.ds.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0):
            missing, unexpected = self.module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        for name, p in self.named:
            self.ds.utils.safe_set_full_fp32_param(p, state[name].float().to(self.device))

    def _flat_groups(self) -> list[torch.Tensor]:
        return self.optimizer.fp32_partitioned_groups_flat  # this rank's fp32 slice of each parameter group

    def state_dict(self) -> dict:
        """Optimizer moments gathered to full tensors by parameter name, step count and schedule (rank 0 keeps
        them; collective)."""
        inner = self.optimizer.optimizer.state
        started = bool(inner.get(self._flat_groups()[0]))
        step = int(inner[self._flat_groups()[0]]["step"]) if started else 0
        moments = {m: {} for m in MOMENTS}
        if started:
            for name, p in self.named:
                for m in MOMENTS:
                    full = self.ds.utils.safe_get_full_optimizer_state(p, m)
                    if self.is_main:
                        moments[m][name] = full.detach().cpu().view(p.ds_shape).clone()
        return {"optimizer": {"step": step, **moments}, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        opt = state["optimizer"]
        if opt["step"] > 0:
            for m in MOMENTS:
                _check_names([n for n, _ in self.named], opt[m], f"optimizer state '{m}'")
            inner = self.optimizer.optimizer.state
            for flat in self._flat_groups():
                # torch AdamW creates its state lazily at the first step; create it here so the slices can be set.
                inner[flat] = {"step": torch.tensor(float(opt["step"])),
                               **{m: torch.zeros_like(flat) for m in MOMENTS}}
            for name, p in self.named:
                for m in MOMENTS:
                    self.ds.utils.safe_set_full_optimizer_state(p, opt[m][name].float().to(self.device), m)
        _load_scheduler(self.scheduler, state["scheduler"])

    # -- ranks ----------------------------------------------------------------------------------------------

    def gathered(self, module: nn.Module):
        """Context in which `module`'s parameters are whole on every rank (consolidated export). Collective."""
        return self.ds.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def mean_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Mean of each scalar over ranks (one all-reduce). Every rank holds the same number of questions, so
        the mean of rank means is the global-batch mean."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return dict(zip(keys, (t / self.world_size).tolist()))

    def param_elements(self, module: nn.Module) -> tuple[int, int]:
        """(elements of `module` held by this rank, elements of the whole module). A ZeRO-3 parameter outside a
        forward holds only its slice `ds_tensor` (ceil(numel / world_size) elements)."""
        local = total = 0
        for p in module.parameters():
            if hasattr(p, "ds_tensor"):
                local, total = local + p.ds_tensor.numel(), total + p.ds_numel
            else:
                local, total = local + p.numel(), total + p.numel()
        return local, total

    def param_abs_sum(self, module: nn.Module) -> float:
        """sum |w| over `module`'s parameters in float64, from each rank's slice without gathering; parameters
        ZeRO does not manage count once. Collective. Only the valid part of a slice is read: the padding of the
        last rank's slice is not guaranteed to be zeros (a resumed run read 3e36 there)."""
        s = torch.zeros((), dtype=torch.float64, device=self.device)
        for p in module.parameters():
            if hasattr(p, "ds_tensor"):
                part = p.ds_tensor.numel()
                valid = max(0, min(p.ds_numel - self.rank * part, part))
                s += p.ds_tensor.detach().reshape(-1)[:valid].double().abs().sum()
            elif self.is_main:
                s += p.detach().double().abs().sum()
        self.dist.all_reduce(s)
        return float(s)

    def close(self) -> None:
        self.barrier()


@contextlib.contextmanager
def _partition_aware_load_state_dict(deepspeed):
    """Inside zero.Init a parameter is an empty slice, so nn.Module.load_state_dict would fail on shapes. While
    this context is open it loads a partitioned module the way transformers does under ZeRO-3: one submodule's
    own parameters gathered at a time, copied, and re-partitioned, so the whole module is never held at once."""
    original = nn.Module.load_state_dict

    def load_state_dict(module, state_dict, strict: bool = True, assign: bool = False):
        if not any(hasattr(p, "ds_id") for p in module.parameters()):
            return original(module, state_dict, strict=strict, assign=assign)
        expected = set(module.state_dict().keys())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(f"load_state_dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for prefix, sub in module.named_modules():
            own = list(sub.named_parameters(recurse=False)) + list(sub.named_buffers(recurse=False))
            if not own:
                continue
            params = [p for _, p in sub.named_parameters(recurse=False)]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
                for name, tensor in own:
                    key = f"{prefix}.{name}" if prefix else name
                    if key in state_dict:
                        tensor.copy_(state_dict[key])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    nn.Module.load_state_dict = load_state_dict
    try:
        yield
    finally:
        nn.Module.load_state_dict = original


def checkpoint_answer_pass(reader) -> None:
    """Activation checkpointing for the reader's answer pass (reader.answer_pass_layers()): each layer keeps only
    its inputs and recomputes its activations in backward (non-reentrant torch.utils.checkpoint, under the SDPA
    kernels its forward was allowed: attention.bias_grad_kernels), whatever the
    reader's train/eval mode (HF's own checkpointing only runs in train mode, which would turn dropout on in the
    frozen reader). Passage encoding runs under no_grad and is unaffected. ValueError for readers that refuse it.
    """
    for layer in reader.answer_pass_layers():
        forward = layer.forward

        def checkpointed(*args, _forward: Callable = forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            kernels = enabled_sdpa_kernels()  # the recompute in backward uses the forward's SDPA kernels
            return torch.utils.checkpoint.checkpoint(
                _forward, *args, use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), sdpa_kernel(kernels)), **kwargs)

        layer.forward = checkpointed


def zero3_model_states_bytes(total_params: int, largest_layer_params: int, gpus_per_node: int = 1,
                             nodes: int = 1) -> int:
    """Bytes per GPU of a trained module's ZeRO-3 model states (parameters, gradients, fp32 master weights, AdamW
    moments), as DeepSpeed itself estimates them: deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs
    with no offload and zero.Init (the per-GPU figure of estimate_zero3_model_states_mem_needs_all_cold):
    4 * largest_layer_params + 18 * total_params / (gpus_per_node * nodes). The cost model (cost.memory_per_rank)
    reads it; imported lazily like every deepspeed use here."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
        total_params, largest_layer_params, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=False,
        cpu_offload_params=False, zero_init=True)
    return int(gpu_bytes)


def build_runtime(cfg) -> Runtime:
    """The engine named by cfg.runtime.engine; call `prepare(trainable, frozen)` once the models exist."""
    return DeepSpeedRuntime(cfg) if cfg.runtime.engine == "deepspeed" else LocalRuntime(cfg)
