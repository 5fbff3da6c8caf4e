"""Checkpoints: atomic save, exact resume, and the final export.

Layout: `<run_dir>/step-000500/` and `<run_dir>/final/`, each holding
  model.safetensors   the trainable module only (the frozen reader comes from its own source),
  engine.pt           optimizer + LR scheduler state,
  trainer_state.json  step and data position (the data order and Gumbel noise are pure functions of seed and
                      step, so the step is the whole RNG state; torch's global RNG is saved too for dropout),
  config.yaml         the resolved config.
A checkpoint is written to a temporary folder and renamed into place: a crash during save leaves the previous
checkpoint untouched and never a half-written one under a final name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gr_train.config import save_config

STEP_RE = re.compile(r"^step-(\d{6,})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(tmp: Path, module, runtime, cfg, trainer_state: dict) -> None:
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    torch.save(runtime.state_dict(), tmp / "engine.pt")
    state = dict(trainer_state, torch_rng=torch.get_rng_state().tolist())
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    save_config(cfg, tmp / "config.yaml")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def save_checkpoint(run_dir: str | Path, name: str, module, runtime, cfg, trainer_state: dict) -> Path:
    """Write `<run_dir>/<name>/` atomically (name: step-NNNNNN or final). Returns the folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    _write_files(tmp, module, runtime, cfg, trainer_state)
    if final.exists():  # replacing (e.g. final/ of an earlier run): move the old one aside first
        old = run_dir / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(run_dir)
    return final


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


def load_checkpoint(path: str | Path, module, runtime=None) -> dict:
    """Load weights (and engine state when `runtime` is given) in place; returns the trainer state."""
    path = Path(path)
    for f in ("model.safetensors", "trainer_state.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path}: not a complete checkpoint ({f} missing)")
    missing, unexpected = module.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if runtime is not None:
        runtime.load_state_dict(torch.load(path / "engine.pt", weights_only=False))
    state = json.loads((path / "trainer_state.json").read_text())
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    return state
