"""Per-question caches of what the frozen reader computes, reused across steps, epochs, objectives and runs in
one process.

Passage states and the baselines' per-passage reader quantities depend only on the frozen reader and on the
question with its candidates, never on the reranker (docs/design.md#cost-structure). Both caches are keyed by
the reader's identity (its config section, plus run.seed when its weights are random) and by the question's id,
text, target and candidate passages, so an edited record or another reader misses.

- `targets`: [n] fp32 per question (objectives.reader_quantity), a few bytes each; on by default
  (objective.cache_reader_targets).
- `states`: the passage states of encode_passages, split per question (every tensor in them has the batch first).
  Large (decoder-only: layers x 2 x kv_dim x n x L floats per question), so opt-in (objective.cache_passage_states)
  for small training sets read many times (several epochs, seeds or objectives).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import torch

_TARGETS: dict[tuple, torch.Tensor] = {}
_STATES: dict[tuple, Any] = {}


def clear() -> None:
    _TARGETS.clear()
    _STATES.clear()


def reader_key(cfg) -> str:
    """What determines the frozen reader: its config section, plus the seed when it has random weights."""
    key = dataclasses.asdict(cfg.reader)
    if not cfg.reader.name_or_path:
        key["seed"] = cfg.run.seed
    return json.dumps(key, sort_keys=True, default=str)


def question_keys(batch, cfg, what: str) -> list[tuple]:
    """One key per question of the batch: (what, reader, id, question, target, its valid candidates, padded n)."""
    reader = reader_key(cfg)
    counts = batch.valid.sum(-1).tolist()
    n = batch.valid.shape[1]
    return [(what, reader, r.id, r.question, r.target_text, tuple((c.title, c.text) for c in r.ctxs[:m]), n)
            for r, m in zip(batch.records, counts)]


def cached_targets(batch, cfg, what: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """[B, n] fp32, nan on padded candidates: each question's row from the cache, or `compute()` (the whole
    batch's [B, n]) when any question is missing."""
    keys = question_keys(batch, cfg, what)
    counts = batch.valid.sum(-1).tolist()
    if any(k not in _TARGETS for k in keys):
        values = compute().detach().cpu()
        for k, row, m in zip(keys, values, counts):
            _TARGETS[k] = row[:m].clone()
    out = torch.full(batch.valid.shape, float("nan"))
    for b, (k, m) in enumerate(zip(keys, counts)):
        out[b, :m] = _TARGETS[k]
    return out.to(batch.valid.device)


def cached_states(batch, cfg, encode: Callable[[], Any]) -> Any:
    """The batch's passage states: each question's slice from the cache, or `encode()` for the whole batch when
    any question is missing (then every question's slice is stored)."""
    keys = question_keys(batch, cfg, "states")
    if any(k not in _STATES for k in keys):
        states = encode()
        for b, k in enumerate(keys):
            _STATES[k] = _map(states, lambda t, b=b: t[b : b + 1].clone())
        return states
    return _cat([_STATES[k] for k in keys])


def _map(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply fn to every tensor in a tensor / tuple / list / dataclass tree."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(x, fn) for x in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _map(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    raise TypeError(f"reader_cache: cannot split passage states of type {type(obj).__name__}")


def _cat(parts: list) -> Any:
    """Inverse of the per-question split: concatenate matching tensors along the batch dimension."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(first, **{f.name: _cat([getattr(p, f.name) for p in parts])
                                             for f in dataclasses.fields(first)})
    raise TypeError(f"reader_cache: cannot merge passage states of type {type(first).__name__}")
