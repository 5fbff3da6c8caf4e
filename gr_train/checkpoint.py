"""Checkpoints: atomic save, exact resume, and the final export.

Layout: `<run_dir>/step-000500/` and `<run_dir>/final/`, each holding
  model.safetensors   the trainable module only, full (gathered) fp32 weights: the frozen reader comes from its
                      own source, so a checkpoint is small and does not depend on the number of ranks,
  engine.pt           optimizer state by parameter name (full AdamW moments, step) + LR scheduler state
                      (runtime.py; the same for the local and the ZeRO-3 engine): tensors, numbers, strings,
                      lists and dicts only, read with torch.load(weights_only=True), which refuses any other object
                      (a pickle that would run code on load is an UnpicklingError, never executed),
  trainer_state.json  step and data position (the data order and Gumbel noise are pure functions of seed and
                      step, so the step is the whole RNG state of the data); each rank's torch RNG (dropout),
  config.yaml         the resolved config.
Saving is collective (every rank takes part in gathering its slices); rank 0 writes. A checkpoint is written to
a temporary folder and renamed into place: a crash during save leaves the previous checkpoint untouched and
never a half-written one under a final name. With several nodes, run_dir must be on a shared filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gr_train.config import save_config
from gr_train.runtime import Runtime

STEP_RE = re.compile(r"^step-(\d{6,})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(tmp: Path, weights: dict, engine: dict, cfg, trainer_state: dict) -> None:
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
    torch.save(engine, tmp / "engine.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
    save_config(cfg, tmp / "config.yaml")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def save_checkpoint(run_dir: str | Path, name: str, runtime: Runtime, cfg, trainer_state: dict) -> Path | None:
    """Write `<run_dir>/<name>/` atomically (name: step-NNNNNN or final). Every rank calls it (the runtime
    gathers the trainable module's weights and optimizer state); rank 0 writes. Returns the folder on rank 0,
    None elsewhere."""
    weights = runtime.module_state_dict()
    engine = runtime.state_dict()
    rng = runtime.all_gather_object(torch.get_rng_state().tolist())
    if not runtime.is_main:
        runtime.barrier()
        return None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    # Half-written folders of saves that failed or were killed (one writer per run folder: rank 0 of its run).
    # `.old-` folders are not swept: a kill between the two renames below leaves the previous checkpoint there.
    for stale in run_dir.glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    trainer_state = dict(trainer_state, world_size=runtime.world_size, torch_rng=rng[0], torch_rng_per_rank=rng)
    try:
        _write_files(tmp, weights, engine, cfg, trainer_state)
    except BaseException:  # e.g. the disk filled up: what was written would keep it full
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # replacing (e.g. final/ of an earlier run): move the old one aside first
        old = run_dir / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(run_dir)
    runtime.barrier()  # the other ranks go on once the checkpoint is in place
    return final


def param_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, values); equal iff the modules are bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # flattened first: view(uint8) refuses 0-d tensors
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_engine_state(file: str | Path) -> dict:
    """Read an engine.pt (optimizer + scheduler state) with torch.load(weights_only=True): only tensors and plain
    containers are accepted, so a checkpoint from someone else cannot run code when loaded.

    Raises ValueError naming the file when it holds anything else (e.g. a pickled object with __reduce__)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{file}: refused, not plain tensor/container data (loaded with weights_only=True): "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or "optimizer" not in state or "scheduler" not in state:
        raise ValueError(f"{file}: not an engine state (expected a dict with 'optimizer' and 'scheduler')")
    return state


def config_changes(path: str | Path, cfg) -> list[tuple[str, object, object]]:
    """The settings of `cfg` that differ from those the checkpoint at `path` was trained with (its config.yaml):
    [(section.key, saved value, new value)], in config order; [] when it has no config.yaml. A resume trains with
    the new values from the checkpoint's step (nothing the checkpoint holds overrides a setting: weights, AdamW
    moments, the schedule's position and the RNG only)."""
    import yaml

    from gr_train.config import to_dict

    file = Path(path) / "config.yaml"
    if not file.is_file():
        return []
    saved = yaml.safe_load(file.read_text()) or {}
    changes = []
    for section, values in to_dict(cfg).items():
        for key, value in values.items():
            old = saved.get(section, {}).get(key, value)  # a key the checkpoint predates: its default applied
            if old != value:
                changes.append((f"{section}.{key}", old, value))
    return changes


def load_checkpoint(path: str | Path, runtime: Runtime) -> dict:
    """Load weights and engine state into `runtime` (into the trainable module it was prepared with). Every rank
    reads the full files and keeps its slice, so the checkpoint loads onto any number of ranks. Returns the
    trainer state.

    Each rank gets back its own torch RNG stream when the world size is unchanged (exact resume, dropout
    included); on another world size every rank continues from rank 0's.
    """
    path = Path(path)
    for f in ("model.safetensors", "engine.pt", "trainer_state.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path}: not a complete checkpoint ({f} missing)")
    engine = load_engine_state(path / "engine.pt")  # before anything is applied: a refused file changes nothing
    try:
        runtime.load_module_state_dict(load_file(path / "model.safetensors"))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    runtime.load_state_dict(engine)
    state = json.loads((path / "trainer_state.json").read_text())
    per_rank = state.pop("torch_rng_per_rank", None)
    rng = state.pop("torch_rng")
    if per_rank is not None and len(per_rank) == runtime.world_size:
        rng = per_rank[runtime.rank]
    torch.set_rng_state(torch.tensor(rng, dtype=torch.uint8))
    return state
